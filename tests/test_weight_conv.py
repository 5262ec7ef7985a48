"""WeightConv (message passing by the network's own weights) and the encoder's scale invariance:
sparse path = dense path, equivariance, and invariance to ReLU's positive rescaling of a layer,
with negative controls (no normalisation; a change of the biases alone, which is no symmetry)."""

import pytest
import torch
from torch_geometric.data import Batch

from gnn_align import random_permutation, relabel, spec_from_module, to_graph
from gnn_align.batch import collate
from gnn_align.graph import node_sources
from gnn_align.nn import NetEncoder, WeightConv
from gnn_align.nn.blocks import block_plan
from gnn_align.testing import equivariance_error, output_change

from .conftest import make_family

FAMS = ["mlp", "cnn2d_gap", "cnn1d_flatten", "residual_mlp", "resnet2d_bn"]


def _state(name, seed=0):
    module, x = make_family(name, seed)
    return module, x, spec_from_module(module, x), {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_dense_blocks_equal_the_sparse_message_passing_on_a_mixed_batch():
    graphs = []
    for name in FAMS:
        _, _, spec, a = _state(name)
        graphs.append(to_graph(a, spec, edge_dim=9))
    g = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    conv = WeightConv(8, edge_dim=9)
    with torch.no_grad():  # a read-out that is not all ones, so every kernel entry counts differently
        conv.read_fwd.normal_(), conv.read_bwd.normal_()
    h = torch.randn(g.num_nodes, 8)
    dense, sparse = conv.forward_blocks(h, g), conv(h, g.edge_index, g.edge_attr, g.edge_type)
    assert torch.allclose(dense, sparse, atol=1e-12)
    # control: the skips matter (treated as weight edges, the result differs on residual nets)
    assert not torch.allclose(conv(h, g.edge_index, g.edge_attr), sparse, atol=1e-6)


@pytest.mark.parametrize("names, view", [(["mlp"] * 3, True), (["resnet2d_bn"] * 3, False), (FAMS, False)])
def test_block_plan_weights_are_the_blocks_edges(names, view):
    """Evenly spaced blocks (a layer across a batch of one architecture, when no other layer has its
    shape) are read as a strided view, the others by a gather: either way each block's weights are its
    edges, target-major."""
    g = collate([to_graph(_state(n)[3], _state(n)[2], edge_dim=9) for n in names])
    plan = block_plan(g.edge_attr, g.blocks)
    seen = 0
    for gr in plan.groups:
        if gr.weight is None:
            continue
        shared = gr.weight.untyped_storage().data_ptr() == g.edge_attr.untyped_storage().data_ptr()
        assert shared or not view
        for w, s, t in zip(gr.weight, gr.src, gr.dst, strict=True):
            rows = [k for k, b in enumerate(g.blocks.tolist()) if b[1] == s[0] and b[3] == t[0] and not b[5]]
            e0 = int(g.blocks[rows[0], 0])
            assert torch.equal(w.reshape(-1, 9), g.edge_attr[e0:e0 + w.shape[0] * w.shape[1]])
            seen += 1
    assert seen == int((g.blocks[:, 5] == 0).sum())


@pytest.mark.parametrize("num_layers", [0, 2])
def test_encoder_reads_a_batch_without_edges_as_the_full_one(num_layers):
    graphs = [to_graph(_state(name)[3], _state(name)[2], edge_dim=9) for name in FAMS]
    torch.manual_seed(0)
    enc = NetEncoder(hidden=8, num_layers=num_layers, edge_dim=9, probes=4)
    with torch.no_grad():  # read-outs that are not all ones, so every kernel column counts differently
        for name, p in enc.named_parameters():
            if "read" in name:
                p.normal_()
    assert not enc.reads_edges
    assert torch.equal(enc(collate(graphs, edges=False)), enc(collate(graphs)))
    edge = NetEncoder(hidden=8, num_layers=1, edge_dim=9, probes=4, conv="edge")
    assert edge.reads_edges
    with pytest.raises(ValueError, match="reads the edges; batch the graphs with collate"):
        edge(collate(graphs, edges=False))


@pytest.mark.parametrize("name", FAMS)
def test_weight_conv_is_equivariant_to_within_group_relabelling(name):
    _, _, spec, a = _state(name)
    graph = to_graph(a, spec, edge_dim=9)
    torch.manual_seed(0)
    conv = WeightConv(8, edge_dim=9)
    h = torch.randn(graph.num_nodes, 8)
    perm = random_permutation(spec, torch.Generator().manual_seed(1))
    src = node_sources(graph, perm)
    moved = conv.forward_blocks(h[src], relabel(graph, perm))
    assert torch.allclose(moved, conv.forward_blocks(h, graph)[src], atol=1e-12)


def _rescale_layer(module, state, layer: str, c: float, bias_only=False) -> dict:
    """Multiply ``layer``'s weight and bias by ``c`` and the next weight layer's weight by ``1 / c``
    (a symmetry of ReLU networks); with ``bias_only`` only the bias (no symmetry)."""
    names = [n for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))]
    nxt = names[names.index(layer) + 1]
    out = dict(state)
    out[f"{layer}.bias"] = state[f"{layer}.bias"] * c
    if not bias_only:
        out[f"{layer}.weight"] = state[f"{layer}.weight"] * c
        out[f"{nxt}.weight"] = state[f"{nxt}.weight"] / c
    return out


