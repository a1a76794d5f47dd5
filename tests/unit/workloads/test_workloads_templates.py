"""The shipped manifests say what gpusched and the launcher expect, consistently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.core.podspec import parse_pod
from workloads.inference import server
from workloads.inference.cache import ModelRef
from workloads.training import launch, train

ROOT = Path(__file__).resolve().parents[3] / "workloads"


def docs(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def check_training_pod(template: dict[str, Any], gang: int, master: str) -> None:
    meta, spec = template["metadata"], template["spec"]
    assert spec["schedulerName"] == "gpusched"
    assert meta["labels"]["scheduling.x-k8s.io/pod-group"]
    assert meta["annotations"]["gpusched.io/workload"] == "training"
    assert meta["annotations"]["gpusched.io/min-member"] == str(gang)
    (container,) = spec["containers"]
    env = env_of(container)
    assert env["NNODES"] == str(gang) and env["MASTER_ADDR"] == master
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    # the downward-API file the launcher reads holds the annotations
    cmd = container["command"]
    ann_path = Path(cmd[cmd.index("--annotations") + 1])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(ann_path.parent))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    item = next(i for i in volume["downwardAPI"]["items"] if i["path"] == ann_path.name)
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations"
    assert cmd[:3] == ["python", "-m", "workloads.training.launch"] and cmd[-1] == "--"
    train.parse_args(container["args"])  # the trainer accepts what the template passes
    # gpusched reads the same pod as a gang member without complaint
    request = parse_pod({"metadata": {**meta, "name": "p", "namespace": "default"}, "spec": spec})
    assert request.errors == () and request.min_member == gang and request.workload == "training"
    # and the launcher places rank 0 of this template as node 0 of the gang
    plan = launch.plan_launch({**env, "JOB_COMPLETION_INDEX": "0"}, meta["annotations"], 8)
    assert (plan.nnodes, plan.node_rank, plan.master_addr) == (gang, 0, master)


def test_indexed_job_template() -> None:
    manifests = docs(ROOT / "training/templates/indexed-job.yaml")
    job, service = manifests["Job"], manifests["Service"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    gang = spec["completions"]
    assert spec["parallelism"] == gang > 1
    pod = spec["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    name = job["metadata"]["name"]
    check_training_pod(pod, gang, f"{name}-0.{service['metadata']['name']}")


def test_jobset_template() -> None:
    jobset = docs(ROOT / "training/templates/jobset.yaml")["JobSet"]
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert replicated["replicas"] == 1 and job["completionMode"] == "Indexed"
    gang = job["completions"]
    assert job["parallelism"] == gang > 1
    subdomain = jobset["spec"]["network"]["subdomain"]
    master = f"{jobset['metadata']['name']}-{replicated['name']}-0-0.{subdomain}"
    check_training_pod(job["template"], gang, master)
    indexed = docs(ROOT / "training/templates/indexed-job.yaml")["Job"]["spec"]["template"]["metadata"]
    assert job["template"]["metadata"]["labels"] == indexed["labels"]
    assert job["template"]["metadata"]["annotations"] == indexed["annotations"]


def test_inference_deployment_template() -> None:
    manifests = docs(ROOT / "inference/templates/deployment.yaml")
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]
    ann = pod["metadata"]["annotations"]
    assert pod["spec"]["schedulerName"] == "gpusched"
    assert ann["gpusched.io/workload"] == "inference"
    (container,) = pod["spec"]["containers"]
    args = server.parse_args(container["args"])
    assert str(args.model) == ann["gpusched.io/model"] == str(ModelRef.parse(ann["gpusched.io/model"]))
    assert len(args.adapter) == len(ann["gpusched.io/lora-adapters"].split(","))
    request = parse_pod({"metadata": {**pod["metadata"], "name": "p", "namespace": "default"}, "spec": pod["spec"]})
    assert request.errors == ()
    assert request.model == str(args.model) and request.model_bytes > 0 and request.gpu_memory > 0
    assert request.gpu_count == 1 and len(request.lora_adapters) == 2
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert args.hf_cache in mounts
    probes = {k: container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")}
    assert probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert manifests["Service"]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("bad", ["nosep", "=x", "name="])
def test_server_rejects_malformed_adapter_flags(bad: str) -> None:
    with pytest.raises(SystemExit):
        server.parse_args(["--model", "a/b", "--adapter", bad])
