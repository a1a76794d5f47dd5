"""The GPU check's CPU dry mode and its page-cache helpers (the GPU run itself is done by hand)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from workloads.tools import gpu_check

SCRIPT = Path(gpu_check.__file__).with_name("gpu_check.sh")


def test_page_cache_eviction_is_measured(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(os.urandom(1 << 20))
    before = gpu_check.resident_fraction([data])
    method, notes = gpu_check.evict([data], allow_drop_caches=False)
    after = gpu_check.resident_fraction([data])
    assert method == "fadvise_dontneed" and notes == []
    if before is not None and after is not None:  # mincore works on Linux; tmpfs keeps its pages
        assert 0.0 <= after <= before <= 1.0
    assert gpu_check.resident_fraction([tmp_path / "absent"]) is None


def test_filesystem_and_work_dir(tmp_path: Path) -> None:
    assert gpu_check.filesystem_of(Path("/")) != ""
    assert gpu_check.choose_work_dir(tmp_path) == (tmp_path, [])
    chosen, notes = gpu_check.choose_work_dir(None)
    assert chosen.name == "gpusched-gpu-check"
    assert all("cannot be evicted" in n for n in notes)


def test_cpu_dry_run_of_weights_and_server(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = gpu_check.main(
        ["--cpu", "--skip", "training", "--size-gb", "0.02", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    )
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 0, report
    load = report["weights_load"]
    assert load["device"] == "cpu" and 0.01e9 < load["bytes"] <= 0.03e9
    for phase in ("cold", "warm"):
        assert load[phase]["seconds"] > 0 and load[phase]["metric_seconds"] == pytest.approx(
            load[phase]["seconds"], abs=1e-3
        )
    assert load["cold"]["eviction"] == "fadvise_dontneed"
    assert report["server"]["ok"] is True and report["server"]["metrics_has_load_time"]
    assert "training" not in report
    assert "weights load" in gpu_check.summary(report)


def test_gpu_mode_needs_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2


def test_script_is_valid_bash_and_documents_the_wheels() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    header = SCRIPT.read_text()
    for wheel in (
        "deepspeed==",
        "hjson==",
        "pydantic==",
        "pydantic-core==",
        "fastapi==",
        "starlette==",
        "opentelemetry-api==",
    ):
        assert wheel in header
    assert "--target" in header and "gpu_check" in header