def _encoder(scale_invariant=True, probes=8):
    torch.manual_seed(0)
    return NetEncoder(hidden=16, num_layers=2, edge_dim=9, probes=probes, scale_invariant=scale_invariant).eval()


@pytest.mark.parametrize("name", ["mlp", "cnn2d_gap", "cnn1d_flatten"])
def test_encoder_is_invariant_to_relu_rescaling_of_a_layer(name):
    module, x, spec, a = _state(name)
    layer = "0"  # the first weight layer of these Sequential nets
    scaled = _rescale_layer(module, a, layer, 7.5)
    assert output_change(module, scaled, x) < 1e-10  # it is a symmetry
    g, gs = to_graph(a, spec, edge_dim=9), to_graph(scaled, spec, edge_dim=9)
    for probes in (0, 8):  # with and without the probe pass: message passing and features alone
        enc = _encoder(True, probes)
        assert torch.allclose(enc(g), enc(gs), atol=1e-9)
        # negative control: without the normalisation the raw biases move the embedding
        assert (_encoder(False, probes)(g) - _encoder(False, probes)(gs)).abs().max() > 1e-4
    # a change of the biases alone is no symmetry: the probe pass (which runs the network) sees it;
    # the normalised node parameters alone do not (they keep the biases' pattern, not their level)
    only_bias = _rescale_layer(module, a, layer, 7.5, bias_only=True)
    assert output_change(module, only_bias, x) > 1e-3
    gb = to_graph(only_bias, spec, edge_dim=9)
    assert (_encoder(True, 8)(g) - _encoder(True, 8)(gb)).abs().max() > 1e-4
    assert (_encoder(True, 0)(g) - _encoder(True, 0)(gb)).abs().max() < 1e-9


def test_scale_invariant_encoder_keeps_its_equivariance():
    _, _, spec, a = _state("resnet2d_bn")
    graph = to_graph(a, spec, edge_dim=9)
    perm = random_permutation(spec, torch.Generator().manual_seed(2))
    assert equivariance_error(_encoder(True), graph, node_sources(graph, perm)) < 1e-12


def test_kernel_cols_mark_exactly_the_written_edge_columns():
    graphs = [to_graph(_state(name)[3], _state(name)[2], edge_dim=9) for name in FAMS]
    for g in graphs + [Batch.from_data_list(graphs)]:
        assert torch.equal(g.kernel_cols.any(0), g.edge_attr.ne(0).any(0))  # random weights: none is 0
    assert int(graphs[0].kernel_cols.sum()) == 1 and int(graphs[1].kernel_cols.sum()) == 9  # MLP, 3x3 CNN
