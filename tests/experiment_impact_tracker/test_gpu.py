"""GPU descriptions and parity checks, against a fake NVML module (this machine has no GPU)."""

from __future__ import annotations

import warnings

import pytest

from experiment_impact_tracker.gpu.nvidia import (
    GPU_ATTRIBUTES,
    GPUAttributeAssertionError,
    NoNvidiaGPU,
    assert_gpus_by_attributes,
    gpus_or_none,
    list_gpus,
    visible,
)
from tests.fakes.nvml import FakeGpu, FakeNvml, nvml_functions

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # the "pynvml" shim package warns on import
    import pynvml

NVML_FUNCTIONS = list(nvml_functions(FakeNvml([])))
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND


def fake_nvml(gpus: list[FakeGpu], **kwargs: object) -> FakeNvml:
    """The shared fake NVML (tests/fakes/nvml.py) with this file's driver: 535.104.05, CUDA 12.2."""
    return FakeNvml(gpus, **{"driver_version": "535.104.05", "cuda_driver_version": 12020, **kwargs})  # type: ignore[arg-type]


A100 = FakeGpu("GPU-8c3a0f6e-0000-0000-0000-000000000000")
H100 = FakeGpu(
    name="NVIDIA H100 80GB HBM3",
    uuid="GPU-1f2e0000-0000-0000-0000-000000000001",
    bus_id="00000000:3B:00.0",
    memory_total_bytes=85_520_809_984,
    compute_capability=(9, 0),
    power_limit_mw=700_000,
)
NO_ENV: dict[str, str] = {}


def test_the_fake_only_uses_functions_the_real_pynvml_has() -> None:
    assert NVML_FUNCTIONS, "the fake lists no functions"
    missing = [name for name in NVML_FUNCTIONS if not callable(getattr(pynvml, name, None))]
    assert missing == []
    assert issubclass(pynvml.NVMLError_NotSupported, pynvml.NVMLError)


def test_describes_every_attribute_in_documented_units() -> None:
    [gpu] = list_gpus(fake_nvml([H100]), NO_ENV)
    assert gpu == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-1f2e0000-0000-0000-0000-000000000001",
        "pci_bus_id": "00000000:3B:00.0",
        "memory_total_bytes": 85_520_809_984,
        "driver_version": "535.104.05",
        "cuda_version": "12.2",
        "compute_capability": "9.0",
        "power_limit_watts": 700.0,
    }
    assert list(gpu) == list(GPU_ATTRIBUTES)


def test_bytes_from_older_nvml_bindings_become_text() -> None:
    nvml = fake_nvml([FakeGpu(A100.uuid, name=b"Tesla V100-SXM2-16GB")], driver_version=b"470.82.01")
    [gpu] = list_gpus(nvml, NO_ENV)
    assert gpu["name"] == "Tesla V100-SXM2-16GB"
    assert gpu["driver_version"] == "470.82.01"


def test_an_unsupported_attribute_is_none_and_the_rest_still_read() -> None:
    nvml = fake_nvml(
        [
            FakeGpu(
                A100.uuid,
                errors={"nvmlDeviceGetPowerManagementLimit": NOT_SUPPORTED, "nvmlDeviceGetMemoryInfo": NOT_SUPPORTED},
            )
        ]
    )
    [gpu] = list_gpus(nvml, NO_ENV)
    assert gpu["power_limit_watts"] is None
    assert gpu["memory_total_bytes"] is None
    assert gpu["name"] == "NVIDIA A100-SXM4-40GB"
    assert nvml.initialised == 0, "nvmlShutdown was not called"


@pytest.mark.parametrize(
    "cuda_visible_devices, names",
    [
        (None, ["A", "B", "C"]),
        ("2,0", ["C", "A"]),
        ("1", ["B"]),
        ("GPU-bbbb", ["B"]),
        ("0,x,2", ["A"]),  # CUDA stops reading at the first entry that names no GPU
        ("0,7,2", ["A"]),
        ("", []),
        ("-1", []),
    ],
)
def test_cuda_visible_devices_narrows_and_orders_like_cuda(cuda_visible_devices: str | None, names: list[str]) -> None:
    gpus = [{"index": i, "name": n, "uuid": f"GPU-{n.lower() * 4}-1234"} for i, n in enumerate("ABC")]
    assert [gpu["name"] for gpu in visible(gpus, cuda_visible_devices)] == names


