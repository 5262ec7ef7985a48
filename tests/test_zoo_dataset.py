"""ModelZoo (lazy graphs over a built zoo), augmentations, independent and planted pairs."""

import json
import re

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from gnn_align import (
    NetGraph,
    apply_permutation,
    from_graph,
    invert_permutation,
    random_permutation,
    spec_from_module,
    to_graph,
)
from gnn_align.archs import CNN, MLP, build_arch
from gnn_align.testing import output_change
from gnn_align.zoo import (
    ModelZoo,
    PlantedPair,
    PlantedPairs,
    ZooError,
    augment,
    independent_pairs,
    member_weights,
    planted_pair,
    sample_networks,
)
from gnn_align.zoo.augment import rescalable_nodesets

from .conftest import make_family
from .helpers import N_NETWORKS, RESNET_ARCH, original_state, write_tiny_zoo


@pytest.fixture
def tiny_zoo(tmp_path):
    root = tmp_path / "tiny"
    states = write_tiny_zoo(str(root))
    return root, states


def graphs_equal(g, h):
    keys = ("x", "edge_index", "edge_attr", "edge_type", "node_type", "node_depth", "perm_group",
            "perm_pos", "extra")
    return all(torch.equal(g[k], h[k]) for k in keys) and g.num_nodes == h.num_nodes


# -- ModelZoo -----------------------------------------------------------------------------------------
def test_len_get_slicing_iteration(tiny_zoo):
    root, _ = tiny_zoo
    zoo = ModelZoo(root)
    assert len(zoo) == N_NETWORKS and zoo.network_ids == list(range(N_NETWORKS))
    g = zoo[3]
    assert isinstance(g, NetGraph) and g.network_id == 3 and g.member == 0
    assert zoo[-1].network_id == 10 and zoo[-1].member == 1
    assert zoo[torch.tensor(8)].network_id == 8
    sub = zoo[1:4]
    assert isinstance(sub, ModelZoo) and len(sub) == 3 and sub.network_ids == [1, 2, 3]
    assert [g.network_id for g in sub] == [1, 2, 3]
    assert zoo[torch.tensor([5, 0, 9])].network_ids == [5, 0, 9]
    mask = torch.zeros(N_NETWORKS, dtype=torch.bool)
    mask[[2, 7]] = True
    assert zoo[mask].network_ids == [2, 7]
    assert sub[1:].network_ids == [2, 3] and sub[0].network_id == 1
    assert [g.network_id for g in zoo] == list(range(N_NETWORKS))
    torch.manual_seed(0)
    shuf = zoo.shuffle()
    assert sorted(shuf.network_ids) == list(range(N_NETWORKS)) and shuf.network_ids != zoo.network_ids
    for k in range(len(shuf)):
        assert shuf[k].network_id == shuf.network_ids[k] == shuf.record(k)["id"]
    assert zoo.indices_of(0) == list(range(7)) and zoo.indices_of(1) == [7, 8, 9, 10]
    assert sub.indices_of(1) == [] and zoo[6:9].indices_of(1) == [1, 2]
    assert [m["name"] for m in zoo.members] == ["tiny-mlp", "tiny-resnet"]
    assert "tiny" in repr(zoo) and "11" in repr(zoo)
    # copy() compacts a subset without collating graphs
    cp = zoo.copy(torch.tensor([9, 1]))
    assert cp.network_ids == [9, 1] and graphs_equal(cp[0], zoo[9]) and graphs_equal(cp[1], zoo[1])


def test_graphs_and_state_dicts_round_trip(tiny_zoo):
    root, states = tiny_zoo
    zoo = ModelZoo(root)
    for i in range(len(zoo)):
        rec, m = zoo.record(i), zoo.member_of(i)
        sd = zoo.state_dict(i)
        ref = original_state(states, rec["id"])
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
        assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
        assert graphs_equal(zoo[i], to_graph(ref, zoo.spec(m)))
        back = from_graph(zoo[i], zoo.spec(m))
        assert all(torch.equal(back[k], ref[k]) for k in ref)
    sd = zoo.state_dict(0)
    next(v for v in sd.values()).add_(1.0)  # a copy: the zoo is unchanged
    assert graphs_equal(zoo[0], to_graph(original_state(states, 0), zoo.spec(0)))
    assert zoo.spec(1) == spec_from_module(build_arch(RESNET_ARCH), torch.zeros(2, 1, 6, 6))
    # a common edge_dim lets PyG batch both members
    wide = ModelZoo(root, edge_dim=9)
    batch = next(iter(DataLoader(wide, batch_size=N_NETWORKS)))
    assert isinstance(batch, Batch) and batch.network_id.tolist() == list(range(N_NETWORKS))
    assert batch.member.tolist() == [0] * 7 + [1] * 4


