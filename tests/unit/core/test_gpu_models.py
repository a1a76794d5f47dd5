"""GPU model names as users write them, matched against the names NVML reports (the real names are
read from the NVML fixtures and the fake machines, not typed here)."""

import json
from pathlib import Path

import pytest

from scheduler.core.gpu_models import matches, matching_ids

ROOT = Path(__file__).resolve().parents[3]


def _nvml_names() -> set[str]:
    """Every GPU name in the NVML fixtures and the bundled fake machines."""
    names: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("name", "model") and isinstance(item, str) and item.startswith("NVIDIA "):
                    names.add(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in [*ROOT.glob("tests/fixtures/nvml/*.json"), *ROOT.glob("gpu_agent/fake_nvml/machines/*.json")]:
        walk(json.loads(path.read_text()))
    return names


NAMES = _nvml_names()
H100 = "NVIDIA H100 80GB HBM3"
H100_NVL = "NVIDIA H100 NVL"
A100_PCIE = "NVIDIA A100-PCIE-40GB"
A100_SXM = "NVIDIA A100-SXM4-40GB"


def test_the_fixtures_hold_the_names_the_table_speaks_of() -> None:
    assert {H100, H100_NVL, A100_PCIE, A100_SXM, "NVIDIA H200", "NVIDIA L4", "NVIDIA GB200"} <= NAMES


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        # As users write the H100 80GB: short, with its size, NVML's name, GFD's label form.
        ("H100", {H100}),  # not the H100 NVL, a product of its own, nor its MIG slices
        ("H100-80GB", {H100}),
        ("h100 80gb", {H100}),
        ("H100_80G", {H100}),  # 80G, 80GiB and 80GB are one size word
        (H100, {H100}),
        ("NVIDIA-H100-80GB-HBM3", {H100}),
        ("H100 HBM3 80GB", {H100}),  # descriptive words in any order
        ("H100-94GB", set()),  # a size the name does not say
        ("H100 NVL", {H100_NVL}),
        ("NVIDIA H100 NVL MIG 1g.12gb", {"NVIDIA H100 NVL MIG 1g.12gb"}),
        ("H200", {"NVIDIA H200"}),
        ("H200-141GB", set()),  # NVML's H200 name says no size: ask for memory with gpu-memory
        ("A100", {A100_PCIE, A100_SXM}),  # PCIE and SXM4 are form factors of the same product
        ("A100-40GB", {A100_PCIE, A100_SXM}),
        ("a100 sxm4", {A100_SXM}),
        ("A100-80GB", set()),
        ("A100X", set()),
        ("L4", {"NVIDIA L4"}),
        ("L40", set()),
        ("L40S", set()),
        ("GB200", {"NVIDIA GB200"}),
        ("B200", set()),
        ("NVIDIA", set()),  # the vendor alone names no model
        ("", set()),
    ],
)
def test_names_users_write_match_the_real_names(wanted: str, expected: set[str]) -> None:
    assert {name for name in NAMES if matches(wanted, name)} == expected


@pytest.mark.parametrize(
    ("wanted", "gpu", "expected"),
    [
        ("A100", "NVIDIA A100X", False),  # A100X is a different product, not an A100 variant
        ("A100X", "NVIDIA A100X", True),
        ("T4", "Tesla T4", True),  # older NVML names carry the Tesla brand
        ("V100-16GB", "Tesla V100-SXM2-16GB", True),
        ("V100M16", "V100M16", True),  # the Alibaba trace's names match themselves
        ("V100M16", "V100M32", False),
        ("H100", "NVIDIA H100 PCIe", True),
        ("RTX 6000", "NVIDIA RTX 6000 Ada Generation", False),  # Ada is its own product
    ],
)
def test_other_names(wanted: str, gpu: str, expected: bool) -> None:
    assert matches(wanted, gpu) is expected


def test_matching_ids_are_the_indices_of_every_name_any_wanted_name_matches() -> None:
    names = [H100, H100_NVL, A100_SXM, "NVIDIA L4"]
    assert matching_ids(("H100", "L4"), names) == [0, 3]
    assert matching_ids(("A100-80GB",), names) == []
