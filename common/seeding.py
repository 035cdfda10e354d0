"""One seed-derivation function for every random draw of the repository.

`derive_seed(*parts)` hashes a tuple of integers (a run or sample seed, a step, an index, a stream tag)
into one 63-bit seed for `torch.Generator().manual_seed`. A draw seeded by its own tuple does not
depend on what else was drawn before it, nor on batch sizes or process counts, so training resumes
bit-identically and a sample does not depend on how the set was split into batches.

The last part names the stream, so that two kinds of draw never share a seed:

| tag | stream                                   | parts                              |
|-----|------------------------------------------|------------------------------------|
| 1   | training: data order of an epoch         | (train seed, epoch, 1)             |
| 2   | training: t, noise, label drop of a row  | (train seed, step, row index, 2)   |
| 3   | sampling: initial noise of sample i      | (sample seed, i, 3)                |
| 4   | sampling: SDE / ancestral noise of a step | (sample's seed, step, 4)          |
| 5   | sampling: seed of frame f (sequential)   | (sample's seed, f, 5)              |
"""
from __future__ import annotations

TRAIN_ORDER, TRAIN_DRAW, SAMPLE_NOISE, STEP_NOISE, FRAME = 1, 2, 3, 4, 5


def derive_seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B9 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


__all__ = ["derive_seed", "TRAIN_ORDER", "TRAIN_DRAW", "SAMPLE_NOISE", "STEP_NOISE", "FRAME"]
