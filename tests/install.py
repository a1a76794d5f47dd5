"""The install path of manifests/README.md, done from Python: render the kustomization the way
`kubectl kustomize` does, and server-side apply the result, keeping the API server's warnings.

The renderer covers what gpusched's kustomizations use and refuses anything else, so that it never
silently drops a field: `resources` (files, and folders with their own kustomization), `namespace`,
`images`, `configMapGenerator` (files and literals, with `options`) and `generatorOptions` (with
`disableNameSuffixHash: true`). Objects come out in kustomize's legacy order (namespaces, CRDs,
RBAC, ConfigMaps, Services, workloads, then the rest), which is the order `kubectl apply -k` applies.
"""

from __future__ import annotations

import copy
import json
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localcluster import k8s

REPO = Path(__file__).resolve().parents[1]
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator", "generatorOptions"}
GENERATOR_KEYS = {"name", "namespace", "files", "literals", "options", "behavior"}

# kustomize's legacy resource order (api/resource/resource.go, "legacy" sort).
ORDER_FIRST = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)
ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")

# Kinds without a namespace that gpusched's manifests use (kustomize knows these from its schema).
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "RuntimeClass",
    "Node",
}

Obj = dict[str, Any]


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render faithfully."""


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization.yaml")


def _load_docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _split_source(entry: str) -> tuple[str, str]:
    key, sep, source = entry.partition("=")
    return (key, source) if sep else (Path(entry).name, entry)


def _configmap(folder: Path, spec: Mapping[str, Any], options: Mapping[str, Any]) -> Obj:
    unknown = set(spec) - GENERATOR_KEYS
    if unknown:
        raise KustomizeError(f"configMapGenerator {spec.get('name')}: unsupported keys {sorted(unknown)}")
    if spec.get("behavior", "create") != "create":
        raise KustomizeError(f"configMapGenerator {spec['name']}: only behavior create is supported")
    data: dict[str, str] = {}
    for entry in spec.get("files") or []:
        key, source = _split_source(str(entry))
        path = (folder / source).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise KustomizeError(f"configMapGenerator {spec['name']}: {source} is outside {folder}")
        data[key] = path.read_text()
    for entry in spec.get("literals") or []:
        key, _, value = str(entry).partition("=")
        data[key] = value
    own = dict(spec.get("options") or {})
    if own.get("disableNameSuffixHash") is False or (
        not own.get("disableNameSuffixHash") and not options.get("disableNameSuffixHash")
    ):
        raise KustomizeError(f"configMapGenerator {spec['name']}: hash suffixes are unsupported, disable them")
    metadata: Obj = {"name": spec["name"]}
    if spec.get("namespace"):
        metadata["namespace"] = spec["namespace"]
    for field in ("labels", "annotations"):
        merged = {**(options.get(field) or {}), **(own.get(field) or {})}
        if merged:
            metadata[field] = merged
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _split_image(image: str) -> tuple[str, str, str]:
    """(name, tag, digest) of an image reference."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest


def _pod_specs(obj: Obj) -> Iterable[Obj]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        yield spec
    template = (spec.get("template") or {}).get("spec")
    if template:
        yield template
    job = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
    if job:
        yield job


def _set_images(obj: Obj, images: Sequence[Mapping[str, Any]]) -> None:
    for pod in _pod_specs(obj):
        for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
            name, tag, digest = _split_image(str(container.get("image", "")))
            for rule in images:
                if rule["name"] != name:
                    continue
                name = rule.get("newName", name)
                if "digest" in rule:
                    tag, digest = "", rule["digest"]
                elif "newTag" in rule:
                    tag, digest = str(rule["newTag"]), ""
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                break


def build(folder: Path) -> list[Obj]:
    """The objects `kubectl kustomize folder` gives, for the subset described in the module docstring."""
    return sort_legacy(_build(Path(folder)))


def _build(folder: Path) -> list[Obj]:
    spec = yaml.safe_load(_kustomization_file(folder).read_text()) or {}
    unknown = set(spec) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{folder}: unsupported kustomization keys {sorted(unknown)}")
    objects: list[Obj] = []
    for entry in spec.get("resources") or []:
        path = folder / entry
        objects.extend(_build(path) if path.is_dir() else _load_docs(path))
    options = spec.get("generatorOptions") or {}
    for generator in spec.get("configMapGenerator") or []:
        objects.append(_configmap(folder, generator, options))
    namespace = spec.get("namespace")
    for obj in objects:
        if namespace and obj.get("kind") not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace
        if spec.get("images"):
            _set_images(obj, spec["images"])
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        ident = key(obj)
        if ident in seen:
            raise KustomizeError(f"{folder}: {ident} is defined twice")
        seen.add(ident)
    return objects


def key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name): how kustomize tells objects apart."""
    meta = obj.get("metadata") or {}
    return str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name"))


def sort_legacy(objects: list[Obj]) -> list[Obj]:
    def rank(obj: Obj) -> tuple[int, str, str, str]:
        kind = str(obj.get("kind"))
        if kind in ORDER_FIRST:
            index = ORDER_FIRST.index(kind)
        elif kind in ORDER_LAST:
            index = len(ORDER_FIRST) + 1 + ORDER_LAST.index(kind)
        else:
            index = len(ORDER_FIRST)
        _, namespace, name = key(obj)
        return index, f"{obj.get('apiVersion')}/{kind}", namespace, name

    return sorted(objects, key=rank)


def find(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name]
    if len(matches) != 1:
        raise LookupError(f"{len(matches)} objects of kind {kind} named {name}")
    return copy.deepcopy(matches[0])


def container(workload: Mapping[str, Any], name: str | None = None) -> Obj:
    """A container of a Deployment's or DaemonSet's pod template (the only one, or by name)."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    chosen = [c for c in containers if name is None or c["name"] == name]
    if len(chosen) != 1:
        raise LookupError(f"no single container {name or ''} in {workload['metadata']['name']}")
    return dict(chosen[0])


