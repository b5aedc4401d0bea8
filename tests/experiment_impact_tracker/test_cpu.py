"""CPU parity checks over py-cpuinfo's answer."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from experiment_impact_tracker.cpu.common import (
    CPUAttributeAssertionError,
    assert_cpus_by_attributes,
    cached_cpu_info,
    cpu_info,
    cpu_info_cache_file,
    cpu_summary,
)

XEON = {
    "brand_raw": "Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz",
    "count": 32,
    "arch": "X86_64",
    "vendor_id_raw": "GenuineIntel",
    "family": 6,
}


def test_exact_match_passes() -> None:
    assert_cpus_by_attributes({"brand_raw": XEON["brand_raw"], "count": 32}, info=XEON)


def test_brand_is_an_alias_of_brand_raw_as_in_the_original_readme() -> None:
    assert_cpus_by_attributes({"brand": "Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz"}, info=XEON)
    with pytest.raises(CPUAttributeAssertionError) as raised:
        assert_cpus_by_attributes({"brand": "AMD EPYC 7742 64-Core Processor"}, info=XEON)
    assert str(raised.value) == (
        "CPU does not match: brand_raw (asked as 'brand'): expected 'AMD EPYC 7742 64-Core Processor', "
        "found 'Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz'"
    )


def test_every_mismatch_is_reported_and_values_compare_exactly() -> None:
    with pytest.raises(CPUAttributeAssertionError) as raised:
        assert_cpus_by_attributes({"count": "32", "family": 6, "arch": "ARM_8"}, info=XEON)
    message = str(raised.value)
    assert "count: expected '32', found 32" in message  # a string is not the number
    assert "arch: expected 'ARM_8', found 'X86_64'" in message
    assert "family" not in message
    assert isinstance(raised.value, AssertionError)


def test_an_unknown_key_lists_the_available_ones() -> None:
    with pytest.raises(CPUAttributeAssertionError) as raised:
        assert_cpus_by_attributes({"speed": "fast"}, info=XEON)
    assert str(raised.value) == (
        "CPU does not match: unknown CPU attribute 'speed'; py-cpuinfo reports: arch, brand_raw, count, family, "
        "vendor_id_raw (aliases: brand for brand_raw)"
    )


def test_this_machine_matches_its_own_description_and_the_answer_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import cpuinfo

    info = cpu_info()
    assert info["count"] >= 1 and info["brand_raw"]
    assert_cpus_by_attributes({"brand": info["brand_raw"], "count": info["count"], "arch": info["arch"]})
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: pytest.fail("py-cpuinfo is asked again after the first call"))
    for _ in range(5):
        assert cpu_info() == info
    assert cpu_summary() == {"brand_raw": info["brand_raw"], "count": info["count"], "arch": info["arch"]}


def test_callers_cannot_change_the_cached_answer() -> None:
    cpu_info()["brand_raw"] = "tampered"
    assert cpu_info()["brand_raw"] != "tampered"


def test_usable_cpus_is_this_process_s_affinity_as_in_the_original() -> None:
    usable = len(os.sched_getaffinity(0))
    assert cpu_info()["usable_cpus"] == usable
    assert_cpus_by_attributes({"usable_cpus": usable})
    with pytest.raises(CPUAttributeAssertionError, match=f"usable_cpus: expected {usable + 1}, found {usable}"):
        assert_cpus_by_attributes({"usable_cpus": usable + 1})


def test_the_original_exceptions_module_names_the_same_class() -> None:
    from experiment_impact_tracker.cpu.exceptions import CPUAttributeAssertionError as Original

    with pytest.raises(Original, match=r"brand_raw \(asked as 'brand'\): expected 'AMD'"):
        assert_cpus_by_attributes({"brand": "AMD"}, info=XEON)


def test_py_cpuinfo_s_answer_is_kept_per_boot_in_the_user_s_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cpuinfo

    boot_id = tmp_path / "boot_id"
    boot_id.write_text("0b6d2c3e-1f0a\n")
    path = cpu_info_cache_file({"XDG_CACHE_HOME": str(tmp_path / "cache")}, boot_id)
    assert path == tmp_path / "cache" / "experiment-impact-tracker" / "cpuinfo-0b6d2c3e-1f0a.json"
    assert cpu_info_cache_file({"XDG_CACHE_HOME": str(tmp_path)}, tmp_path / "no-boot-id") is None

    asked = []
    answer = {**XEON, "cpuinfo_version_string": cpuinfo.CPUINFO_VERSION_STRING}
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: asked.append(1) or dict(answer))
    past_boot = path.with_name("cpuinfo-past-boot.json")
    path.parent.mkdir(parents=True)
    past_boot.write_text("{}")
    os.utime(past_boot, (time.time() - 31 * 86400,) * 2)
    other_node = path.with_name("cpuinfo-other-node.json")
    other_node.write_text("{}")

    assert cached_cpu_info(path) == answer and len(asked) == 1
    assert cached_cpu_info(path) == answer and len(asked) == 1, "the second process of the boot reads the file"
    assert not past_boot.exists() and other_node.exists(), "only boots a month gone are removed"

    path.write_text(json.dumps({**answer, "cpuinfo_version_string": "8.0.0", "brand_raw": "stale"}))
    assert cached_cpu_info(path) == answer and len(asked) == 2, "another py-cpuinfo version asks again"
    path.write_text('{"brand_raw": ')
    assert cached_cpu_info(path) == answer and len(asked) == 3, "a damaged file is replaced"
    assert json.loads(path.read_text()) == answer

    unwritable = tmp_path / "a-file" / "cpuinfo-x.json"
    unwritable.parent.write_text("")
    assert cached_cpu_info(unwritable) == answer and len(asked) == 4, "an unwritable cache costs only the time"
    assert cached_cpu_info(None) == answer
