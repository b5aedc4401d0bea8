"""Tests for the NVML source against tests/fakes/nvml.py (this machine has no GPU), and of the fake itself.

The fake raises real pynvml exceptions and returns pynvml's own result types, and the first tests here check
that it offers nothing the real pynvml lacks, so what passes here is what the real library would do.
"""

from __future__ import annotations

import inspect
import logging
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from impact_exporter.sources import HardwareNotFound
from impact_exporter.sources.nvml import (
    GpuProcess,
    NvmlSource,
    cuda_version_text,
    select_devices,
    sm_utilization_by_pid,
)
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml, nvml_functions

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import pynvml

SOURCE = Path(__file__).resolve().parents[3] / "exporter" / "sources" / "nvml.py"
UUID_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
UUID_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
UUID_C = "GPU-bbbbcccc-1111-2222-3333-444444444444"
NVML_LOGGER = "impact_exporter.sources.nvml"


def two_gpus(**nvml_options: object) -> FakeNvml:
    """A machine with an A100 (``UUID_A``) and an H100 (``UUID_B``), both with energy counters."""
    return FakeNvml(
        [
            FakeGpu(UUID_A, memory_used_bytes=8 * GIB),
            FakeGpu(UUID_B, name="NVIDIA H100 80GB HBM3", memory_total_bytes=80 * GIB, power_watts=100.0),
        ],
        **nvml_options,  # type: ignore[arg-type]
    )


def source_for(nvml: FakeNvml, devices: list[str] | None = None) -> NvmlSource:
    return NvmlSource(nvml=nvml, devices=devices, clock=nvml.clock)  # type: ignore[arg-type]


def parameters(function: object) -> list[tuple[str, object, bool]]:
    """(name, kind, has a default) of each parameter: what a caller's arguments must match."""
    return [
        (parameter.name, parameter.kind, parameter.default is not inspect.Parameter.empty)
        for parameter in inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    ]


# --- the fake cannot drift from pynvml ---------------------------------------------------------------------------


def test_every_function_of_the_fake_exists_in_pynvml_with_the_same_parameters() -> None:
    fake_functions = nvml_functions(FakeNvml([]))
    assert len(fake_functions) >= 14
    for name, fake_function in fake_functions.items():
        real_function = getattr(pynvml, name, None)
        assert callable(real_function), f"pynvml has no {name}"
        assert parameters(fake_function) == parameters(real_function), name


def test_the_fakes_constants_and_exceptions_are_pynvmls() -> None:
    names = [name for name in vars(FakeNvml) if name.startswith("NVML")]
    assert "NVMLError" in names and "NVML_ERROR_GPU_IS_LOST" in names
    for name in names:
        assert getattr(FakeNvml, name) is getattr(pynvml, name), name


def test_the_source_calls_only_functions_the_fake_has() -> None:
    called = set(re.findall(r"\b(nvml[A-Z]\w*)\b", SOURCE.read_text(encoding="utf-8")))
    assert "nvmlDeviceGetProcessUtilization" in called
    assert called <= set(nvml_functions(FakeNvml([])))


def test_the_fake_raises_the_real_pynvml_exception_classes() -> None:
    nvml = two_gpus()
    nvml.nvmlInit()
    nvml.gpus[1].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetPowerUsage(nvml.gpus[1])
    nvml.gpus[0].energy_counter = False
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetTotalEnergyConsumption(nvml.gpus[0])
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetProcessUtilization(nvml.gpus[0], 0)


# --- start-up ------------------------------------------------------------------------------------------------------


def test_describes_each_gpu_once_at_start() -> None:
    nvml = two_gpus()
    nvml.gpus[1].energy_counter = False
    source = source_for(nvml)
    a100, h100 = source.gpus
    assert a100.index == 0 and a100.uuid == UUID_A and a100.name == "NVIDIA A100-SXM4-40GB"
    assert (a100.driver_version, a100.cuda_version) == ("550.54.15", "12.4")
    assert a100.memory_total_bytes == 40 * GIB
    assert (a100.mig_enabled, a100.energy_counter) == (False, True)
    assert (h100.index, h100.uuid, h100.name) == (1, UUID_B, "NVIDIA H100 80GB HBM3")
    assert (h100.memory_total_bytes, h100.energy_counter) == (80 * GIB, False)


