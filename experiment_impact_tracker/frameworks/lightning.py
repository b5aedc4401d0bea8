"""A PyTorch Lightning callback that measures ``trainer.fit`` as one run::

    from experiment_impact_tracker.frameworks.lightning import ImpactTrackerCallback

    trainer = L.Trainer(callbacks=[ImpactTrackerCallback("mnist-mlp", hyperparameters=["lr", "batch_size"])])

The run starts in ``on_train_start``, labelled ``model`` (the LightningModule's class), ``seed`` (what
``seed_everything`` set) and the picked names from ``pl_module.hparams``; each training batch counts one step and
its batch size in samples; ``on_train_end`` stops the run and logs its figures (frameworks/common.py) to every
logger of the trainer (``trainer.loggers``: TensorBoard, CSV, MLflow, W&B, ...).
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.data import extract_batch_size

from experiment_impact_tracker.frameworks.common import TrainingRun, picked


class ImpactTrackerCallback(pl.Callback):
    """Measures training as one run; see the module docstring. Arguments are those of ``TrainingRun``."""

    def __init__(self, experiment: str, **options: Any) -> None:
        super().__init__()
        self.training = TrainingRun(experiment, **options)
        self.figures: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed = os.environ.get("PL_GLOBAL_SEED")
        self.training.start(picked(pl_module.hparams), model=type(pl_module).__name__, seed=seed)
        self._steps_seen = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        steps, self._steps_seen = trainer.global_step - self._steps_seen, trainer.global_step
        self.training.add_work(samples=extract_batch_size(batch), steps=steps)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.figures = self.training.stop()
        if not self.figures:
            return
        for logger in trainer.loggers:
            logger.log_metrics(self.figures, step=trainer.global_step)
            logger.save()
