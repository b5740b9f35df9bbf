"""How many new samples a run adds."""

from __future__ import annotations

import math


def samples_to_select(n_candidates: int, n_samples: int | None, proportion_samples: float | None) -> int:
    """n_samples or proportion_samples of the *new* candidates (never of the datapool), capped at
    the number of candidates. proportion is rounded down, but selects at least one sample."""
    if n_candidates <= 0:
        return 0
    if n_samples is not None:
        return min(n_samples, n_candidates)
    assert proportion_samples is not None
    return min(n_candidates, max(1, math.floor(proportion_samples * n_candidates + 1e-9)))
