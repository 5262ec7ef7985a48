"""Partial matching: A a narrower copy of B. Extraction, rectangular weight matching, the aligner."""

import itertools

import pytest
import torch

from gnn_align import apply_permutation, random_permutation, spec_from_module, to_graph
from gnn_align.aligner import GNNAligner
from gnn_align.archs import CNN, MLP, ResidualMLP, ResNet
from gnn_align.baselines import matching_objective, weight_matching
from gnn_align.ot import hungarian
from gnn_align.partial import check_narrower, complete_match, extract_subnetwork

from .conftest import _randomize_norms

# name -> (B's factory, A's factory: the same architecture narrower in every group, input shape)
PAIRS = {
    "mlp": (lambda: MLP(5, [12, 10], 3), lambda: MLP(5, [7, 6], 3), (5,)),
    "cnn1d_flatten": (lambda: CNN(1, [6, 7], 3, dim=1, kernel_size=5, head="flatten", input_size=8),
                      lambda: CNN(1, [3, 4], 3, dim=1, kernel_size=5, head="flatten", input_size=8), (1, 8)),
    "residual_mlp": (lambda: ResidualMLP(5, 6, 2, 3, hidden=7), lambda: ResidualMLP(5, 4, 2, 3, hidden=5), (5,)),
    "resnet2d_bn": (lambda: ResNet(2, 5, [5, 7], 3, dim=2), lambda: ResNet(2, 3, [3, 4], 3, dim=2), (2, 8, 8)),
}


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _planted(name, seed=0, dead=False):
    """B (random, BatchNorm randomised), a random injective map per group, A = B's sub-network.

    With ``dead``, B's unmatched neurons get zero outgoing weights first, so that B computes
    exactly A's function (B is A grown by neurons that do not contribute)."""
    fac_b, fac_a, shape = PAIRS[name]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mod_b = _randomize_norms(fac_b(), gen).eval()
    mod_a = fac_a().eval()
    x = torch.randn((6,) + shape, generator=gen)
    spec_b, spec_a = spec_from_module(mod_b, x), spec_from_module(mod_a, x)
    b = _state(mod_b)
    match = {g: torch.randperm(spec_b.group_sizes[g], generator=gen)[:n] for g, n in spec_a.group_sizes.items()}
    if dead:
        for key, axes in spec_b.axes.items():
            if len(axes) > 1 and axes[1] is not None:  # a weight's input axis
                g, block = axes[1]
                drop = torch.ones(spec_b.group_sizes[g], dtype=torch.bool)
                drop[match[g]] = False
                b[key][:, drop.repeat_interleave(block)] = 0
    a = extract_subnetwork(b, match, spec_b, spec_a)
    return {"a": a, "b": b, "spec_a": spec_a, "spec_b": spec_b, "match": match, "mod_a": mod_a, "mod_b": mod_b,
            "x": x}


def _same(p, q):
    return set(p) == set(q) and all(torch.equal(p[g], q[g]) for g in p)


# ---------------------------------------------------------------- rectangular Hungarian

@pytest.mark.parametrize("n_a,n_b", [(n, m) for m in range(1, 6) for n in range(1, m + 1)])
def test_rectangular_hungarian_is_the_best_injective_map(n_a, n_b):
    gen = torch.Generator().manual_seed(100 * n_a + n_b)
    maps = torch.tensor(list(itertools.permutations(range(n_b), n_a)))
    for _ in range(5):
        s = torch.randn(n_a, n_b, generator=gen)
        totals = s[torch.arange(n_a), maps].sum(1)
        best = maps[totals.argmax()]
        unique = (totals > totals.max() - 1e-9).sum() == 1
        match = hungarian(s)
        assert match.dtype == torch.long and match.shape == (n_a,)
        assert len(set(match.tolist())) == n_a  # injective
        assert abs(float(s[torch.arange(n_a), match].sum() - totals.max())) < 1e-12
        if unique:
            assert torch.equal(match, best)


def test_rectangular_hungarian_refuses_more_rows_than_columns():
    with pytest.raises(ValueError, match=r"n <= m.*\(5, 4\)"):
        hungarian(torch.zeros(5, 4))


# ---------------------------------------------------------------- extraction

def test_complete_match_puts_matched_first_then_the_rest_in_order():
    p = complete_match(torch.tensor([4, 1, 6]), 7, "h")
    assert torch.equal(p, torch.tensor([4, 1, 6, 0, 2, 3, 5]))
    assert torch.equal(complete_match(torch.tensor([2, 0, 1]), 3), torch.tensor([2, 0, 1]))


