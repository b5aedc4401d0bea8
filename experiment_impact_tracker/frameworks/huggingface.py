"""A Hugging Face transformers ``TrainerCallback`` that measures ``trainer.train()`` as one run::

    from experiment_impact_tracker.frameworks.huggingface import ImpactTrackerCallback

    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(ImpactTrackerCallback("tiny-bert", trainer=trainer, hyperparameters=["learning_rate"]))

The run starts in ``on_train_begin``, labelled ``model`` (the model config's ``model_type``, else its class),
``seed`` (``args.seed``) and the picked names from the TrainingArguments and then the model's config; each
optimizer step counts one step and ``per_device_train_batch_size x gradient_accumulation_steps`` samples (this
process's: each rank of a distributed run reports its own, and the exporter adds them up), and the tokens the
Trainer counted when ``include_num_input_tokens_seen`` is on. ``on_train_end`` stops the run and logs its
figures (frameworks/common.py) with ``trainer.log``, which hands them to every ``report_to`` integration
(TensorBoard, MLflow, W&B) and keeps them in ``state.log_history``. Without ``trainer`` (a callback passed to
``Trainer(callbacks=...)`` before the trainer exists) they go to ``state.log_history`` only.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from experiment_impact_tracker.frameworks.common import TrainingRun, picked


class ImpactTrackerCallback(TrainerCallback):
    """Measures training as one run; see the module docstring. Other arguments are those of ``TrainingRun``."""

    def __init__(self, experiment: str, trainer: Any = None, **options: Any) -> None:
        self.training = TrainingRun(experiment, **options)
        self.trainer = trainer
        self.figures: dict[str, float] = {}
        self._tokens_seen = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        config = getattr(model, "config", None)
        name = getattr(config, "model_type", None) or type(model).__name__
        self.training.start({**picked(config), **args.to_dict()}, model=name, seed=args.seed)
        self._tokens_seen = int(state.num_input_tokens_seen or 0)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        tokens, self._tokens_seen = (
            int(state.num_input_tokens_seen or 0) - self._tokens_seen,
            int(state.num_input_tokens_seen or 0),
        )
        samples = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.training.add_work(samples=samples, steps=1, tokens=max(0, tokens))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.figures = self.training.stop()
        if not self.figures:
            return
        if self.trainer is not None:
            self.trainer.log(dict(self.figures))
        else:
            state.log_history.append({**self.figures, "step": state.global_step})
