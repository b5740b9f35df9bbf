"""bfloat16 matrix products as a screen with proven error bounds; exact arithmetic only where it can matter.

On a CPU with AVX512_BF16 a bf16 product runs ~2.5x faster than float32 and reads half the bytes, but
its rounding would change which sample is nearest. So it is used only to rule pairs out: every pair
whose true similarity could matter (be the maximum of its row, or exceed a threshold) is kept, with a
bound that holds for any summation order, and the kept pairs are then evaluated in float64 from the
exact vectors (selection.kcenter.exact_sq). The result is the exact answer, not a bf16 one.

Bound, for x, t (float32) and their bf16 roundings x~, t~ (an extra column carries a per-row shift c~
so that the product x~.t~ - c~ is small where it matters and its own bf16 rounding is tiny):

    |x.t - (x~.t~)| <= |x - x~| |t~| + |x| |t - t~|                          (inputs)
    |fl32(sum) - sum| <= gamma_(d+1) |[x~, -c~]| |[t~, 1]|                   (fp32 accumulation)
    |bf16(v) - v| <= RHO |v|                                                (output rounding)

with RHO = 2^-8 (round to nearest gives 2^-9) and gamma_n = n u / (1 - n u), u = 2^-23 (any rounding
mode). Products of two bf16 numbers are exact in float32.

The datapool side of an exact verification (kcenter._PoolVerifier) uses int8 instead (Int8Rows: a quarter
of the float32 bytes, exact int32 accumulation, so the bound is the quantisation alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

RHO = 2.0**-7
_RHO1 = RHO / (1.0 - RHO)
U32 = 2.0**-23  # float32 unit roundoff
_WIDTH_STEP = 256  # LowRows.above: product widths rounded up to a multiple of this


def gamma(n: int) -> float:
    """Higham's gamma_n for float32: bounds the relative error of an n-term float32 sum in any order."""
    return n * U32 / (1.0 - n * U32)