def test_extract_subnetwork_of_an_mlp_is_indexing():
    p = _planted("mlp", seed=3)
    a, b, (m1, m2) = p["a"], p["b"], (p["match"][g] for g in p["spec_a"].group_sizes)
    expected = {"0.weight": b["0.weight"][m1], "0.bias": b["0.bias"][m1],
                "2.weight": b["2.weight"][m2][:, m1], "2.bias": b["2.bias"][m2],
                "4.weight": b["4.weight"][:, m2], "4.bias": b["4.bias"]}
    assert set(a) == set(expected)
    for k, v in expected.items():
        assert torch.equal(a[k], v), k
    p["mod_a"].load_state_dict(a)  # A's shapes: loads into the narrower module


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_extract_subnetwork_of_a_grown_network_computes_the_same_function(name):
    # B's unmatched neurons do not contribute, so its sub-network must compute what B computes
    p = _planted(name, seed=1, dead=True)
    p["mod_b"].load_state_dict(p["b"])
    p["mod_a"].load_state_dict(p["a"])
    with torch.no_grad():
        y_b, y_a = p["mod_b"](p["x"]), p["mod_a"](p["x"])
    assert y_b.abs().max() > 1e-3
    assert torch.allclose(y_a, y_b, rtol=0, atol=1e-12)
    for k, v in p["a"].items():
        assert v.shape == p["mod_a"].state_dict()[k].shape and v.is_contiguous()


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_extract_subnetwork_of_full_width_is_apply_permutation(name):
    p = _planted(name)
    pi = random_permutation(p["spec_b"], torch.Generator().manual_seed(4))
    full = extract_subnetwork(p["b"], pi, p["spec_b"], p["spec_b"])
    ref = apply_permutation(p["b"], pi, p["spec_b"])
    assert set(full) == set(ref) and all(torch.equal(full[k], ref[k]) for k in ref)


def test_extract_subnetwork_errors_name_the_group():
    p = _planted("mlp")
    b, sa, sb, match = p["b"], p["spec_a"], p["spec_b"], p["match"]
    g = sa.groups[1]
    for bad, msg in [(torch.cat([match[g][:-1], match[g][:1]]), "not injective"),
                     (match[g][:-1], "has 5 entries, A's group has 6"),
                     (match[g].clone().fill_(10), "outside 0..9"),
                     (match[g].double(), "1-D LongTensor")]:
        with pytest.raises(ValueError, match=rf"group '{g}'.*{msg}|{msg}.*group '{g}'"):
            extract_subnetwork(b, {**match, g: bad}, sb, sa)
    with pytest.raises(ValueError, match=rf"no entry for group '{g}'"):
        extract_subnetwork(b, {sa.groups[0]: match[sa.groups[0]]}, sb, sa)
    with pytest.raises(ValueError, match=r"group '0' of A has 7 neurons, wider than B's 3"):
        check_narrower(sa, spec_from_module(MLP(5, [3, 6], 3), torch.zeros(1, 5)))
    with pytest.raises(ValueError, match=r"different permutation groups"):
        check_narrower(sa, spec_from_module(MLP(5, [12, 10, 4], 3), torch.zeros(1, 5)))
    with pytest.raises(ValueError, match=r"group 'nope'"):
        extract_subnetwork(b, {"nope": torch.tensor([0])}, sb)


# ---------------------------------------------------------------- weight matching

@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_partial_weight_matching_recovers_planted_subnetwork(name, seed):
    # Weight matching is a local method: from the identity start it recovers 95-100% of these
    # planted sub-networks (seeds 0..99; seed 0 of residual_mlp ends in a local optimum). The inner
    # product alone, without B's norm term, gets 2 ResNet sub-networks in 3 wrong.
    p = _planted(name, seed=seed)
    res = weight_matching(p["a"], p["b"], p["spec_a"], spec_b=p["spec_b"], generator=torch.Generator().manual_seed(0))
    assert _same(res.perm, p["match"])
    again = weight_matching(p["a"], p["b"], p["spec_a"], spec_b=p["spec_b"], init=p["match"])
    assert again.iterations == 1 and _same(again.perm, p["match"])
    sub = extract_subnetwork(p["b"], res.perm, p["spec_b"], p["spec_a"])
    assert set(sub) == set(p["a"]) and all(torch.equal(sub[k], p["a"][k]) for k in sub)
    obj = torch.tensor(res.objective)
    assert (obj[1:] >= obj[:-1] - 1e-9 * obj.abs().max()).all()
    assert obj[-1] == pytest.approx(matching_objective(p["a"], p["b"], res.perm, p["spec_a"], p["spec_b"]))
    # at the planted match A = B': the objective is (|A|^2 + |B|^2) / 2, its maximum
    keys = p["spec_a"].learnable_keys()
    top = 0.5 * sum(float(p["a"][k].square().sum() + p["b"][k].square().sum()) for k in keys)
    assert obj[-1] == pytest.approx(top, rel=1e-12)


