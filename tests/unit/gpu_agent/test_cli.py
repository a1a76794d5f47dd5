"""``gpusched-agent``: --once --print, clear failures without NVML, and a run with only pynvml."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pynvml
import pytest

from gpu_agent import cli, fake_nvml
from tests.builders import kubeconfig

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "nvml"
Machine = Callable[[str], Path]

# What the GPU test machine lacks: the agent must print a report without any of these.
BLOCKED = (
    "kubernetes",
    "grpc",
    "google",
    "prometheus_client",
    "huggingface_hub",
    "orjson",
    "msgspec",
    "fastapi",
    "numpy",
    "yaml",
    "scheduler",
)


@pytest.fixture(autouse=True)
def _restore_nvml() -> object:
    yield
    fake_nvml.deactivate()


def test_once_print_with_a_fake_machine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = cli.main(
        [
            "--once",
            "--print",
            "--fake-nvml",
            "dgx-h100",
            "--node-name",
            "dgx-01",
            "--hf-cache",
            str(tmp_path / "no-cache"),
            "--podresources-socket",
            str(tmp_path / "no-kubelet.sock"),
            "--disk-probe-bytes",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out)
    spec = report["spec"]
    assert report["metadata"]["name"] == spec["nodeName"] == "dgx-01"
    assert spec["gpuCount"] == 8 and spec["cudaDriverVersion"] == "12.4" and spec["driverVersion"] == "550.54.15"
    assert spec["topology"]["nvlinkCounts"][0][7] == 18
    assert "models" not in spec and all("pods" not in g for g in spec["gpus"])


def test_node_name_defaults_to_the_downward_api_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-downward-api")
    assert cli.parser().parse_args([]).node_name == "from-downward-api"
    monkeypatch.delenv("NODE_NAME")
    assert cli.parser().parse_args([]).node_name == socket.gethostname()


def test_without_nvml_it_exits_non_zero_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", missing)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    rc = cli.main(["--once", "--print"])
    captured = capsys.readouterr()
    assert rc == cli.EXIT_NO_NVML and captured.out == ""
    assert "libnvidia-ml.so.1 not found" in captured.err and "--fake-nvml" in captured.err


@pytest.mark.parametrize(
    ("fake", "message"),
    [
        (str(FIXTURES / "no-driver.json"), "NVIDIA driver not loaded"),
        ("dgx-h200", "no fake NVML machine 'dgx-h200'"),
    ],
)
def test_no_driver_and_unknown_machine(fake: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--once", "--print", "--fake-nvml", fake]) == cli.EXIT_NO_NVML
    assert message in capsys.readouterr().err


def test_bad_flags_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--heartbeat", "0"])
    assert raised.value.code == 2


def test_once_write_to_an_unreachable_api_fails_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}")
    rc = cli.main(["--once", "--fake-nvml", "l4x4", "--kubeconfig", str(config), "--hf-cache", str(tmp_path / "none")])
    assert rc == cli.EXIT_WRITE_FAILED
    assert "writing the report failed: API unreachable" in capsys.readouterr().err


def test_runs_with_only_the_standard_library_and_pynvml(tmp_path: Path) -> None:
    """As on the GPU test machine: no kubernetes, grpc, protobuf, prometheus_client, orjson, ..."""
    blocker = tmp_path / "site" / "sitecustomize.py"
    blocker.parent.mkdir()
    blocker.write_text(
        "import sys\n"
        "from importlib.abc import MetaPathFinder\n"
        f"BLOCKED = {BLOCKED!r}\n"
        "class Block(MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not installed here')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    hub = tmp_path / "hub"
    hub.mkdir()  # a cache folder exists, but huggingface_hub does not: models are left out
    kubelet = tmp_path / "kubelet.sock"
    kubelet.touch()  # a socket path exists, but grpc does not: pods are left out
    env = dict(os.environ, PYTHONPATH=f"{blocker.parent}{os.pathsep}{REPO}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_agent.cli",
            "--once",
            "--print",
            "--fake-nvml",
            "gb200-nvl",
            "--hf-cache",
            str(hub),
            "--podresources-socket",
            str(kubelet),
            "--cri-socket",
            str(tmp_path / "cri.sock"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    assert spec["gpuCount"] == 4
    assert spec["topology"]["fabricClique"] == "5b1e8f3c-2a47-4d6e-9c81-0f2b7a6d4e93.32766"
    assert "models" not in spec and "images" not in spec
    assert "huggingface_hub is not installed" in result.stderr
    assert "grpcio/protobuf not installed" in result.stderr


def test_real_nvml_check_script_is_executable() -> None:
    script = REPO / "gpu_agent" / "tools" / "real_nvml_check.sh"
    assert os.access(script, os.X_OK)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
