"""bfloat16 matrix products as a screen with proven error bounds; exact float32 only where it can matter.

On a CPU with AVX512_BF16 a bf16 product runs ~2.5x faster than float32 and reads half the bytes, but
its rounding would change which sample is nearest. So it is used only to rule pairs out: every pair
whose true similarity could matter (be the maximum of its row, or exceed a threshold) is kept, with a
bound that holds for any summation order, and the kept pairs are then computed in float32 from the
exact vectors. The result is the float32 answer, not a bf16 one.

Bound, for x, t (float32) and their bf16 roundings x~, t~ (an extra column carries a per-row shift c~
so that the product x~.t~ - c~ is small where it matters and its own bf16 rounding is tiny):

    |x.t - (x~.t~)| <= |x - x~| |t~| + |x| |t - t~|                          (inputs)
    |fl32(sum) - sum| <= gamma_(d+1) |[x~, -c~]| |[t~, 1]|                   (fp32 accumulation)
    |bf16(v) - v| <= RHO |v|                                                (output rounding)

with RHO = 2^-8 (round to nearest gives 2^-9) and gamma_n = n u / (1 - n u), u = 2^-23 (any rounding
mode). Products of two bf16 numbers are exact in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

RHO = 2.0**-7
_RHO1 = RHO / (1.0 - RHO)
_U32 = 2.0**-23
Rows = Callable[[np.ndarray], np.ndarray]


def _gamma(n: int) -> float:
    return n * _U32 / (1.0 - n * _U32)


def fp32_slack(dim: int) -> float:
    """Largest error of a float32 dot product of two unit vectors of `dim` terms (any order)."""
    return 2.0 * _gamma(dim)


def _torch() -> Any:
    import torch

    return torch


def _lower(v: np.ndarray) -> np.ndarray:
    """Smallest accumulated value a bf16 output v can come from (increasing in v)."""
    return v - _RHO1 * np.abs(v)


def _upper_inv(y: np.ndarray) -> np.ndarray:
    """Smallest output v with v + RHO1 |v| >= y (then every output >= it is kept)."""
    return np.where(y >= 0, y / (1.0 + _RHO1), y / (1.0 - _RHO1))


def rounding(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    """Per row: |x - bf16(x)| and |x| (each rounded up), and bf16(x) as a torch tensor.

    x - bf16(x) is exact in float32 (at most 16 significant bits); the float32 norms are scaled by
    1 + 1e-4 to cover their own rounding."""
    torch = _torch()
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    low = xt.to(torch.bfloat16)
    err = torch.linalg.vector_norm(xt - low.float(), dim=1).numpy().astype(np.float64) * (1 + 1e-4)
    norm = torch.linalg.vector_norm(xt, dim=1).numpy().astype(np.float64) * (1 + 1e-4)
    return err, norm, low


class LowRows:
    """A matrix of float32 rows held as bf16 (half the bytes), with an extra column of ones and the
    largest rounding error and norm over its rows, for screened products against it."""

    def __init__(self, n: int, dim: int, fill: Callable[[int, int], np.ndarray] | None = None,
                 chunk: int = 65536) -> None:
        torch = _torch()
        self.dim = dim
        self.low = torch.empty((n, dim + 1), dtype=torch.bfloat16)
        self.low[:, dim] = 1.0
        self.err_max, self.norm_max = 1e-30, 0.0
        if fill is not None:
            for start in range(0, n, chunk):
                self.set_rows(start, fill(start, min(n, start + chunk)))

    def set_rows(self, start: int, rows: np.ndarray) -> None:
        err, norm, low = rounding(np.asarray(rows, np.float32).reshape(-1, self.dim))
        self.low[start : start + len(low), : self.dim] = low
        self.err_max = max(self.err_max, float(err.max()))
        self.norm_max = max(self.norm_max, float(norm.max()) + float(err.max()))  # bounds |bf16(row)|

    def __len__(self) -> int:
        return int(self.low.shape[0])

    def _query(self, x: np.ndarray, shift: np.ndarray, x_err: np.ndarray | None,
               x_norm: np.ndarray | None) -> tuple[Any, np.ndarray, np.ndarray]:
        """bf16 [x, -bf16(shift)], the shift actually used, and per row K: the input + accumulation part
        of the error bound. `x_err`, `x_norm`: rounding() of x when known already."""
        torch = _torch()
        if x_err is None or x_norm is None:
            x_err, x_norm, xl = rounding(x)
        else:
            xl = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16)
        sl = torch.from_numpy(np.ascontiguousarray(shift, np.float32)).to(torch.bfloat16)
        s64 = sl.double().numpy()
        k = (x_err * self.norm_max + x_norm * self.err_max
             + _gamma(self.dim + 1) * np.sqrt((x_norm + x_err) ** 2 + s64**2) * np.sqrt(self.norm_max**2 + 1.0))
        return torch.cat([xl, -sl[:, None]], dim=1), s64, k * (1 + 1e-9) + 1e-30

    def near_max(self, x: np.ndarray, shift: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (row of x, row of this matrix) that can hold a row's largest true similarity: the true
        argmax of every row of x is among them. `shift`: a similarity near each row's maximum (e.g. to
        an approximate nearest row), which keeps the bf16 outputs small."""
        torch = _torch()
        xq, _, k = self._query(x, shift, None, None)
        v = torch.empty((len(self), len(x)), dtype=torch.bfloat16)
        for start in range(0, len(self), chunk):
            torch.mm(self.low[start : start + chunk], xq.T, out=v[start : start + chunk])
        vmax = v.max(dim=0).values.double().numpy()
        # every output >= thr may be the maximum; bf16(thr) <= bf16 outputs >= thr, so a superset
        thr = torch.from_numpy(_upper_inv(_lower(vmax) - 2.0 * k)).to(torch.bfloat16)
        j, b = (v >= thr[None, :]).nonzero(as_tuple=True)
        return b.numpy(), j.numpy()

    def above(self, x: np.ndarray, threshold: np.ndarray, slack: float, lo: int, hi: int,
              x_err: np.ndarray | None = None, x_norm: np.ndarray | None = None,
              chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (row of x, row in [lo, hi) of this matrix) whose true similarity can be >= threshold -
        slack (every other pair is proven below it)."""
        torch = _torch()
        xq, shift, k = self._query(x, threshold, x_err, x_norm)
        # keep iff v + RHO1 |v| + shift + K >= threshold - slack
        need = torch.from_numpy(_upper_inv(threshold - slack - k - shift)).to(torch.bfloat16)
        kept_b, kept_j = [], []
        for start in range(lo, hi, chunk):
            v = xq @ self.low[start : min(hi, start + chunk)].T
            rows = (v.max(dim=1).values >= need).nonzero(as_tuple=True)[0]
            if len(rows):
                b, j = (v[rows] >= need[rows, None]).nonzero(as_tuple=True)
                kept_b.append(rows[b])
                kept_j.append(j + start)
        if not kept_b:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return torch.cat(kept_b).numpy(), torch.cat(kept_j).numpy()


def max_sim_rows(x: np.ndarray, b: np.ndarray, j: np.ndarray, rows: Rows) -> np.ndarray:
    """float32 max over the pairs (b, j) of x[b] . rows(j), per row of x (-inf where no pair)."""
    out = np.full(len(x), -np.inf, dtype=np.float32)
    if len(b) == 0:
        return out
    uniq, inv = np.unique(j, return_inverse=True)
    vectors = rows(uniq)
    sims = np.einsum("ij,ij->i", x[b], vectors[inv]).astype(np.float32)
    np.maximum.at(out, b, sims)
    return out