def test_no_gpu_is_hardware_not_found_and_nvml_is_shut_down() -> None:
    nvml = FakeNvml([])
    with pytest.raises(HardwareNotFound, match=r"^no NVIDIA GPU: NVML finds no GPU on this machine$"):
        source_for(nvml)
    assert nvml.initialised == 0


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
            "no NVIDIA GPU: the NVML library (libnvidia-ml.so.1) is not installed; is the NVIDIA driver?",
        ),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "no NVIDIA GPU: the NVIDIA kernel driver is not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no NVIDIA GPU: NVML cannot start (Insufficient Permissions)"),
    ],
)
def test_nvml_that_cannot_start_is_hardware_not_found_in_one_line(error: int, message: str) -> None:
    with pytest.raises(HardwareNotFound) as raised:
        source_for(two_gpus(init_error=error))
    assert str(raised.value) == message
    assert isinstance(raised.value.__cause__, pynvml.NVMLError)


def test_the_real_pynvml_on_a_machine_without_nvidia_driver_is_hardware_not_found() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVIDIA driver")
    with pytest.raises(HardwareNotFound, match=r"^no NVIDIA GPU: "):
        NvmlSource()


def test_close_shuts_nvml_down_once() -> None:
    nvml = two_gpus()
    source = source_for(nvml)
    assert nvml.initialised == 1
    source.close()
    source.close()
    assert nvml.initialised == 0
    assert nvml.calls.count("nvmlShutdown") == 1


# --- device selection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "indices"),
    [
        (None, [0, 1, 2]),
        (["1"], [1]),
        (["2", "0"], [2, 0]),
        ([UUID_B], [1]),
        (["GPU-aaaa"], [0]),
        (["GPU-bbbbc", " 0 "], [2, 0]),
        (["1", UUID_B], [1]),
    ],
)
def test_selects_gpus_by_index_or_uuid_in_the_order_given(devices: list[str] | None, indices: list[int]) -> None:
    nvml = FakeNvml([FakeGpu(UUID_A), FakeGpu(UUID_B), FakeGpu(UUID_C)])
    source = source_for(nvml, devices)
    assert [gpu.index for gpu in source.gpus] == indices
    assert [reading.index for reading in source.sample().gpus] == indices


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (["3"], "GPU selection '3' names no GPU"),
        (["GPU-ffff"], "GPU selection 'GPU-ffff' names no GPU"),
        (["GPU-bbbb"], "GPU selection 'GPU-bbbb' is ambiguous"),
        (["MIG-aaaa"], "GPU selection 'MIG-aaaa' names no GPU"),
        ([], "no NVIDIA GPU selected"),
    ],
)
def test_a_selection_that_names_no_single_gpu_is_an_error(devices: list[str], message: str) -> None:
    uuids = [(0, UUID_A), (1, UUID_B), (2, UUID_C)]
    with pytest.raises(HardwareNotFound) as raised:
        select_devices(uuids, devices)
    assert str(raised.value) == f"{message} (this machine's NVIDIA GPUs: 0: {UUID_A}, 1: {UUID_B}, 2: {UUID_C})"


def test_unselected_gpus_are_never_read() -> None:
    nvml = two_gpus()
    nvml.gpus[0].lost = True  # reading it would mark it down
    source = source_for(nvml, ["1"])
    assert [(reading.index, reading.up) for reading in source.sample().gpus] == [(1, True)]


# --- energy --------------------------------------------------------------------------------------------------------


def test_counter_total_starts_at_the_counter_and_grows_by_its_deltas() -> None:
    nvml = two_gpus()
    a100 = nvml.gpus[0]
    a100.energy_joules = 5000.0
    a100.power_watts = 250.0
    source = source_for(nvml)
    first = source.sample().gpus[0]
    assert (first.energy_method, first.energy_joules_total) == ("counter", 5000.0)
    assert (first.energy_joules_delta, first.elapsed_seconds) == (0.0, 0.0)
    nvml.advance(2.0)
    sample = source.sample()
    reading = sample.gpus[0]
    assert sample.elapsed_seconds == 2.0
    assert (reading.energy_joules_total, reading.energy_joules_delta, reading.elapsed_seconds) == (5500.0, 500.0, 2.0)
    assert reading.power_watts == 250.0
    assert reading.memory_used_bytes == 8 * GIB


def test_a_counter_that_restarts_with_the_driver_adds_its_new_value() -> None:
    nvml = two_gpus()
    nvml.gpus[0].energy_joules = 5000.0
    source = source_for(nvml)
    source.sample()
    nvml.gpus[0].energy_joules = 30.0  # driver reloaded: counter back near 0
    nvml.advance(1.0)  # + 60 J at 60 W
    reading = source.sample().gpus[0]
    assert (reading.energy_joules_total, reading.energy_joules_delta) == (5090.0, 90.0)


