"""A Lightning callback for multi-node tests: what each rank trained on, and its final weights.

Added to a `fisheye train` run with `+callbacks.probe._target_=tests.helpers.ddp_probe.Probe
+callbacks.probe.out_dir=DIR`; each rank writes DIR/rank<N>.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


class Probe(L.Callback):
    """Records the dataset indices the rank's sampler gave it and a hash of its weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.indices: list[int] = []
        self.sampler = ""
        self.dataset_size = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sampler = trainer.train_dataloader.sampler
        self.sampler = type(sampler).__name__
        self.dataset_size = len(trainer.train_dataloader.dataset)
        self.indices += [int(i) for i in sampler]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        record = {
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "sampler": self.sampler,
            "indices": self.indices,
            "dataset_size": self.dataset_size,
            "steps": trainer.global_step,
            "weights_sha256": digest.hexdigest(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