def test_split_filtering(tiny_zoo):
    root, _ = tiny_zoo
    views = {s: ModelZoo(root, s) for s in ("train", "val", "test")}
    ids = {s: set(v.network_ids) for s, v in views.items()}
    assert ids["train"] & ids["val"] == ids["train"] & ids["test"] == ids["val"] & ids["test"] == set()
    assert ids["train"] | ids["val"] | ids["test"] == set(range(N_NETWORKS))
    for s, v in views.items():
        assert all(v.record(k)["split"] == s for k in range(len(v)))
        assert all(v[k].network_id == v.network_ids[k] for k in range(len(v)))
    assert views["val"].network_ids == [2, 9] and views["val"][1].member == 1
    with pytest.raises(ZooError, match="no networks in split 'heldout'"):
        ModelZoo(root, "heldout")


def test_processed_cache(tiny_zoo, monkeypatch):
    root, _ = tiny_zoo
    calls = []
    original = ModelZoo.process

    def counting(self):
        calls.append(self.split)
        original(self)

    monkeypatch.setattr(ModelZoo, "process", counting)
    first = ModelZoo(root, "train")
    name1 = first.processed_file_names[0]
    assert calls == ["train"] and (root / "processed" / name1).is_file()
    assert name1.startswith("tiny-v1-train-")
    again = ModelZoo(root, "train")
    assert calls == ["train"] and again.network_ids == first.network_ids
    ModelZoo(root)
    assert calls == ["train", None]
    # rebuild the zoo with another recipe: the old cache must not be read
    write_tiny_zoo(str(root), recipe_note="b")
    changed = ModelZoo(root, "train")
    assert calls == ["train", None, "train"] and changed.processed_file_names[0] != name1


def _empty_zoo(root):
    man = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(dict(man, networks=[])))
    return root / "manifest.json", "the zoo is empty"


def _missing_shard(root):
    (root / "shard-00001.safetensors").unlink()
    return root / "shard-00001.safetensors", "shard listed in the manifest is missing"


def _truncated_shard(root):
    path = root / "shard-00001.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "checksum mismatch"


def _manifest_not_json(root):
    path = root / "manifest.json"
    path.write_text(path.read_text()[:-40])
    return path, "not valid JSON"


def _checksum_mismatch(root):
    path = root / "shard-00002.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # same size, one weight changed
    path.write_bytes(bytes(data))
    return path, "checksum mismatch"


@pytest.mark.parametrize("damage", [_empty_zoo, _missing_shard, _truncated_shard, _manifest_not_json,
                                    _checksum_mismatch], ids=lambda f: f.__name__.strip("_"))
