"""Each framework callback on a real tiny CPU training loop, against a real exporter on a fake powercap tree: one
run with the labels from the run's configuration, its work counted, and its energy and carbon logged through the
framework's own logger with the figures the exporter measured.

Training runs in a child process (the test process holds the exporter, whose CPU time a run of it would count).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from experiment_impact_tracker import ExporterClient
from tests.experiment_impact_tracker.test_with_exporter import python

pytestmark = [pytest.mark.frameworks, pytest.mark.integration]

INTENSITY = 300.0  # gCO2eq/kWh given to the callbacks
PUE = 1.2


def the_run(client: ExporterClient, experiment: str) -> dict:
    runs = [run for run in client.list_runs() if run["experiment"] == experiment]
    assert len(runs) == 1, runs
    assert runs[0]["status"] == "finished"
    return runs[0]


def assert_logged(figures: dict[str, float], run: dict) -> None:
    """The logged figures are the exporter's: energy per component and in total, carbon, work and J per unit."""
    energy = run["energy_joules"]
    total = sum(energy.values())
    assert total > 0, "no energy was attributed to the training"
    assert figures["impact/energy_joules"] == pytest.approx(total, rel=1e-12)
    for component, joules in energy.items():
        assert figures[f"impact/energy_joules_{component}"] == pytest.approx(joules, rel=1e-12)
    assert figures["impact/kg_co2eq"] == pytest.approx(total / 3.6e6 * PUE * INTENSITY / 1000, rel=1e-9)
    for unit, count in run["work_units"].items():
        assert figures[f"impact/{unit}"] == count
    assert figures["impact/joules_per_sample"] == pytest.approx(total / run["work_units"]["samples"], rel=1e-9)
    assert figures["impact/joules_per_step"] == pytest.approx(total / run["work_units"]["steps"], rel=1e-9)


def test_lightning_callback(client: ExporterClient, env: dict[str, str], tmp_path: Path, power: None) -> None:
    python(
        f"""
        import sys, torch, lightning as L
        from torch.utils.data import DataLoader, TensorDataset
        from experiment_impact_tracker.frameworks.lightning import ImpactTrackerCallback

        class TinyRegressor(L.LightningModule):
            def __init__(self, lr=0.05, hidden=8):
                super().__init__()
                self.save_hyperparameters()
                self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
            def training_step(self, batch, batch_idx):
                x, y = batch
                loss = torch.nn.functional.mse_loss(self.net(x), y)
                self.log("train_loss", loss)
                return loss
            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        L.seed_everything(7)
        data = DataLoader(TensorDataset(torch.randn(100, 4), torch.randn(100, 1)), batch_size=16)  # 6 x 16 + 4
        callback = ImpactTrackerCallback("tiny-lightning", hyperparameters=["lr", "hidden"],
                                         carbon_intensity={INTENSITY}, pue={PUE})
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(sys.argv[1]),
                            callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False)
        trainer.fit(TinyRegressor(), data)
        """,
        str(tmp_path),
        env=env,
    )
    run = the_run(client, "tiny-lightning")
    assert run["labels"] == {"model": "TinyRegressor", "seed": "7", "lr": "0.05", "hidden": "8"}
    assert run["work_units"] == {"samples": 300, "steps": 21}
    (metrics,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("impact/energy_joules")]
    assert len(rows) == 1, "the figures are logged once, at the end"
    assert_logged({name: float(value) for name, value in rows[0].items() if name.startswith("impact/")}, run)


def test_huggingface_callback(client: ExporterClient, env: dict[str, str], tmp_path: Path, power: None) -> None:
    result = python(
        f"""
        import json, sys, torch
        from torch.utils.data import Dataset
        from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
        from experiment_impact_tracker.frameworks.huggingface import ImpactTrackerCallback

        class Sentences(Dataset):
            def __len__(self):
                return 24
            def __getitem__(self, i):
                return {{"input_ids": torch.tensor([1 + i % 5, 2, 3, 4]), "labels": torch.tensor(i % 2)}}

        class Reporter(TrainerCallback):  # what a report_to integration (TensorBoard, MLflow, W&B) receives
            logged = []
            def on_log(self, args, state, control, logs=None, **kwargs):
                self.logged.append(dict(logs))

        config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=8, max_position_embeddings=8)
        args = TrainingArguments(output_dir=sys.argv[1], per_device_train_batch_size=4, num_train_epochs=2,
                                 learning_rate=0.001, seed=11, report_to="none", save_strategy="no",
                                 disable_tqdm=True, use_cpu=True, logging_strategy="no")
        trainer = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Sentences(),
                          callbacks=[Reporter()])
        trainer.add_callback(ImpactTrackerCallback("tiny-bert", trainer=trainer,
                                                   hyperparameters=["learning_rate", "hidden_size"],
                                                   carbon_intensity={INTENSITY}, pue={PUE}))
        trainer.train()
        print(json.dumps({{"logged": Reporter.logged, "history": trainer.state.log_history}}))
        """,
        str(tmp_path),
        env=env,
    )
    out = json.loads(result.stdout.splitlines()[-1])
    run = the_run(client, "tiny-bert")
    assert run["labels"] == {"model": "bert", "seed": "11", "learning_rate": "0.001", "hidden_size": "8"}
    assert run["work_units"] == {"samples": 48, "steps": 12}
    logged = [logs for logs in out["logged"] if "impact/energy_joules" in logs]
    assert len(logged) == 1
    assert_logged(logged[0], run)
    assert [entry for entry in out["history"] if "impact/energy_joules" in entry][0] | {"step": 0} == {
        **logged[0],
        "step": 0,
    }


def test_keras_callback(client: ExporterClient, env: dict[str, str], tmp_path: Path, power: None) -> None:
    result = python(
        f"""
        import json, sys
        import numpy as np, keras
        from experiment_impact_tracker.frameworks.keras import ImpactTrackerCallback

        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)],
                                 name="tiny_mlp")
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
        x, y = np.random.rand(4096, 4), np.random.rand(4096, 1)  # 256 steps an epoch: long enough to be sampled
        callback = ImpactTrackerCallback("tiny-keras", batch_size=16, seed=3, hyperparameters=["learning_rate"],
                                         carbon_intensity={INTENSITY}, pue={PUE})
        epochs = []  # what a callback after it (TensorBoard writes every epoch's logs as scalars) receives
        later = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs.append(dict(logs)))
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback, later])
        print(json.dumps({{"history": history.history, "epochs": epochs}}))
        """,
        str(tmp_path),
        env={**env, "KERAS_BACKEND": "torch"},
    )
    out = json.loads(result.stdout.splitlines()[-1])
    history = out["history"]
    run = the_run(client, "tiny-keras")
    assert run["labels"] == {"model": "tiny_mlp", "seed": "3", "learning_rate": "0.01"}
    assert run["work_units"] == {"samples": 8192, "steps": 512}
    assert_logged({name: values[-1] for name, values in history.items() if name.startswith("impact/")}, run)
    assert ["impact/energy_joules" in logs for logs in out["epochs"]] == [False, True]
    assert_logged({name: value for name, value in out["epochs"][-1].items() if name.startswith("impact/")}, run)


def test_importing_the_package_imports_no_framework(env: dict[str, str]) -> None:
    result = python(
        """
        import sys
        import experiment_impact_tracker, experiment_impact_tracker.frameworks, experiment_impact_tracker.notebook
        print(sorted({"torch", "lightning", "transformers", "keras", "IPython"} & set(sys.modules)))
        """,
        env={key: value for key, value in os.environ.items() if not key.startswith("IMPACT_")},
    )
    assert result.stdout.strip() == "[]"
