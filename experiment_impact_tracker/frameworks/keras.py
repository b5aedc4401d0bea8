"""A Keras 3 callback that measures ``model.fit`` as one run (any backend: TensorFlow, JAX or PyTorch)::

    from experiment_impact_tracker.frameworks.keras import ImpactTrackerCallback

    model.fit(x, y, batch_size=32, callbacks=[ImpactTrackerCallback("mlp", batch_size=32, seed=0,
                                                                    hyperparameters=["learning_rate"])])

The run starts in ``on_train_begin``, labelled ``model`` (the model's name), ``seed`` (when given: Keras keeps no
readable global seed) and the picked names from the optimizer's config, then ``fit``'s parameters (epochs,
steps). Each training batch counts one step, and ``batch_size`` samples when given (Keras does not tell callbacks
the batch size). The last epoch's end stops the run and adds its figures (frameworks/common.py) to that epoch's
``logs``, which every callback after this one reads: the ``History`` that ``fit`` returns, and a ``TensorBoard``
callback listed after it (not ``CSVLogger``, which keeps the columns of the first epoch). Training stopped early
(``EarlyStopping``) stops the run at its end and adds the figures to the ``History``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy

from experiment_impact_tracker.frameworks.common import TrainingRun


def float32_text(value: Any) -> Any:
    """An optimizer setting as a label shows it: Keras keeps them as float32, so 0.01 comes back as
    0.009999999776482582; the shortest float32 text gives back the 0.01 the user wrote."""
    return str(numpy.float32(value)) if isinstance(value, float) else value


class ImpactTrackerCallback(keras.callbacks.Callback):
    """Measures training as one run; see the module docstring. Other arguments are those of ``TrainingRun``."""

    def __init__(self, experiment: str, batch_size: int | None = None, seed: Any = None, **options: Any) -> None:
        super().__init__()
        self.training = TrainingRun(experiment, **options)
        self.batch_size = batch_size
        self.seed = seed
        self.figures: dict[str, float] = {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        config = {**(self.params or {})}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            config |= {name: float32_text(value) for name, value in optimizer.get_config().items()}
        self.training.start(config, model=self.model.name, seed=self.seed)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.training.add_work(samples=self.batch_size or 0, steps=1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch + 1 >= (self.params or {}).get("epochs", 0) and not self._stopped():
            self.figures = self.training.stop()
            if logs is not None:
                logs.update(self.figures)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._stopped():
            return
        self.figures = self.training.stop()
        history = getattr(self.model, "history", None)
        if self.figures and history is not None and getattr(history, "epoch", None):
            for name, value in self.figures.items():
                history.history.setdefault(name, [None] * (len(history.epoch) - 1)).append(value)

    def _stopped(self) -> bool:
        return self.training.run is None or self.training.run.end_time is not None
