"""A real etcd + kube-apiserver (+ kube-scheduler) on loopback, for tests and demos.

By default there is no kubelet and no kube-controller-manager: nodes are API objects whose status
the caller sets (see :mod:`localcluster.k8s`), which is all kube-scheduler looks at, and pods are
bound but never run. :meth:`LocalCluster.start_kwok` adds pods that run: kube-controller-manager
(Jobs, Deployments, garbage collection; no node lifecycle controller) and KWOK's controller, which
plays the kubelet of nodes annotated ``kwok.x-k8s.io/node: fake`` (see :mod:`localcluster.kwok`).
Two admission plugins depend on controllers that are absent here and are disabled:

- ``ServiceAccount`` would reject every pod until a ``default`` ServiceAccount exists, which the
  (absent) service-account controller creates.
- ``TaintNodesByCondition`` taints each new node ``node.kubernetes.io/not-ready:NoSchedule``
  until the (absent) node lifecycle controller sees a Ready kubelet; :func:`k8s.set_node_ready`
  manages that taint instead.
"""

from __future__ import annotations

import atexit
import json
import secrets
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from localcluster import k8s, kwok, pki
from localcluster.process import ManagedProcess, tail

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_EXTENDER_WEIGHT = 100
"""kube-scheduler scales an extender's 0..10 score by weight x 10; at 100 the extender's range
(0..10,000) outweighs the in-tree plugins' sum (about 1,200), so gpusched's ranking decides."""

SERVICE_CIDR = "10.0.0.0/24"
DISABLED_ADMISSION_PLUGINS = ("ServiceAccount", "TaintNodesByCondition")
SCHEDULER_USER = "system:kube-scheduler"
REPORTER = "gpusched-reports"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
KWOK_USER = "kwok-controller"
CONTROLLERS = (
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "ttl-after-finished-controller",
)
"""kube-controller-manager's controllers for a KWOK cluster: what Jobs and Deployments need.
Not the node lifecycle controller: nodes here have no kubelet lease to watch."""


class ClusterError(RuntimeError):
    """A component failed to start or stopped unexpectedly."""


_running: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_running):
        cluster.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_bin_dir() -> Path:
    """Directory with etcd, kube-apiserver and kube-scheduler, built on first use."""
    from localcluster.build import ensure_built

    return ensure_built()


def binary(name: str) -> Path:
    """Path of a cached binary (kubectl, kwok, ...), built first if the cache lacks it."""
    from localcluster.build import cached_path, ensure_built

    ensure_built((name,))
    return cached_path(name)


def extender_entry(url: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``extenders`` item for gpusched at ``url``, as manifests/scheduler/kube-scheduler.yaml
    has it: no ``managedResources``, so every pod of the scheduler's profiles reaches gpusched (GPU
    shares too); ``overrides`` replace any field."""
    entry: dict[str, Any] = {
        "urlPrefix": url,
        "filterVerb": "filter",
        "prioritizeVerb": "prioritize",
        "bindVerb": "bind",
        "preemptVerb": "preempt",
        "weight": DEFAULT_EXTENDER_WEIGHT,
        "nodeCacheCapable": True,
        "enableHTTPS": False,
        "httpTimeout": "5s",
        "ignorable": False,
    }
    entry.update(overrides or {})
    return entry


def scheduler_configuration(
    kubeconfig: Path,
    scheduler_names: Sequence[str],
    extender_url: str | None = None,
    extender_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A KubeSchedulerConfiguration with one default profile per name and leader election off."""
    config: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": name} for name in scheduler_names],
    }
    if extender_url is not None:
        config["extenders"] = [extender_entry(extender_url, extender_config)]
    return config


