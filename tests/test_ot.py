"""Sinkhorn, Hungarian and permutation matrices: marginals, padding, brute force, conventions."""

import itertools

import numpy as np
import pytest
import torch

from gnn_align import PermutationSpec, apply_permutation, ot
from gnn_align.ot import hungarian, matrix_to_perm, perm_to_matrix, sinkhorn


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _packed(gen):
    """A 3x3 and a 5x5 problem packed into one (2, 5, 5) batch, with garbage in the padding."""
    q3, q5 = torch.randn(3, 3, generator=gen), torch.randn(5, 5, generator=gen)
    x = torch.randn(2, 5, 5, generator=gen) * 100
    x[0, :3, :3], x[1] = q3, q5
    mask = torch.zeros(2, 5, 5, dtype=torch.bool)
    mask[0, :3, :3], mask[1] = True, True
    return q3, q5, x, mask


def _brute(s, n, m):
    perms = np.array(list(itertools.permutations(range(m), n)))
    totals = s.numpy()[np.arange(n), perms].sum(1)
    order = np.argsort(-totals)
    margin = totals[order[0]] - totals[order[1]] if len(totals) > 1 else np.inf
    return torch.from_numpy(perms[order[0]]), totals[order[0]], margin


# ---------------------------------------------------------------- sinkhorn

def test_sinkhorn_doubly_stochastic_batched():
    q = torch.randn(4, 6, 6, generator=_gen())
    p = sinkhorn(q, n_iters=200)
    assert p.shape == q.shape and (p > 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(p.sum(-2), torch.ones(4, 6), atol=1e-6, rtol=0)
    for b in range(4):  # batched equals looping
        torch.testing.assert_close(sinkhorn(q[b], n_iters=200), p[b], atol=1e-13, rtol=0)


def test_sinkhorn_mask_packs_problems():
    q3, q5, x, mask = _packed(_gen(1))
    p = sinkhorn(x, n_iters=200, tau=0.7, mask=mask)
    assert torch.equal(p[~mask], torch.zeros(int((~mask).sum())))  # padding exactly 0
    for blk in (p[0, :3, :3], p[1]):
        k = blk.shape[0]
        torch.testing.assert_close(blk.sum(-1), torch.ones(k), atol=1e-6, rtol=0)
        torch.testing.assert_close(blk.sum(-2), torch.ones(k), atol=1e-6, rtol=0)
    torch.testing.assert_close(p[0, :3, :3], sinkhorn(q3, n_iters=200, tau=0.7), atol=1e-12, rtol=0)
    torch.testing.assert_close(p[1], sinkhorn(q5, n_iters=200, tau=0.7), atol=1e-12, rtol=0)
    # a mask of all True is the same as no mask
    torch.testing.assert_close(sinkhorn(x, 30, mask=torch.ones_like(mask)), sinkhorn(x, 30), atol=1e-13, rtol=0)


@pytest.mark.parametrize("tau", [1.0, 1e-3])
@pytest.mark.parametrize("masked", [False, True])
def test_sinkhorn_finite_at_extreme_logits(tau, masked):
    gen = _gen(2)
    x = torch.where(torch.rand(2, 5, 5, generator=gen) < 0.5, -1e4, 1e4)
    x[0, 0, 0], x[1, 2, 3] = 1e4, -1e4
    mask = None
    if masked:
        mask = torch.zeros(2, 5, 5, dtype=torch.bool)
        mask[0, :2, :4] = True  # rectangular block, fully padded rows and columns; batch 1 all padding
    x.requires_grad_(True)
    p = sinkhorn(x, n_iters=50, tau=tau, mask=mask)
    assert torch.isfinite(p).all()
    (p * torch.randn(p.shape, generator=gen)).sum().backward()
    assert torch.isfinite(x.grad).all()
    if masked:
        assert torch.equal(p[~mask], torch.zeros(int((~mask).sum())))
        assert torch.equal(x.grad[~mask], torch.zeros(int((~mask).sum())))


def test_sinkhorn_gradcheck():
    _, _, x, mask = _packed(_gen(3))
    x = (x / 100).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sinkhorn(t, n_iters=4, tau=0.7, mask=mask), (x,))
    y = torch.randn(2, 3, 4, generator=_gen(4), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sinkhorn(t, n_iters=3, tau=1.3), (y,))


