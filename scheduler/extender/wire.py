"""Extender v1 wire types (k8s.io/kube-scheduler/extender/v1), with the Go field names as keys.

Only the edge is typed; the Pod stays a plain dict for scheduler.core.podspec to read.
"""

from __future__ import annotations

from typing import Any

import msgspec


class NodeList(msgspec.Struct, omit_defaults=True):
    items: list[dict[str, Any]] = []


class ExtenderArgs(msgspec.Struct, rename="pascal"):
    pod: dict[str, Any]
    nodes: NodeList | None = None
    node_names: list[str] | None = None


class MalformedRequest(ValueError):
    """A part of a request decoded only when needed (SentArgs.node_names) is not what it must be."""


class SentArgs(msgspec.Struct, rename="pascal"):
    """ExtenderArgs as the app decodes them: NodeNames kept as the JSON sent (thousands of names
    that kube-scheduler sends again and again), decoded only when it is a list not seen lately."""

    pod: dict[str, Any]
    nodes: NodeList | None = None
    node_names: msgspec.Raw = msgspec.Raw()


class ExtenderFilterResult(msgspec.Struct, rename="pascal"):
    """Over HTTP, service._filter_json writes gpusched's own answer in this shape as JSON directly:
    keep the two in step."""

    nodes: NodeList | None = None
    node_names: list[str] | None = None
    failed_nodes: dict[str, str] = {}
    failed_and_unresolvable_nodes: dict[str, str] = {}
    error: str = ""


class HostPriority(msgspec.Struct, rename="pascal"):
    host: str
    score: int


class ExtenderBindingArgs(
    msgspec.Struct, rename={"pod_name": "PodName", "pod_namespace": "PodNamespace", "pod_uid": "PodUID", "node": "Node"}
):
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


class ExtenderBindingResult(msgspec.Struct, rename="pascal"):
    error: str = ""


class MetaPod(msgspec.Struct, rename={"uid": "UID"}):
    uid: str


class MetaVictims(msgspec.Struct, rename={"pods": "Pods", "num_pdb_violations": "NumPDBViolations"}):
    pods: list[MetaPod] = []
    num_pdb_violations: int = 0


class Victims(msgspec.Struct, rename={"pods": "Pods", "num_pdb_violations": "NumPDBViolations"}):
    pods: list[dict[str, Any]] = []
    num_pdb_violations: int = 0


class ExtenderPreemptionArgs(msgspec.Struct, rename="pascal"):
    pod: dict[str, Any]
    node_name_to_victims: dict[str, Victims] | None = None
    node_name_to_meta_victims: dict[str, MetaVictims] | None = None


class ExtenderPreemptionResult(msgspec.Struct, rename="pascal"):
    node_name_to_meta_victims: dict[str, MetaVictims] = {}
