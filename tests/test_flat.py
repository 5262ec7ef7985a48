"""The graph form of attention: the flat view (issue 21, gnn_align/flat.py).

Every supported attention form: exact round trip through the graph, relabelling the graph commutes
with the group action, nested -> flat -> nested is exact, a flat permutation that respects heads acts
like its nested one while one that splits a head changes the function (negative control), the
structured decode recovers a permutation from its scores, the encoder is equivariant on the flat
graph, and the losses and augmentations of training read the flat view.
"""

import pytest
import torch

from gnn_align import (
    PermutationError,
    apply_permutation,
    from_graph,
    invert_permutation,
    random_permutation,
    spec_from_module,
    to_graph,
)
from gnn_align.aligner import GNNAligner
from gnn_align.archs import Transformer
from gnn_align.graph import relabel
from gnn_align.losses import interpolation_task_loss, weight_distance
from gnn_align.nn import ProbePass
from gnn_align.ot import perm_to_matrix
from gnn_align.testing import assert_perm_equivariant, output_change
from gnn_align.zoo.augment import augment, rescalable_nodesets
from tests.test_attention import MODELS, _model

TOL = 1e-10


def _zoo_model():
    torch.manual_seed(0)
    return Transformer(8, 8, 16, 2, 2, 32, 10).double().eval(), torch.randn(4, 8, 8, dtype=torch.float64)


