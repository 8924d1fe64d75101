"""MLflow experiment tracking of training runs and the MLflow model registry of bundles.

`store` finds the tracking store (a local SQLite file by default, or `MLFLOW_TRACKING_URI`),
`runs` logs training runs, `registry` registers bundles and resolves `models:/` URIs to
verified local bundles. MLflow is optional: `mlflow` comes with the `train` extra,
`mlflow-skinny` (a registry behind an MLflow server) with the `registry` extra.
"""
