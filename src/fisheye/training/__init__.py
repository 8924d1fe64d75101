"""Training: the Hydra entry (`fisheye train`), the linear-probe recipe (`fisheye probe`), what a
run records in its bundle, Optuna pruning, the W&B logger, and `fisheye data check`."""
