"""The LightningModule that trains a FishNet."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fisheye.models.backbones import build_model


class FishClassifier(L.LightningModule):
    """Fine-tunes a registry backbone with AdamW, warmup + cosine, and label smoothing."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        class_names: list[str] | None = None,
        pretrained: bool = True,
        input_size: int = 224,
        dropout: float = 0.2,
        lr: float = 1e-3,
        backbone_lr_mult: float = 0.1,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.1,
        freeze_backbone_epochs: int = 0,
        finetune_fraction: float = 1.0,
        warmup_fraction: float = 0.05,
        preprocessing: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(
            arch, num_classes, pretrained=pretrained, input_size=input_size, dropout=dropout
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    @property
    def architecture_config(self) -> dict[str, Any]:
        """The arguments `build_model` needs to rebuild this network (stored in bundles)."""
        hp = self.hparams
        return {
            "num_classes": hp.num_classes,
            "input_size": hp.input_size,
            "dropout": hp.dropout,
        }

    def backbone_frozen(self) -> bool:
        """Whether this epoch trains only the head."""
        return self.current_epoch < self.hparams.freeze_backbone_epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        self.set_trainable_backbone(
            0.0 if self.backbone_frozen() else self.hparams.finetune_fraction
        )

    def set_trainable_backbone(self, fraction: float) -> None:
        """Train only the top `fraction` of the backbone's parameter tensors (0: frozen).

        Layers below the first trainable one get no autograd graph at all, so fine-tuning
        the top of a network costs little more than training the head. Frozen BatchNorm
        layers keep their running statistics.
        """
        params = list(self.net.backbone.parameters())
        first = len(params) - math.ceil(len(params) * fraction)
        for i, p in enumerate(params):
            p.requires_grad_(i >= first)
        for module in self.net.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(any(p.requires_grad for p in module.parameters()))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        if self.backbone_frozen():
            with torch.no_grad():
                features = self.net.backbone(x)
            logits = self.net.head(self.net.dropout(features))
        else:
            logits = self.net(x)
        loss = self.criterion(logits, y)
        self.train_metrics.update(logits, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch, metrics: MetricCollection, stage: str) -> None:
        x, y = batch
        logits = self.net(x)
        self.log(f"{stage}/loss", self.criterion(logits, y), prog_bar=True, sync_dist=True)
        metrics.update(logits, y)
        self.log_dict(metrics, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def configure_optimizers(self):
        hp = self.hparams
        params = [
            {"params": self.net.backbone.parameters(), "lr": hp.lr * hp.backbone_lr_mult},
            {"params": [*self.net.head.parameters()], "lr": hp.lr},
        ]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * hp.warmup_fraction)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