def test_sinkhorn_low_temperature_is_hungarian():
    gen = _gen(5)
    perms = torch.stack([torch.randperm(6, generator=gen) for _ in range(4)])
    q = 3 * perm_to_matrix(perms) + 0.5 * torch.randn(4, 6, 6, generator=gen)
    hard = perm_to_matrix(hungarian(q))
    assert torch.equal(hungarian(q), perms)
    torch.testing.assert_close(sinkhorn(q, n_iters=200, tau=0.03), hard, atol=1e-9, rtol=0)
    # random scores: whenever the optimum wins by a clear margin, a cold Sinkhorn lands on it
    for _ in range(10):
        s = torch.randn(5, 5, generator=gen)
        best, _, margin = _brute(s, 5, 5)
        if margin > 0.05:  # (low-temperature Sinkhorn converges slowly: loose tolerance)
            p = sinkhorn(s, n_iters=500, tau=margin / 20)
            torch.testing.assert_close(p, perm_to_matrix(best), atol=2e-2, rtol=0)
            assert torch.equal(hungarian(p), best)


def test_sinkhorn_rectangular_marginals():
    gen = _gen(6)
    q = torch.randn(2, 3, 5, generator=gen)
    p = sinkhorn(q, n_iters=300, tau=0.5)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3), atol=1e-6, rtol=0)  # rows: 1
    torch.testing.assert_close(p.sum(-2), torch.full((2, 5), 3 / 5), atol=1e-6, rtol=0)  # cols: n / m
    # packed as a 3x5 block of a (2, 5, 5) batch beside a full 5x5 problem: same result
    x = torch.randn(2, 5, 5, generator=gen)
    x[0, :3] = q[0]
    mask = torch.ones(2, 5, 5, dtype=torch.bool)
    mask[0, 3:] = False
    pm = sinkhorn(x, n_iters=300, tau=0.5, mask=mask)
    torch.testing.assert_close(pm[0, :3], p[0], atol=1e-12, rtol=0)
    assert torch.equal(pm[0, 3:], torch.zeros(2, 5))
    torch.testing.assert_close(pm[1], sinkhorn(x[1], n_iters=300, tau=0.5), atol=1e-12, rtol=0)


def test_sinkhorn_only_adds_row_and_column_constants():
    q = torch.randn(3, 4, 6, generator=_gen(7))
    d = sinkhorn(q, n_iters=7, tau=0.8).log() - q / 0.8
    # d[i, j] = a[i] + b[j]  <=>  all second differences vanish
    torch.testing.assert_close(d - d[:, :1] - d[:, :, :1] + d[:, :1, :1], torch.zeros_like(d), atol=1e-10, rtol=0)


def test_sinkhorn_errors():
    with pytest.raises(ValueError, match=r"\(5,\)"):
        sinkhorn(torch.zeros(5))
    with pytest.raises(ValueError, match="tau"):
        sinkhorn(torch.zeros(2, 2), tau=0.0)


# ---------------------------------------------------------------- hungarian

@pytest.mark.parametrize("rect", [False, True])
def test_hungarian_matches_brute_force(rect):
    gen = _gen(8 + rect)
    unique = 0
    for _ in range(60):
        n = int(torch.randint(1, 7, (1,), generator=gen))
        m = n + int(torch.randint(1, 3, (1,), generator=gen)) if rect else n
        if m > 6:
            n, m = n - (m - 6), 6
        s = torch.randn(n, m, generator=gen)
        perm = hungarian(s)
        best, total, margin = _brute(s, n, m)
        assert perm.dtype == torch.long and perm.shape == (n,)
        assert len(set(perm.tolist())) == n
        assert abs(s[torch.arange(n), perm].sum().item() - total) < 1e-12
        if margin > 1e-9:
            unique += 1
            assert torch.equal(perm, best)
    assert unique > 50


def test_hungarian_batched_equals_looping_and_dtypes():
    s = torch.randn(7, 4, 6, generator=_gen(10))
    perm = hungarian(s)
    assert perm.shape == (7, 4)
    assert torch.equal(perm, torch.stack([hungarian(x) for x in s]))
    assert torch.equal(hungarian(s.float()), perm)
    ints = torch.randint(-1000, 1000, (5, 5), generator=_gen(11))
    assert torch.equal(hungarian(ints), hungarian(ints.double()))
    assert hungarian(torch.zeros(0, 3)).shape == (0,)


