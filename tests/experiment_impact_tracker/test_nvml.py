"""What the exporter and the client share from NVML: device-list entries, CUDA versions, NVML text."""

from __future__ import annotations

import pytest

from experiment_impact_tracker.gpu.nvml import (
    cuda_version_text,
    cuda_visible_indices,
    device_entries,
    devices_named,
    nvml_text,
)

GPUS = [(0, "GPU-aaaa-1"), (1, "GPU-bbbb-1"), (2, "GPU-bbbb-2")]


@pytest.mark.parametrize(
    ("entry", "indices"),
    [
        ("1", [1]),
        ("\u0661", [1]),  # ARABIC-INDIC DIGIT ONE: int() reads it, and the client always accepted it
        ("7", []),
        ("GPU-aaaa", [0]),
        ("GPU-bbbb", [1, 2]),  # ambiguous: each caller decides what that means
        ("MIG-aaaa", []),
        ("\u00b2", []),  # SUPERSCRIPT TWO: a digit to str.isdigit, but not to int()
        ("", []),
        ("-1", []),
    ],
)
def test_an_entry_names_gpus_by_index_or_uuid_prefix(entry: str, indices: list[int]) -> None:
    assert devices_named(entry, GPUS) == indices


def test_entries_are_split_on_commas_and_stripped_keeping_empty_ones() -> None:
    assert device_entries(" 0, GPU-aa ,,1") == ["0", "GPU-aa", "", "1"]


def test_cuda_reading_stops_at_an_entry_that_names_no_single_gpu_or_a_repeat() -> None:
    assert cuda_visible_indices(GPUS, None) == [0, 1, 2]
    assert cuda_visible_indices(GPUS, "2, 0") == [2, 0]
    assert cuda_visible_indices(GPUS, "0,GPU-bbbb,2") == [0]
    assert cuda_visible_indices(GPUS, "0,0,2") == [0]
    assert cuda_visible_indices(GPUS, "") == []


@pytest.mark.parametrize(("version", "text"), [(12040, "12.4"), (12020, "12.2"), (11080, "11.8"), (10010, "10.1")])
def test_cuda_version_is_written_as_cuda_does(version: int, text: str) -> None:
    assert cuda_version_text(version) == text


def test_nvml_bytes_become_text_and_the_rest_is_left_alone() -> None:
    assert nvml_text(b"535.104.05") == "535.104.05"
    assert nvml_text(b"\xff") == "\ufffd"
    assert nvml_text("550.54.15") == "550.54.15"
    assert nvml_text(None) is None
