"""The image definitions, read as Docker reads them (no builder runs here): each Dockerfile builds in
stages from a pinned base, leaves compilers out of the image it ships, runs as non-root, and
names its image (OCI labels title and version); every image of the manifests and of the workload
templates is one of those, or an upstream image pinned to an exact version."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests import install
from tests.prometheus import MANIFESTS, REPO

DOCKERFILES = [REPO / "Dockerfile", REPO / "workloads" / "Dockerfile"]
TEMPLATES = sorted((REPO / "workloads").glob("*/templates/*.yaml")) + sorted(
    (REPO / "localcluster" / "examples").glob("*.yaml")
)
UPSTREAM = ("registry.k8s.io/",)  # images gpusched runs but does not build
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cc|make|cmake|nvcc|cuda-toolkit\S*)\b")
# name:tag with an exact version (1.2.3, v1.37.2, 3.11.11-slim-bookworm), or pinned by digest
PINNED = re.compile(r"^[\w./-]+(:v?\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


def stages(dockerfile: Path) -> list[Stage]:
    """The build stages: comments dropped, continuation lines joined, instructions upper-cased."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    out: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            if words[0].startswith("--platform"):
                words = words[1:]
            out.append(Stage(words[0], words[2] if len(words) == 3 and words[1].lower() == "as" else ""))
        elif not out:
            raise ValueError(f"{dockerfile}: {instruction} before the first FROM")
        else:
            out[-1].instructions.append((instruction, args))
    return out


def pinned(image: str) -> bool:
    return bool(PINNED.match(image)) and (":" in image.split("/")[-1] or "@sha256:" in image)


def defined_images() -> dict[str, Path]:
    """title:version of each Dockerfile's final stage -> the Dockerfile."""
    images = {}
    for path in DOCKERFILES:
        labels = " ".join(args for instruction, args in stages(path)[-1].instructions if instruction == "LABEL")
        found = dict(re.findall(r'org\.opencontainers\.image\.(title|version)="([^"]+)"', labels))
        images[f"{found['title']}:{found['version']}"] = path
    return images


def container_images(objects: list[dict[str, object]]) -> set[str]:
    images = set()
    for obj in objects:
        text = yaml.safe_dump(obj)
        images |= set(re.findall(r"^\s*image: (\S+)$", text, flags=re.MULTILINE))
    return images


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_is_multi_stage_pinned_and_ships_no_compiler(dockerfile: Path) -> None:
    built = stages(dockerfile)
    assert len(built) >= 2, "one stage to build, one to ship"
    names = {s.name for s in built if s.name}
    for stage in built:
        assert stage.base in names or pinned(stage.base), f"{stage.base}: pin an exact version or a digest"
    final = built[-1]
    assert final.base not in names, "the shipped stage must not start from a build stage (it has its compilers)"
    for instruction, args in final.instructions:
        if instruction == "RUN":
            assert not COMPILERS.search(args), f"the shipped stage installs a compiler: RUN {args}"
    copied = [args for instruction, args in final.instructions if instruction == "COPY"]
    assert copied and all(a.startswith("--from=") for a in copied), "the shipped stage copies only built results"
    users = [args for instruction, args in final.instructions if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image runs as non-root"


def test_stage_parser_sees_what_docker_sees(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# a comment\nFROM python:3.11.11-slim AS build\nRUN apt-get install \\\n    gcc\n"
        "FROM build\nRUN echo\nfrom debian:latest as x\n"
    )
    built = stages(path)
    assert [(s.base, s.name) for s in built] == [
        ("python:3.11.11-slim", "build"),
        ("build", ""),
        ("debian:latest", "x"),
    ]
    assert built[0].instructions == [("RUN", "apt-get install      gcc")]
    assert COMPILERS.search(built[0].instructions[0][1])
    assert [pinned(i) for i in ("debian:latest", "python:3.11", "python", "python:3.11.11-slim")] == [
        False,
        False,
        False,
        True,
    ]
    assert pinned("python@sha256:" + "a" * 64) and pinned("registry.k8s.io/kube-scheduler:v1.37.2")


def test_every_image_the_manifests_and_templates_name_is_defined_or_pinned_upstream() -> None:
    defined = defined_images()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert sorted(defined) == sorted([f"gpusched:{version}", f"gpusched-workloads:{version}"])
    named = container_images(install.build(MANIFESTS))
    templates = [obj for path in TEMPLATES for obj in yaml.safe_load_all(path.read_text()) if obj]
    from_templates = container_images(templates)
    assert from_templates == {f"gpusched-workloads:{version}"}
    for image in named | from_templates:
        if image.startswith(UPSTREAM):
            assert pinned(image), image
        else:
            assert image in defined, f"{image} is built by no Dockerfile here ({sorted(defined)})"
