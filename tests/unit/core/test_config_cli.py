"""A bad plugin argument stops `gpusched-extender` at start-up, before it serves anything, with a
message on stderr that names the plugin and the key (not a traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from localcluster.k8s import wait_until
from tests.unit.core.test_args import BAD, BadArgs

REPO = Path(__file__).resolve().parents[3]
SCENARIO = REPO / "simulations" / "scenarios" / "demo.yaml"
START_S = 60.0  # a refusal comes in about a second; a process still running by then is serving
# One of each kind of mistake (test_args.py has them all; each run here costs a Python start-up).
KINDS = ("unknown-argument", "wrong-type", "string-for-a-boolean", "out-of-range", "nan", "nested-wrong-type")
CASES = [c for c in BAD if c.id in KINDS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(config: Path, port: int) -> list[str]:
    # Loopback and a free port: should a bad config be accepted, the server it starts stays private.
    return [
        sys.executable,
        "-m",
        "scheduler.extender.cli",
        "--cluster-file",
        str(SCENARIO),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def start_up(config: Path) -> subprocess.CompletedProcess[str]:
    """Run the extender on `config`; fail the test if it is still running after START_S."""
    try:
        return subprocess.run(
            command(config, free_port()), cwd=REPO, env=environment(), capture_output=True, text=True, timeout=START_S
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        pytest.fail(f"gpusched-extender did not exit within {START_S:.0f}s: it started serving. stderr: {exc.stderr!r}")


def refused_cleanly(result: subprocess.CompletedProcess[str], plugin: str, key: str) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"gpusched-extender: pluginArgs {plugin}.{key}"), line


def write(tmp_path: Path, config: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_plugin_argument_stops_the_extender_at_start_up(case: BadArgs, tmp_path: Path) -> None:
    config = write(tmp_path, case.config)
    result = start_up(config)
    refused_cleanly(result, case.plugin, case.key)
    assert result.returncode == 2
    assert case.what in result.stderr
    assert result.stdout == ""


def test_every_kind_is_run() -> None:
    assert [c.id for c in CASES] == list(KINDS)


def test_the_same_command_with_a_good_config_serves(tmp_path: Path) -> None:
    """The control: what the refusals above run does start the extender when the config is sound."""
    config = write(tmp_path, {"pluginArgs": {"freshness": {"requireReport": False}}})
    port = free_port()
    proc = subprocess.Popen(
        command(config, port), cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def ready() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready, timeout=START_S, what="the extender's /readyz", interval=0.1)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_quantity_too_large_for_a_float_stops_the_extender_with_a_message(tmp_path: Path) -> None:
    config = write(tmp_path, {"pluginArgs": {"cold-start": {"pullBytesPerSecond": "1e999"}}})
    refused_cleanly(start_up(config), "cold-start", "")