class _FinalNorm(torch.nn.Module):
    """A post-LN encoder stack with a final LayerNorm (as nn.Transformer's encoder): two LayerNorms on
    the last node set."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = torch.nn.Linear(3, 8), torch.nn.Linear(8, 4)
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 1, norm=torch.nn.LayerNorm(8), enable_nested_tensor=False)

    def forward(self, x):
        return self.head(self.enc(self.embed(x)).mean(1))


def _get(name):
    if name == "final_norm":
        torch.manual_seed(0)
        module, x = _FinalNorm().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64)
    else:
        module, x = _zoo_model() if name == "zoo" else _model(name)
    spec = spec_from_module(module, x)
    return module, x, spec, {k: v.detach().clone() for k, v in module.state_dict().items()}


ALL = MODELS + ["zoo", "final_norm"]


@pytest.mark.parametrize("name", ALL)
def test_graph_round_trip_is_exact(name):
    _, _, spec, state = _get(name)
    graph = to_graph(state, spec)
    back = from_graph(graph, spec)
    assert list(back) == list(state)
    assert all(back[k].dtype == state[k].dtype and torch.equal(back[k], state[k]) for k in state)
    # the flat view is an ordinary network: one group per node set, q and k two node sets of one group
    flat = spec.flat.spec
    assert not flat.heads and flat.structure is not None
    assert set(graph.group_names) == set(flat.group_sizes)
    for at in spec.flat.attention:
        h, d = spec.group_sizes[at.heads], at.d
        assert flat.group_sizes[at.qk] == flat.group_sizes[at.v] == h * d
        assert sum(ns.group == at.qk for ns in flat.structure.nodesets) == 2


@pytest.mark.parametrize("name", ALL)
def test_probe_levels_order_every_edge_of_the_flat_view(name):
    graph = to_graph(_get(name)[3], _get(name)[2])
    level = ProbePass.levels(graph)
    src, dst = graph.edge_index
    assert bool((level[dst] > level[src]).all()) and bool((level >= graph.node_depth).all())


@pytest.mark.parametrize("name", ALL)
def test_relabel_commutes_with_the_group_action(name):
    _, _, spec, state = _get(name)
    graph = to_graph(state, spec)
    for seed in range(3):
        perm = random_permutation(spec, torch.Generator().manual_seed(seed))
        moved = to_graph(apply_permutation(state, perm, spec), spec)
        expect = relabel(graph, spec.flat.flat_perm(perm))
        assert torch.equal(moved.x, expect.x) and torch.equal(moved.edge_attr, expect.edge_attr)


@pytest.mark.parametrize("name", ["hand", "mha", "zoo"])
def test_nested_and_flat_permutations(name):
    module, x, spec, state = _get(name)
    view = spec.flat
    for seed in range(3):
        perm = random_permutation(spec, torch.Generator().manual_seed(seed))
        flat = view.flat_perm(perm)
        back = view.nested_perm(flat)
        assert set(back) == set(perm) and all(torch.equal(back[g], perm[g]) for g in perm)
        # a head-respecting flat permutation acts on the flat view as the nested one on the network
        via_flat = view.unflatten(apply_permutation(view.flatten(state), flat, view.spec))
        direct = apply_permutation(state, perm, spec)
        assert all(torch.equal(via_flat[k], direct[k]) for k in state)
    # negative control: a flat permutation of the qk group that splits a head is no symmetry
    at = view.attention[0]
    split = {at.qk: torch.arange(view.spec.group_sizes[at.qk])}
    split[at.qk][[0, at.d]] = split[at.qk][[at.d, 0]]  # swap dimension 0 of head 0 with dimension 0 of head 1
    moved = view.unflatten(apply_permutation(view.flatten(state), split, view.spec))
    assert output_change(module, moved, x) > 1e-3
    with pytest.raises(PermutationError, match="whole heads"):
        view.nested_perm({**view.flat_perm(random_permutation(spec, torch.Generator().manual_seed(0))), **split})


@pytest.mark.parametrize("name", ["post_ln", "zoo"])
def test_decode_recovers_a_permutation_from_its_scores(name):
    _, _, spec, _ = _get(name)
    view = spec.flat
    gen = torch.Generator().manual_seed(0)
    perm = random_permutation(spec, gen)
    flat = view.flat_perm(perm)
    scores = {g: perm_to_matrix(p, dtype=torch.float64) + 0.1 * torch.rand(len(p), len(p), generator=gen,
                                                                             dtype=torch.float64)
              for g, p in flat.items()}
    got = view.decode(scores)
    assert set(got) == set(spec.group_sizes) and all(torch.equal(got[g], perm[g]) for g in perm)


@pytest.mark.parametrize("name", ["hand", "zoo"])
def test_encoder_equivariant_on_the_flat_graph_and_aligner_recovers_a_planted_permutation(name):
    _, _, spec, state = _get(name)
    torch.manual_seed(0)
    al = GNNAligner(num_layers=1).double().eval()
    graph = to_graph(state, spec)
    assert assert_perm_equivariant(al.encoder, graph, spec.flat.spec) <= 1e-9
    for seed in range(3):
        perm = random_permutation(spec, torch.Generator().manual_seed(seed))
        b = apply_permutation(state, perm, spec)
        got = al.align(state, b, spec)
        want = invert_permutation(perm, spec)
        assert set(got) == set(spec.group_sizes) and all(torch.equal(got[g], want[g]) for g in want)


def test_training_losses_read_the_flat_view():
    module, x, spec, state = _get("zoo")
    perm = random_permutation(spec, torch.Generator().manual_seed(1))
    b = apply_permutation(state, perm, spec)
    target = spec.flat.flat_perm(invert_permutation(perm, spec))
    mats = {g: perm_to_matrix(p, dtype=torch.float64) for g, p in target.items()}
    assert float(weight_distance(state, b, mats, spec)) <= TOL
    ident = {g: torch.eye(n, dtype=torch.float64) for g, n in spec.flat.spec.group_sizes.items()}
    assert float(weight_distance(state, b, ident, spec)) > 1e-3
    y = torch.randint(0, 10, (x.shape[0],))
    at_b = interpolation_task_loss(module, state, b, mats, spec, x, y, 1.0)
    own = interpolation_task_loss(module, state, state, ident, spec, x, y, 0.0)
    assert abs(float(at_b) - float(own)) <= TOL
    # matrices over the spec's own (nested) groups, as Sinkhorn re-basin passes them, act on the network
    nested = {g: perm_to_matrix(p, dtype=torch.float64) for g, p in invert_permutation(perm, spec).items()}
    assert abs(float(interpolation_task_loss(module, state, b, nested, spec, x, y, 1.0)) - float(own)) <= TOL
    assert float(weight_distance(state, b, nested, spec)) <= TOL


def test_rescaling_augmentation_of_a_transformer_preserves_its_function():
    module, x, spec, state = _get("zoo")
    names = {spec.flat.spec.structure.nodesets[i].name for i in rescalable_nodesets(spec.flat.spec)}
    assert any(n.endswith(".v") for n in names) and any(n.endswith(".fc1") for n in names)
    assert not any(n.endswith((".q", ".k")) for n in names)  # the softmax sees the scale of q and k
    out = augment(state, spec, torch.Generator().manual_seed(0), noise=0.0, dropout=0.0, rescale=(0.5, 2.0),
                  max_quantile=0.0)
    assert any(not torch.equal(out[k], state[k]) for k in state)
    assert output_change(module, out, x) <= 1e-9


def test_shipped_transformer_aligner_recovers_a_planted_permutation():
    from gnn_align.aligner import load_aligner

    al = load_aligner("transformer")
    assert al.config.num_layers == 2 and al.meta["zoo"]["name"] == "digits-transformer"
    torch.manual_seed(1)
    module = Transformer(8, 8, 32, 2, 2, 64, 10).eval()
    spec = spec_from_module(module, torch.zeros(2, 8, 8))
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    perm = random_permutation(spec, torch.Generator().manual_seed(0))
    got = al.align(state, apply_permutation(state, perm, spec), spec)
    want = invert_permutation(perm, spec)
    assert all(torch.equal(got[g], want[g]) for g in want)


def test_population_tools_with_the_learned_aligner_on_a_transformer():
    """`distance` and `pairwise` decode the aligner's flat scores into the nested group: a permuted copy is
    at distance 0 and the matrix is symmetric."""
    from gnn_align.population import distance, pairwise

    module, x, spec, state = _get("post_ln")
    torch.manual_seed(0)
    al = GNNAligner(num_layers=1).double().eval()
    moved = apply_permutation(state, random_permutation(spec, torch.Generator().manual_seed(1)), spec)
    other = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    for a, b in ((state, moved), (moved, state)):
        d = distance(a, b, "gnn", aligner=al, module=module, data=x)
        assert d.weight <= 1e-12 and d.raw > 0.1
    m = pairwise([state, moved, other], "gnn", aligner=al, module=module, data=x, progress=False)
    assert torch.equal(m.weight, m.weight.T) and float(m.weight[0, 1]) <= 1e-12 and float(m.weight[0, 2]) > 0


def test_coverage_names_attention_an_aligner_was_not_trained_on():
    from gnn_align.aligner import load_aligner
    from gnn_align.pretrained import coverage_problems, signature

    module, _, spec, _ = _get("zoo")
    sig = signature(spec, module)
    assert sig["attention"] is True
    assert any("attention" in p for p in coverage_problems(load_aligner("mixed").meta["trained_on"], sig))
    assert coverage_problems(load_aligner("transformer").meta["trained_on"], sig) == []
