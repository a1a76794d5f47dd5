"""Where a pod's gang comes from: its group, the group's size and the pod's rank.

A pod names at most one gang; when several sources are present, the first of these wins:

1. Kubernetes' own PodGroup (`scheduling.k8s.io/v1beta1`, feature gate GenericWorkload): the pod's
   `spec.schedulingGroup.podGroupName`. Size: the PodGroup's `spec.schedulingPolicy.gang.minCount`;
   a PodGroup with the `basic` policy is no gang, and its pods are placed one by one. Group name
   `scheduling.k8s.io/<name>`.
2. The label `scheduling.x-k8s.io/pod-group` (the coscheduling plugin of kubernetes-sigs). Size: the
   annotation `gpusched.io/min-member`, else the `spec.minMember` of the coscheduling
   PodGroup (`scheduling.x-k8s.io/v1alpha1`) of that name. Group name: the label's value.
3. A LeaderWorkerSet group: labels `leaderworkerset.sigs.k8s.io/name` and `.../group-index`.
   Size: the annotation `leaderworkerset.sigs.k8s.io/size`. Group name `lws/<name>/<group-index>`.

Rank: a LeaderWorkerSet pod's `leaderworkerset.sigs.k8s.io/worker-index` (its leader is 0);
otherwise the first of `RANK_KEYS` the pod carries (none: by name into the free ranks).

Group names of sources 1 and 3 hold a "/", which no label value does, so gangs of different
sources never merge. A size read from an API object is looked up by `resolve` in the sizes the
informers keep, (namespace, `PodRequest.group_size_ref`) -> size; a pod whose object is not known
(yet) keeps size 0 and waits, with the reason `size_unknown` gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from scheduler.core.types import PodRequest

ANN_MIN_MEMBER = "gpusched.io/min-member"
LABEL_POD_GROUP = "scheduling.x-k8s.io/pod-group"
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
LWS_SIZE = "leaderworkerset.sigs.k8s.io/size"
RANK_KEYS = (
    "batch.kubernetes.io/job-completion-index",
    "apps.kubernetes.io/pod-index",
    "jobset.sigs.k8s.io/job-index",
    "gpusched.io/rank",  # written by gpusched with the gang's plan
)

# API objects that give a gang's size: group_size_ref prefix -> what messages call them.
K8S_POD_GROUP = "scheduling.k8s.io"
PLUGINS_POD_GROUP = "scheduling.x-k8s.io"
SIZE_OBJECTS = {
    K8S_POD_GROUP: "PodGroup (scheduling.k8s.io)",
    PLUGINS_POD_GROUP: "PodGroup (scheduling.x-k8s.io)",
}
NOT_A_GANG = 0  # a size object that exists but asks for no gang (a basic-policy PodGroup)


@dataclass(frozen=True, slots=True)
class GangIdentity:
    """What a pod says about its gang; `pod_group` empty: no gang."""

    pod_group: str = ""
    min_member: int = 0
    size_ref: str = ""  # "<api group>/<object name>" of the object that gives the size; "": none
    rank: int | None = None


def _positive(raw: Any, what: str, errors: list[str]) -> int:
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
    except (TypeError, ValueError):
        errors.append(f"{what}: {raw!r} must be a positive whole number")
        return 0
    return value


def _rank(
    labels: Mapping[str, str], annotations: Mapping[str, str], keys: tuple[str, ...], errors: list[str]
) -> int | None:
    for key in keys:
        found = labels.get(key, annotations.get(key))
        if found is not None:
            try:
                return int(found)
            except (TypeError, ValueError):
                errors.append(f"{key}: {found!r} is not a whole number")
            return None
    return None


def gang_identity(
    labels: Mapping[str, str], annotations: Mapping[str, str], spec: Mapping[str, Any], errors: list[str]
) -> GangIdentity:
    """The pod's gang by the precedence above; a malformed value is appended to `errors`."""
    group = spec.get("schedulingGroup")
    k8s_group = group.get("podGroupName") if isinstance(group, Mapping) else None
    min_member = 0
    if ANN_MIN_MEMBER in annotations:  # checked wherever it appears: a bad value is never ignored
        min_member = _positive(annotations[ANN_MIN_MEMBER], f"annotation {ANN_MIN_MEMBER}", errors)
    if k8s_group:
        rank = _rank(labels, annotations, RANK_KEYS, errors)
        return GangIdentity(f"{K8S_POD_GROUP}/{k8s_group}", 0, f"{K8S_POD_GROUP}/{k8s_group}", rank)
    if LABEL_POD_GROUP in labels:
        name = labels[LABEL_POD_GROUP]
        rank = _rank(labels, annotations, RANK_KEYS, errors)
        ref = "" if ANN_MIN_MEMBER in annotations else f"{PLUGINS_POD_GROUP}/{name}"
        return GangIdentity(name, min_member, ref, rank)
    if LWS_NAME in labels:
        missing = [key for key in (LWS_GROUP_INDEX, LWS_WORKER_INDEX) if key not in labels]
        if LWS_SIZE not in annotations:
            missing.append(f"annotation {LWS_SIZE}")
        if missing:
            errors.append(f"LeaderWorkerSet pod ({LWS_NAME}) without {', '.join(missing)}")
            return GangIdentity()
        size = _positive(annotations[LWS_SIZE], f"annotation {LWS_SIZE}", errors)
        rank = _rank(labels, annotations, (LWS_WORKER_INDEX,), errors)
        return GangIdentity(f"lws/{labels[LWS_NAME]}/{labels[LWS_GROUP_INDEX]}", size, "", rank)
    return GangIdentity(rank=_rank(labels, annotations, RANK_KEYS, errors))


