"""A fake NVML beneath pynvml: a C library with NVML's entry points, driven by a machine fixture.

pynvml loads ``libnvidia-ml.so.1`` with ctypes and calls its functions through its own wrappers.
This package compiles ``fake_nvml.c`` (with the C compiler, once per source version) into a
library of that name and puts it where pynvml looks, so that every pynvml wrapper (argument
marshalling, structs, error codes) runs unchanged against a described machine:

- :func:`activate` (in this process): installs the fake as ``pynvml.nvmlLib`` and names the
  fixture in ``$GPUSCHED_FAKE_NVML_MACHINE``; the next ``nvmlInit`` reads it.
- :func:`environment` (for a child process): ``LD_LIBRARY_PATH`` and the fixture variable, so
  that even an unmodified ``pynvml.nvmlInit()`` in the child loads the fake.

Machines are JSON files in ``machines/`` (``dgx-h100``, ``hgx-a100-40gb``, ``l4x4``,
``h100-mig``, ``gb200-nvl``); any other fixture may be given by path. The format is described
in ``README.md`` next to this file. Libraries are cached in ``$GPUSCHED_FAKE_NVML_CACHE``
(default ``~/.cache/gpusched/fake-nvml``) under the hash of the C source.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE = PACKAGE_DIR / "fake_nvml.c"
MACHINES_DIR = PACKAGE_DIR / "machines"
LIBRARY_NAME = "libnvidia-ml.so.1"
MACHINE_ENV = "GPUSCHED_FAKE_NVML_MACHINE"
CACHE_ENV = "GPUSCHED_FAKE_NVML_CACHE"
COMPILE_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden")


class FakeNvmlError(RuntimeError):
    """The fake library could not be built, or the machine fixture does not exist."""


def machines() -> list[str]:
    """Names of the bundled machine fixtures."""
    return sorted(p.stem for p in MACHINES_DIR.glob("*.json"))


def machine_path(machine: str | os.PathLike[str]) -> Path:
    """The fixture file for a bundled machine name or a path to a JSON fixture."""
    text = os.fspath(machine)
    bundled = MACHINES_DIR / f"{text}.json"
    if bundled.is_file():
        return bundled
    path = Path(text).expanduser()
    if path.suffix == ".json" and path.is_file():
        return path.resolve()
    raise FakeNvmlError(f"no fake NVML machine {text!r}; bundled machines: {', '.join(machines())}")


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "gpusched" / "fake-nvml"


def build(*, compiler: str | None = None) -> Path:
    """Compile the fake library if this source version is not built yet; return its path."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    target_dir = cache_dir() / digest
    library = target_dir / LIBRARY_NAME
    if library.is_file():
        return library
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise FakeNvmlError("the fake NVML needs a C compiler (cc or gcc, or $CC) to build its library")
    target_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so concurrent builders never see a half-written file.
    fd, partial = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target_dir)
    os.close(fd)
    try:
        result = subprocess.run(
            [cc, *COMPILE_FLAGS, f"-Wl,-soname,{LIBRARY_NAME}", "-o", partial, str(SOURCE), "-lpthread"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise FakeNvmlError(f"building the fake NVML library failed:\n{result.stderr}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def environment(machine: str | os.PathLike[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process whose ``libnvidia-ml.so.1`` is the fake for ``machine``."""
    env = dict(os.environ if base is None else base)
    library_dir = str(build().parent)
    existing = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{library_dir}:{existing}" if existing else library_dir
    env[MACHINE_ENV] = str(machine_path(machine))
    return env


def activate(machine: str | os.PathLike[str]) -> Path:
    """Make this process's pynvml talk to the fake library describing ``machine``.

    Call it while NVML is shut down (or before it was ever initialised); the fixture is read on
    the next ``nvmlInit``. Returns the fixture path.
    """
    import pynvml

    fixture = machine_path(machine)
    library = build()
    os.environ[MACHINE_ENV] = str(fixture)
    with pynvml.libLoadLock:
        pynvml.nvmlLib = ctypes.CDLL(str(library))
        pynvml._nvmlGetFunctionPointer_cache.clear()
    return fixture


def deactivate() -> None:
    """Forget the fake: the next ``nvmlInit`` loads whatever ``libnvidia-ml.so.1`` the system has."""
    import pynvml

    with pynvml.libLoadLock:
        pynvml.nvmlLib = None
        pynvml._nvmlGetFunctionPointer_cache.clear()
    os.environ.pop(MACHINE_ENV, None)