def test_without_energy_counter_power_is_integrated_by_trapezoids() -> None:
    nvml = FakeNvml([FakeGpu(UUID_A, energy_counter=False, power_watts=100.0)])
    gpu = nvml.gpus[0]
    source = source_for(nvml)
    readings = [source.sample().gpus[0]]
    for seconds, watts_at_end in [(1.0, 200.0), (2.0, 200.0), (1.0, 50.0)]:
        nvml.advance(seconds)
        gpu.power_watts = watts_at_end
        readings.append(source.sample().gpus[0])
    assert {reading.energy_method for reading in readings} == {"power-integration"}
    assert source.gpus[0].energy_counter is False
    # (100+200)/2*1 + (200+200)/2*2 + (200+50)/2*1
    assert [reading.energy_joules_delta for reading in readings] == [0.0, 150.0, 400.0, 125.0]
    assert [reading.energy_joules_total for reading in readings] == [0.0, 150.0, 550.0, 675.0]
    assert [reading.elapsed_seconds for reading in readings] == [0.0, 1.0, 2.0, 1.0]
    assert [reading.power_watts for reading in readings] == [100.0, 200.0, 200.0, 50.0]


def test_a_missing_power_reading_is_bridged_by_the_next() -> None:
    nvml = FakeNvml([FakeGpu(UUID_A, energy_counter=False, power_watts=100.0)])
    gpu = nvml.gpus[0]
    source = source_for(nvml)
    source.sample()
    nvml.advance(1.0)
    gpu.power_supported = False
    gap = source.sample().gpus[0]
    assert (gap.up, gap.power_watts, gap.energy_joules_delta, gap.energy_joules_total) == (True, None, 0.0, 0.0)
    nvml.advance(1.0)
    gpu.power_supported = True
    gpu.power_watts = 300.0
    after = source.sample().gpus[0]
    assert (after.energy_joules_delta, after.elapsed_seconds, after.energy_joules_total) == (400.0, 2.0, 400.0)


def test_a_gpu_without_counter_or_power_reports_no_energy() -> None:
    nvml = FakeNvml([FakeGpu(UUID_A, energy_counter=False, power_supported=False)])
    source = source_for(nvml)
    nvml.advance(1.0)
    reading = source.sample().gpus[0]
    assert (reading.up, reading.energy_method, reading.energy_joules_total) == (True, "none", None)


# --- processes -----------------------------------------------------------------------------------------------------


def test_time_sliced_processes_on_two_gpus_get_their_share_of_sm_time() -> None:
    nvml = two_gpus()
    a100, h100 = nvml.gpus
    a100.processes = {101: 6 * GIB, 102: 2 * GIB}
    a100.slices = [{101: 80}, {102: 40}]  # the driver sees 101 and 102 in alternate ticks
    h100.processes = {103: 10 * GIB}
    h100.slices = [{103: 50}]
    source = source_for(nvml)
    first = source.sample()
    assert first.gpus[0].processes == (GpuProcess(101, 6 * GIB, 0.0), GpuProcess(102, 2 * GIB, 0.0))
    nvml.advance(1.0)  # four ticks: 101, 102, 101, 102
    sample = source.sample()
    assert sample.gpus[0].processes == (GpuProcess(101, 6 * GIB, 0.4), GpuProcess(102, 2 * GIB, 0.2))
    assert sample.gpus[1].processes == (GpuProcess(103, 10 * GIB, 0.5),)


def test_only_samples_newer_than_the_last_sample_count() -> None:
    nvml = two_gpus()
    a100 = nvml.gpus[0]
    a100.processes = {101: GIB, 102: GIB}
    a100.slices = [{101: 80}, {102: 40}]
    source = source_for(nvml)
    source.sample()
    nvml.advance(1.0)
    source.sample()
    a100.slices = [{101: 100}]
    nvml.advance(1.0)
    assert source.sample().gpus[0].processes == (GpuProcess(101, GIB, 1.0), GpuProcess(102, GIB, 0.0))
    nvml.advance(0.1)  # no driver tick (NVML_ERROR_NOT_FOUND): the newest shares carry over
    assert source.sample().gpus[0].processes == (GpuProcess(101, GIB, 1.0), GpuProcess(102, GIB, 0.0))
    a100.processes = {102: GIB}  # 101 ended: its share does not outlive it
    nvml.advance(0.1)
    assert source.sample().gpus[0].processes == (GpuProcess(102, GIB, 0.0),)


