"""Soft and hard assignment: log-domain Sinkhorn, the Hungarian algorithm, permutation matrices.

A score matrix ``S`` of shape ``(n, m)`` rates neuron ``i`` of the reference network (A, rows)
against neuron ``j`` of the network being permuted (B, columns). Assignments follow the direction
convention of :mod:`gnn_align.permute`: ``perm[i] = j`` means neuron ``j`` of B moves to slot ``i``,
opposite neuron ``i`` of A, and ``perm_to_matrix(perm)[i, perm[i]] == 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .errors import GNNAlignError


def _neg(dtype: torch.dtype) -> float:
    # Finite stand-in for -inf: exp() of it (and of it minus any moderate logit) is exactly 0,
    # and, unlike -inf, it never produces inf - inf = NaN in values or gradients.
    return -torch.finfo(dtype).max / 8


def sinkhorn(log_alpha: Tensor, n_iters: int = 20, tau: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Log-domain Sinkhorn normalisation of ``exp(log_alpha / tau)``.

    Starting from ``Z = log_alpha / tau`` (masked entries at an effectively infinite negative value),
    alternates ``n_iters`` times a row normalisation then a column normalisation by log-sum-exp, and
    returns ``exp(Z)``. Each step only adds a per-row or per-column constant to ``Z``, so
    ``log(result) - log_alpha / tau`` is always of the form ``a[i] + b[j]``: every assignment is
    rescored by the same constant (Hungarian on the log of the result equals Hungarian on
    ``log_alpha``).

    Marginals: for a valid block of ``n`` rows and ``m`` columns, rows are normalised to sum 1 and
    columns to sum ``n / m`` (uniform column marginals carrying the same total mass ``n``). For a
    square block this is the usual doubly stochastic matrix; for a rectangular block with ``n < m``
    it is a soft partial assignment: each row of A is spread over the columns of B and each column
    receives mass ``n / m < 1``. Since the last step is a column step, columns match their marginal
    exactly and rows only up to convergence.

    Padding: ``mask`` packs problems of different sizes into one batch. A row (column) is counted as
    valid when it has at least one valid entry; ``n`` and ``m`` above are these counts, per batch
    element. Masked entries of the result are exactly 0; fully masked rows, columns or batch
    elements give zeros, and neither outputs nor gradients are ever NaN.

    Args:
        log_alpha: scores (logits), floating point.
        n_iters: number of (row, column) normalisation rounds; ``0`` returns ``exp(Z)`` unnormalised.
        tau: temperature (> 0); small values push the result towards a hard permutation.
        mask: optional bool tensor, ``True`` on valid entries, broadcastable to ``log_alpha``.

    Returns:
        The soft assignment matrix, same shape, dtype and device as ``log_alpha``. Differentiable.

    Shapes:
        log_alpha: ``(n, m)`` or ``(B, n, m)``. mask: same (or broadcastable). Returns: same.
    """
    if log_alpha.dim() not in (2, 3):
        raise GNNAlignError(f"sinkhorn expects a (n, m) or (B, n, m) tensor, got shape {tuple(log_alpha.shape)}")
    if not tau > 0:
        raise GNNAlignError(f"sinkhorn temperature tau must be > 0, got {tau}")
    neg = _neg(log_alpha.dtype)
    z = log_alpha / tau
    if mask is None:
        n, m = z.shape[-2:]
        col_shift = torch.tensor(float(np.log(n / m)) if n and m else 0.0, dtype=z.dtype, device=z.device)
        for _ in range(n_iters):
            z = z - torch.logsumexp(z, dim=-1, keepdim=True)
            z = z - torch.logsumexp(z, dim=-2, keepdim=True) + col_shift
        return torch.exp(z)
    mask = torch.broadcast_to(mask.to(device=z.device, dtype=torch.bool), z.shape)
    n_rows = mask.any(dim=-1).sum(dim=-1).to(z.dtype)  # (...,) valid rows per problem
    n_cols = mask.any(dim=-2).sum(dim=-1).to(z.dtype)
    col_shift = torch.log(n_rows.clamp_min(1) / n_cols.clamp_min(1))[..., None, None]
    z = torch.where(mask, z, neg)
    for _ in range(n_iters):
        z = torch.where(mask, z - torch.logsumexp(z, dim=-1, keepdim=True), neg)
        z = torch.where(mask, z - torch.logsumexp(z, dim=-2, keepdim=True) + col_shift, neg)
    return torch.where(mask, torch.exp(z), 0.0)


#: :func:`hungarian` spreads a batch over ``torch.get_num_threads()`` threads when each gets this many problems
HUNGARIAN_PER_WORKER = 8


