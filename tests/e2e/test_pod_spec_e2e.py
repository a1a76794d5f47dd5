"""What a pod says, read as users write it, through the real kube-scheduler: GPU model names in
the forms users type, memory floors against a GPU's real size, every quantity suffix Kubernetes
accepts, and a malformed value named in the pod's FailedScheduling event."""

from __future__ import annotations

import pytest

from tests.builders import report_object
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

H100_BYTES = 85_520_809_984  # what NVML reports for an "80GB" H100: 79.6 GiB


def nvml_named_node(env: Env, name: str, model: str, memory: int) -> None:
    """A node whose report carries NVML's own product name and memory size, as the agent writes them."""
    env.node(name, 8, report=None)
    report = report_object(name, 8, model=model)
    for gpu in report["spec"]["gpus"]:
        gpu["memoryTotalBytes"] = memory
    env.apply_report(report)


def failed_scheduling(env: Env, name: str) -> list[str]:
    return [e for e in env.events_for(name) if e.startswith("FailedScheduling")]


def test_model_names_as_users_write_them_and_memory_floors_against_the_real_size(gpusched: Env) -> None:
    nvml_named_node(gpusched, "h100", "NVIDIA H100 80GB HBM3", H100_BYTES)
    nvml_named_node(gpusched, "a100", "NVIDIA A100-SXM4-40GB", 42_949_672_960)
    for name, models in (("short", "H100"), ("gfd", "NVIDIA-H100-80GB-HBM3"), ("spaced", "h100 80gb")):
        gpusched.pod(name, 1, annotations={"gpusched.io/gpu-models": models})
        assert gpusched.wait_bound(name) == "h100", models
    gpusched.pod("a100-only", 1, annotations={"gpusched.io/gpu-models": "A100"})
    assert gpusched.wait_bound("a100-only") == "a100"

    # 80Gi is more than any "80GB" H100 holds: refused, and the reason gives the real size.
    gpusched.pod("eighty", 1, annotations={"gpusched.io/gpu-memory": "80Gi"})
    events = gpusched.wait_for(lambda: failed_scheduling(gpusched, "eighty"), "the 80Gi pod's FailedScheduling")
    assert any("79.6GiB" in e and "NVIDIA H100 80GB HBM3" in e for e in events), events
    assert not gpusched.get_pod("eighty")["spec"].get("nodeName")
    gpusched.pod("seventy-nine", 1, annotations={"gpusched.io/gpu-memory": "79Gi"})
    assert gpusched.wait_bound("seventy-nine") == "h100"


def test_every_quantity_suffix_reads_and_a_malformed_one_is_named(gpusched: Env) -> None:
    gpusched.node("n0", 2)
    # 500u CPU is half a millicore (rounded up to 1m); 1e9 bytes of memory; both valid quantities.
    gpusched.pod("tiny", 1, cpu="500u", memory="1e9")
    assert gpusched.wait_bound("tiny") == "n0"
    # A malformed figure is a pod error in its event, never a silent zero.
    gpusched.pod("bad", 1, annotations={"gpusched.io/gpu-memory": "forty gigs"})
    events = gpusched.wait_for(lambda: failed_scheduling(gpusched, "bad"), "the malformed pod's FailedScheduling")
    assert any("gpusched.io/gpu-memory" in e and "forty gigs" in e for e in events), events
    assert not gpusched.get_pod("bad")["spec"].get("nodeName")
    # The bound pod with the 500u figure still counts in gpusched's view: the next pod gets the
    # other GPU (a pod gpusched had lost would leave its GPU looking free).
    tiny_gpus = gpusched.get_pod("tiny")["metadata"]["annotations"]["gpusched.io/gpu-ids"]
    gpusched.pod("next", 1)
    assert gpusched.wait_bound("next") == "n0"
    next_gpus = gpusched.get_pod("next")["metadata"]["annotations"]["gpusched.io/gpu-ids"]
    assert {tiny_gpus, next_gpus} == {"0", "1"}
