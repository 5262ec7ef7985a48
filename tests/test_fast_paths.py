"""The aligner's fast paths give what the plain computation gives (float64): dense blocks read and
written as strided views instead of by index (values and gradients), the encoder's embeddings of
chosen rows, the probe columns' product, and the pooling shortcuts. Each test also checks that the
fast path was taken, so that none passes by falling back to the plain one."""

import pytest
import torch
from torch_geometric.utils import scatter

from gnn_align import global_group, spec_from_module, to_graph
from gnn_align.archs import MLP
from gnn_align.batch import collate
from gnn_align.nn import NetEncoder, ProbePass, WeightConv, group_rows, pool_groups
from gnn_align.nn.blocks import BlockPlan, graph_plan, push_blocks

from .conftest import make_family


def _graph(module, x):
    spec = spec_from_module(module, x)
    return to_graph({k: v.detach().clone() for k, v in module.state_dict().items()}, spec, edge_dim=9)


def _mlps(count=3, hidden=(6, 6, 6)):
    """A batch of same-architecture MLPs whose hidden layers share one shape."""
    graphs = []
    for seed in range(count):
        torch.manual_seed(seed)
        graphs.append(_graph(MLP(5, list(hidden), 3).eval(), torch.randn(7, 5)))
    return collate(graphs)


def _mixed():
    return collate([_graph(*make_family(n)) for n in ["mlp", "cnn2d_gap", "resnet2d_bn", "residual_mlp"]])


def _no_views(plan: BlockPlan) -> BlockPlan:
    return BlockPlan([gr._replace(src_span=None, dst_span=None) for gr in plan.groups], plan.used)


@pytest.mark.parametrize("make", [_mlps, _mixed])
@pytest.mark.parametrize("reverse", [False, True])
def test_push_blocks_through_views_equals_the_gathers_with_gradients(make, reverse):
    g = make()
    plan = graph_plan(g)
    if make is _mlps:  # every layer of the batch one evenly spaced part (the three 6x6 layers apart)
        assert all(gr.src_span is not None and gr.dst_span is not None for gr in plan.groups)
        assert sum(tuple(gr.weight.shape[1:3]) == (6, 6) for gr in plan.groups) == 2
    else:
        assert any(gr.src_span is not None for gr in plan.groups)
    gen = torch.Generator().manual_seed(0)
    both = torch.randn(g.num_nodes, 8, generator=gen, requires_grad=True)
    read = torch.randn(9, 4, generator=gen, requires_grad=True)
    outs, grads = [], []
    for p in (plan, _no_views(plan)):
        h = both[:, 2:6]  # a slice of columns: rows are strided
        out = push_blocks(p, h, read, reverse)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        gh, gr = torch.autograd.grad((out * weight).sum(), [both, read])
        outs.append(out), grads.append((gh, gr))
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(*grads, strict=True))


def _encoder(num_layers=2, probes=4):
    torch.manual_seed(0)
    enc = NetEncoder(hidden=8, num_layers=num_layers, edge_dim=9, probes=probes).eval()
    with torch.no_grad():  # read-outs that are not all ones
        for name, p in enc.named_parameters():
            if "read" in name:
                p.normal_()
    return enc


def _pool_reference(h, g):
    """pool_groups as plain mean pooling (the definition), without its shortcuts."""
    gg = global_group(g)
    keep = gg >= 0
    num = int(torch.as_tensor(g.num_groups).sum())
    n_max = int(g.perm_pos[keep].max()) + 1
    emb = scatter(h[keep], gg[keep] * n_max + g.perm_pos[keep], dim=0, dim_size=num * n_max, reduce="mean")
    return emb.view(num, n_max, -1)


@pytest.mark.parametrize("make, path", [(_mlps, "view"), (lambda: _mlps(hidden=(4, 6)), "copy"), (_mixed, "mean")])
@pytest.mark.parametrize("num_layers, probes", [(2, 4), (0, 4), (2, 0)])
def test_encoder_rows_and_pooled_groups_equal_the_full_forward(make, path, num_layers, probes):
    g = make()
    enc = _encoder(num_layers, probes)
    rows = group_rows(g)
    full = enc(g)
    assert torch.allclose(enc(g, rows), full[rows], atol=1e-12)
    emb, mask = enc.embed_groups(g)
    ref = _pool_reference(full, g)
    assert torch.allclose(emb, ref, atol=1e-12)
    assert torch.equal(mask, pool_groups(full, g)[1])
    # which pooling path the batch takes: the embeddings themselves, a copy into slots, or a mean
    slot = global_group(g)[rows] * emb.shape[1] + g.perm_pos[rows]
    assert path == ("view" if torch.equal(slot, torch.arange(emb.shape[0] * emb.shape[1]))
                    else "copy" if int(torch.bincount(slot).max()) == 1 else "mean")


def test_input_states_equal_node_in_of_the_concatenated_features():
    g = _mixed()
    enc = _encoder()
    probe = enc.probe.responses(g)
    assert torch.equal(probe.rows(), enc.probe(g))
    assert torch.allclose(enc.input_states(g, probe), enc.node_in(enc.node_features(g, enc.probe(g))), atol=1e-12)


def test_weight_conv_update_equals_its_mlp_on_the_concatenation_with_gradients():
    torch.manual_seed(0)
    conv = WeightConv(8, edge_dim=9)
    h, fwd, bwd = (torch.randn(30, 8, requires_grad=True) for _ in range(3))
    nf, nb = (torch.nn.functional.normalize(t, dim=-1, eps=conv.eps) for t in (fwd, bwd))
    plain = conv.norm(h + conv.node_mlp(torch.cat([h, nf, nb], dim=-1)))
    split = conv._update(h, fwd, bwd)
    assert torch.allclose(split, plain, atol=1e-12)
    params = [h, fwd, bwd, *conv.parameters()]
    used = [p for p in params if p is not conv.read_fwd and p is not conv.read_bwd
            and p is not conv.lin_fwd.weight and p is not conv.lin_bwd.weight]
    ga = torch.autograd.grad(split.square().sum(), used)
    gb = torch.autograd.grad(plain.square().sum(), used)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(ga, gb, strict=True))


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_probe_pass_gradients_match_finite_differences(name):
    """The probe pass writes some of its tensors in place (slices per level, the outputs' backward rows);
    autograd must still give its true gradient (gradcheck, float64)."""
    g = _graph(*make_family(name))
    torch.manual_seed(0)
    probe = ProbePass(probes=2, edge_dim=9, max_fixed=6)
    names = ["in_probe.weight", "out_probe.weight", "read_fwd", "read_bwd"]
    params = {k: v.detach().clone().requires_grad_() for k, v in probe.named_parameters()}

    def run(*values):
        return torch.func.functional_call(probe, dict(zip(names, values, strict=True)), (g,))

    assert torch.autograd.gradcheck(run, tuple(params[k] for k in names), eps=1e-6, atol=1e-5, fast_mode=True)