def hungarian(scores: Tensor) -> Tensor:
    """Maximum-weight assignment of every row to a distinct column (``scipy`` ``linear_sum_assignment``).

    Args:
        scores: similarity of row ``i`` (neuron of A) and column ``j`` (neuron of B); any real dtype,
            any device. Must be finite and have no more rows than columns.

    Returns:
        LongTensor ``perm`` on ``scores.device`` with ``perm[i]`` the column assigned to row ``i``,
        maximising ``sum_i scores[i, perm[i]]``. For square input it is a permutation in the
        direction convention of :mod:`gnn_align.permute`. A batch is solved in up to
        ``torch.get_num_threads()`` threads (at least :data:`HUNGARIAN_PER_WORKER` problems each).

    Shapes:
        scores: ``(n, m)`` or ``(B, n, m)`` with ``n <= m``. Returns: ``(n,)`` or ``(B, n)``.

    Raises:
        GNNAlignError (a ``ValueError``): wrong number of dimensions, ``n > m``, or NaN/Inf scores.
    """
    shape = tuple(scores.shape)
    if scores.dim() not in (2, 3):
        raise GNNAlignError(f"hungarian expects a (n, m) or (B, n, m) score matrix, got shape {shape}")
    n, m = shape[-2:]
    if n > m:
        raise GNNAlignError(f"hungarian needs no more rows than columns (n <= m), got shape {shape}")
    s = scores.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise GNNAlignError(f"hungarian scores contain NaN or Inf (shape {shape})")
    flat = s.reshape(shape if s.dim() == 3 else (1, n, m)).numpy()
    out = np.empty((flat.shape[0], n), dtype=np.int64)

    def solve(b: int) -> None:
        rows, cols = linear_sum_assignment(flat[b], maximize=True)
        out[b, rows] = cols

    workers = min(torch.get_num_threads(), flat.shape[0] // HUNGARIAN_PER_WORKER)
    if workers > 1:  # scipy solves without the GIL: independent problems run in parallel threads
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(solve, range(flat.shape[0])))
    else:
        for b in range(flat.shape[0]):
            solve(b)
    return torch.from_numpy(out).reshape(shape[:-1]).to(scores.device)


def hungarian_heads(pair: Sequence[Tensor]) -> tuple:
    """Joint assignment of attention heads and of the dimensions within them, exactly: for every
    pair (A's head ``i``, B's head ``j``) the best within-head assignment of each family, then the
    assignment of B's heads to A's slots by the sum of those values.

    Args:
        pair: one tensor per family (the ``qk`` and ``v`` dimensions): ``pair[f][i, j, r, s]`` scores
            dimension ``r`` of A's head ``i`` against dimension ``s`` of B's head ``j``.

    Returns:
        ``(heads, within, value)``: ``heads`` (n,) with ``heads[i]`` B's head in slot ``i``; ``within[f][i]``
        (d_f,) the assignment of the dimensions of that head (A's head ``i`` against B's head
        ``heads[i]``); ``value`` (n, n) float64: the best within-head total of every head pair.

    Shapes:
        pair[f]: (n, n, d_f, d_f).
    """
    n = pair[0].shape[0]
    value = torch.zeros(n, n, dtype=torch.float64)
    sols = []
    for p in pair:
        d = p.shape[-1]
        flat = p.detach().to("cpu", torch.float64).reshape(n * n, d, d)
        sol = hungarian(flat)
        value += torch.take_along_dim(flat, sol[:, :, None], 2).sum((1, 2)).reshape(n, n)
        sols.append(sol.reshape(n, n, d))
    heads = hungarian(value)
    within = [[sol[i, int(heads[i])] for i in range(n)] for sol in sols]
    return heads, within, value


def perm_to_matrix(perm: Tensor, m: int | None = None, *, dtype: torch.dtype | None = None) -> Tensor:
    """One-hot assignment matrix ``P`` with ``P[i, perm[i]] = 1`` and zeros elsewhere.

    Args:
        perm: integer tensor of column indices, one per row.
        m: number of columns (default ``perm.shape[-1]``, a square matrix).
        dtype: dtype of the result (default: ``torch.get_default_dtype()``).

    Returns:
        ``P`` on ``perm.device``; ``hungarian(P)`` (or :func:`matrix_to_perm`) gives ``perm`` back
        when its entries are distinct.

    Shapes:
        perm: ``(n,)`` or ``(B, n)``. Returns: ``(n, m)`` or ``(B, n, m)``.
    """
    m = perm.shape[-1] if m is None else m
    if perm.dtype.is_floating_point or perm.dtype == torch.bool:
        raise GNNAlignError(f"perm_to_matrix expects an integer tensor, got dtype {perm.dtype}")
    if perm.numel() and (int(perm.min()) < 0 or int(perm.max()) >= m):
        raise GNNAlignError(f"perm_to_matrix: entries of perm (shape {tuple(perm.shape)}) must lie in 0..{m - 1}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return torch.nn.functional.one_hot(perm.long(), m).to(dtype)


def matrix_to_perm(P: Tensor) -> Tensor:
    """The hard assignment nearest a (soft) assignment matrix: ``hungarian(P)``.

    Shapes:
        P: ``(n, m)`` or ``(B, n, m)`` with ``n <= m``. Returns: ``(n,)`` or ``(B, n)``.
    """
    return hungarian(P)
