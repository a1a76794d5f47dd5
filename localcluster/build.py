"""Build etcd, the Kubernetes binaries, kubectl and KWOK from Go modules, cached by version.

Binaries live outside the checkout in ``$GPUSCHED_CLUSTER_CACHE`` (default
``~/.cache/gpusched/localcluster``) so that every checkout and CI run on the machine shares one
build, and are linked into ``localcluster/bin/``:

- ``<k8s-version>-<etcd-version>/bin/``: etcd, kube-apiserver, kube-scheduler,
  kube-controller-manager and kubectl, built from the module in ``localcluster/go``;
- ``kwok-<kwok-version>/bin/kwok``: KWOK's controller, built from its own module
  (``go install sigs.k8s.io/kwok/cmd/kwok@<version>``, with KWOK's own pinned dependencies).

A binary is built only when it is missing from its versioned directory; Go's own module and build
caches (GOMODCACHE, GOCACHE) are used as usual. Each build logs its time.

Usage: ``python -m localcluster.build [--force] [NAME ...]`` (default: every binary).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from localcluster import gen_replaces
from localcluster.versions import ETCD_VERSION, K8S_VERSION, KWOK_VERSION, cache_key

PACKAGE_DIR = Path(__file__).resolve().parent
GO_DIR = PACKAGE_DIR / "go"
CHECKOUT_BIN = PACKAGE_DIR / "bin"
CACHE_ENV = "GPUSCHED_CLUSTER_CACHE"

# binary name -> Go package, relative to GO_DIR's module
PACKAGES: dict[str, str] = {
    "etcd": "./cmd/etcd",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-scheduler")
"""What every LocalCluster needs; the rest is built when first asked for (or by ``make controlplane``)."""
BINARIES = (*PACKAGES, "kwok")


class BuildError(RuntimeError):
    """The Go toolchain is missing or a build failed."""


def cache_root() -> Path:
    """Root of the shared binary cache (``$GPUSCHED_CLUSTER_CACHE`` overrides it)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "gpusched" / "localcluster"


def cached_bin_dir() -> Path:
    """Versioned directory that holds (or will hold) the binaries built from ``localcluster/go``."""
    return cache_root() / cache_key() / "bin"


def kwok_bin_dir() -> Path:
    """Versioned directory that holds (or will hold) the ``kwok`` binary."""
    return cache_root() / f"kwok-{KWOK_VERSION}" / "bin"


def cached_path(name: str) -> Path:
    """Where the cache keeps binary ``name`` (built or not)."""
    if name not in BINARIES:
        raise ValueError(f"unknown binary {name!r} (one of {', '.join(BINARIES)})")
    return (kwok_bin_dir() if name == "kwok" else cached_bin_dir()) / name


def _log(message: str) -> None:
    print(f"[localcluster.build] {message}", file=sys.stderr, flush=True)


def _missing(names: Sequence[str]) -> list[str]:
    return [name for name in names if not os.access(cached_path(name), os.X_OK)]


def _gomod_in_sync() -> bool:
    proc = subprocess.run(["go", "mod", "edit", "-json"], cwd=GO_DIR, check=True, text=True, stdout=subprocess.PIPE)
    required = {r["Path"]: r["Version"] for r in json.loads(proc.stdout).get("Require") or []}
    return (
        required.get("k8s.io/kubernetes") == K8S_VERSION and required.get("go.etcd.io/etcd/server/v3") == ETCD_VERSION
    )


def _version_ldflags() -> str:
    """Linker flags that make the binaries (and /version) report the real release."""
    major, minor = K8S_VERSION.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": K8S_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    flags = [
        f"-X {pkg}.{key}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in values.items()
    ]
    return " ".join(["-s", "-w", *flags])


def _go_build(name: str, out: Path) -> None:
    cmd = [
        "go",
        "build",
        "-trimpath",
        f"-p={os.cpu_count() or 2}",
        f"-ldflags={_version_ldflags()}",
        "-o",
        str(out),
        PACKAGES[name],
    ]
    _run_go(name, PACKAGES[name], cmd, cwd=GO_DIR, env={})


def _kwok_install(out: Path) -> None:
    """``go install`` KWOK at its pinned version into a scratch GOBIN (its own go.mod applies)."""
    gobin = out.parent / f"gobin-{os.getpid()}"
    shutil.rmtree(gobin, ignore_errors=True)
    gobin.mkdir(parents=True)
    try:
        package = f"{KWOK_PACKAGE}@{KWOK_VERSION}"
        cmd = ["go", "install", "-trimpath", f"-p={os.cpu_count() or 2}", "-ldflags=-s -w", package]
        # Outside any module, so that localcluster/go's go.mod plays no part.
        _run_go("kwok", package, cmd, cwd=gobin, env={"GOBIN": str(gobin), "GOFLAGS": ""})
        (gobin / "kwok").rename(out)
    finally:
        shutil.rmtree(gobin, ignore_errors=True)


def _run_go(name: str, package: str, cmd: list[str], *, cwd: Path, env: dict[str, str]) -> None:
    # CGO off: static binaries, and no C toolchain needed for a pure-Go build.
    full_env = {**os.environ, "CGO_ENABLED": "0", **env}
    started = time.monotonic()
    _log(f"building {name} ({package})")
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, check=False)
    if proc.returncode != 0:
        raise BuildError(f"go build of {name} failed with exit code {proc.returncode}")
    _log(f"built {name} in {time.monotonic() - started:.0f}s")


def _link_into_checkout() -> None:
    CHECKOUT_BIN.mkdir(exist_ok=True)
    for name in BINARIES:
        target = cached_path(name)
        link = CHECKOUT_BIN / name
        if not target.exists():
            continue
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.readlink() == target:
                continue
            link.unlink()
        link.symlink_to(target)


def ensure_built(names: Sequence[str] = CONTROL_PLANE, *, force: bool = False) -> Path:
    """Build whichever of ``names`` the cache lacks (all of them with ``force``); return the
    directory of the binaries built from ``localcluster/go`` (:func:`cached_path` finds any one).

    A file lock makes concurrent callers (parallel test sessions) wait for one build.
    """
    if not force and not _missing(names):
        _link_into_checkout()
        return cached_bin_dir()
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain ('go') is not on PATH")
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = list(names) if force else _missing(names)
        if todo:
            _build(todo)
    _link_into_checkout()
    return cached_bin_dir()


def _build(names: Sequence[str]) -> None:
    started = time.monotonic()
    _log(f"kubernetes {K8S_VERSION}, etcd {ETCD_VERSION}, kwok {KWOK_VERSION}: {', '.join(names)}")
    if any(name != "kwok" for name in names) and not _gomod_in_sync():
        _log("go.mod does not match versions.py; regenerating it")
        gen_replaces.sync()
    for name in names:
        target = cached_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{name}.partial-{os.getpid()}")
        staging.unlink(missing_ok=True)
        try:
            if name == "kwok":
                _kwok_install(staging)
            else:
                _go_build(name, staging)
            # rename is atomic, so a reader never sees a half-written binary.
            staging.rename(target)
        finally:
            staging.unlink(missing_ok=True)
    _log(f"done in {time.monotonic() - started:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the local cluster's binaries.")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BINARIES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BINARIES]
    if unknown:
        parser.error(f"unknown binary {unknown[0]!r} (one of {', '.join(BINARIES)})")
    try:
        ensure_built(args.names or BINARIES, force=args.force)
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in args.names or BINARIES:
        print(cached_path(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