def test_a_process_seen_in_samples_but_gone_is_reported_without_memory() -> None:
    nvml = two_gpus()
    nvml.gpus[0].processes = {101: GIB}
    nvml.gpus[0].slices = [{101: 60, 104: 40}]
    source = source_for(nvml)
    nvml.advance(1.0)
    assert source.sample().gpus[0].processes == (GpuProcess(101, GIB, 0.6), GpuProcess(104, None, 0.4))


def test_an_idle_gpu_without_processes_is_not_asked_for_process_utilisation() -> None:
    nvml = two_gpus()
    a100 = nvml.gpus[0]
    source = source_for(nvml)
    for _ in range(3):
        nvml.advance(1.0)
        assert source.sample().gpus[0].processes == ()
    assert nvml.calls.count("nvmlDeviceGetProcessUtilization") == 0

    a100.utilization_percent, a100.slices = 50, [{104: 50}]  # a process ran and ended within the interval
    nvml.advance(1.0)
    assert source.sample().gpus[0].processes == (GpuProcess(104, None, 0.5),)
    a100.utilization_percent, a100.slices = 0, []
    nvml.advance(1.0)  # idle again, but a process ran in the previous interval: asked once more, then not
    source.sample()
    nvml.advance(1.0)
    source.sample()
    assert nvml.calls.count("nvmlDeviceGetProcessUtilization") == 2  # GPU 0 in those two samples, GPU 1 never


def test_unsupported_process_utilisation_leaves_memory_only() -> None:
    nvml = two_gpus()
    a100 = nvml.gpus[0]
    a100.processes = {101: 6 * GIB, 102: None}
    a100.slices = [{101: 80}]
    a100.process_utilization_supported = False
    a100.utilization_supported = False
    source = source_for(nvml)
    nvml.advance(1.0)
    reading = source.sample().gpus[0]
    assert reading.up is True
    assert reading.utilization_ratio is None
    assert reading.processes == (GpuProcess(101, 6 * GIB, None), GpuProcess(102, None, None))


def test_gpu_utilisation_is_a_ratio() -> None:
    nvml = two_gpus()
    nvml.gpus[1].utilization_percent = 73
    source = source_for(nvml)
    assert source.sample().gpus[1].utilization_ratio == 0.73


def test_no_permission_to_list_processes_costs_only_the_processes() -> None:
    nvml = two_gpus()
    a100 = nvml.gpus[0]
    a100.processes = {101: GIB}
    a100.errors["nvmlDeviceGetComputeRunningProcesses"] = pynvml.NVML_ERROR_NO_PERMISSION
    a100.errors["nvmlDeviceGetProcessUtilization"] = pynvml.NVML_ERROR_NO_PERMISSION
    source = source_for(nvml)
    nvml.advance(1.0)
    reading = source.sample().gpus[0]
    assert (reading.up, reading.processes, reading.energy_joules_total) == (True, (), 60.0)


def test_mig_mode_reports_no_processes_and_says_so() -> None:
    nvml = two_gpus()
    a100 = nvml.gpus[0]
    a100.mig_mode = pynvml.NVML_DEVICE_MIG_ENABLE
    a100.processes = {101: GIB}
    a100.slices = [{101: 90}]
    nvml.gpus[1].processes = {103: GIB}
    source = source_for(nvml)
    assert [gpu.mig_enabled for gpu in source.gpus] == [True, False]
    nvml.calls.clear()
    nvml.advance(1.0)
    mig, plain = source.sample().gpus
    assert (mig.up, mig.mig_enabled, mig.processes, mig.energy_joules_total) == (True, True, (), 60.0)
    assert (plain.mig_enabled, [process.pid for process in plain.processes]) == (False, [103])
    assert nvml.calls.count("nvmlDeviceGetComputeRunningProcesses") == 1  # the H100's only
    assert nvml.calls.count("nvmlDeviceGetProcessUtilization") == 1


def test_mig_mode_unsupported_means_no_mig() -> None:
    nvml = two_gpus()
    nvml.gpus[0].mig_mode = None
    assert source_for(nvml).gpus[0].mig_enabled is False


# --- failures ------------------------------------------------------------------------------------------------------


