"""Attention: heads and within-head groups as permutation groups (issue 21).

The golden example pins how a head group and its within-head groups compose on one axis; the
function tests prove the derived symmetry of attention layers in float64, with one-sided controls.
"""

import json
import math

import pytest
import torch
from torch import nn

from gnn_align import (
    PermutationError,
    PermutationSpec,
    UnsupportedLayerError,
    apply_permutation,
    compose_permutations,
    identity_permutation,
    invert_permutation,
    random_permutation,
    spec_from_module,
    to_graph,
)
from gnn_align.spec import Axis, Piece
from gnn_align.testing import assert_function_preserved, one_sided_spec, output_change

# Packed q/k rows of 2 heads x 2 dims: q rows 0..3, k rows 4..7; group "h" moves heads,
# "h0.qk"/"h1.qk" the dims of the head in slot 0/1 (shared by q and k).
_QK = (Piece("h", 2, 0), Piece("h0.qk", 1, 0), Piece("h1.qk", 1, 2),
       Piece("h", 2, 4), Piece("h0.qk", 1, 4), Piece("h1.qk", 1, 6))
NESTED = PermutationSpec({"h": 2, "h0.qk": 2, "h1.qk": 2, "e": 3},
                         {"in": (_QK, "e"), "b": (_QK,), "e.w": ("e", None)},
                         heads={"h": (("h0.qk", "h1.qk"),)})


def _theta(gen=None):
    if gen is None:
        return {"in": torch.arange(24.0).reshape(8, 3), "b": torch.arange(8.0), "e.w": torch.arange(6.0).reshape(3, 2)}
    return {"in": torch.randn(8, 3, generator=gen), "b": torch.randn(8, generator=gen),
            "e.w": torch.randn(3, 2, generator=gen)}


