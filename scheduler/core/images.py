"""Container image references in one canonical form, so "nginx" matches "docker.io/library/nginx:latest"."""

from __future__ import annotations


def normalize_image(ref: str) -> str:
    """Canonical `registry/repository:tag` or `registry/repository@digest`."""
    ref = ref.strip()
    if not ref:
        return ref
    name, sep, digest = ref.partition("@")
    first, slash, _rest = name.partition("/")
    if not slash:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if sep:
        return f"{name}@{digest}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name = f"{name}:latest"
    return name
