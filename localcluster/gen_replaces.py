"""Pin ``localcluster/go/go.mod`` to the versions in :mod:`localcluster.versions`.

k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at the
placeholder version v0.0.0 and resolves them with ``replace`` directives to its own source tree.
Those directives do not apply to a module that depends on it, so this script reads the
upstream go.mod and emits ``replace k8s.io/X => k8s.io/X v0.N.M`` for every such requirement,
then records the requirements, tool directives and go.sum with ``go mod edit``/``go mod tidy``.

Run ``python -m localcluster.gen_replaces`` after changing a version; ``--print`` only prints
the replace lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from localcluster.versions import ETCD_VERSION, K8S_VERSION, staging_version

GO_DIR = Path(__file__).resolve().parent / "go"
TOOLS = (
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-scheduler",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kubectl",
)
PLACEHOLDER = "v0.0.0"


def _go(*args: str, capture: bool = False) -> str:
    proc = subprocess.run(["go", *args], cwd=GO_DIR, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return proc.stdout or ""


def upstream_gomod(k8s_version: str = K8S_VERSION) -> Path:
    """Download k8s.io/kubernetes's go.mod into the module cache and return its path."""
    info = json.loads(_go("mod", "download", "-json", f"k8s.io/kubernetes@{k8s_version}", capture=True))
    if "Error" in info:
        raise RuntimeError(f"go mod download k8s.io/kubernetes@{k8s_version}: {info['Error']}")
    return Path(info["GoMod"])


def staging_replaces(k8s_version: str = K8S_VERSION) -> dict[str, str]:
    """Map each staging module path to the released version that stands in for v0.0.0."""
    mod = json.loads(_go("mod", "edit", "-json", str(upstream_gomod(k8s_version)), capture=True))
    target = staging_version(k8s_version)
    return {
        req["Path"]: target
        for req in mod.get("Require") or []
        if req["Path"].startswith("k8s.io/") and req["Version"] == PLACEHOLDER
    }


def _current_replaces() -> list[str]:
    mod = json.loads(_go("mod", "edit", "-json", capture=True))
    return [r["Old"]["Path"] for r in mod.get("Replace") or []]


def sync() -> None:
    """Rewrite go.mod/go.sum so they pin exactly the versions in versions.py."""
    replaces = staging_replaces()
    edits = [f"-dropreplace={path}" for path in _current_replaces()]
    edits += [
        f"-require=k8s.io/kubernetes@{K8S_VERSION}",
        f"-require=go.etcd.io/etcd/server/v3@{ETCD_VERSION}",
    ]
    edits += [f"-tool={tool}" for tool in TOOLS]
    _go("mod", "edit", *edits)
    # One replace block (go mod edit -replace would add a separate statement per module).
    block = "".join(f"\t{path} => {path} {version}\n" for path, version in sorted(replaces.items()))
    gomod = GO_DIR / "go.mod"
    gomod.write_text(gomod.read_text().rstrip("\n") + f"\n\nreplace (\n{block})\n")
    _go("mod", "tidy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--print", action="store_true", help="only print the replace directives")
    args = parser.parse_args(argv)
    if args.print:
        for path, version in sorted(staging_replaces().items()):
            print(f"replace {path} => {path} {version}")
        return 0
    sync()
    print(f"{GO_DIR / 'go.mod'} pinned to kubernetes {K8S_VERSION}, etcd {ETCD_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
