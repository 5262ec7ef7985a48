"""The learned aligner's symmetries, with random untrained encoders in float64, and a tiny overfit."""

import pytest
import torch
from torch_geometric.data import Batch

from gnn_align import (
    apply_permutation,
    compose_permutations,
    invert_permutation,
    random_permutation,
    relabel,
    spec_from_module,
    to_graph,
)
from gnn_align.aligner import GNNAligner
from gnn_align.graph import node_sources
from gnn_align.losses import planted_cross_entropy
from gnn_align.nn import NetEncoder, ProbePass
from gnn_align.testing import assert_perm_equivariant, equivariance_error, move_nodes

from .conftest import make_family

FAMS = ["mlp", "resnet2d_bn", "cnn1d_flatten", "residual_mlp"]


def _setup(name, seed=0):
    module, x = make_family(name, seed)
    spec = spec_from_module(module, x)
    return spec, {k: v.detach().clone() for k, v in module.state_dict().items()}


def _encoder(probes=0, conv="weight", scale_invariant=True):
    torch.manual_seed(0)
    return NetEncoder(hidden=16, num_layers=3, edge_dim=9, edge_hidden=16, probes=probes, conv=conv,
                      scale_invariant=scale_invariant).double().eval()


#: (probes, conv, scale_invariant): the encoder's variants; only the last reads no dense blocks
VARIANTS = [(0, "weight", True), (8, "weight", True), (8, "edge", False), (0, "edge", False)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", FAMS)
def test_encoder_is_equivariant_to_within_group_relabelling(name, variant):
    spec, a = _setup(name)
    graph = to_graph(a, spec, edge_dim=9)
    enc = _encoder(*variant)
    perm = random_permutation(spec, torch.Generator().manual_seed(1))
    src = node_sources(graph, perm)
    # relabel (exact edge order) and move_nodes (same graph, other edge order) agree
    moved = move_nodes(graph, src)
    assert torch.equal(enc(relabel(graph, perm)), enc(relabel(graph, perm)))
    assert torch.allclose(enc(relabel(graph, perm)), enc(moved), atol=1e-12)
    assert equivariance_error(enc, graph, src) < 1e-12
    assert assert_perm_equivariant(enc, graph, spec) < 1e-12
    # and the permuted *weights* give the same embeddings, moved (the commutative diagram)
    h_perm = enc(to_graph(apply_permutation(a, perm, spec), spec, edge_dim=9))
    assert torch.allclose(h_perm, enc(graph)[src], atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["mlp", "cnn2d_gap"])
def test_encoder_is_not_equivariant_to_swapping_inputs_outputs_or_layers(name, variant):
    spec, a = _setup(name)
    graph = to_graph(a, spec, edge_dim=9)
    enc = _encoder(*variant)
    types, depth = graph.node_type, graph.node_depth

    def swap(u, v):
        p = torch.arange(graph.num_nodes)
        p[u], p[v] = v, u
        return p

    inputs = torch.nonzero(types == 0).flatten()
    outputs = torch.nonzero(types == 2).flatten()
    hidden = torch.nonzero(types == 1).flatten()
    first, second = hidden[depth[hidden] == 1][0], hidden[depth[hidden] == 2][0]
    for p in (swap(inputs[0], inputs[1]), swap(outputs[0], outputs[1])):
        assert equivariance_error(enc, graph, p) > 1e-6
    if variant != VARIANTS[-1]:  # two layers swapped is no network of the graph contract: block readers refuse it
        with pytest.raises(ValueError, match="no 'blocks'"):
            equivariance_error(enc, graph, swap(first, second))
    else:
        assert equivariance_error(enc, graph, swap(first, second)) > 1e-6
    # positive control of the same helper: two hidden neurons of one layer
    same = hidden[depth[hidden] == 1]
    assert equivariance_error(enc, graph, swap(same[0], same[1])) < 1e-12


def test_encoder_outputs_differ_between_networks():
    spec, a = _setup("mlp", 0)
    _, b = _setup("mlp", 1)
    enc = _encoder()
    assert (enc(to_graph(a, spec, edge_dim=9)) - enc(to_graph(b, spec, edge_dim=9))).abs().max() > 1e-3


def _aligner(probes=0):
    torch.manual_seed(0)
    return GNNAligner(hidden=16, num_layers=3, edge_dim=9, probes=probes, head_scale=1.0).double().eval()


def _same(p, q):
    return set(p) == set(q) and all(torch.equal(p[g], q[g]) for g in p)


@pytest.mark.parametrize("probes", [0, 8])
@pytest.mark.parametrize("name", FAMS)
def test_align_recovers_planted_permutation(name, probes):
    spec, a = _setup(name)
    pi = random_permutation(spec, torch.Generator().manual_seed(2))
    b = apply_permutation(a, pi, spec)
    pred = _aligner(probes).align(a, b, spec)
    assert _same(pred, invert_permutation(pi))  # apply_permutation(b, pred) == a
    aligned = apply_permutation(b, pred, spec)
    assert all(torch.equal(aligned[k], a[k]) for k in a)


@pytest.mark.parametrize("probes", [0, 8])
@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_align_is_equivariant_and_swap_inverts(name, probes):
    spec, a = _setup(name, 0)
    _, b = _setup(name, 1)
    al = _aligner(probes)
    p = al.align(a, b, spec)
    gen = torch.Generator().manual_seed(3)
    pi, sigma = random_permutation(spec, gen), random_permutation(spec, gen)
    q = al.align(apply_permutation(a, pi, spec), apply_permutation(b, sigma, spec), spec)
    assert _same(q, compose_permutations(invert_permutation(sigma), compose_permutations(p, pi)))
    assert _same(al.align(b, a, spec), invert_permutation(p))
    # a batch of pairs in one forward equals one pair at a time
    graphs = [to_graph(s, spec, edge_dim=9) for s in (a, b)]
    batched = al.predict([graphs[0], graphs[1]], [graphs[1], graphs[0]])
    assert _same(batched[0], p) and _same(batched[1], invert_permutation(p))



def test_predicted_permutations_are_ordinary_tensors_that_autograd_can_use():
    """`predict` scores in inference mode; what it returns must still work where autograd saves it."""
    spec, a = _setup("mlp", 0)
    _, b = _setup("mlp", 1)
    al = _aligner(8)
    perm = al.align(a, b, spec)
    assert not any(p.is_inference() for p in perm.values())
    leaf = {k: v.clone().requires_grad_() for k, v in b.items() if v.is_floating_point()}
    moved = apply_permutation(leaf, perm, spec)
    sum(v.sum() for v in moved.values()).backward()  # index ops save the permutation for backward
    assert all(torch.equal(v.grad, torch.ones_like(v)) for v in leaf.values())

@pytest.mark.slow
@pytest.mark.parametrize("conv", ["edge", "weight"])
def test_tiny_training_run_overfits_planted_pairs(conv):
    torch.manual_seed(0)
    spec, a = _setup("mlp")
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(4):
        noisy = {k: v + 0.6 * v.std() * torch.randn(v.shape, generator=gen) for k, v in a.items()}
        pi = random_permutation(spec, gen)
        pairs.append((to_graph(a, spec), to_graph(apply_permutation(noisy, pi, spec), spec), invert_permutation(pi)))
    al = GNNAligner(hidden=32, num_layers=3, edge_dim=1, edge_hidden=16, probes=0, head_scale=1.0, conv=conv).double()
    opt = torch.optim.Adam(al.parameters(), lr=1e-2)

    def accuracy():
        preds = al.predict([p[0] for p in pairs], [p[1] for p in pairs])
        hits = sum(int((pr[g] == t[g]).sum()) for pr, (_, _, t) in zip(preds, pairs, strict=True) for g in t)
        return hits / sum(len(t[g]) for _, _, t in pairs for g in t)

    before = accuracy()
    for _ in range(150):
        scores, mask, groups = al.scores([p[0] for p in pairs], [p[1] for p in pairs])
        targets = torch.zeros(mask.shape[:2], dtype=torch.long)
        for row, (k, g) in enumerate(groups):
            targets[row, :len(pairs[k][2][g])] = pairs[k][2][g]
        loss = planted_cross_entropy(scores, mask, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # untrained, WeightConv already matches by the weights themselves (0.82 here): from chance only for NetConv
    assert (before < 0.7 if conv == "edge" else before < 0.9) and accuracy() >= 0.95


@pytest.mark.parametrize("activation,w0,act", [("relu", 1.0, torch.relu), ("tanh", 1.0, torch.tanh),
                                               ("sine", 3.0, lambda z: torch.sin(3.0 * z))])
def test_probe_pass_is_the_network_run_on_its_probes(activation, w0, act):
    """Golden semantics: on an MLP the forward probe responses are the pre-activations of the real
    network (with the given activation) on inputs = the probe table, and the backward ones are
    W^T ... W^T q of the output probes."""
    module, _ = make_family("mlp", 0)
    spec, a = _setup("mlp")
    graph = to_graph(a, spec)
    torch.manual_seed(0)
    probe = ProbePass(probes=5, edge_dim=1, activation=activation, w0=w0).double()
    out = probe(graph)
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    n_in, n_out = linears[0].in_features, linears[-1].out_features
    pre, h = [], probe.in_probe.weight[:n_in].detach().T  # (K, n_in): probe k is one input vector
    for lin in linears[:-1]:
        h = h @ lin.weight.double().T + lin.bias.double()
        pre.append(h.T)
        h = act(h)
    back, g = [], probe.out_probe.weight[:n_out].detach().T  # (K, n_out)
    for lin in reversed(linears[1:]):
        g = g @ lin.weight.double()
        back.insert(0, g.T)
    hidden = graph.node_type == 1
    fwd, bwd = out[hidden, :5], out[hidden, 5:]
    norm = torch.nn.functional.normalize
    assert torch.allclose(fwd, norm(torch.cat(pre), dim=-1), atol=1e-12)
    assert torch.allclose(bwd, norm(torch.cat(back), dim=-1), atol=1e-12)
    # fixed neurons: no forward response at the inputs, no backward response at the outputs
    assert out[graph.node_type == 0, :5].abs().max() == 0 and out[graph.node_type == 2, 5:].abs().max() == 0


def test_probe_pass_refuses_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        ProbePass(probes=4, activation="gelu")


def test_probe_activations_are_named_and_computed_as_in_the_one_table():
    """The probe pass's activations are names of archs.ACTIVATIONS, computing what that module computes;
    the reverse table names every module class, and activation_of reads a network through it."""
    from gnn_align.archs import ACTIVATION_NAMES, ACTIVATIONS, MLP, SIREN, activation_name
    from gnn_align.nn.probe import ACTIVATIONS as PROBE
    from gnn_align.pretrained import activation_of

    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for name, fn in PROBE.items():
        module = ACTIVATIONS[name](2.0) if name == "sine" else ACTIVATIONS[name]()
        assert torch.equal(fn(z, 2.0), module(z)), name
    assert {ACTIVATION_NAMES[cls] for cls in ACTIVATIONS.values()} == set(ACTIVATIONS)
    assert all(activation_name(cls(1.0) if name == "sine" else cls()) == name for name, cls in ACTIVATIONS.items())
    assert activation_name(torch.nn.Linear(1, 1)) is None
    assert activation_of(MLP(2, [3], 1, activation="gelu")) == "gelu" and activation_of(SIREN(1, [4], 1)) == "sine"
    with pytest.raises(ValueError, match="unknown activation 'sine'.*use SIREN"):
        MLP(2, [3], 1, activation="sine")


@pytest.mark.parametrize("name", FAMS)
def test_probe_levels_order_every_edge(name):
    """Residual skips can join node sets of equal depth; the evaluation levels still put every
    edge's source strictly before its target (and agree with node_depth on plain MLPs)."""
    spec, a = _setup(name)
    graph = to_graph(a, spec, edge_dim=9)
    level = ProbePass.levels(graph)
    src, dst = graph.edge_index
    assert bool((level[dst] > level[src]).all())
    assert bool((level >= graph.node_depth).all())
    if name == "mlp":
        assert torch.equal(level, graph.node_depth)


def test_probe_pass_refuses_more_fixed_neurons_than_probe_vectors():
    spec, a = _setup("mlp")
    with pytest.raises(ValueError, match="max_fixed"):
        ProbePass(probes=4, edge_dim=1, max_fixed=2).double()(to_graph(a, spec))


def test_probe_pass_on_a_batch_equals_each_graph_alone():
    """Blocks shift with batching: a mixed batch (MLP, ResNet with BN, residual MLP) gives each
    graph's own probe responses."""
    graphs = [to_graph(_setup(n)[1], _setup(n)[0], edge_dim=9) for n in ("mlp", "resnet2d_bn", "residual_mlp")]
    torch.manual_seed(0)
    probe = ProbePass(probes=6, edge_dim=9).double()
    alone = torch.cat([probe(g) for g in graphs])
    assert torch.allclose(probe(Batch.from_data_list(graphs)), alone, atol=1e-12)