def fp32_slack(dim: int) -> float:
    """Largest error of a float32 dot product of two unit vectors of `dim` terms (any order)."""
    return 2.0 * gamma(dim)


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
                 chunk: int = 4096) -> None:
        torch = _torch()
        self.dim = dim
        self.low = torch.zeros((n, dim + 1), dtype=torch.bfloat16)  # zeros: padded products read unset rows
        self.low[:, dim] = 1.0
        self.err_max, self.norm_max = 1e-30, 0.0
        if fill is not None:
            for start in range(0, n, chunk):
                self.set_rows(start, fill(start, min(n, start + chunk)))

    def set_rows(self, start: int, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float32).reshape(-1, self.dim)
        err, norm, low = rounding(rows)
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
             + gamma(self.dim + 1) * np.sqrt((x_norm + x_err) ** 2 + s64**2) * np.sqrt(self.norm_max**2 + 1.0))
        return torch.cat([xl, -sl[:, None]], dim=1), s64, k * (1 + 1e-9) + 1e-30

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
            width = min(hi, start + chunk) - start
            # the product's width rounded up (rows past `hi` are computed and dropped): oneDNN keeps compiled
            # code for every bf16 product shape it sees (~1 MB each, never freed), and the pending picks take
            # thousands of widths (N = M = 1e6, k = 1e4: +0.8 GB resident over the picks)
            padded = min(len(self) - start, -(-width // _WIDTH_STEP) * _WIDTH_STEP)
            v = (xq @ self.low[start : start + padded].T)[:, :width]
            rows = (v.max(dim=1).values >= need).nonzero(as_tuple=True)[0]
            if len(rows):
                b, j = (v[rows] >= need[rows, None]).nonzero(as_tuple=True)
                kept_b.append(rows[b])
                kept_j.append(j + start)
        if not kept_b:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return torch.cat(kept_b).numpy(), torch.cat(kept_j).numpy()


class Int8Rows:
    """A matrix of float32 rows held as int8 (a quarter of the bytes), one scale per block of `block` rows,
    for screened products against it (at_least). Held for the whole datapool at 1e6 x 512: 0.5 GB, where
    bf16 took 1 GB and the selection's peak memory was over 1.5x the two embedding matrices.

    int8 x int8 products accumulate exactly in int32 (|sum| <= d 127^2 < 2^24 is also exact in float64),
    so the only error is the quantisation: for x ~ s_x q_x (a scale per row of x) and t ~ s_B q_t
    (a scale per block B of this matrix),

        |x.t - s_x s_B (q_x . q_t)| <= |x - s_x q_x| |s_B q_t| + |x| |t - s_B q_t|

    with both norms of the differences evaluated in float64 (exact up to ~1e-16 relative)."""

    def __init__(self, n: int, dim: int, fill: Callable[[int, int], np.ndarray], block: int = 16384) -> None:
        torch = _torch()
        self.dim, self.block, self.n = dim, block, n
        self.q = torch.empty((n, dim), dtype=torch.int8)
        self.scales = np.ones(max(1, -(-n // block)))
        self.err_max, self.norm_max = 0.0, 0.0
        lo, hi = np.inf, -np.inf
        for i, start in enumerate(range(0, n, block)):
            t = np.asarray(fill(start, min(n, start + block)), np.float32).reshape(-1, dim)
            peak = float(np.abs(t).max()) if t.size else 0.0
            scale = peak / 127.0 if peak > 0 else 1.0
            self.scales[i] = scale
            for a in range(0, len(t), 4096):  # float64 errors a part at a time
                t64 = t[a : a + 4096].astype(np.float64)
                q = np.clip(np.rint(t64 / scale), -127, 127)
                self.q[start + a : start + a + len(q)] = torch.from_numpy(q.astype(np.int8))
                q *= scale
                self.norm_max = max(self.norm_max, float(np.sqrt(np.einsum("ij,ij->i", q, q).max())))
                q -= t64
                self.err_max = max(self.err_max, float(np.sqrt(np.einsum("ij,ij->i", q, q).max())))
                sq = np.einsum("ij,ij->i", t64, t64)
                lo, hi = min(lo, float(sq.min())), max(hi, float(sq.max()))
        self.err_max *= 1 + 1e-12
        self.norm_max *= 1 + 1e-12
        self.sq_norm_range = (lo * (1 - 1e-12), hi * (1 + 1e-12)) if lo <= hi else (1.0, 1.0)

    def __len__(self) -> int:
        return self.n

    def at_least(self, x: np.ndarray, threshold: np.ndarray,
                 margin: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (row of x, row of this matrix) whose true similarity can be >= threshold (per row of x);
        every other pair is proven below it. One pass over the matrix.

        With `margin`, also only pairs that can come within `margin` of their row's largest true
        similarity (tracked over the blocks read so far, the kept pairs filtered again at the end): a
        loose threshold then costs little once a block holds a near row."""
        torch = _torch()
        x64 = np.asarray(x, np.float64).reshape(-1, self.dim)
        peak = np.abs(x64).max(axis=1) if x64.size else np.zeros(len(x64))
        s_x = np.where(peak > 0, peak / 127.0, 1.0)
        q_x = np.clip(np.rint(x64 / s_x[:, None]), -127, 127)
        e_x = np.sqrt(np.einsum("ij,ij->i", x64 - s_x[:, None] * q_x, x64 - s_x[:, None] * q_x)) * (1 + 1e-12)
        k = e_x * self.norm_max + np.sqrt(np.einsum("ij,ij->i", x64, x64)) * (1 + 1e-12) * self.err_max + 1e-9
        qx = torch.from_numpy(q_x.astype(np.int8))
        need = np.asarray(threshold, np.float64) - k  # keep iff s_x s_B Q >= need
        vmax = np.full(len(x64), -np.inf)
        kept_b, kept_j, kept_v = [], [], []
        for i, start in enumerate(range(0, self.n, self.block)):
            product = torch._int_mm(qx, self.q[start : start + self.block].T)  # rows of x x block, exact
            scale = s_x * self.scales[i]
            qmax = product.amax(dim=1).numpy().astype(np.float64)
            if margin is not None:
                vmax = np.maximum(vmax, scale * qmax)
                need = np.maximum(need, vmax - 2.0 * k - margin)
            # integer form of s_x s_B Q >= need, rounded down (a superset)
            qneed = np.clip(np.floor(need / scale) - 1.0, -(2.0**31), 2.0**31 - 1)
            hit = np.flatnonzero(qmax >= qneed)
            if len(hit):
                part = product[torch.from_numpy(hit)]
                row, j = (part >= torch.from_numpy(qneed[hit].astype(np.int32))[:, None]).nonzero(as_tuple=True)
                b = hit[row.numpy()]
                kept_b.append(b)
                kept_j.append(j.numpy() + start)
                kept_v.append(scale[b] * part[row, j].numpy().astype(np.float64))
        if not kept_b:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        b, j, v = np.concatenate(kept_b), np.concatenate(kept_j), np.concatenate(kept_v)
        keep = v >= need[b]
        return b[keep], j[keep]
