"""Whether a GPU model name a pod writes (annotation gpusched.io/gpu-models) names a GPU's model
as its GPUNodeReport gives it (NVML's name, e.g. "NVIDIA H100 80GB HBM3").

The rule:
1. Both names are split into words: lower case, split at spaces, dashes and underscores; the vendor
   and brand words ("nvidia", "tesla") are dropped. A size word ("80g", "80gb", "80gi", "80gib") is
   written "80gb". So "NVIDIA-H100-80GB-HBM3" (GPU Feature Discovery's label form), "h100 80gb" and
   "H100_80G" are words of the same name.
2. Words are either descriptive (a size "80gb", a memory type "hbm3"/"hbm2e"/"gddr6", a form factor
   "sxm4"/"pcie") or name the product (everything else: "h100", "nvl", "a100x", "mig", "1g.12gb").
3. The pod's name matches the GPU's when their product words are the same set, and each of the
   pod's descriptive words is one of the GPU's.

So "H100", "H100-80GB" and "NVIDIA H100 80GB HBM3" match the H100 80GB; "H100" does not match the
"H100 NVL" (the word "nvl" makes it another product) nor its MIG slices; "A100" matches the
A100-PCIE-40GB and A100-SXM4-40GB but not the A100X; "A100-80GB" does not match an A100 whose name
says 40GB; "H200-141GB" does not match "NVIDIA H200" (its NVML name says no size: a memory floor
belongs in gpusched.io/gpu-memory). Words match whole, in any order. A name of no product word
("NVIDIA", "") matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

VENDOR_WORDS = frozenset({"nvidia", "tesla"})
_SEPARATORS = re.compile(r"[\s_\-]+")
_SIZE = re.compile(r"([0-9]+)(?:g|gb|gi|gib)")
_DESCRIPTIVE = re.compile(r"[0-9]+gb|hbm[0-9]*e?|gddr[0-9]+x?|sxm[0-9]*|pcie")


@lru_cache(maxsize=4096)
def words(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(product words, descriptive words) of a model name, by the module's rule."""
    product: set[str] = set()
    descriptive: set[str] = set()
    for word in _SEPARATORS.split(name.lower()):
        if not word or word in VENDOR_WORDS:
            continue
        size = _SIZE.fullmatch(word)
        word = f"{size.group(1)}gb" if size else word
        (descriptive if _DESCRIPTIVE.fullmatch(word) else product).add(word)
    return frozenset(product), frozenset(descriptive)


def matches(wanted: str, gpu: str) -> bool:
    """Whether the name a pod wrote names the GPU model `gpu` (the module's rule)."""
    want_product, want_descriptive = words(wanted)
    have_product, have_descriptive = words(gpu)
    return bool(want_product) and want_product == have_product and want_descriptive <= have_descriptive


def matching_ids(wanted: Iterable[str], names: Sequence[str]) -> list[int]:
    """Indices of the model `names` that any of the `wanted` names matches, in order."""
    wanted = tuple(wanted)
    return [i for i, name in enumerate(names) if any(matches(w, name) for w in wanted)]
