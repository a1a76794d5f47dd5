"""The manifests as rendered by the kustomization: the pieces fit together, RBAC is the least each
component needs, and the dashboards are the ones their source builds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from localcluster.cluster import DEFAULT_EXTENDER_WEIGHT, extender_entry
from localcluster.versions import K8S_VERSION
from scheduler.core.scenario import load_nodes
from scheduler.extender.binders import OfflineBinder
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.store import ClusterState
from tests import install
from tests.prometheus import DASHBOARDS_DIR, MANIFESTS, dashboard_queries, manifest_config, metric_names
from workloads.inference.metrics import InferenceMetrics

NAMESPACE = "gpusched-system"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return install.build(MANIFESTS)


def flag(container: dict[str, Any], name: str) -> str:
    values = [
        a.split("=", 1)[1]
        for a in [*container.get("command", []), *container.get("args", [])]
        if a.startswith(f"{name}=")
    ]
    assert len(values) == 1, f"{name} given {len(values)} times"
    return values[0]


def rules(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, ",".join(rule.get("resourceNames") or []))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_kustomization_renders_every_piece_once(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(install.key(o) for o in objects)
    assert len(kinds) == len(set(kinds))
    expected = {
        ("Namespace", "", NAMESPACE),
        ("CustomResourceDefinition", "", "gpunodereports.gpusched.io"),
        ("Deployment", NAMESPACE, "gpusched-extender"),
        ("Service", NAMESPACE, "gpusched-extender"),
        ("PodDisruptionBudget", NAMESPACE, "gpusched-extender"),
        ("Deployment", NAMESPACE, "gpusched-scheduler"),
        ("DaemonSet", NAMESPACE, "gpusched-agent"),
        ("ValidatingAdmissionPolicy", "", "gpusched-agent-own-node-report"),
        ("ValidatingAdmissionPolicyBinding", "", "gpusched-agent-own-node-report"),
        ("ConfigMap", NAMESPACE, "gpusched-config"),
        ("ConfigMap", NAMESPACE, "gpusched-scheduler-config"),
        ("ConfigMap", NAMESPACE, "gpusched-dashboards"),
        ("ConfigMap", NAMESPACE, "gpusched-grafana-provisioning"),
        ("ServiceAccount", NAMESPACE, "gpusched-extender"),
        ("ServiceAccount", NAMESPACE, "gpusched-scheduler"),
        ("ServiceAccount", NAMESPACE, "gpusched-agent"),
        ("Role", NAMESPACE, "gpusched-agent-leases"),
        ("RoleBinding", NAMESPACE, "gpusched-agent-leases"),
    }
    assert expected <= set(kinds)
    # Namespaces first, then CRDs, so that one apply of the whole list succeeds.
    assert [o["kind"] for o in objects[:2]] == ["Namespace", "CustomResourceDefinition"]
    for obj in objects:
        namespaced = obj["kind"] not in install.CLUSTER_SCOPED
        assert bool(obj["metadata"].get("namespace")) == namespaced, install.key(obj)


def test_the_renderer_refuses_what_it_does_not_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: [{path: p.yaml}]\n")
    with pytest.raises(install.KustomizeError, match="patches"):
        install.build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator: [{name: c, literals: [a=b]}]\n")
    with pytest.raises(install.KustomizeError, match="hash"):
        install.build(tmp_path)


def test_extender_deployment_runs_two_replicas_with_leader_election_hardened(objects: list[dict[str, Any]]) -> None:
    deploy = install.find(objects, "Deployment", "gpusched-extender")
    assert deploy["spec"]["replicas"] == 2
    # Surge first: the old leader goes only once a new replica is Ready to take over.
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deploy["spec"]["template"]["spec"]
    c = install.container(deploy)
    assert "--leader-elect" in c["args"]
    field_refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert field_refs == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP"}
    labels = deploy["spec"]["selector"]["matchLabels"]
    (spread,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": labels},
    }
    pdb = install.find(objects, "PodDisruptionBudget", "gpusched-extender")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    # One replica at a time; a replica that is not Ready never blocks a drain.
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    port = int(flag(c, "--port"))
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert pod.get("schedulerName", "default-scheduler") == "default-scheduler"
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    # The config file the extender is told to read is the ConfigMap's, and it is a valid config.
    config = yaml.safe_load(install.mounted_file(objects, deploy, flag(c, "--config")))
    registry.config_from(config)
    service = install.find(objects, "Service", "gpusched-extender")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]


def test_extender_rbac_is_exactly_what_it_uses(objects: list[dict[str, Any]]) -> None:
    role = install.find(objects, "ClusterRole", "gpusched-extender")
    assert rules(role) == {
        ("", "nodes", "list", ""),
        ("", "nodes", "watch", ""),
        ("", "pods", "get", ""),
        ("", "pods", "list", ""),
        ("", "pods", "watch", ""),
        ("", "pods", "patch", ""),  # a gang's plan, written on its members before their Bindings
        ("", "pods/binding", "create", ""),
        ("gpusched.io", "gpunodereports", "list", ""),
        ("gpusched.io", "gpunodereports", "watch", ""),
        ("", "events", "list", ""),
        ("", "events", "watch", ""),
        ("events.k8s.io", "events", "list", ""),
        ("events.k8s.io", "events", "watch", ""),
        # Gang sizes from PodGroups, Kubernetes' and scheduler-plugins' (scheduler/state/informer.py).
        ("scheduling.k8s.io", "podgroups", "list", ""),
        ("scheduling.k8s.io", "podgroups", "watch", ""),
        ("scheduling.x-k8s.io", "podgroups", "list", ""),
        ("scheduling.x-k8s.io", "podgroups", "watch", ""),
    }
    binding = install.find(objects, "ClusterRoleBinding", "gpusched-extender")
    sa = install.find(objects, "Deployment", "gpusched-extender")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    # In its namespace: the agents' Leases (read), and its own leader election Lease, by name.
    leases = install.find(objects, "Role", "gpusched-extender-leases")
    assert rules(leases) == {
        ("coordination.k8s.io", "leases", "list", ""),
        ("coordination.k8s.io", "leases", "watch", ""),
        ("coordination.k8s.io", "leases", "create", ""),
        ("coordination.k8s.io", "leases", "get", "gpusched-extender"),
        ("coordination.k8s.io", "leases", "patch", "gpusched-extender"),
    }


def test_second_scheduler_profile_calls_the_extender_service(objects: list[dict[str, Any]]) -> None:
    deploy = install.find(objects, "Deployment", "gpusched-scheduler")
    c = install.container(deploy)
    assert c["image"] == f"registry.k8s.io/kube-scheduler:{K8S_VERSION}"
    config = yaml.safe_load(install.mounted_file(objects, deploy, flag(c, "--config")))
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert [p["schedulerName"] for p in config["profiles"]] == ["gpusched"]
    assert config["clientConnection"]["kubeconfig"] == ""  # in-cluster
    (extender,) = config["extenders"]
    service = install.find(objects, "Service", "gpusched-extender")
    port = service["spec"]["ports"][0]["port"]
    assert extender["urlPrefix"] == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}"
    assert {extender[k] for k in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb")} == {
        "filter",
        "prioritize",
        "bind",
        "preempt",
    }
    assert extender["weight"] == DEFAULT_EXTENDER_WEIGHT == 100
    assert extender["nodeCacheCapable"] is True
    # No managedResources: kube-scheduler then calls gpusched for every pod of the profile, GPU
    # shares included (its HTTPExtender.IsInterested is true for every pod when the list is empty).
    assert "managedResources" not in extender
    # The local cluster's kube-scheduler calls gpusched as this one does.
    assert extender_entry(extender["urlPrefix"]) == extender
    # Leader election on, on a Lease this ServiceAccount may update.
    election = config["leaderElection"]
    assert election["leaderElect"] is True and election["resourceNamespace"] == NAMESPACE
    lease_role = install.find(objects, "Role", "gpusched-scheduler-leader-election")
    assert ("coordination.k8s.io", "leases", "update", election["resourceName"]) in rules(lease_role)
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    bound = {
        o["roleRef"]["name"]
        for o in objects
        if o["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE} in o["subjects"]
    }
    assert bound == {
        "system:kube-scheduler",
        "system:volume-scheduler",
        "extension-apiserver-authentication-reader",
        "gpusched-scheduler-leader-election",
    }


def test_scrape_config_keeps_the_annotated_pods(objects: list[dict[str, Any]]) -> None:
    jobs = {job["job_name"]: job for job in manifest_config()["scrape_configs"]}
    assert sorted(jobs) == ["gpusched", "gpusched-inference", "gpusched-scheduler"]
    job = jobs["gpusched"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [NAMESPACE]
    # Inference pods run in their users' namespaces: that job looks in all of them.
    assert "namespaces" not in jobs["gpusched-inference"]["kubernetes_sd_configs"][0]
    # The scheduler job keeps the Deployment's pods by their label and the name of the secure port.
    scheduler = install.find(objects, "Deployment", "gpusched-scheduler")
    (port,) = install.container(scheduler)["ports"]
    keep = jobs["gpusched-scheduler"]["relabel_configs"][0]
    assert keep["action"] == "keep" and keep["regex"] == f"gpusched-scheduler;{port['name']}"
    assert scheduler["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "gpusched-scheduler"
    for kind, name, port_flag in (
        ("Deployment", "gpusched-extender", "--port"),
        ("DaemonSet", "gpusched-agent", "--metrics-port"),
    ):
        workload = install.find(objects, kind, name)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == flag(install.container(workload), port_flag)
        assert workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == name


# ----------------------------------------------------------------------------------- dashboards
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dashboard_json_is_what_the_generator_builds() -> None:
    module = generator()
    for path, text in module.outputs().items():
        assert path.read_text() == text, f"{path.name} is stale: run python {DASHBOARDS_DIR / 'generate.py'}"


def test_dashboards_are_shipped_and_well_formed(objects: list[dict[str, Any]]) -> None:
    files = sorted(p.name for p in DASHBOARDS_DIR.glob("*.json"))
    shipped = install.find(objects, "ConfigMap", "gpusched-dashboards")
    assert sorted(shipped["data"]) == files
    assert shipped["metadata"]["labels"]["grafana_dashboard"] == "1"
    uids = set()
    for name in files:
        board = json.loads((DASHBOARDS_DIR / name).read_text())
        uids.add(board["uid"])
        assert board["templating"]["list"][0]["name"] == "datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], f"{name}: {panel['title']} has no query"
    assert len(uids) == len(files) == 5


def test_every_extender_metric_a_dashboard_reads_exists() -> None:
    """Names are checked here against the extender's own registry; agent names in the e2e run."""
    config = registry.config_from(None)
    state = ClusterState(config)
    state.load_static(load_nodes({"nodes": [{"name": "n", "gpus": 1, "gpuModel": "L4"}]}), [])
    metrics = ExtenderMetrics()
    ExtenderService(state, registry.build(config), OfflineBinder(), metrics)
    metrics.informer_synced.labels("nodes").set(1)
    metrics.watch_restarts.labels("nodes", "timeout")
    metrics.requests.labels("filter", "ok")
    metrics.filter_rejections.labels("gpu-fit")
    metrics.binds.labels("bound")
    metrics.predicted_cold_start.labels("inference", "acme/llm-8b@main")
    text = generate_latest(metrics.registry).decode()
    exposed = set().union(*(metric_names(line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE")))
    wanted = set().union(*(metric_names(expr) for _, _, expr in dashboard_queries()))
    extender = {n for n in wanted if not n.startswith(("gpusched_agent_", "gpusched_inference_"))}
    assert extender, "no extender metrics on the dashboards"
    assert extender <= exposed, extender - exposed
    # The inference servers' names, against their own registry.
    server = InferenceMetrics().registry
    served = set().union(*(metric_names(m.name) for m in server.collect()))
    inference = {n for n in wanted if n.startswith("gpusched_inference_")}
    assert inference and inference <= served, inference - served


def test_device_plugin_config_advertises_gpu_shares_as_a_resource_of_their_own(objects: list[dict[str, Any]]) -> None:
    # Plain file, not in the kustomization: the NVIDIA device plugin's chart reads it (config.name).
    (config_map,) = yaml.safe_load_all((MANIFESTS / "device-plugin" / "nvidia-device-plugin-config.yaml").read_text())
    assert config_map["kind"] == "ConfigMap"
    configs = {name: yaml.safe_load(text) for name, text in config_map["data"].items()}
    assert set(configs) == {"whole", "shared", "mig"}
    assert "sharing" not in configs["whole"]
    # mixed: one resource per MIG profile (nvidia.com/mig-1g.12gb), what core/podspec.py reads.
    assert configs["mig"]["flags"]["migStrategy"] == "mixed" and "sharing" not in configs["mig"]
    slicing = configs["shared"]["sharing"]["timeSlicing"]
    # renameByDefault: the replicas are advertised as nvidia.com/gpu.shared, so a share pod never
    # takes the place of a whole-GPU pod; failRequestsGreaterThanOne: a share is one replica.
    assert slicing["renameByDefault"] is True and slicing["failRequestsGreaterThanOne"] is True
    (resource,) = slicing["resources"]
    assert resource["name"] == "nvidia.com/gpu"
    # At least one replica per smallest share gpusched places (gpusched.io/gpu-milli of 100 here):
    # 1000 / 100 = 10 shares of one GPU.
    assert resource["replicas"] == 10
    assert config_map["metadata"]["name"] not in {o["metadata"]["name"] for o in objects}