def test_hostile_zoo_is_refused_naming_the_file_and_left_as_it_was(tiny_zoo, damage):
    root, _ = tiny_zoo
    path, reason = damage(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(ZooError, match=re.escape(str(path)) + ".*" + reason):
        ModelZoo(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_only_the_shards_a_view_needs_are_read(tiny_zoo):
    root, _ = tiny_zoo
    _truncated_shard(root)
    with pytest.raises(ZooError, match="shard-00001.safetensors"):
        ModelZoo(root, "train")
    # "val" (ids 2 and 9) lives in shards 0 and 2
    assert ModelZoo(root, "val").network_ids == [2, 9]


# -- pairs --------------------------------------------------------------------------------------------
def test_independent_pairs(tiny_zoo):
    root, _ = tiny_zoo
    zoo = ModelZoo(root)
    pairs = independent_pairs(zoo, 300, torch.Generator().manual_seed(0))
    assert len(pairs) == 300
    assert all(i != j and zoo.member_of(i) == zoo.member_of(j) for i, j in pairs)
    assert {zoo.member_of(i) for i, _ in pairs} == {0, 1}
    # members in proportion to their pair counts (42 vs 12)
    share = sum(zoo.member_of(i) == 0 for i, _ in pairs) / len(pairs)
    assert 0.65 < share < 0.9
    assert pairs == independent_pairs(zoo, 300, torch.Generator().manual_seed(0))
    assert pairs != independent_pairs(zoo, 300, torch.Generator().manual_seed(1))
    train = zoo[zoo.indices_of(0)]
    assert all(0 <= i < len(train) for p in independent_pairs(train, 20, torch.Generator()) for i in p)
    with pytest.raises(ZooError, match="tiny"):
        independent_pairs(zoo[[0, 7]], 5, torch.Generator().manual_seed(0))
    # pairs of one member only
    ones = independent_pairs(zoo, 50, torch.Generator().manual_seed(0), member=1)
    assert all(zoo.member_of(i) == 1 == zoo.member_of(j) and i != j for i, j in ones)


def test_member_weights_rules(tiny_zoo):
    zoo = ModelZoo(tiny_zoo[0])
    assert member_weights(zoo, "") is None
    assert member_weights(zoo, "*resnet=3").tolist() == [1.0, 3.0]
    assert member_weights(zoo, "tiny-*=2, *mlp=0").tolist() == [0.0, 2.0]  # the last matching rule wins
    for bad, msg in [("nope=2", "matches no member"), ("*mlp", "GLOB=WEIGHT"), ("*mlp=-1", "GLOB=WEIGHT"),
                     ("*mlp=x", "GLOB=WEIGHT"), ("=2", "GLOB=WEIGHT")]:
        with pytest.raises(ValueError, match=msg):
            member_weights(zoo, bad)


def test_weighted_sampling_follows_member_weights(tiny_zoo):
    zoo = ModelZoo(tiny_zoo[0])  # 7 + 4 networks: unweighted, member 0 dominates
    gen = torch.Generator().manual_seed(0)
    assert sample_networks(zoo, 5, torch.Generator().manual_seed(1)) == \
        torch.randint(0, len(zoo), (5,), generator=torch.Generator().manual_seed(1)).tolist()
    for w, lo, hi in [([1.0, 1.0], 0.42, 0.58), ([1.0, 3.0], 0.17, 0.33), ([0.0, 1.0], 0.0, 0.0)]:
        w = torch.tensor(w, dtype=torch.float64)
        nets = sample_networks(zoo, 600, gen, w)
        pairs = independent_pairs(zoo, 600, gen, weights=w)
        for share in (sum(zoo.member_of(i) == 0 for i in nets) / 600,
                      sum(zoo.member_of(i) == 0 for i, _ in pairs) / 600):
            assert lo <= share <= hi
        assert all(zoo.member_of(i) == zoo.member_of(j) and i != j for i, j in pairs)
        assert set(sample_networks(zoo, 600, gen, w)) <= set(range(len(zoo)))
    # members without networks in a view (held-out architectures in the train split) are skipped
    view = zoo[zoo.indices_of(1)]
    w = torch.tensor([5.0, 1.0], dtype=torch.float64)
    assert {view.member_of(i) for i in sample_networks(view, 50, gen, w)} == {1}
    assert {view.member_of(i) for i, _ in independent_pairs(view, 50, gen, weights=w)} == {1}
    with pytest.raises(ZooError, match="positive weight"):
        sample_networks(view, 5, gen, torch.tensor([1.0, 0.0], dtype=torch.float64))


def _replay(zoo, idx, seed, rescale):
    gen = torch.Generator().manual_seed(seed)
    spec = zoo.spec(zoo.member_of(idx))
    perm = random_permutation(spec, gen)
    aug = augment(zoo.state_dict(idx), spec, gen, rescale=rescale)
    return apply_permutation(aug, perm, spec), perm


@pytest.mark.parametrize("idx", [1, 8])
def test_planted_pair_is_exact(tiny_zoo, idx):
    root, _ = tiny_zoo
    zoo = ModelZoo(root)
    spec = zoo.spec(zoo.member_of(idx))
    pp = planted_pair(zoo, idx, torch.Generator().manual_seed(11))
    assert isinstance(pp, PlantedPair) and pp.network_id == idx and pp.member == zoo.member_of(idx)
    b, perm = _replay(zoo, idx, 11, (0.9, 1.1))
    assert all(torch.equal(pp.perm[g], perm[g]) for g in perm)
    assert pp.b.keys() == b.keys() and all(torch.equal(pp.b[k], b[k]) for k in b)
    back = apply_permutation(pp.b, pp.target, spec)  # the target recovers A (augmented) from B
    assert all(torch.equal(back[k], pp.a_augmented[k]) for k in back)
    inverse = invert_permutation(pp.perm)
    assert pp.target.keys() == inverse.keys() and all(torch.equal(pp.target[g], inverse[g]) for g in inverse)
    assert all(torch.equal(pp.a[k], zoo.state_dict(idx)[k]) for k in pp.a)
    assert any(not torch.equal(pp.a[k], pp.a_augmented[k]) for k in pp.a)


@pytest.mark.parametrize("idx", [1, 8])
def test_aligning_a_planted_pair_recovers_its_target(tiny_zoo, idx):
    """``align(a, b)`` predicts ``PlantedPair.target`` (B permuted by it is A), not ``perm`` (what made B)."""
    from gnn_align import align

    zoo = ModelZoo(tiny_zoo[0])
    exact = {"noise": 0.0, "dropout": 0.0, "rescale": None, "max_quantile": 0.0}  # b: a permuted, nothing else
    pp = planted_pair(zoo, idx, torch.Generator().manual_seed(5), augment_kwargs=exact)
    module = build_arch(zoo.members[pp.member]["arch"]).eval()
    res = align(pp.a, pp.b, method="wm", module=module)
    assert res.perm.keys() == pp.target.keys() and all(torch.equal(res.perm[g], pp.target[g]) for g in pp.target)
    assert any(not torch.equal(pp.perm[g], pp.target[g]) for g in pp.perm)  # the two directions differ here
    assert all(torch.equal(res.state[k], pp.a[k]) for k in pp.a)


def test_planted_pair_rescales_only_relu(tmp_path):
    write_tiny_zoo(str(tmp_path / "z"), mlp_activation="tanh")
    zoo = ModelZoo(tmp_path / "z")
    pp = planted_pair(zoo, 0, torch.Generator().manual_seed(3))
    no_rescale, _ = _replay(zoo, 0, 3, None)
    with_rescale, _ = _replay(zoo, 0, 3, (0.9, 1.1))
    assert all(torch.equal(pp.b[k], no_rescale[k]) for k in pp.b)
    assert any(not torch.equal(pp.b[k], with_rescale[k]) for k in pp.b)


def test_planted_pairs_dataset(tiny_zoo):
    root, _ = tiny_zoo
    zoo = ModelZoo(root, "train")
    ds = PlantedPairs(zoo, seed=4)
    assert len(ds) == len(zoo)
    items = list(ds)
    assert [p.network_id for p in items] == zoo.network_ids
    again = PlantedPairs(zoo, indices=[2, 0], seed=4)
    assert all(torch.equal(again[1].b[k], items[0].b[k]) for k in items[0].b)
    ds.set_epoch(1)
    assert any(not torch.equal(ds[0].b[k], items[0].b[k]) for k in items[0].b)


# -- augmentations ------------------------------------------------------------------------------------
def _cnn2d_flatten():
    torch.manual_seed(0)
    return CNN(2, [3, 4], 3, dim=2, head="flatten", input_size=6).eval(), torch.randn(7, 2, 6, 6)


@pytest.mark.parametrize("name", ["mlp", "cnn1d_flatten", "cnn2d_flatten", "cnn2d_gap", "residual_mlp"])
def test_rescaling_preserves_relu_function(name):
    module, x = _cnn2d_flatten() if name == "cnn2d_flatten" else make_family(name)
    spec = spec_from_module(module, x)
    assert rescalable_nodesets(spec)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    out = augment(state, spec, torch.Generator().manual_seed(0), noise=0.0, dropout=0.0, max_quantile=0.0,
                  rescale=(0.5, 2.0))
    assert output_change(module, out, x) <= 1e-10
    assert any(not torch.equal(out[k], state[k]) for k in state)
    assert all(torch.equal(module.state_dict()[k], state[k]) for k in state)


def test_rescaling_changes_tanh_function():
    """Negative control: rescaling is not a symmetry of a tanh network, so the check above can fail."""
    torch.manual_seed(0)
    module, x = MLP(5, [4, 6], 3, activation="tanh").eval(), torch.randn(7, 5)
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    out = augment(state, spec, torch.Generator().manual_seed(0), noise=0.0, dropout=0.0, max_quantile=0.0,
                  rescale=(0.5, 2.0))
    assert output_change(module, out, x) > 1e-6


def test_full_augmentation_deterministic_and_small():
    module, x = make_family("cnn2d_gap")
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    a1 = augment(state, spec, torch.Generator().manual_seed(1))
    a2 = augment(state, spec, torch.Generator().manual_seed(1))
    a3 = augment(state, spec, torch.Generator().manual_seed(2))
    assert all(torch.equal(a1[k], a2[k]) for k in state)
    assert any(not torch.equal(a1[k], a3[k]) for k in state)
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert all(a1[k].dtype == state[k].dtype and a1[k].shape == state[k].shape for k in state)
    flat = torch.cat([state[k].reshape(-1) for k in state])
    delta = torch.cat([(a1[k] - state[k]).reshape(-1) for k in state])
    rel = float(delta.norm() / flat.norm())
    assert 0.0 < rel < 0.5
    assert any(bool((a1[k] == 0).any()) and not bool((state[k] == 0).any()) for k in state)


def test_augmentation_leaves_running_stats_alone():
    module, x = make_family("resnet2d_bn")
    spec = spec_from_module(module, x)
    assert rescalable_nodesets(spec) == []  # every layer has BatchNorm or a residual skip
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    out = augment(state, spec, torch.Generator().manual_seed(0), noise=0.1, dropout=0.2, max_quantile=0.3)
    stats = [k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(out[k], state[k]) and out[k].dtype == state[k].dtype for k in stats)
    assert not set(stats) & set(spec.learnable_keys())
    assert all(not torch.equal(out[k], state[k]) for k in spec.learnable_keys())
