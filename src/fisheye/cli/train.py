"""`fisheye train`: Hydra's command line, behind the `fisheye` entry point."""

from __future__ import annotations

import sys

import typer

from fisheye.cli.common import consoles, require_train_extra


def train(ctx: typer.Context) -> None:
    """Train a model with Hydra overrides, e.g. `fisheye train model=efficientnet_lite0`.

    Ends by writing a model bundle under the run folder. `fisheye train --help` shows
    the Hydra config groups; `--cfg job` prints the composed config.
    """
    _, err = consoles()
    require_train_extra(err, "train")
    from fisheye.training.train import hydra_entry

    sys.argv = ["fisheye train", *ctx.args]
    hydra_entry()
