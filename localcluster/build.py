"""Build etcd, kube-apiserver and kube-scheduler from Go modules, cached by version.

Binaries live outside the checkout in ``$GPUSCHED_CLUSTER_CACHE`` (default
``~/.cache/gpusched/localcluster``) under ``<k8s-version>-<etcd-version>/bin/`` so that every
checkout and CI run on the machine shares one build, and are linked into ``localcluster/bin/``.
A build happens only when that versioned directory is missing; Go's own module and build caches
(GOMODCACHE, GOCACHE) are used as usual.

Usage: ``python -m localcluster.build [--force]``.
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
from pathlib import Path

from localcluster import gen_replaces
from localcluster.versions import ETCD_VERSION, K8S_VERSION, cache_key

PACKAGE_DIR = Path(__file__).resolve().parent
GO_DIR = PACKAGE_DIR / "go"
CHECKOUT_BIN = PACKAGE_DIR / "bin"
CACHE_ENV = "GPUSCHED_CLUSTER_CACHE"

# binary name -> Go package, relative to GO_DIR's module
PACKAGES: dict[str, str] = {
    "etcd": "./cmd/etcd",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
}
BINARIES = tuple(PACKAGES)


class BuildError(RuntimeError):
    """The Go toolchain is missing or a build failed."""


def cache_root() -> Path:
    """Root of the shared binary cache (``$GPUSCHED_CLUSTER_CACHE`` overrides it)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "gpusched" / "localcluster"


def cached_bin_dir() -> Path:
    """Versioned directory that holds (or will hold) the three binaries."""
    return cache_root() / cache_key() / "bin"


def _log(message: str) -> None:
    print(f"[localcluster.build] {message}", file=sys.stderr, flush=True)


def _is_complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARIES)


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


def _go_build(name: str, out_dir: Path) -> None:
    cmd = [
        "go",
        "build",
        "-trimpath",
        f"-p={os.cpu_count() or 2}",
        f"-ldflags={_version_ldflags()}",
        "-o",
        str(out_dir / name),
        PACKAGES[name],
    ]
    # CGO off: static binaries, and no C toolchain needed for a pure-Go build.
    env = {**os.environ, "CGO_ENABLED": "0"}
    started = time.monotonic()
    _log(f"building {name} ({PACKAGES[name]})")
    proc = subprocess.run(cmd, cwd=GO_DIR, env=env, check=False)
    if proc.returncode != 0:
        raise BuildError(f"go build of {name} failed with exit code {proc.returncode}")
    _log(f"built {name} in {time.monotonic() - started:.0f}s")


def _link_into_checkout(bin_dir: Path) -> None:
    CHECKOUT_BIN.mkdir(exist_ok=True)
    for name in BINARIES:
        link = CHECKOUT_BIN / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.readlink() == bin_dir / name:
                continue
            link.unlink()
        link.symlink_to(bin_dir / name)


def ensure_built(*, force: bool = False) -> Path:
    """Return the directory holding the binaries, building them first if needed.

    A file lock makes concurrent callers (parallel test sessions) wait for one build.
    """
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain ('go') is not on PATH")
    bin_dir = cached_bin_dir()
    if not force and _is_complete(bin_dir):
        _link_into_checkout(bin_dir)
        return bin_dir
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(bin_dir.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or not _is_complete(bin_dir):
            _build(bin_dir)
    _link_into_checkout(bin_dir)
    return bin_dir


def _build(bin_dir: Path) -> None:
    started = time.monotonic()
    _log(f"kubernetes {K8S_VERSION}, etcd {ETCD_VERSION} -> {bin_dir}")
    if not _gomod_in_sync():
        _log("go.mod does not match versions.py; regenerating it")
        gen_replaces.sync()
    staging = bin_dir.with_name(f"bin.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name in BINARIES:
            _go_build(name, staging)
        shutil.rmtree(bin_dir, ignore_errors=True)
        # rename is atomic, so a reader never sees a half-filled bin/.
        staging.rename(bin_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log(f"done in {time.monotonic() - started:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the local control plane binaries.")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    try:
        bin_dir = ensure_built(force=args.force)
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
