"""GPUs in the sampler: a fake NVML (injected where the source is built) and a fake procfs with two runs.

Two GPUs: on GPU 0 the run "train" (pid 4242) uses 60% of the SM time beside an untracked process (20%); GPU 1
has no energy counter (its power is integrated) and runs "eval" (pid 4343) alone at 50%.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from impact_exporter.ledger import Ledger
from impact_exporter.run import RunKey
from impact_exporter.sampler import Sampler
from impact_exporter.sources.nvml import NvmlSource
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.fakes.procfs import FakeProc

TRAIN_RUN, EVAL_RUN = RunKey(0, "train"), RunKey(0, "eval")

TRAIN, EVAL, STRANGER = 4242, 4343, 5000
IDLE_WATTS = 50.0


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    proc = FakeProc(tmp_path / "proc")
    for pid, start in ((TRAIN, 100), (EVAL, 200), (STRANGER, 300)):
        proc.spawn(pid, 1, start=start, uid=0, comm=f"p{pid}")
    return proc


@pytest.fixture
def nvml() -> FakeNvml:
    fast = FakeGpu(
        "GPU-0000aaaa-0000-0000-0000-000000000000",
        power_watts=250.0,
        processes={TRAIN: 8 * GIB, STRANGER: 1 * GIB},
        slices=[{TRAIN: 60, STRANGER: 20}],
    )
    old = FakeGpu(
        "GPU-1111bbbb-0000-0000-0000-000000000000",
        name="Tesla P100",
        power_watts=150.0,
        energy_counter=False,
        processes={EVAL: 4 * GIB},
        slices=[{EVAL: 50}],
    )
    return FakeNvml([fast, old])


def sampler_for(proc: FakeProc, nvml: FakeNvml) -> tuple[Sampler, Ledger]:
    ledger = Ledger()
    ledger.track(TRAIN_RUN, (TRAIN,))
    ledger.track(EVAL_RUN, (EVAL,))
    return Sampler(
        proc.procfs(),
        ledger=ledger,
        gpu=NvmlSource(nvml=nvml, clock=nvml.clock),
        gpu_idle_watts=IDLE_WATTS,
    ), ledger


def test_gpu_energy_goes_to_the_runs_by_sm_share_and_idle_is_shared(proc: FakeProc, nvml: FakeNvml) -> None:
    sampler, ledger = sampler_for(proc, nvml)
    sampler.sample_once()
    nvml.advance(2.0)
    snapshot = sampler.sample_once()
    runs = ledger.totals()

    # GPU 0: 500 J, of which 100 J idle shared by its 2 processes; 400 J active, 60% to the run.
    assert runs[TRAIN_RUN].energy_joules["gpu"] == pytest.approx(0.6 * 400 + 100 / 2)
    assert runs[TRAIN_RUN].gpu_seconds == pytest.approx(0.6 * 2.0)
    # GPU 1 (power integrated at a constant 150 W): 300 J, 100 J idle all to the one process, 50% of 200 J active.
    assert runs[EVAL_RUN].energy_joules["gpu"] == pytest.approx(0.5 * 200 + 100)
    assert runs[EVAL_RUN].gpu_seconds == pytest.approx(1.0)
    attributed = sum(run.energy_joules["gpu"] for run in runs.values())
    assert attributed + snapshot.unattributed_joules["gpu"] == pytest.approx(500 + 300, rel=1e-9)
    assert snapshot.gpu_process_watts[(0, TRAIN)] == pytest.approx((0.6 * 400 + 50) / 2.0)
    assert snapshot.process_names[TRAIN] == f"p{TRAIN}"
    assert snapshot.sources[NvmlSource.name].up


def test_a_lost_gpu_is_down_and_the_other_goes_on(proc: FakeProc, nvml: FakeNvml) -> None:
    sampler, ledger = sampler_for(proc, nvml)
    sampler.sample_once()
    nvml.advance(1.0)
    before = sampler.sample_once()
    runs_before = ledger.totals()
    nvml.gpus[1].lost = True
    nvml.advance(1.0)
    after = sampler.sample_once()
    runs_after = ledger.totals()
    assert [gpu.up for gpu in after.gpus] == [True, False]
    assert after.gpus[1].energy_joules_total == before.gpus[1].energy_joules_total
    assert runs_after[TRAIN_RUN].energy_joules["gpu"] > runs_before[TRAIN_RUN].energy_joules["gpu"]
    assert runs_after[EVAL_RUN].energy_joules["gpu"] == runs_before[EVAL_RUN].energy_joules["gpu"]
