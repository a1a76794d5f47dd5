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


@pytest.mark.parametrize(
    ("requests", "limits", "counted", "error"),
    [
        # (gpus, cpu milli, memory bytes) counted; the error names the container, field and value
        ({"cpu": "500u", "memory": "1e9"}, {}, (1, 1, 10**9), None),  # 0.0005 cores round up to 1 milli
        ({"cpu": "250m", "memory": "512Mi"}, {}, (1, 250, 512 * 2**20), None),
        ({"cpu": "lots", "memory": "1Gi"}, {}, (1, 0, GiB), ("containers[main] requests.cpu", "'lots'")),
        ({"cpu": "1"}, {"memory": "1 Gi"}, (1, 1000, 0), ("containers[main] limits.memory", "'1 Gi'")),
        ({"cpu": "1", "memory": "-1Gi"}, {}, (1, 1000, 0), ("containers[main] requests.memory", "'-1Gi'")),
        ({}, {"nvidia.com/gpu": "two"}, (0, 0, 0), ("containers[main] limits.nvidia.com/gpu", "'two'")),
    ],
)
def test_each_resource_is_read_on_its_own_and_a_bad_one_is_named(
    requests: dict[str, str], limits: dict[str, str], counted: tuple[int, int, int], error: tuple[str, str] | None
) -> None:
    obj = pod("p", gpus=1)
    resources = obj["spec"]["containers"][0]["resources"]
    resources["requests"] = requests
    resources["limits"] = {"nvidia.com/gpu": "1", **limits}
    req = parse_pod(obj)
    assert (req.gpu_count, req.cpu_milli, req.memory) == counted
    if error is None:
        assert req.errors == ()
    else:
        field, value = error
        assert len(req.errors) == 1 and req.errors[0].startswith(f"{field}: ") and value in req.errors[0], req.errors


@pytest.mark.parametrize("value", ["-40Gi", "40GB", "4e"])
def test_a_bad_size_annotation_names_the_annotation_and_value(value: str) -> None:
    req = parse_pod(pod("p", gpus=1, annotations={"gpusched.io/gpu-memory": value}))
    assert req.gpu_count == 1
    assert len(req.errors) == 1, req.errors
    assert req.errors[0].startswith("annotation gpusched.io/gpu-memory: ") and repr(value) in req.errors[0]


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