def _kubeconfig(server: str, ca: Path, user: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def _insecure() -> ssl.SSLContext:
    """For the readiness of components that serve a self-signed certificate on loopback."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


class LocalCluster:
    """etcd + kube-apiserver on loopback (optionally kube-scheduler), in ``workdir``.

    Ports are picked at start, so any number of clusters can run side by side. Every child
    runs in its own process group with its log in ``workdir`` (``etcd.log``,
    ``kube-apiserver.log``, ``kube-scheduler.log``); :meth:`stop` ends them all and also runs
    on ``__exit__`` and at interpreter exit.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        extender_url: str | None = None,
        extender_config: Mapping[str, Any] | None = None,
        scheduler_name: str | Sequence[str] = "default-scheduler",
        bin_dir: Path | None = None,
        die_with_parent: bool = True,
        start_timeout: float = 120.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.extender_url = extender_url
        self.extender_config: dict[str, Any] = dict(extender_config or {})
        self.scheduler_names: tuple[str, ...] = (
            (scheduler_name,) if isinstance(scheduler_name, str) else tuple(scheduler_name)
        )
        self._bin_dir = bin_dir
        self._die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self.admin_token = secrets.token_hex(16)
        self._scheduler_token = secrets.token_hex(16)
        self._pki: pki.Pki | None = None
        self.etcd_port = 0
        self.apiserver_port = 0
        self.scheduler_port = 0
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._scheduler: ManagedProcess | None = None
        self._others: dict[str, ManagedProcess] = {}  # in start order
        self._controller_manager_token = secrets.token_hex(16)
        self._kwok_token = secrets.token_hex(16)
        self.controller_manager_port = 0
        self.kwok_port = 0
        self._scheduler_args: tuple[str | None, dict[str, Any]] = (extender_url, self.extender_config)
        self._scheduler_config: dict[str, Any] = {}

    # ----------------------------------------------------------------- properties

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig_path(self) -> Path:
        """Admin kubeconfig (token auth, group system:masters)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def scheduler_kubeconfig_path(self) -> Path:
        return self.workdir / "kube-scheduler.kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = default_bin_dir()
        return self._bin_dir

    @property
    def controller_manager_kubeconfig_path(self) -> Path:
        return self.workdir / "kube-controller-manager.kubeconfig"

    @property
    def kwok_kubeconfig_path(self) -> Path:
        return self.workdir / "kwok.kubeconfig"

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        """Running (or exited but not yet stopped) components by name, oldest first; the
        scheduler is listed last since it is the first to stop."""
        procs = {
            "etcd": self._etcd,
            "kube-apiserver": self._apiserver,
            **self._others,
            "kube-scheduler": self._scheduler,
        }
        return {name: proc for name, proc in procs.items() if proc is not None}

    @property
    def scheduler_running(self) -> bool:
        return self._scheduler is not None and self._scheduler.alive()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *, scheduler: bool = False) -> None:
        """Start etcd and kube-apiserver (and kube-scheduler if ``scheduler``); wait until ready."""
        if self._apiserver is not None:
            raise ClusterError("cluster already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        _running.add(self)
        try:
            self._pki = pki.generate(self.workdir / "pki")
            self._write_tokens()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfigs()
            if scheduler:
                self.start_scheduler()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component, newest first. Safe to call more than once."""
        self.stop_scheduler()
        for name in reversed(list(self._others)):
            self._others.pop(name).stop()
        for attr in ("_apiserver", "_etcd"):
            proc: ManagedProcess | None = getattr(self, attr)
            if proc is not None:
                proc.stop()
                setattr(self, attr, None)
        _running.discard(self)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone, as an outage or an upgrade does: etcd and the other components
        keep running, and every client's connections to it break. :meth:`start_apiserver` brings
        it back on the same port, so kubeconfigs stay valid."""
        if self._apiserver is None:
            raise ClusterError("kube-apiserver is not running")
        self._apiserver.stop()
        self._apiserver = None

    def start_apiserver(self) -> None:
        """Start kube-apiserver again after :meth:`stop_apiserver`; returns once it is ready."""
        if self._apiserver is not None or self._etcd is None:
            raise ClusterError("start_apiserver() follows stop_apiserver() on a started cluster")
        self._start_apiserver()

    def start_scheduler(
        self,
        extender_url: str | None = None,
        *,
        extender_config: Mapping[str, Any] | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Start kube-scheduler, with gpusched as extender when a URL is given here or at init.

        ``extender_config`` (or the one given at init) is merged over the extender defaults.
        ``scheduler_config`` replaces top-level keys of the generated KubeSchedulerConfiguration
        (for example ``podInitialBackoffSeconds``, or ``profiles``, ``extenders`` and
        ``clientConnection`` to run a complete configuration of one's own).
        Returns once the scheduler reports ready.
        """
        if self._apiserver is None:
            raise ClusterError("start the cluster before the scheduler")
        if self._scheduler is not None:
            raise ClusterError("kube-scheduler is already running; use restart_scheduler()")
        url = extender_url if extender_url is not None else self.extender_url
        overrides = dict(extender_config) if extender_config is not None else self.extender_config
        self._scheduler_args = (url, overrides)
        self._scheduler_config = dict(scheduler_config or {})
        config_path = self.workdir / "kube-scheduler.yaml"
        config = scheduler_configuration(self.scheduler_kubeconfig_path, self.scheduler_names, url, overrides)
        config.update(self._scheduler_config)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.scheduler_port = free_port()
        kubeconfig = str(self.scheduler_kubeconfig_path)
        self._scheduler = self._spawn(
            "kube-scheduler",
            [
                f"--config={config_path}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                f"--cert-dir={self.workdir / 'kube-scheduler-certs'}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                # No front-proxy CA exists here; looking for one only fills the log with errors.
                "--authentication-skip-lookup=true",
                "--v=2",
            ],
        )
        self._wait_ready(self._scheduler, f"https://127.0.0.1:{self.scheduler_port}/readyz", context=_insecure())

    def stop_scheduler(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None

    def restart_scheduler(self) -> None:
        """Stop kube-scheduler and start it again with the configuration of its last start."""
        url, overrides = self._scheduler_args
        self.stop_scheduler()
        self.start_scheduler(url, extender_config=overrides, scheduler_config=self._scheduler_config)

    # ------------------------------------------------- pods that run: KWOK and controllers

    def start_process(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready_url: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> ManagedProcess:
        """Run another process with the cluster (its log is ``<workdir>/<name>.log``); wait for
        ``ready_url`` to answer 2xx when given. It is stopped, newest first, with the cluster."""
        if self._apiserver is None:
            raise ClusterError(f"start the cluster before {name}")
        if name in self._others or name in ("etcd", "kube-apiserver", "kube-scheduler"):
            raise ClusterError(f"{name} is already running")
        proc = ManagedProcess(name, list(argv), self.workdir / f"{name}.log", die_with_parent=self._die_with_parent)
        self._others[name] = proc
        if ready_url is not None:
            self._wait_ready(proc, ready_url, context=context)
        return proc

    def stop_process(self, name: str) -> None:
        proc = self._others.pop(name, None)
        if proc is not None:
            proc.stop()

    def start_controller_manager(self, controllers: Sequence[str] = CONTROLLERS) -> None:
        """Start kube-controller-manager with ``controllers`` (Jobs, Deployments, ...)."""
        self.controller_manager_port = free_port()
        kubeconfig = str(self.controller_manager_kubeconfig_path)
        self.start_process(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--authentication-skip-lookup=true",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.workdir / 'kube-controller-manager-certs'}",
                "--leader-elect=false",
                f"--controllers={','.join(controllers)}",
                # Controllers act as the manager's own (token) user, not per-controller accounts.
                "--use-service-account-credentials=false",
                "--v=1",
            ],
            ready_url=f"https://127.0.0.1:{self.controller_manager_port}/healthz",
            context=_insecure(),
        )

    def start_kwok(self, *, job_seconds: float = kwok.DEFAULT_JOB_SECONDS, controller_manager: bool = True) -> None:
        """Start KWOK's controller (and kube-controller-manager unless asked not to): pods bound
        to fake nodes run, and Job pods finish after ``job_seconds`` (see :mod:`localcluster.kwok`)."""
        if controller_manager and "kube-controller-manager" not in self._others:
            self.start_controller_manager()
        config = kwok.write_configuration(self.workdir / "kwok.yaml", job_seconds)
        self.kwok_port = free_port()
        self.start_process(
            "kwok",
            [
                str(binary("kwok")),
                f"--kubeconfig={self.kwok_kubeconfig_path}",
                f"--config={config}",
                f"--server-address=127.0.0.1:{self.kwok_port}",
                f"--node-port={self.kwok_port}",
                "--node-ip=127.0.0.1",
            ],
            ready_url=f"http://127.0.0.1:{self.kwok_port}/healthz",
        )

    def start_node_reports(self, scenario: Path, *, interval: float = 2.0) -> None:
        """Keep a GPUNodeReport fresh for each of the scenario's nodes (:mod:`localcluster.reporter`)."""
        self.start_process(
            REPORTER,
            [
                sys.executable,
                "-m",
                "localcluster.reporter",
                f"--kubeconfig={self.kubeconfig_path}",
                f"--scenario={Path(scenario).resolve()}",
                f"--interval={interval}",
            ],
        )

    def create_scenario(self, scenario: Mapping[str, Any]) -> list[str]:
        """Create the scenario's nodes for KWOK (and its running pods); return the node names."""
        nodes = kwok.scenario_nodes(scenario)
        with self.api_client() as api:
            for node in nodes:
                k8s.request(api, "POST", "/api/v1/nodes", kwok.node_object(node))
            for pod in kwok.scenario_pods(scenario):
                namespace = pod["metadata"]["namespace"]
                k8s.create_namespace(api, namespace)
                k8s.request(api, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        return [node.name for node in nodes]

    # ---------------------------------------------------------------- API helpers

    def api_client(self) -> ApiClient:
        """A kubernetes ApiClient authenticated as cluster admin."""
        return k8s.api_client(self.kubeconfig_path)

    def create_gpu_node(
        self,
        name: str,
        gpus: int,
        labels: Mapping[str, str] | None = None,
        *,
        gpu_resource: str = DEFAULT_GPU_RESOURCE,
        cpu: str = "64",
        memory: str = "512Gi",
        images: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """See :func:`localcluster.k8s.create_gpu_node`."""
        with self.api_client() as api:
            return k8s.create_gpu_node(
                api, name, gpus, labels, gpu_resource=gpu_resource, cpu=cpu, memory=memory, images=images
            )

    def set_node_ready(self, name: str, ready: bool) -> None:
        """See :func:`localcluster.k8s.set_node_ready`."""
        with self.api_client() as api:
            k8s.set_node_ready(api, name, ready)

    def create_namespace(self, name: str) -> None:
        """See :func:`localcluster.k8s.create_namespace`."""
        with self.api_client() as api:
            k8s.create_namespace(api, name)

    def apply_crds(self, path: Path, timeout: float = 60.0) -> list[str]:
        """See :func:`localcluster.k8s.apply_crds`."""
        with self.api_client() as api:
            return k8s.apply_crds(api, path, timeout=timeout)

    def apply_manifest(self, manifest: Path | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """See :func:`localcluster.k8s.apply_manifest`."""
        with self.api_client() as api:
            return k8s.apply_manifest(api, manifest)

    # ------------------------------------------------------------------ internals

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        return ManagedProcess(
            name,
            [str(self.bin_dir / name), *args],
            self.workdir / f"{name}.log",
            die_with_parent=self._die_with_parent,
        )

    def _wait_ready(
        self,
        proc: ManagedProcess,
        url: str,
        *,
        context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise ClusterError(
                    f"{proc.name} exited with code {proc.popen.returncode} during start; "
                    f"end of {proc.log_path}:\n{tail(proc.log_path)}"
                )
            if http_ok(url, context=context, token=token):
                return
            time.sleep(0.2)
        raise ClusterError(
            f"{proc.name} not ready at {url} after {self.start_timeout:.0f}s; "
            f"end of {proc.log_path}:\n{tail(proc.log_path)}"
        )

    def _write_tokens(self) -> None:
        # CSV columns: token, user name, uid, "groups"
        # The controller manager and KWOK act for a whole cluster of kubelets and controllers;
        # on this throwaway loopback cluster they get cluster-admin rather than a role each.
        rows = [
            f'{self.admin_token},admin,admin,"system:masters"',
            f"{self._scheduler_token},{SCHEDULER_USER},{SCHEDULER_USER}",
            f'{self._controller_manager_token},{CONTROLLER_MANAGER_USER},{CONTROLLER_MANAGER_USER},"system:masters"',
            f'{self._kwok_token},{KWOK_USER},{KWOK_USER},"system:masters"',
        ]
        path = self.workdir / "tokens.csv"
        path.write_text("\n".join(rows) + "\n")
        path.chmod(0o600)

    def _start_etcd(self) -> None:
        self.etcd_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._etcd = self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Throwaway data: skipping fsync makes every write (and the tests) much faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_ready(self._etcd, f"{client_url}/health")

    def _start_apiserver(self) -> None:
        assert self._pki is not None
        self.apiserver_port = self.apiserver_port or free_port()  # the same port when started again
        self._apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The endpoints reconciler rejects loopback addresses, and nothing in-cluster
                # needs the kubernetes Service's endpoints.
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={self._pki.serving_cert}",
                f"--tls-private-key-file={self._pki.serving_key}",
                f"--client-ca-file={self._pki.ca_cert}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self._pki.sa_pub}",
                f"--service-account-signing-key-file={self._pki.sa_key}",
                f"--disable-admission-plugins={','.join(DISABLED_ADMISSION_PLUGINS)}",
                "--enable-priority-and-fairness=false",
                # Kubernetes' own gang API (Workload, PodGroup, a Pod's spec.schedulingGroup), beta
                # and off by default; kube-scheduler's own gang scheduling stays off (gpusched places
                # gangs).
                "--feature-gates=GenericWorkload=true",
                "--runtime-config=scheduling.k8s.io/v1beta1=true",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        context = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        self._wait_ready(self._apiserver, f"{self.api_url}/readyz", context=context, token=self.admin_token)

    def _write_kubeconfigs(self) -> None:
        for path, user, token in (
            (self.kubeconfig_path, "admin", self.admin_token),
            (self.scheduler_kubeconfig_path, SCHEDULER_USER, self._scheduler_token),
            (self.controller_manager_kubeconfig_path, CONTROLLER_MANAGER_USER, self._controller_manager_token),
            (self.kwok_kubeconfig_path, KWOK_USER, self._kwok_token),
        ):
            path.write_text(yaml.safe_dump(_kubeconfig(self.api_url, self.ca_path, user, token), sort_keys=False))
            path.chmod(0o600)

    def state(self) -> dict[str, Any]:
        """What ``gpusched-cluster down``/``status`` need to find a detached cluster again."""
        return {
            "workdir": str(self.workdir),
            "api_url": self.api_url,
            "kubeconfig": str(self.kubeconfig_path),
            "scheduler_port": self.scheduler_port or None,
            "etcd_port": self.etcd_port,
            "pids": {name: proc.pid for name, proc in self.processes.items()},
        }

    def write_state(self, path: Path) -> None:
        path.write_text(json.dumps(self.state(), indent=2) + "\n")

    def detach(self) -> None:
        """Leave the components running after this process exits (``gpusched-cluster up --detach``)."""
        _running.discard(self)
        self._etcd = self._apiserver = self._scheduler = None
        self._others = {}
