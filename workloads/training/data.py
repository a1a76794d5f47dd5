"""Synthetic, deterministic training data that a small model can learn in a few steps.

Each sequence follows t[i+1] = (a * t[i] + c) mod vocab from a random start, with a and c fixed
per run: the loss falls quickly, so a short run shows the optimiser works, and every batch is a
pure function of (seed, rank, step), so reruns and ranks are reproducible without any files.
"""

from __future__ import annotations

import torch


def make_batch(
    seed: int, rank: int, step: int, batch_size: int, seq_len: int, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (batch_size, seq_len) int64, targets shifted by one token."""
    if vocab_size < 2:
        raise ValueError("vocab_size must be at least 2")
    rule = torch.Generator().manual_seed(seed)
    a = int(torch.randint(1, vocab_size, (1,), generator=rule)) | 1  # odd, so the map is a cycle
    c = int(torch.randint(0, vocab_size, (1,), generator=rule))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + step)
    tokens = torch.empty(batch_size, seq_len + 1, dtype=torch.int64)
    tokens[:, 0] = torch.randint(0, vocab_size, (batch_size,), generator=gen)
    for i in range(seq_len):
        tokens[:, i + 1] = (a * tokens[:, i] + c) % vocab_size
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
