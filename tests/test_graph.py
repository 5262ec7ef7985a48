"""Networks as graphs: exact round trip, the commutative diagram with the group action, batching."""

import pytest
import torch
from torch_geometric.data import Batch

from gnn_align import (
    NetGraph,
    StateDictError,
    apply_permutation,
    collate,
    from_graph,
    global_group,
    random_permutation,
    relabel,
    spec_from_module,
    to_graph,
)
from gnn_align.graph import EDGE_SKIP

from .conftest import make_family


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_round_trip(family, dtype):
    _name, module, x = family
    spec = spec_from_module(module, x)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in _state(module).items()}
    graph = to_graph(state, spec)
    assert isinstance(graph, NetGraph) and graph.x.dtype == dtype
    back = from_graph(graph, spec)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def test_round_trip_with_wider_edge_dim(family):
    _name, module, x = family
    spec = spec_from_module(module, x)
    state = _state(module)
    graph = to_graph(state, spec, edge_dim=31)
    assert graph.edge_attr.shape[1] == 31
    assert all(torch.equal(v, state[k]) for k, v in from_graph(graph, spec).items())
    with pytest.raises(StateDictError, match="edge_dim=0 is shorter"):
        to_graph(state, spec, edge_dim=0)


def test_graph_sizes_and_node_features(family):
    name, module, x = family
    spec = spec_from_module(module, x)
    st = spec.structure
    graph = to_graph(_state(module), spec)
    assert graph.num_nodes == sum(ns.size for ns in st.nodesets)
    n_weight_edges = sum(ly.shape[0] * st.nodesets[ly.src].size for ly in st.layers)
    n_skips = sum(st.nodesets[a].size for a, _ in st.skips)
    assert graph.edge_index.shape[1] == n_weight_edges + n_skips
    assert int((graph.edge_type == EDGE_SKIP).sum()) == n_skips
    assert (graph.node_type == 0).sum() == st.nodesets[0].size
    fixed = graph.perm_group < 0
    assert torch.equal(fixed, graph.node_type != 1) or name.startswith("res")
    # positions of the input/output neurons are their fixed indices
    assert torch.equal(graph.perm_pos[graph.node_type == 0], torch.arange(st.nodesets[0].size))
    # every hidden neuron of a group appears once per node set of that group
    for gi, g in enumerate(graph.group_names):
        sets = [ns for ns in st.nodesets if ns.group == g]
        counts = torch.bincount(graph.perm_pos[graph.perm_group == gi], minlength=spec.group_sizes[g])
        assert torch.all(counts == len(sets))
    # edges go forward: depth never decreases along an edge
    src, dst = graph.edge_index
    assert torch.all(graph.node_depth[dst] >= graph.node_depth[src])


@pytest.mark.parametrize("seed", [0, 1])
def test_graph_of_permuted_weights_is_relabelled_graph(family, seed):
    _name, module, x = family
    spec = spec_from_module(module, x)
    state = _state(module)
    perm = random_permutation(spec, torch.Generator().manual_seed(seed))
    lhs = to_graph(apply_permutation(state, perm, spec), spec)
    rhs = relabel(to_graph(state, spec), perm)
    for key in ("x", "edge_index", "edge_attr", "edge_type", "node_type", "node_depth", "perm_group",
                "perm_pos", "extra"):
        assert torch.equal(lhs[key], rhs[key]), key
    # negative control: a different permutation gives a different graph
    other = {g: torch.roll(p, 1) for g, p in perm.items()}
    assert not torch.equal(relabel(to_graph(state, spec), other).edge_attr, lhs.edge_attr)


