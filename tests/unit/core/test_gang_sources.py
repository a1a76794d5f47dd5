"""Where a pod's gang comes from: each source alone, their precedence, malformed values, and the
sizes PodGroup objects give."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.core.gang_sources import (
    NOT_A_GANG,
    k8s_pod_group_size,
    plugins_pod_group_size,
    resolve,
    size_unknown,
)
from scheduler.core.podspec import parse_pod
from tests.builders import pod

PG = "scheduling.x-k8s.io/pod-group"
MIN = "gpusched.io/min-member"
LWS = "leaderworkerset.sigs.k8s.io/"
INDEX = "batch.kubernetes.io/job-completion-index"


def member(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    scheduling_group: str | None = None,
) -> dict[str, Any]:
    obj = pod("m", gpus=8, annotations=annotations, labels=labels or {})
    if scheduling_group is not None:
        obj["spec"]["schedulingGroup"] = {"podGroupName": scheduling_group}
    return obj


def lws(name: str = "vllm", group: str = "1", worker: str = "2", size: str = "4") -> dict[str, Any]:
    """Labels and annotations a LeaderWorkerSet worker carries after LWS's pod webhook."""
    return {
        "labels": {LWS + "name": name, LWS + "group-index": group, LWS + "worker-index": worker},
        "annotations": {LWS + "size": size},
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        # (pod_group, min_member, group_size_ref, rank)
        pytest.param(member(), ("", 0, "", None), id="no gang"),
        pytest.param(member({PG: "train", INDEX: "3"}, {MIN: "4"}), ("train", 4, "", 3), id="label + min-member"),
        pytest.param(
            member({PG: "train", INDEX: "1"}),
            ("train", 0, "scheduling.x-k8s.io/train", 1),
            id="label alone: size from the scheduler-plugins PodGroup",
        ),
        pytest.param(
            member({INDEX: "0"}, scheduling_group="workers"),
            ("scheduling.k8s.io/workers", 0, "scheduling.k8s.io/workers", 0),
            id="spec.schedulingGroup: size from Kubernetes' PodGroup",
        ),
        pytest.param(member(**lws()), ("lws/vllm/1", 4, "", 2), id="LeaderWorkerSet worker: rank = worker-index"),
        pytest.param(
            # A leader comes from LWS's leader StatefulSet: its pod-index is the group index (1),
            # not its rank; worker-index 0 is.
            member(
                {**lws(worker="0")["labels"], "apps.kubernetes.io/pod-index": "1"},
                lws()["annotations"],
            ),
            ("lws/vllm/1", 4, "", 0),
            id="LeaderWorkerSet leader: worker-index beats pod-index",
        ),
        pytest.param(
            member({**lws()["labels"], PG: "explicit"}, {**lws()["annotations"], MIN: "2"}),
            ("explicit", 2, "", None),
            id="pod-group label beats LeaderWorkerSet",
        ),
        pytest.param(
            member({PG: "explicit"}, {MIN: "2"}, scheduling_group="native"),
            ("scheduling.k8s.io/native", 0, "scheduling.k8s.io/native", None),
            id="schedulingGroup beats the pod-group label",
        ),
    ],
)
def test_gang_identity_by_source(obj: dict[str, Any], expected: tuple[Any, ...]) -> None:
    req = parse_pod(obj)
    assert req.errors == ()
    assert (req.pod_group, req.min_member, req.group_size_ref, req.rank) == expected


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (member(**lws(size="0")), "leaderworkerset.sigs.k8s.io/size: '0' must be a positive whole number"),
        (member(**lws(size="four")), "leaderworkerset.sigs.k8s.io/size: 'four'"),
        (member(**lws(worker="leader")), "leaderworkerset.sigs.k8s.io/worker-index: 'leader' is not a whole number"),
        (member(lws()["labels"]), "without annotation leaderworkerset.sigs.k8s.io/size"),
        (member({LWS + "name": "vllm"}, lws()["annotations"]), "without leaderworkerset.sigs.k8s.io/group-index"),
        # A malformed min-member is an error wherever it appears, even where another source wins.
        (member({PG: "g"}, {MIN: "0"}, scheduling_group="native"), "gpusched.io/min-member: '0'"),
        (member({PG: "g", INDEX: "x"}, {MIN: "2"}), "job-completion-index: 'x' is not a whole number"),
    ],
)
def test_malformed_gang_values_are_errors_naming_the_field(obj: dict[str, Any], fragment: str) -> None:
    req = parse_pod(obj)
    assert any(fragment in e for e in req.errors), req.errors