def test_golden_nested_heads():
    # Worked by hand: heads first (slot 0 <- head 1, slot 1 <- head 0), then within the head in
    # slot 0 its dims swap (h0.qk = [1, 0]); slot 1 keeps its order. new[i*2 + r] = old[h[i]*2 + hi[r]].
    perm = {"h": torch.tensor([1, 0]), "h0.qk": torch.tensor([1, 0]), "h1.qk": torch.tensor([0, 1]),
            "e": torch.tensor([2, 0, 1])}
    out = apply_permutation(_theta(), perm, NESTED)
    assert torch.equal(out["b"], torch.tensor([3.0, 2.0, 0.0, 1.0, 7.0, 6.0, 4.0, 5.0]))
    assert torch.equal(out["in"][:, 0], torch.tensor([11.0, 8.0, 2.0, 5.0, 23.0, 20.0, 14.0, 17.0]))
    assert torch.equal(out["in"][0], torch.tensor([11.0, 9.0, 10.0]))  # row 3 of theta, columns by "e"
    assert torch.equal(out["e.w"], torch.tensor([[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]))


@pytest.mark.parametrize("seed", range(5))
def test_nested_group_laws(seed):
    gen = torch.Generator().manual_seed(seed)
    theta = _theta(gen)
    p, q = random_permutation(NESTED, gen), random_permutation(NESTED, gen)

    def eq(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert eq(apply_permutation(theta, identity_permutation(NESTED), NESTED), theta)
    pq = apply_permutation(apply_permutation(theta, p, NESTED), q, NESTED)
    assert eq(pq, apply_permutation(theta, compose_permutations(p, q, NESTED), NESTED))
    back = apply_permutation(apply_permutation(theta, p, NESTED), invert_permutation(p, NESTED), NESTED)
    assert eq(back, theta)
    assert eq(apply_permutation(apply_permutation(theta, invert_permutation(p, NESTED), NESTED), p, NESTED), theta)


def test_nested_groups_must_come_together():
    perm = {"h": torch.tensor([1, 0]), "e": torch.arange(3)}
    with pytest.raises(PermutationError, match="head group 'h'"):
        invert_permutation(perm, NESTED)


def test_nested_soft_action_equals_index_action():
    from gnn_align.permute import apply_permutation_matrix

    gen = torch.Generator().manual_seed(0)
    theta, p = _theta(gen), random_permutation(NESTED, gen)
    soft = apply_permutation_matrix(theta, {g: torch.eye(len(v))[v] for g, v in p.items()}, NESTED)
    hard = apply_permutation(theta, p, NESTED)
    assert all(torch.equal(soft[k], hard[k]) for k in theta)


# -- derived symmetry of attention networks, float64 ------------------------------------------------

class _Hand(nn.Module):
    """A hand-written pre-LN attention block: embedding, positional embedding, heads by unflatten."""

    def __init__(self, e=8, h=2):
        super().__init__()
        self.h, self.d = h, e // h
        self.embed, self.pos = nn.Linear(3, e), nn.Parameter(torch.randn(1, 5, e))
        self.q, self.k, self.v, self.o = (nn.Linear(e, e) for _ in range(4))
        self.ln, self.head = nn.LayerNorm(e), nn.Linear(e, 4)

    def split(self, t):
        return t.unflatten(-1, (self.h, self.d)).transpose(1, 2)

    def forward(self, x):
        x = self.embed(x) + self.pos
        y = self.ln(x)
        q, k, v = self.split(self.q(y)), self.split(self.k(y)), self.split(self.v(y))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d), dim=-1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        return self.head(x.mean(1))


class _Encoder(nn.Module):
    """Token embedding, learned positional embedding, an nn.TransformerEncoder, a class-token head."""

    def __init__(self, norm_first=False, batch_first=True, activation="relu", layers=2, e=8, heads=2):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(3, e)
        self.pos = nn.Parameter(torch.randn(1, 5, e) if batch_first else torch.randn(5, 1, e))
        layer = nn.TransformerEncoderLayer(e, heads, 2 * e, dropout=0.1, activation=activation,
                                           batch_first=batch_first, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(e, 4)

    def forward(self, x):
        y = self.enc(self.embed(x) + self.pos)
        return self.head(y[:, 0] if self.batch_first else y[0])


class _MHA(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(3, 8), nn.MultiheadAttention(8, 2, batch_first=batch_first), \
            nn.Linear(8, 4)

    def forward(self, x):
        y = self.embed(x)
        return self.head(y + self.attn(y, y, y)[0])


def _model(name):
    torch.manual_seed(0)
    m = {"hand": lambda: _Hand(), "post_ln": lambda: _Encoder(),
         "pre_ln_gelu": lambda: _Encoder(True, activation="gelu"),
         "seq_first": lambda: _Encoder(batch_first=False), "mha": lambda: _MHA(True),
         "mha_seq_first": lambda: _MHA(False)}[name]()
    x = torch.randn(5, 2, 3) if name in ("seq_first", "mha_seq_first") else torch.randn(2, 5, 3)
    return m.double().eval(), x.double()


MODELS = ["hand", "post_ln", "pre_ln_gelu", "seq_first", "mha", "mha_seq_first"]


@pytest.mark.parametrize("name", MODELS)
def test_attention_function_preserved(name):
    module, x = _model(name)
    spec = spec_from_module(module, x)
    assert spec.heads and all(fams and len(fams[0]) == 2 for fams in spec.heads.values())
    for seed in range(3):
        perm = random_permutation(spec, torch.Generator().manual_seed(seed))
        assert assert_function_preserved(module, spec, perm, x, atol=1e-10) <= 1e-10


@pytest.mark.parametrize("name", ["hand", "post_ln"])
def test_attention_one_sided_controls(name):
    module, x = _model(name)
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for group, n in spec.group_sizes.items():  # every group, acting on its first piece only
        perm = {group: torch.roll(torch.arange(n), 1)}
        assert output_change(module, apply_permutation(state, perm, one_sided_spec(spec, group)), x) > 1e-6, group


def _heads_without(spec, keys, group):
    """``spec`` with ``group`` left off the tensors ``keys`` (rows of some projections only)."""
    axes = {}
    for k, v in spec.axes.items():
        keep = tuple(tuple(p for p in e if not (k in keys and p.group == group)) if isinstance(e, tuple)
                     and not isinstance(e, Axis) else e for e in v)
        axes[k] = tuple(e if not isinstance(e, tuple) or isinstance(e, Axis) or e else None for e in keep)
    return PermutationSpec(spec.group_sizes, axes, heads=spec.heads)


def test_heads_moved_without_output_projection_or_key_change_the_output():
    module, x = _model("hand")
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    swap = {**identity_permutation(spec), "attn.heads": torch.tensor([1, 0])}
    assert output_change(module, apply_permutation(state, swap, spec), x) <= 1e-10
    # heads moved in q/k/v but not in the output projection; in q (and v, o) but not in k
    for keys in (("o.weight",), ("k.weight", "k.bias")):
        broken = apply_permutation(state, swap, _heads_without(spec, keys, "attn.heads"))
        assert output_change(module, broken, x) > 1e-6, keys
    # a within-head permutation of q without k
    qk = {**identity_permutation(spec), "attn.h0.qk": torch.tensor([1, 2, 3, 0])}
    assert output_change(module, apply_permutation(state, qk, spec), x) <= 1e-10
    broken = apply_permutation(state, qk, _heads_without(spec, ("k.weight", "k.bias"), "attn.h0.qk"))
    assert output_change(module, broken, x) > 1e-6


def test_packed_in_projection_controls():
    """nn.MultiheadAttention's packed q/k/v rows: heads moved in q/k/v but not in out_proj, or in q only."""
    module, x = _model("mha")
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    swap = {**identity_permutation(spec), "attn.heads": torch.tensor([1, 0])}
    assert output_change(module, apply_permutation(state, swap, spec), x) <= 1e-10
    no_out = _heads_without(spec, ("attn.out_proj.weight",), "attn.heads")
    assert output_change(module, apply_permutation(state, swap, no_out), x) > 1e-6
    q_only = {k: v for k, v in spec.axes.items()}
    for k in ("attn.in_proj_weight", "attn.in_proj_bias"):
        first = q_only[k][0]
        q_only[k] = (tuple(p for p in first if p.group != "attn.heads" or p.start == 0),) + q_only[k][1:]
    q_only["attn.out_proj.weight"] = (q_only["attn.out_proj.weight"][0], None)
    q_spec = PermutationSpec(spec.group_sizes, q_only, heads=spec.heads)
    assert output_change(module, apply_permutation(state, swap, q_spec), x) > 1e-6


def test_unsupported_attention_names_the_op():
    class Masked(_Hand):
        def forward(self, x):
            y = self.embed(x)
            q, k = self.split(self.q(y)), self.split(self.k(y))
            s = (q @ k.transpose(-2, -1)).tril()  # a causal mask by tril: not supported
            return self.o((s.softmax(-1) @ self.split(self.v(y))).transpose(1, 2).flatten(2))

    with pytest.raises(UnsupportedLayerError, match="tril"):
        spec_from_module(Masked().double(), torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(UnsupportedLayerError, match="'attn'.*MultiheadAttention.*self-attention"):
        class Cross(_MHA):
            def forward(self, x):
                y = self.embed(x)
                return self.head(self.attn(y, y.relu(), y)[0])
        spec_from_module(Cross(True), torch.randn(2, 5, 3))


def test_describe_and_graph_of_an_encoder_stack():
    module, x = _model("post_ln")
    spec = spec_from_module(module, x)
    text = spec.describe()
    assert "enc.layers.1.self_attn.heads" in text
    assert any(line.split()[:5] == ["enc.layers.0.self_attn.h0.qk", "..", "enc.layers.0.self_attn.h1.qk", "2", "x"]
               for line in text.splitlines())
    assert "pos[2]" in text and "enc.layers.0.self_attn.in_proj_weight[0]x4@8" in text
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    graph = to_graph(state, spec)  # its flat view (tests/test_flat.py)
    assert "enc.layers.0.self_attn.qk" in graph.group_names and "enc.layers.0.self_attn.h0.qk" not in graph.group_names


@pytest.mark.parametrize("norm_first", [False, True])
def test_weight_matching_recovers_a_planted_permutation(norm_first):
    from gnn_align.baselines.weight_matching import weight_matching

    torch.manual_seed(1)
    module = _Encoder(norm_first=norm_first, e=16, heads=4).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    spec = spec_from_module(module, x)
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for seed in range(3):
        b = apply_permutation(a, random_permutation(spec, torch.Generator().manual_seed(seed)), spec)
        res = weight_matching(a, b, spec, generator=torch.Generator().manual_seed(seed), progress=False)
        aligned = apply_permutation(b, res.perm, spec)
        assert all(torch.equal(aligned[k], a[k]) for k in a), seed
        assert res.objective == sorted(res.objective)


def test_distance_and_merge_many_of_a_transformer_by_weight_matching():
    """The population tools go through the nested group action: a permuted copy is at distance 0."""
    import gnn_align
    from gnn_align.population import distance

    torch.manual_seed(0)
    module = _Encoder().double().eval()
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    perm = random_permutation(spec, torch.Generator().manual_seed(1))
    moved = apply_permutation(state, perm, spec)
    for a, b in ((state, moved), (moved, state)):  # whichever the hash orders first
        d = distance(a, b, "wm", module=module, data=x)
        assert d.weight <= 1e-12 and d.raw > 0.1
        aligned = apply_permutation(b, d.perm, spec)
        assert all(torch.equal(aligned[k], a[k]) for k in a)
    res = gnn_align.merge([state, moved], method="wm", many="mergemany", module=module, example_input=x)
    with torch.no_grad():
        assert float((res.model()(x) - module(x)).abs().max()) <= 1e-10
    with pytest.raises(ValueError, match="head groups"):
        gnn_align.merge([state, moved, state], method="wm", many="sync", module=module, example_input=x)


def test_cli_inspect_shows_heads_of_an_encoder_stack(capsys):
    """`gnn-align inspect` on a TransformerEncoder guesses token inputs and lists heads and within-head groups."""
    from gnn_align import cli

    assert cli.main(["inspect", "--model", "tests.test_attention:_Encoder"]) == 0
    out = capsys.readouterr().out
    assert "enc.layers.0.self_attn.heads" in out and "h0.qk .. enc.layers.0.self_attn.h1.qk" in out
    assert "graph groups (flat view" in out and "enc.layers.0.self_attn.qk 8" in out
    assert cli.main(["inspect", "--model", "tests.test_attention:_Encoder", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    groups, graph = info["groups"], info["graph_groups"]
    assert groups["enc.layers.1.self_attn.heads"] == 2 and groups["enc.layers.1.self_attn.h1.v"] == 4
    assert graph["enc.layers.1.self_attn.v"] == 8 and "enc.layers.1.self_attn.heads" not in graph


@pytest.mark.parametrize("norm_first", [False, True])
def test_activation_matching_recovers_a_planted_permutation(norm_first):
    """Activation matching on a 2-layer encoder: per-token activations of residual stream and MLP, per-head
    q/k and v rows solved jointly with the head assignment; (A, pi . A) is aligned exactly."""
    from gnn_align.baselines import activation_matching

    torch.manual_seed(1)
    module = _Encoder(norm_first=norm_first, e=16, heads=4).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    spec = spec_from_module(module, x)
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    batches = list(torch.randn(3, 8, 5, 3, dtype=torch.float64))
    for seed in range(3):
        b = apply_permutation(a, random_permutation(spec, torch.Generator().manual_seed(seed)), spec)
        res = activation_matching(module, a, b, spec, batches)
        assert set(res.perm) == set(spec.group_sizes)
        aligned = apply_permutation(b, res.perm, spec)
        assert all(torch.equal(aligned[k], a[k]) for k in a), seed
    assert module.training is False


@pytest.mark.parametrize("name", ["hand", "seq_first", "mha", "mha_seq_first"])
def test_activation_matching_of_other_attention_layouts(name):
    """Separate q/k/v Linears (heads by unflatten), sequence-first encoders, a bare nn.MultiheadAttention
    (whose out_proj is never called as a module: the residual stream is read from the other outputs)."""
    from gnn_align.baselines import activation_matching

    module, x = _model(name)
    spec = spec_from_module(module, x)
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    b = apply_permutation(a, random_permutation(spec, torch.Generator().manual_seed(0)), spec)
    res = activation_matching(module, a, b, spec, list(torch.randn(3, *x.shape, dtype=torch.float64)))
    aligned = apply_permutation(b, res.perm, spec)
    assert all(torch.equal(aligned[k], a[k]) for k in a)


def test_activation_matching_names_a_group_no_output_shows():
    from gnn_align.baselines import activation_matching

    module, x = _model("hand")
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    hidden = PermutationSpec({**spec.group_sizes, "extra": 3}, spec.axes, heads=spec.heads)
    with pytest.raises(UnsupportedLayerError, match="'extra'"):
        activation_matching(module, state, state, hidden, [x])


@pytest.mark.parametrize("norm_first", [False, True])
def test_align_by_activation_matching_of_two_encoders(norm_first):
    """`align(method="am")` on two independently initialised encoders: function-preserving (align checks it),
    and a permuted copy of B aligns to the same state as B."""
    import gnn_align

    torch.manual_seed(2)
    module = _Encoder(norm_first=norm_first).double().eval()
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    b = {k: v.detach().clone() for k, v in _Encoder(norm_first=norm_first).double().state_dict().items()}
    x = torch.randn(32, 5, 3, dtype=torch.float64)
    res = gnn_align.align(a, b, method="am", data=x, module=module)
    assert res.method == "am" and res.max_abs_diff <= 1e-10
    assert set(res.perm) == set(res.spec.group_sizes)
    moved = apply_permutation(b, random_permutation(res.spec, torch.Generator().manual_seed(3)), res.spec)
    planted = gnn_align.align(a, moved, method="am", data=x, module=module)
    assert planted.max_abs_diff <= 1e-10
    # B and a permuted copy of B correlate alike with A: both align to the same network
    assert all(torch.equal(planted.state[k], res.state[k]) for k in a)