def test_a_lost_gpu_is_down_keeps_its_total_and_the_others_carry_on(caplog: pytest.LogCaptureFixture) -> None:
    nvml = two_gpus()
    a100, h100 = nvml.gpus
    a100.power_watts = 250.0
    h100.processes = {103: GIB}
    source = source_for(nvml)
    source.sample()
    nvml.advance(1.0)
    before = source.sample().gpus[1]
    assert before.energy_joules_total == 100.0
    h100.lost = True
    caplog.set_level(logging.DEBUG, logger=NVML_LOGGER)
    for _ in range(2):
        nvml.advance(1.0)
        a100_reading, lost = source.sample().gpus
        assert (a100_reading.up, a100_reading.energy_joules_delta) == (True, 250.0)
        assert (lost.up, lost.uuid, lost.energy_joules_total, lost.energy_joules_delta) == (False, UUID_B, 100.0, 0.0)
        assert (lost.power_watts, lost.utilization_ratio, lost.memory_used_bytes, lost.processes) == (
            None,
            None,
            None,
            (),
        )
    warnings_logged = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings_logged == [f"GPU 1 ({UUID_B}) is down: nvmlDeviceGetPowerUsage on GPU 1: GPU is lost"]


def test_a_gpu_that_fails_once_comes_back_and_its_counter_covers_the_gap() -> None:
    nvml = two_gpus()
    a100 = nvml.gpus[0]
    a100.power_watts = 200.0
    source = source_for(nvml)
    source.sample()
    a100.errors["nvmlDeviceGetTotalEnergyConsumption"] = pynvml.NVML_ERROR_TIMEOUT
    nvml.advance(1.0)
    assert source.sample().gpus[0].up is False
    del a100.errors["nvmlDeviceGetTotalEnergyConsumption"]
    nvml.advance(1.0)
    back = source.sample().gpus[0]
    assert (back.up, back.energy_joules_delta, back.elapsed_seconds, back.energy_joules_total) == (
        True,
        400.0,
        2.0,
        400.0,
    )


def test_power_integration_restarts_after_an_outage_instead_of_guessing_it() -> None:
    nvml = FakeNvml([FakeGpu(UUID_A, energy_counter=False, power_watts=100.0)])
    gpu = nvml.gpus[0]
    source = source_for(nvml)
    source.sample()
    nvml.advance(1.0)
    assert source.sample().gpus[0].energy_joules_total == 100.0
    gpu.lost = True
    nvml.advance(5.0)
    assert source.sample().gpus[0].up is False
    gpu.lost = False
    nvml.advance(1.0)
    back = source.sample().gpus[0]
    assert (back.up, back.energy_joules_delta, back.elapsed_seconds, back.energy_joules_total) == (
        True,
        0.0,
        0.0,
        100.0,
    )
    nvml.advance(1.0)
    assert source.sample().gpus[0].energy_joules_total == 200.0


def test_an_unsupported_figure_costs_only_that_figure() -> None:
    nvml = two_gpus()
    nvml.gpus[0].errors["nvmlDeviceGetMemoryInfo"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    source = source_for(nvml)
    assert source.gpus[0].memory_total_bytes is None
    nvml.advance(1.0)
    reading = source.sample().gpus[0]
    assert (reading.up, reading.memory_used_bytes, reading.energy_joules_total, reading.power_watts) == (
        True,
        None,
        60.0,
        60.0,
    )


def test_a_gpu_lost_before_start_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    nvml = two_gpus()
    nvml.gpus[0].lost = True
    with caplog.at_level(logging.WARNING, logger=NVML_LOGGER):
        source = source_for(nvml)
    assert [gpu.uuid for gpu in source.gpus] == [UUID_B]
    assert caplog.messages == ["skipping GPU 0: nvmlDeviceGetUUID on NVML: GPU is lost"]


# --- pure helpers --------------------------------------------------------------------------------------------------


def test_sm_utilisation_averages_over_distinct_driver_ticks() -> None:
    samples = [
        SimpleNamespace(pid=1, timeStamp=10, smUtil=80),
        SimpleNamespace(pid=2, timeStamp=10, smUtil=20),
        SimpleNamespace(pid=1, timeStamp=20, smUtil=150),  # clamped to 100
        SimpleNamespace(pid=3, timeStamp=30, smUtil=30),
    ]
    assert sm_utilization_by_pid(samples) == {1: 0.6, 2: 20 / 300, 3: 0.1}
    assert sm_utilization_by_pid([]) == {}


@pytest.mark.parametrize(("version", "text"), [(12040, "12.4"), (11080, "11.8"), (10010, "10.1"), (12000, "12.0")])
def test_cuda_version_is_written_as_cuda_does(version: int, text: str) -> None:
    assert cuda_version_text(version) == text