def test_partial_weight_matching_from_a_random_start_never_decreases():
    p = _planted("mlp", seed=5)
    b = {k: v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(6)) for k, v in p["b"].items()}
    gen = torch.Generator().manual_seed(7)
    init = {g: torch.randperm(p["spec_b"].group_sizes[g], generator=gen)[:n]
            for g, n in p["spec_a"].group_sizes.items()}
    res = weight_matching(p["a"], b, p["spec_a"], spec_b=p["spec_b"], init=init,
                          generator=torch.Generator().manual_seed(0))
    obj = torch.tensor(res.objective)
    assert (obj[1:] >= obj[:-1] - 1e-9 * obj.abs().max()).all() and obj[-1] > obj[0]
    for g, n in p["spec_a"].group_sizes.items():
        assert res.perm[g].shape == (n,) and len(set(res.perm[g].tolist())) == n


def test_partial_weight_matching_refuses_a_wider_a_and_a_bad_start():
    p = _planted("mlp")
    with pytest.raises(ValueError, match=r"group '0' of A has 12 neurons, wider than B's 7"):
        weight_matching(p["b"], p["a"], p["spec_b"], spec_b=p["spec_a"])
    with pytest.raises(ValueError, match=r"match of group '2' has 10 entries, A's group has 6"):
        weight_matching(p["a"], p["b"], p["spec_a"], spec_b=p["spec_b"], init={"2": torch.arange(10)})


# ---------------------------------------------------------------- the learned aligner

def _aligner(num_layers, probes=8):
    torch.manual_seed(0)
    return GNNAligner(hidden=16, num_layers=num_layers, edge_dim=9, probes=probes, head_scale=1.0).double().eval()


@pytest.mark.parametrize("num_layers", [0, 3])
@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_untrained_aligner_with_probes_recovers_a_grown_networks_subnetwork(name, num_layers):
    # B computes A's function (its extra neurons are dead): the probe responses of matched neurons agree
    p = _planted(name, seed=2, dead=True)
    pred = _aligner(num_layers).align(p["a"], p["b"], p["spec_a"], p["spec_b"])
    assert _same(pred, p["match"])
    sub = extract_subnetwork(p["b"], pred, p["spec_b"], p["spec_a"])
    assert all(torch.equal(sub[k], p["a"][k]) for k in p["a"])


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_untrained_aligner_recovers_a_generic_subnetwork(name):
    p = _planted(name, seed=2)
    pred = _aligner(3, probes=0).align(p["a"], p["b"], p["spec_a"], p["spec_b"])
    assert _same(pred, p["match"])
    sub = extract_subnetwork(p["b"], pred, p["spec_b"], p["spec_a"])
    assert all(torch.equal(sub[k], p["a"][k]) for k in p["a"])


def test_aligner_partial_batch_equals_one_pair_and_square_pairs_are_unchanged():
    p, q = _planted("mlp", seed=2, dead=True), _planted("mlp", seed=3, dead=True)
    al = _aligner(3)
    g = lambda s, spec: to_graph(s, spec, edge_dim=9)
    # a partial pair and a square pair in one batch
    batched = al.predict([g(p["a"], p["spec_a"]), g(q["b"], q["spec_b"])],
                         [g(p["b"], p["spec_b"]), g(q["b"], q["spec_b"])])
    assert _same(batched[0], al.align(p["a"], p["b"], p["spec_a"], p["spec_b"]))
    assert _same(batched[1], al.align(q["b"], q["b"], q["spec_b"]))
    assert _same(batched[1], {h: torch.arange(n) for h, n in q["spec_b"].group_sizes.items()})
    with pytest.raises(ValueError, match=r"group '0' of A has 12 neurons, wider than B's 7"):
        al.align(p["b"], p["a"], p["spec_b"], p["spec_a"])
    other = spec_from_module(MLP(5, [7, 6, 4], 3), torch.zeros(1, 5))
    c = _state(MLP(5, [7, 6, 4], 3))
    with pytest.raises(ValueError, match="not the same architecture"):
        al.align(p["a"], c, p["spec_a"], other)
