"""The assume-cache against the real API server: a bind the API refuses gives its GPUs back at
once (no timeout holds them), and a bind that took holds them until the informer shows the pod.

The API refuses the Binding of some pods through a ValidatingAdmissionPolicy on `pods/binding`,
as an admission policy of a real cluster would (quota, a policy engine)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes.client.exceptions import ApiException

from localcluster import k8s
from scheduler.core.scenario import pod_object
from tests.e2e.gpusched_env import Env

pytestmark = pytest.mark.e2e

POLICY = "gpusched-e2e-refuse-bindings"
POLICIES = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"


@pytest.fixture
def refusing(gpusched: Env) -> Iterator[Env]:
    """Bindings of pods whose name starts with "refused-" are denied by the API server."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods/binding"]}
                ]
            },
            "validations": [
                {"expression": "!object.metadata.name.startsWith('refused-')", "message": "bindings refused here"}
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY},
        "spec": {"policyName": POLICY, "validationActions": ["Deny"]},
    }
    k8s.request(gpusched.api, "POST", POLICIES, policy)
    k8s.request(gpusched.api, "POST", BINDINGS, binding)
    try:
        # The API server loads policies in the background: bind probe pods (which no scheduler
        # picks up) until one is refused.
        tries = iter(range(1000))

        def refused() -> bool:
            name = f"refused-probe-{next(tries)}"
            probe = pod_object({"name": name, "gpus": 0, "schedulerName": "nobody"})
            probe["spec"].pop("nodeName", None)
            k8s.request(gpusched.api, "POST", "/api/v1/namespaces/default/pods", probe)
            body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"name": "nowhere"}}
            try:
                k8s.request(gpusched.api, "POST", f"/api/v1/namespaces/default/pods/{name}/binding", body)
            except ApiException as exc:
                return exc.status in (403, 422)
            return False

        gpusched.wait_for(refused, "the binding policy to take effect", timeout=60)
        yield gpusched
    finally:
        k8s.request(gpusched.api, "DELETE", f"{BINDINGS}/{POLICY}")
        k8s.request(gpusched.api, "DELETE", f"{POLICIES}/{POLICY}")


def binds(env: Env, result: str) -> float:
    for line in env.extender.get("/metrics").decode().splitlines():
        if line.startswith(f'gpusched_binds_total{{result="{result}"}} '):
            return float(line.split()[1])
    return 0.0


def test_a_refused_bind_gives_its_gpus_back_at_once(refusing: Env) -> None:
    env = refusing
    env.node("n0", 8)
    env.pod("refused-0", 8)
    env.wait_for(lambda: binds(env, "api_error") >= 1, "a Binding refused by the API", timeout=90)
    assert not env.get_pod("refused-0")["spec"].get("nodeName")
    # Its GPUs were not held past the refusal: another pod that needs all eight lands on n0.
    env.pod("ok", 8)
    assert env.wait_bound("ok", timeout=60) == "n0"
    ids = env.get_pod("ok")["metadata"]["annotations"]["gpusched.io/gpu-ids"]
    assert ids == "0,1,2,3,4,5,6,7"
    # And that bind holds them in gpusched's view: n0 is full for the refused pod.
    explained = json.loads(env.extender.get("/explain/default/refused-0"))
    assert explained["nodes"]["n0"]["feasible"] is False, explained
    assert not env.get_pod("refused-0")["spec"].get("nodeName")