def mounted_file(objects: Iterable[Obj], workload: Mapping[str, Any], path: str) -> str:
    """The contents a workload sees at `path`, from the ConfigMap volume mounted over its folder."""
    objects = list(objects)
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for c in pod["containers"]:
        for mount in c.get("volumeMounts") or []:
            folder = mount["mountPath"].rstrip("/") + "/"
            if not path.startswith(folder):
                continue
            volume = volumes[mount["name"]]
            if "configMap" not in volume:
                continue
            configmap = find(objects, "ConfigMap", volume["configMap"]["name"])
            return str(configmap["data"][path[len(folder) :]])
    raise LookupError(f"nothing mounted at {path} in {workload['metadata']['name']}")


# ------------------------------------------------------------------------------------- apply
class Applier:
    """Server-side apply with strict field validation; records every Warning header the API sends."""

    def __init__(self, api: ApiClient, field_manager: str = "gpusched-install") -> None:
        self.api = api
        self.field_manager = field_manager
        self.warnings: list[str] = []
        self.discovery = k8s.Discovery(api, get=lambda path: self.request("GET", path))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        serialized = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*serialized, _request_timeout=30)
        data = response.read()
        headers = response.getheaders()
        values = headers.getlist("Warning") if hasattr(headers, "getlist") else [headers.get("Warning")]
        self.warnings += [f"{method} {path}: {v}" for v in values if v]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
        return json.loads(data) if data else None

    def path(self, obj: Mapping[str, Any]) -> str:
        return self.discovery.path(obj)

    def apply(self, objects: Iterable[Mapping[str, Any]]) -> list[Obj]:
        query = {"fieldManager": self.field_manager, "fieldValidation": "Strict"}
        return [
            self.request("PATCH", self.path(obj), obj, content_type="application/apply-patch+yaml", query=query)
            for obj in objects
        ]

    def delete(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Delete the objects, newest first; those already gone are skipped."""
        for obj in reversed(list(objects)):
            try:
                self.request("DELETE", self.path(obj))
            except ApiException as exc:
                if exc.status != 404:
                    raise


# ---------------------------------------------------------------------------- run as a process
@dataclass
class LocalCommand:
    """A pod template's container turned into a local command line."""

    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]  # mountPath in the pod -> local folder
    cwd: Path = REPO


def console_script(name: str) -> list[str]:
    """A command line that runs the project's console script `name` (pyproject's [project.scripts])
    with this interpreter, as the installed script would, whether or not it is installed."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    if name not in scripts:
        raise KustomizeError(f"{name} is not one of the project's console scripts: {sorted(scripts)}")
    module, _, function = scripts[name].partition(":")
    code = f"import sys; sys.argv = sys.argv[1:]; from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", code, name]


def local_command(
    objects: Iterable[Obj],
    workload: Mapping[str, Any],
    workdir: Path,
    *,
    flags: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
    field_refs: Mapping[str, str] | None = None,
    container_name: str | None = None,
) -> LocalCommand:
    """The command, arguments and environment of the workload's container, as a local process.

    Volumes become folders under `workdir`: a ConfigMap volume holds the ConfigMap's files, a
    hostPath or emptyDir volume an empty folder. Arguments and environment values that point into a
    mount are pointed at its folder. `flags` replace the values of `--flag=value` arguments (or
    are appended), `extra` arguments are appended, `field_refs` give fieldRef environment values
    (for example spec.nodeName). The command's first word is one of the project's console scripts,
    run with this interpreter from the repository (the image installs the same package).
    """
    objects = list(objects)
    c = container(workload, container_name)
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in c.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        local = workdir / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            for name, text in find(objects, "ConfigMap", volume["configMap"]["name"])["data"].items():
                (local / name).write_text(text)
        elif not ({"hostPath", "emptyDir"} & set(volume)):
            raise KustomizeError(f"volume {mount['name']}: only configMap, hostPath and emptyDir can run locally")
        mounts[mount["mountPath"].rstrip("/")] = local

    def localize(value: str) -> str:
        for path, local in mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(local) + value[len(path) :]
        return value

    pending = dict(flags or {})
    command = list(c.get("command") or [])
    if not command:
        raise KustomizeError(f"{workload['metadata']['name']}: the container names no command")
    argv = [*console_script(command[0]), *command[1:]]
    for arg in c.get("args") or []:
        flag, sep, value = str(arg).partition("=")
        if sep and flag.startswith("--"):
            argv.append(f"{flag}={pending.pop(flag) if flag in pending else localize(value)}")
        else:
            argv.append(localize(str(arg)))
    argv += [f"{flag}={value}" for flag, value in pending.items()]
    argv += list(extra)
    env: dict[str, str] = {}
    for entry in c.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = localize(str(entry["value"]))
        else:
            field_path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[entry["name"]] = (field_refs or {})[field_path]
    return LocalCommand(argv, env, mounts)
