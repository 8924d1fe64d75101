"""`logger=wandb`: Lightning's WandbLogger, offline by default (conf/logger/wandb.yaml).

An offline run is written under the run folder (`<run>/wandb/offline-run-<time>-<id>/`) and
never touches the network; `wandb sync <that folder>` uploads it later, after `wandb login`.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

# Modes W&B users set in the environment that mean "do not go online".
_OFFLINE_MODES = ("offline", "dryrun")


def wandb_logger(*, offline: bool = True, **kwargs: Any) -> Logger:
    """Lightning's WandbLogger (kwargs as its own); one clear line when wandb is missing.

    `WANDB_MODE` in the environment, when set, wins over `offline` (`WANDB_MODE=online`
    logs online, `disabled` logs nothing).
    """
    try:
        import wandb
    except ImportError:
        # SystemExit, not an exception: Hydra would wrap an exception from a config target
        # in a multi-line InstantiationException and a traceback.
        raise SystemExit(
            "error: logger=wandb needs the wandb package, which is not installed: "
            "pip install 'fisheye[wandb]'"
        ) from None
    mode = os.environ.get("WANDB_MODE")
    if mode:
        offline = mode in _OFFLINE_MODES
    if offline:
        # W&B's service reports errors to W&B's servers and looks them up when it starts
        # without an offline WANDB_MODE in its environment (Lightning sets one; belt and braces).
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    if wandb.run is not None:
        # Trials of a sweep share one process: close the run before this one, or Lightning's
        # WandbLogger would log into it.
        wandb.finish()
    return WandbLogger(offline=offline, **kwargs)