def test_batching_mixed_architectures_keeps_groups_and_positions():
    names = ["mlp", "resnet2d_bn", "cnn1d_flatten"]
    graphs, specs = [], []
    for name in names:
        module, x = make_family(name)
        spec = spec_from_module(module, x)
        specs.append(spec)
        graphs.append(to_graph(_state(module), spec, edge_dim=9))
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == 3
    for i, g in enumerate(graphs):
        sub = batch.get_example(i)
        for key in ("perm_group", "perm_pos", "edge_index", "edge_attr", "x"):
            assert torch.equal(sub[key], g[key]), (names[i], key)
        assert sub.group_names == g.group_names
        assert all(torch.equal(from_graph(sub, specs[i])[k], v) for k, v in from_graph(g, specs[i]).items())
        nodes = batch.batch == i
        assert torch.equal(batch.perm_group[nodes], g.perm_group)
        assert torch.equal(batch.perm_pos[nodes], g.perm_pos)
    glob = global_group(batch)
    total = sum(g.num_groups for g in graphs)
    assert torch.equal(torch.unique(glob[glob >= 0]), torch.arange(total))
    offsets = [0, graphs[0].num_groups, graphs[0].num_groups + graphs[1].num_groups]
    for i, g in enumerate(graphs):
        nodes = batch.batch == i
        expect = torch.where(g.perm_group >= 0, g.perm_group + offsets[i], g.perm_group)
        assert torch.equal(glob[nodes], expect)


def _same(u, v) -> bool:
    return torch.equal(u, v) if torch.is_tensor(u) else u == v


@pytest.mark.parametrize("fit", ["exact", "pool"])
def test_collate_is_pyg_batching_in_fewer_ops(fit):
    graphs = [to_graph(_state(m), spec_from_module(m, x), edge_dim=9, fit=fit)
              for m, x in (make_family(n) for n in ["mlp", "resnet2d_bn", "cnn1d_flatten", "mlp"])]
    ours, pyg = collate(graphs), Batch.from_data_list(graphs)
    assert type(ours) is type(pyg) and sorted(ours.keys()) == sorted(pyg.keys())
    assert ours.extra.numel() > 0 and (fit == "exact") == ("pooled" not in ours)
    for key in sorted(pyg.keys()):
        assert _same(ours[key], pyg[key]), key
        if key in pyg._slice_dict:
            assert torch.equal(ours._slice_dict[key], pyg._slice_dict[key]), key
            assert _same(ours._inc_dict[key], pyg._inc_dict[key]), key
    assert ours.num_graphs == pyg.num_graphs == 4 and ours.num_nodes == pyg.num_nodes
    for i, g in enumerate(graphs):  # unbatching gives the graphs back, as PyG's does
        sub, theirs = ours.get_example(i), pyg.get_example(i)
        assert sorted(sub.keys()) == sorted(g.keys()) and all(_same(sub[k], theirs[k]) for k in sorted(g.keys()))
        assert all(_same(sub[k], g[k]) for k in sorted(g.keys()) if k != "num_groups")


def test_collate_without_edges_keeps_what_dense_blocks_read():
    graphs = [to_graph(_state(m), spec_from_module(m, x), edge_dim=9)
              for m, x in (make_family(n) for n in ["mlp", "cnn1d_flatten", "mlp"])]
    full, lean = collate(graphs), collate(graphs, edges=False)
    assert "edge_index" not in lean and "edge_type" not in lean
    cols = full.kernel_cols.any(0)
    assert 1 < int(cols.sum()) < 9 and torch.equal(lean.edge_cols, cols[None])
    assert torch.equal(lean.edge_attr, full.edge_attr[:, cols])
    assert torch.equal(full.edge_attr[:, ~cols], torch.zeros_like(full.edge_attr[:, ~cols]))  # nothing lost
    for key in ("x", "blocks", "batch", "ptr", "perm_group", "perm_pos", "num_groups", "kernel_cols"):
        assert torch.equal(lean[key], full[key]), key
    with pytest.raises(RuntimeError, match="Cannot reconstruct"):
        lean.get_example(0)


def test_collate_leaves_graphs_with_other_keys_to_pyg():
    module, x = make_family("mlp")
    g = to_graph(_state(module), spec_from_module(module, x))
    tagged = g.clone()
    tagged.note = torch.ones(3)
    out = collate([tagged, tagged])
    assert torch.equal(out.note, torch.ones(6)) and torch.equal(out.edge_index, Batch.from_data_list([g, g]).edge_index)