def test_assert_passes_when_every_visible_gpu_matches() -> None:
    assert_gpus_by_attributes(
        {"name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}, fake_nvml([A100, A100]), NO_ENV
    )


def test_assert_names_each_gpu_that_differs_with_expected_and_found() -> None:
    with pytest.raises(GPUAttributeAssertionError) as raised:
        assert_gpus_by_attributes({"name": "NVIDIA A100-SXM4-40GB"}, fake_nvml([A100, H100]), NO_ENV)
    message = str(raised.value)
    assert (
        "GPU 1 (NVIDIA H100 80GB HBM3): name expected 'NVIDIA A100-SXM4-40GB', found 'NVIDIA H100 80GB HBM3'"
    ) in message
    assert "GPU 0" not in message
    assert isinstance(raised.value, AssertionError)


def test_assert_only_looks_at_the_gpus_cuda_will_use() -> None:
    nvml = fake_nvml([A100, H100])
    assert_gpus_by_attributes({"name": "NVIDIA H100 80GB HBM3"}, nvml, {"CUDA_VISIBLE_DEVICES": "1"})
    with pytest.raises(GPUAttributeAssertionError, match="GPU 0"):
        assert_gpus_by_attributes({"name": "NVIDIA H100 80GB HBM3"}, nvml, {"CUDA_VISIBLE_DEVICES": "0"})


def test_assert_with_an_unknown_attribute_lists_the_known_ones() -> None:
    with pytest.raises(GPUAttributeAssertionError) as raised:
        assert_gpus_by_attributes({"model": "A100"}, fake_nvml([A100]), NO_ENV)
    assert "unknown GPU attribute(s) 'model'" in str(raised.value)
    assert "name, uuid" in str(raised.value) and "power_limit_watts" in str(raised.value)


@pytest.mark.parametrize(
    "nvml, environ, why",
    [
        (fake_nvml([], init_error=LIBRARY_NOT_FOUND), NO_ENV, "NVML Shared Library Not Found"),
        (fake_nvml([]), NO_ENV, "NVML sees none"),
        (fake_nvml([A100]), {"CUDA_VISIBLE_DEVICES": ""}, "CUDA_VISIBLE_DEVICES hides them all"),
    ],
)
def test_assert_without_a_visible_gpu_says_so(nvml: FakeNvml, environ: dict[str, str], why: str) -> None:
    with pytest.raises(GPUAttributeAssertionError) as raised:
        assert_gpus_by_attributes({"name": "NVIDIA A100-SXM4-40GB"}, nvml, environ)
    assert "no NVIDIA GPU is visible" in str(raised.value)
    assert why in str(raised.value)


def test_a_machine_without_nvml_has_no_gpus_for_records() -> None:
    with pytest.raises(NoNvidiaGPU, match="NVML cannot start"):
        list_gpus(fake_nvml([], init_error=LIBRARY_NOT_FOUND), NO_ENV)
    assert gpus_or_none(fake_nvml([], init_error=LIBRARY_NOT_FOUND), NO_ENV) == []


def test_total_memory_is_the_original_s_name_for_memory_in_mib() -> None:
    mib = H100.memory_total_bytes // (1 << 20)
    assert_gpus_by_attributes({"total_memory": f"{mib} MiB", "name": H100.name}, fake_nvml([H100]), NO_ENV)
    with pytest.raises(GPUAttributeAssertionError) as raised:
        assert_gpus_by_attributes({"total_memory": "16160 MiB"}, fake_nvml([H100]), NO_ENV)
    assert f"total_memory expected '16160 MiB', found '{mib} MiB'" in str(raised.value)


def test_the_original_exceptions_module_names_the_same_class() -> None:
    from experiment_impact_tracker.gpu.exceptions import GPUAttributeAssertionError as Original

    with pytest.raises(Original, match="unknown GPU attribute"):
        assert_gpus_by_attributes({"model": "A100"}, fake_nvml([A100]), NO_ENV)
