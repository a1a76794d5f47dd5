"""Certificates and keys for a throwaway control plane, made with the ``openssl`` CLI.

The CLI is used rather than a Python crypto package so the launcher needs nothing beyond the
standard library and the kubernetes client. Keys are ECDSA P-256: quick to generate, and accepted
by kube-apiserver for both serving and service-account token signing.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVICE_IP = "10.0.0.1"
"""First address of the service CIDR: the in-cluster ``kubernetes`` Service, named in the cert."""

_SERVER_NAMES = (
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
    f"IP:{SERVICE_IP}",
)
_DAYS = "3650"


class PkiError(RuntimeError):
    """openssl is missing or failed."""


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {proc.stdout.strip()}")


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path.name,
        cwd=path.parent,
    )


def generate(directory: Path) -> Pki:
    """Create a CA, an apiserver serving cert signed by it, and a service-account key pair."""
    if shutil.which("openssl") is None:
        raise PkiError("the 'openssl' command is required to create the cluster's certificates")
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    _ec_key(pki.ca_key)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        pki.ca_key.name,
        "-out",
        pki.ca_cert.name,
        "-days",
        _DAYS,
        "-subj",
        "/CN=gpusched-localcluster-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    _ec_key(pki.serving_key)
    extensions = directory / "apiserver.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(_SERVER_NAMES)}\n"
    )
    _openssl(
        "req",
        "-new",
        "-key",
        pki.serving_key.name,
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        pki.ca_cert.name,
        "-CAkey",
        pki.ca_key.name,
        "-CAcreateserial",
        "-out",
        pki.serving_cert.name,
        "-days",
        _DAYS,
        "-extfile",
        extensions.name,
        cwd=directory,
    )
    _ec_key(pki.sa_key)
    _openssl("pkey", "-in", pki.sa_key.name, "-pubout", "-out", pki.sa_pub.name, cwd=directory)
    return pki