def plugins_pod_group_size(obj: Mapping[str, Any]) -> int | None:
    """The coscheduling PodGroup (kubernetes-sigs): `spec.minMember` (a positive whole number), else None."""
    value = (obj.get("spec") or {}).get("minMember")
    return value if isinstance(value, int) and value >= 1 else None


def k8s_pod_group_size(obj: Mapping[str, Any]) -> int | None:
    """Kubernetes' PodGroup: `spec.schedulingPolicy.gang.minCount`; NOT_A_GANG for the basic
    policy; None when neither is readable."""
    policy = (obj.get("spec") or {}).get("schedulingPolicy") or {}
    gang = policy.get("gang")
    if isinstance(gang, Mapping):
        value = gang.get("minCount")
        return value if isinstance(value, int) and value >= 1 else None
    return NOT_A_GANG if "basic" in policy else None


def resolve(pod: PodRequest, sizes: Mapping[tuple[str, str], int]) -> PodRequest:
    """The pod with the size its object gives: unchanged without a size object; size 0 (waits)
    while the object is unknown; no gang when the object asks for none."""
    if not pod.group_size_ref:
        return pod
    size = sizes.get((pod.namespace, pod.group_size_ref))
    if size == NOT_A_GANG:
        return replace(pod, pod_group="", min_member=0)
    return replace(pod, pod_group=_group_name(pod.group_size_ref), min_member=size or 0)


def _group_name(ref: str) -> str:
    source, _, name = ref.partition("/")
    return name if source == PLUGINS_POD_GROUP else ref


def size_unknown(pod: PodRequest) -> str:
    """Why a gang member has no size: the object it names is not known, or nothing gives one."""
    source, _, name = pod.group_size_ref.partition("/")
    if source in SIZE_OBJECTS:
        extra = f"no {ANN_MIN_MEMBER} annotation, and " if source == PLUGINS_POD_GROUP else ""
        return f"{extra}no {SIZE_OBJECTS[source]} {name!r} in namespace {pod.namespace} (yet)"
    return f"pod has no {ANN_MIN_MEMBER} annotation"