def test_hungarian_in_threads_equals_one_thread(monkeypatch):
    s = torch.randn(40, 9, 9, generator=_gen(12))
    one = torch.stack([hungarian(x) for x in s])
    calls = []
    real = ot.ThreadPoolExecutor
    monkeypatch.setattr(ot, "ThreadPoolExecutor", lambda n: calls.append(n) or real(n))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert torch.equal(hungarian(s), one) and calls == [3]  # 40 problems: 3 threads of at least 8
        assert torch.equal(hungarian(s[:20]), one[:20]) and calls == [3, 2]
        assert torch.equal(hungarian(s[:15]), one[:15]) and calls == [3, 2]  # too few to share
    finally:
        torch.set_num_threads(old)


def test_hungarian_on_sinkhorn_equals_hungarian():
    gen = _gen(12)
    for _ in range(30):
        n = int(torch.randint(2, 8, (1,), generator=gen))
        q = torch.randn(n, n, generator=gen)
        # exact in the log domain, for any number of iterations (only row/column constants are added)
        assert torch.equal(hungarian(sinkhorn(q, n_iters=500, tau=1.0).log()), hungarian(q))
        assert torch.equal(hungarian(sinkhorn(q, n_iters=3, tau=1.0).log()), hungarian(q))
        # on the matrix itself once the temperature is low enough (not in general at tau = 1)
        assert torch.equal(hungarian(sinkhorn(q, n_iters=200, tau=0.01)), hungarian(q))


def test_hungarian_direction_convention():
    p = torch.tensor([2, 0, 3, 1])
    assert torch.equal(hungarian(perm_to_matrix(p)), p)
    # end to end: scores[i, j] = <row i of A, row j of B>; the result aligns B onto A
    spec = PermutationSpec({"h": 5}, {"0.weight": ("h", None), "0.bias": ("h",), "2.weight": (None, "h")})
    gen = _gen(13)
    theta_a = {"0.weight": torch.randn(5, 3, generator=gen), "0.bias": torch.randn(5, generator=gen),
               "2.weight": torch.randn(2, 5, generator=gen)}
    theta_b = apply_permutation(theta_a, {"h": torch.randperm(5, generator=gen)}, spec)
    scores = theta_a["0.weight"] @ theta_b["0.weight"].T + theta_a["2.weight"].T @ theta_b["2.weight"]
    aligned = apply_permutation(theta_b, {"h": hungarian(scores)}, spec)
    for k, v in theta_a.items():
        assert torch.equal(aligned[k], v)


def test_hungarian_errors():
    with pytest.raises(ValueError, match=r"n <= m.*\(4, 3\)"):
        hungarian(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"n <= m.*\(2, 4, 3\)"):
        hungarian(torch.zeros(2, 4, 3))
    for bad in (float("nan"), float("inf"), -float("inf")):
        s = torch.zeros(3, 3)
        s[1, 2] = bad
        with pytest.raises(ValueError, match=r"NaN or Inf.*\(3, 3\)"):
            hungarian(s)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        hungarian(torch.zeros(3))


# ---------------------------------------------------------------- permutation matrices

def test_perm_matrix_round_trip():
    gen = _gen(14)
    for n, m in [(1, 1), (5, 5), (3, 7)]:
        p = torch.randperm(m, generator=gen)[:n]
        mat = perm_to_matrix(p, m)
        assert mat.shape == (n, m) and mat.dtype == torch.float64
        assert torch.equal(mat.sum(-1), torch.ones(n)) and all(mat[i, p[i]] == 1 for i in range(n))
        assert torch.equal(matrix_to_perm(mat), p)
    batch = torch.stack([torch.randperm(6, generator=gen) for _ in range(3)])
    mats = perm_to_matrix(batch, dtype=torch.float32)
    assert mats.shape == (3, 6, 6) and mats.dtype == torch.float32
    assert torch.equal(matrix_to_perm(mats), batch)
    # P @ x gathers rows: (P @ x)[i] = x[perm[i]]
    x = torch.randn(6, 2, generator=gen)
    assert torch.equal(perm_to_matrix(batch[0]) @ x, x[batch[0]])


def test_perm_to_matrix_errors():
    with pytest.raises(ValueError, match="0..2"):
        perm_to_matrix(torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="integer"):
        perm_to_matrix(torch.tensor([0.0, 1.0]))