@pytest.mark.parametrize(
    ("obj", "size"),
    [
        ({"spec": {"minMember": 3}}, 3),
        ({"spec": {"minMember": 0}}, None),
        ({"spec": {}}, None),
        ({}, None),
    ],
)
def test_plugins_pod_group_size(obj: dict[str, Any], size: int | None) -> None:
    assert plugins_pod_group_size(obj) == size


@pytest.mark.parametrize(
    ("obj", "size"),
    [
        ({"spec": {"schedulingPolicy": {"gang": {"minCount": 2}}}}, 2),
        ({"spec": {"schedulingPolicy": {"basic": {}}}}, NOT_A_GANG),
        ({"spec": {"schedulingPolicy": {"gang": {}}}}, None),
        ({"spec": {}}, None),
    ],
)
def test_k8s_pod_group_size(obj: dict[str, Any], size: int | None) -> None:
    assert k8s_pod_group_size(obj) == size


def test_resolve_takes_the_size_of_the_named_object_in_the_pods_namespace() -> None:
    native = parse_pod(member(scheduling_group="workers"))
    plugins = parse_pod(member({PG: "train"}))
    sizes = {
        ("default", "scheduling.k8s.io/workers"): 2,
        ("default", "scheduling.x-k8s.io/train"): 4,
        ("other", "scheduling.k8s.io/train"): 9,  # another namespace, another API: not these pods'
    }
    assert (resolve(native, sizes).pod_group, resolve(native, sizes).min_member) == ("scheduling.k8s.io/workers", 2)
    assert (resolve(plugins, sizes).pod_group, resolve(plugins, sizes).min_member) == ("train", 4)


def test_resolve_waits_for_an_unknown_object_and_drops_a_basic_policy_group() -> None:
    native = parse_pod(member(scheduling_group="workers"))
    waiting = resolve(native, {})
    assert (waiting.pod_group, waiting.min_member) == ("scheduling.k8s.io/workers", 0)
    assert size_unknown(waiting) == "no PodGroup (scheduling.k8s.io) 'workers' in namespace default (yet)"
    basic = resolve(native, {("default", "scheduling.k8s.io/workers"): NOT_A_GANG})
    assert (basic.pod_group, basic.min_member) == ("", 0)
    # The object turning into a gang later gives the group back (re-resolving the resolved pod).
    again = resolve(basic, {("default", "scheduling.k8s.io/workers"): 3})
    assert (again.pod_group, again.min_member) == ("scheduling.k8s.io/workers", 3)


def test_size_unknown_names_what_is_missing() -> None:
    plugins = parse_pod(member({PG: "train"}))
    assert size_unknown(plugins) == (
        "no gpusched.io/min-member annotation, and no PodGroup (scheduling.x-k8s.io) 'train' in namespace default (yet)"
    )
    bare = parse_pod(member({PG: "train"}, {MIN: "zero"}))
    assert size_unknown(bare) == "pod has no gpusched.io/min-member annotation"


def test_a_min_member_annotation_beats_the_plugins_pod_group() -> None:
    req = parse_pod(member({PG: "train"}, {MIN: "2"}))
    assert resolve(req, {("default", "scheduling.x-k8s.io/train"): 8}).min_member == 2