@pytest.mark.parametrize("fit", ["exact", "pool"])
def test_nan_anywhere_in_the_graph_is_refused_naming_its_key(fit):
    module, x = make_family("resnet2d_bn")
    spec, state = spec_from_module(module, x), _state(module)
    keys = [k for k, t in state.items() if t.is_floating_point()]
    assert any("running_var" in k for k in keys) and any(k.endswith("bias") for k in keys)
    for key in keys:
        bad = dict(state, **{key: state[key].clone()})
        bad[key].view(-1)[-1] = float("nan")
        with pytest.raises(StateDictError, match=f"'{key}' contains NaN or Inf"):
            to_graph(bad, spec, edge_dim=9, fit=fit)


def test_finite_values_whose_sum_overflows_are_accepted():
    """Validate checks finiteness on each tensor's sum first; a sum that overflows (every value
    finite) must not be taken for NaN/Inf. Control: one Inf among them is refused, named."""
    module, x = make_family("mlp")
    spec, state = spec_from_module(module, x), _state(module)
    big = {k: (t.float() if t.is_floating_point() else t) for k, t in state.items()}
    big["0.weight"] = torch.full_like(big["0.weight"], 3e38)
    assert not torch.isfinite(big["0.weight"].sum())
    to_graph(big, spec)
    big["2.bias"] = big["2.bias"].clone()
    big["2.bias"][0] = float("inf")
    with pytest.raises(StateDictError, match="'2.bias' contains NaN or Inf"):
        to_graph(big, spec)


def test_bad_state_dicts_raise_naming_the_key():
    module, x = make_family("cnn2d_gap")
    spec = spec_from_module(module, x)
    state = _state(module)
    bad = dict(state, **{"2.weight": state["2.weight"].clone()})
    bad["2.weight"][0, 0, 0, 0] = float("inf")
    with pytest.raises(StateDictError, match="'2.weight' contains NaN or Inf"):
        to_graph(bad, spec)
    with pytest.raises(StateDictError, match=r"'2.weight' has shape \(4, 3, 3\), expected \(4, 3, 3, 3\)"):
        to_graph(dict(state, **{"2.weight": torch.zeros(4, 3, 3)}), spec)
    mixed = dict(state, **{"2.bias": state["2.bias"].float()})
    with pytest.raises(StateDictError, match="'2.bias' has dtype torch.float32"):
        to_graph(mixed, spec)
    other, ox = make_family("mlp")
    with pytest.raises(StateDictError, match="does not fit the spec"):
        from_graph(to_graph(_state(other), spec_from_module(other, ox)), spec)


def test_hand_written_spec_without_structure_is_refused_by_to_graph():
    from gnn_align import PermutationSpec

    spec = PermutationSpec({"h": 2}, {"w": ("h", None)})
    with pytest.raises(StateDictError, match=r"to_graph needs a PermutationSpec with graph structure, and this one "
                                             r"has none: derive it with gnn_align\.spec_from_module\(module, "):
        to_graph({"w": torch.ones(2, 3)}, spec)


def test_blocks_describe_the_edges_exactly(family):
    """Each block is a dense target-major layer (or an identity skip) over the edge range it names,
    and the blocks tile the edges; batching shifts them with the graph."""
    _name, module, x = family
    spec = spec_from_module(module, x)
    graph = to_graph(_state(module), spec)
    covered = 0
    for e0, s0, ns, d0, nd, skip in graph.blocks.tolist():
        assert e0 == covered
        m = ns if skip else ns * nd
        src, dst = graph.edge_index[:, e0:e0 + m]
        if skip:
            assert torch.equal(src, s0 + torch.arange(ns)) and torch.equal(dst, d0 + torch.arange(nd))
        else:
            assert torch.equal(src, s0 + torch.arange(ns).repeat(nd))
            assert torch.equal(dst, d0 + torch.arange(nd).repeat_interleave(ns))
        assert bool((graph.edge_type[e0:e0 + m] == int(skip)).all())
        covered += m
    assert covered == graph.edge_index.shape[1]
    batch = Batch.from_data_list([graph, graph])
    shift = torch.tensor([graph.num_edges, graph.num_nodes, 0, graph.num_nodes, 0, 0])
    assert torch.equal(batch.blocks, torch.cat([graph.blocks, graph.blocks + shift]))
