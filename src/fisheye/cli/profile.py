"""`fisheye profile`: where inference and training time goes (Chrome traces, top ops)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fisheye.cli.common import ModelOption, consoles, fail, require_train_extra


def profile(
    model: ModelOption = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the Chrome trace files.")
    ] = Path("runs/profile"),
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Photos to decode (default: shared val).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Photos.")] = 8,
) -> None:
    """Profile an inference batch and a training step; write Chrome traces, print top ops."""
    out, err = consoles()
    require_train_extra(err, "profile")
    from fisheye.bundle import BundleError
    from fisheye.inference.profile import run_profile

    try:
        report = run_profile(model, out_dir, data=data, batch_size=batch_size)
    except (BundleError, OSError) as exc:
        raise fail(err, f"profile failed: {exc}") from None
    out.print(Text("inference (decode, resize, normalise, model), top ops by self CPU time"))
    out.print(Text(report.inference_table), soft_wrap=True)
    out.print(Text("training step (forward, backward, SGD), top ops by self CPU time"))
    out.print(Text(report.train_table), soft_wrap=True)
    out.print(
        Text(f"Chrome traces: {report.inference_trace}, {report.train_trace} (chrome://tracing)")
    )
