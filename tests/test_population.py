"""Distances after alignment, distance matrices, nearest models and many-model merging."""

import json

import pytest
import torch

import gnn_align
from gnn_align import apply_permutation, cli, random_permutation, spec_from_module
from gnn_align import population as pop
from gnn_align.archs import MLP
from gnn_align.errors import GNNAlignError
from gnn_align.mergemany import merge_many, synchronize
from gnn_align.permute import compose_permutations, invert_permutation

TOL = 1e-12


def _nets(n, seed=0):
    torch.manual_seed(seed)
    return [MLP(12, [16, 16], 4).double() for _ in range(n)]


def _spec(net):
    return spec_from_module(net, torch.randn(2, 12, dtype=torch.float64))


def _permuted(net, seed):
    spec = _spec(net)
    perm = random_permutation(spec, torch.Generator().manual_seed(seed))
    return apply_permutation(net.state_dict(), perm, spec), perm


@pytest.mark.parametrize("method", ["gnn", "wm"])
def test_distance_is_symmetric(method):
    a, b = _nets(2)
    x = torch.randn(32, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ab, ba = pop.distance(a, b, method, data=x), pop.distance(b, a, method, data=x)
    assert ab.weight == ba.weight and ab.raw == ba.raw and ab.groups == ba.groups
    assert ab.midpoint == pytest.approx(ba.midpoint, rel=1e-12) and ab.midpoint > 0
    # the alignment returned is B's to A in both calls: one is the inverse of the other
    assert all(torch.equal(ab.perm[g], invert_permutation(ba.perm)[g]) for g in ab.perm)
    assert 0 < ab.weight < ab.raw


@pytest.mark.parametrize("method", ["gnn", "wm"])
def test_distance_to_a_permutation_is_zero(method):
    a = _nets(1)[0]
    b, _ = _permuted(a, 1)
    x = torch.randn(64, 12, dtype=torch.float64)
    d = pop.distance(a, b, method, data=(x, torch.randint(0, 4, (64,))), module=a)
    assert d.weight <= TOL and all(v <= TOL for v in d.groups.values())
    assert d.functional <= TOL and d.barrier <= 1e-9 and d.midpoint <= 1e-9
    assert d.summary()["midpoint"] == d.midpoint
    assert d.raw > 0.5  # negative control: the permutation-blind distance is far from 0
    # without data there is nothing to run the midpoint on
    assert pop.distance(a, b, method).midpoint is None


def test_weight_distance_definition():
    a, b = _nets(2)
    spec = _spec(a)
    sa, sb = a.state_dict(), b.state_dict()
    keys = spec.learnable_keys()
    num = sum(float(((sa[k] - sb[k]) ** 2).sum()) for k in keys)
    den = sum(float((sa[k] ** 2).sum() + (sb[k] ** 2).sum()) for k in keys)
    overall, groups = pop.weight_distance(sa, sb, spec)
    assert overall == pytest.approx((num / den) ** 0.5, abs=TOL)
    assert set(groups) == set(spec.group_sizes)


def test_weight_distance_of_scaled_copy():
    a = _nets(1)[0]
    spec, sa = _spec(a), a.state_dict()
    # |a - 3a| / sqrt(|a|^2 + 9|a|^2) = 2 / sqrt(10), whatever a is
    tripled = {k: 3.0 * v for k, v in sa.items()}
    assert pop.weight_distance(sa, tripled, spec)[0] == pytest.approx(2 / 10 ** 0.5, abs=TOL)


def test_pairwise_matches_distance_and_is_a_metric_matrix():
    nets = _nets(5)
    m = pop.pairwise(nets, progress=False)
    assert torch.equal(m.weight, m.weight.T) and torch.all(m.weight.diagonal() == 0)
    for i in range(5):
        for j in range(i + 1, 5):  # the embed-once path gives what aligning the pair alone gives
            assert m.weight[i, j] == pytest.approx(pop.distance(nets[i], nets[j]).weight, abs=1e-9)
    assert torch.all(m.raw[~torch.eye(5, dtype=torch.bool)] > m.weight[~torch.eye(5, dtype=torch.bool)])


def test_pairwise_resumes_from_its_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(pop, "CHUNK_PAIRS", 3)
    nets = _nets(5)
    first = pop.pairwise(nets, cache=tmp_path / "c", progress=False)
    chunks = sorted((tmp_path / "c").glob("chunk-*.safetensors"))
    assert len(chunks) == 4  # 10 pairs in chunks of 3
    chunks[1].unlink()  # as if killed before the second chunk was written
    stamp = chunks[2].stat().st_mtime_ns
    again = pop.pairwise(nets, cache=tmp_path / "c", progress=False)
    assert torch.equal(first.weight, again.weight) and torch.equal(first.raw, again.raw)
    assert chunks[1].is_file() and chunks[2].stat().st_mtime_ns == stamp  # only the missing chunk recomputed
    with pytest.raises(GNNAlignError, match="another computation"):
        pop.pairwise(nets[:4], cache=tmp_path / "c", progress=False)


def test_nearest_finds_the_permuted_copy():
    nets = _nets(6)
    copy, _ = _permuted(nets[3], 2)
    for method in ("gnn", "wm"):
        found = pop.nearest(copy, nets, k=2, method=method, module=nets[0])
        assert found[0][0] == 3 and found[0][1] <= TOL and found[1][1] > 0.1


def test_synchronize_recovers_a_consistent_frame():
    net = _nets(1)[0]
    spec = _spec(net)
    perms = [random_permutation(spec, torch.Generator().manual_seed(s)) for s in range(4)]
    states = [apply_permutation(net.state_dict(), p, spec) for p in perms]
    # exact pairwise alignments j -> i, one of them corrupted: the votes of the others outweigh it
    pw = {(i, j): compose_permutations(invert_permutation(perms[j]), perms[i])
          for i in range(4) for j in range(i + 1, 4)}
    pw[1, 2] = random_permutation(spec, torch.Generator().manual_seed(9))
    frame, _ = synchronize(pw, 4, spec)
    moved = [apply_permutation(s, p, spec) for s, p in zip(states, frame, strict=True)]
    assert all(torch.equal(moved[0][k], m[k]) for m in moved for k in m)
    with pytest.raises(ValueError, match="missing"):
        synchronize({(0, 1): pw[0, 1]}, 3, spec)


def test_merge_many_of_permuted_copies_is_the_network():
    net = _nets(1)[0]
    spec = _spec(net)
    states = [_permuted(net, s)[0] for s in range(4)]
    frame, _ = merge_many(states, spec, generator=torch.Generator().manual_seed(0))
    moved = [apply_permutation(s, p, spec) for s, p in zip(states, frame, strict=True)]
    assert all(torch.equal(moved[0][k], m[k]) for m in moved for k in m)


@pytest.mark.parametrize("many", ["mergemany", "sync"])
def test_merge_into_a_shared_frame_keeps_the_function(many):
    net = _nets(1)[0]
    states = [_permuted(net, s)[0] for s in range(4)]
    x = torch.randn(16, 12, dtype=torch.float64)
    res = gnn_align.merge(states, method="wm", module=net, many=many)
    merged = res.model()
    assert len(res.alignments) == 4 and res.alignments[0].info["many"] == many
    with torch.no_grad():
        assert float((merged(x) - net(x)).abs().max()) <= 1e-10
    naive = gnn_align.api.average_states(states)  # negative control: the unaligned average is another function
    net2 = res.model()
    net2.load_state_dict(naive)
    with torch.no_grad():
        assert float((net2(x) - net(x)).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="unknown many"):
        gnn_align.merge(states, method="wm", module=net, many="all")


def test_cli_distance_and_errors(tmp_path, capsys):
    from safetensors.torch import save_file

    a, b = _nets(2)
    for name, net in (("a", a), ("b", b)):
        save_file({k: v.float() for k, v in net.state_dict().items()}, str(tmp_path / f"{name}.safetensors"))
    files = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    assert cli.main(["distance", *files, "--model", "mlp:12,16,16,4", "--method", "wm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["weight"] < out["raw"] and set(out["groups"]) == {"0", "2"}
    assert cli.main(["distance", files[0], "--model", "mlp:12,16,16,4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two model files" in err[0]
    assert cli.main(["nearest", files[0], "--zoo", "nope", "--root", str(tmp_path)]) == 2
    assert "no built zoo" in capsys.readouterr().err


def test_cli_zoo_matrix_and_nearest(tiny_mlp_test_zoo, tmp_path, capsys):
    root, name = str(tiny_mlp_test_zoo.parent), tiny_mlp_test_zoo.name
    out = tmp_path / "m"
    assert cli.main(["distance", "--zoo", name, "--root", root, "--out", str(out), "--method", "wm", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {p.name for p in out.iterdir()} >= {"distances.safetensors", "distances.json", "distances.png", "chunks"}
    assert info["networks"] >= 2 and info["mean_distance"] < info["mean_raw_distance"]
    from safetensors.torch import load_file, save_file

    from gnn_align.zoo import ModelZoo

    zoo = ModelZoo(str(tiny_mlp_test_zoo), split="test", log=False)
    save_file(zoo.state_dict(1), str(tmp_path / "q.safetensors"))
    assert cli.main(["nearest", str(tmp_path / "q.safetensors"), "--zoo", name, "--root", root, "-k", "2",
                     "--method", "wm", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["nearest"]
    assert found[0]["network_id"] == zoo.record(1)["id"] and found[0]["distance"] <= 1e-6
    assert load_file(str(out / "distances.safetensors"))["weight"].shape == (info["networks"],) * 2
