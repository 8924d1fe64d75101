"""FishEye's Hydra sweeper on current Optuna, `hydra/sweeper=fisheye_optuna`.

`hydra_plugins` is a namespace package (no `__init__.py`): Hydra imports every module under
it at start-up and registers the plugins it finds, so this package is found wherever
`fisheye` is installed.
"""
