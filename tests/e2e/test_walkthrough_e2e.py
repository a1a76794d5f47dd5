"""The README's "Try it locally" walkthrough, run command by command as a new user would.

The commands are read from the README's first ``sh`` block of that section, so the README and
this test cannot drift apart; the sample ``kubectl get gpunodereports`` output printed there is
checked against the real one too. The cluster lives in a temporary workdir
(``$GPUSCHED_CLUSTER_WORKDIR``), and ``gpusched-cluster down`` runs whatever happens.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MARK = "@@@ walkthrough step "


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def walkthrough() -> tuple[list[str], str]:
    """The section's commands (first ``sh`` block) and its sample report table (first ``text``)."""
    text = section(README.read_text(), "Try it locally")
    commands = [line for line in blocks(text, "sh")[0].splitlines() if line.strip() and not line.startswith("#")]
    return commands, blocks(text, "text")[0]


def run_steps(commands: list[str], env: dict[str, str], timeout: float) -> list[str]:
    """Run the commands in one bash (exports carry over), stopping at the first failure;
    return each command's output, in order."""
    script = ["set -euo pipefail"]
    for i, command in enumerate(commands):
        script.append(f"echo {shlex.quote(f'{MARK}{i}')}")
        script.append(command)
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    outputs = [chunk.partition("\n")[2] for chunk in proc.stdout.split(MARK)[1:]]
    assert proc.returncode == 0, f"walkthrough failed at {commands[len(outputs) - 1]!r}:\n{proc.stdout[-6000:]}"
    assert len(outputs) == len(commands)
    return outputs


def table(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def test_readme_walkthrough_runs_start_to_finish(tmp_path: Path) -> None:
    commands, sample = walkthrough()
    assert commands[1].startswith("gpusched-cluster up") and commands[-1] == "gpusched-cluster down"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["GPUSCHED_CLUSTER_WORKDIR"] = str(tmp_path / "cluster")
    try:
        outputs = run_steps(commands, env, timeout=600)
    finally:
        # Whatever failed, leave nothing running.
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "gpusched-cluster"), "down"], env=env, capture_output=True, check=False
        )

    def out(command: str) -> str:
        """The output of ``command`` where it first appears."""
        return outputs[commands.index(command)]

    up = outputs[1]
    kubeconfig = str(tmp_path / "cluster" / "admin.kubeconfig")
    paste = [line for line in up.splitlines() if line.startswith(f"KUBECONFIG={kubeconfig} ")]
    assert paste and paste[0].endswith("/kubectl get nodes"), up

    nodes = table(out("kubectl get nodes -L network.topology.nvidia.com/leaf"))
    assert nodes[0][:2] == ["NAME", "STATUS"]
    assert {row[0]: (row[1], row[-1]) for row in nodes[1:]} == {
        "h100-r1-0": ("Ready", "r1"),
        "h100-r1-1": ("Ready", "r1"),
        "h100-r2-0": ("Ready", "r2"),
        "h100-r2-1": ("Ready", "r2"),
        "l4-0": ("Ready", "r3"),
        "l4-1": ("Ready", "r3"),
    }

    # The first report listing is the README's sample, but for the report ages.
    reports = table(out("kubectl get gpunodereports"))
    assert [row[:-1] for row in reports] == [row[:-1] for row in table(sample)]
    assert reports[0][-1] == "REPORT-AGE"

    pods = table(out("kubectl get pods -l batch.kubernetes.io/job-name=train -o wide"))
    status, node = pods[0].index("STATUS"), pods[0].index("NODE")  # "NOMINATED NODE" comes later
    assert len(pods) == 3
    assert {row[status] for row in pods[1:]} == {"Running"}
    assert sorted(row[node] for row in pods[1:]) == ["h100-r2-0", "h100-r2-1"]

    assert "job.batch/train condition met" in out("kubectl wait --for=condition=Complete job/train --timeout=180s")
    final = {row[0]: row for row in table(outputs[-2])[1:]}
    assert set(final) == {"h100-r1-0", "h100-r1-1", "h100-r2-0", "h100-r2-1", "l4-0", "l4-1"}
    assert "stopped" in outputs[-1]
