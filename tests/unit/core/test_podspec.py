import pytest

from scheduler.core.podspec import parse_pod
from tests.builders import GiB, pod


def test_reads_resources_and_annotations() -> None:
    obj = pod(
        "infer",
        gpus=2,
        annotations={
            "gpusched.io/gpu-memory": "40Gi",
            "gpusched.io/gpu-models": "H100-80GB, A100-80GB",
            "gpusched.io/cuda": "12.4",
            "gpusched.io/model": "meta-llama/Llama-3.1-8B@main",
            "gpusched.io/model-bytes": "16Gi",
            "gpusched.io/lora-adapters": "a,b",
            "gpusched.io/workload": "inference",
        },
        image="ghcr.io/acme/llm:1",
        cpu="4",
        memory="32Gi",
    )
    req = parse_pod(obj)
    assert req.errors == ()
    assert (req.gpu_count, req.gpu_memory, req.cuda) == (2, 40 * GiB, (12, 4))
    assert req.gpu_models == ("H100-80GB", "A100-80GB")
    assert (req.cpu_milli, req.memory, req.model_bytes) == (4000, 32 * GiB, 16 * GiB)
    assert req.lora_adapters == ("a", "b") and req.workload == "inference"
    assert req.images == ("ghcr.io/acme/llm:1",)


def test_init_containers_count_as_max_not_sum() -> None:
    obj = pod("p", gpus=1)
    obj["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]
    assert parse_pod(obj).gpu_count == 4


@pytest.mark.parametrize(
    ("annotations", "fragment"),
    [
        ({"gpusched.io/gpu-memory": "lots"}, "gpusched.io/gpu-memory"),
        ({"gpusched.io/gpu-milli": "1500"}, "1 to 999"),
        ({"gpusched.io/cuda": "twelve"}, "not a version"),
        ({"gpusched.io/workload": "batch"}, "training, inference"),
        ({"gpusched.io/min-member": "-2"}, "positive whole number"),
    ],
)
def test_malformed_annotations_become_errors_not_exceptions(annotations: dict[str, str], fragment: str) -> None:
    req = parse_pod(pod("p", gpus=0 if "gpu-milli" in str(annotations) else 1, annotations=annotations))
    assert any(fragment in e for e in req.errors), req.errors


def test_share_and_whole_gpus_together_is_an_error() -> None:
    req = parse_pod(pod("p", gpus=1, annotations={"gpusched.io/gpu-milli": "300"}))
    assert req.errors and "whole GPUs" in req.errors[0]


def test_garbage_pod_is_an_error() -> None:
    assert parse_pod("not a pod").errors  # type: ignore[arg-type]
    weird = {"metadata": {"name": "x"}, "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "two"}}}]}}
    assert parse_pod(weird).errors


def test_rank_from_job_completion_index_and_gang_labels() -> None:
    obj = pod(
        "w-1",
        gpus=8,
        labels={"scheduling.x-k8s.io/pod-group": "g", "batch.kubernetes.io/job-completion-index": "1"},
        annotations={"gpusched.io/min-member": "4"},
    )
    req = parse_pod(obj)
    assert (req.pod_group, req.min_member, req.rank) == ("g", 4, 1)
