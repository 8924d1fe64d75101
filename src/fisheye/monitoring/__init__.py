"""Monitoring: drift and out-of-distribution detection, the prediction log, reports."""
