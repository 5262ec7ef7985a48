"""The benchmark harness end to end on a tiny zoo."""

import json

import pytest

from datasets.build import build
from datasets.recipes import get_recipe
from gnn_align.cli import main
from gnn_align.studies.bench import run_benchmark, to_markdown, write_results


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    recipe = get_recipe("digits-cnn", tiny=True)
    recipe["splits"] = {"test": 1.0}  # every network a test network, so there are pairs to draw
    return build(recipe, tmp_path_factory.mktemp("zoos"), progress=False)


@pytest.mark.slow
def test_benchmark_runs_every_method_and_writes_results(tiny_zoo, tmp_path):
    res = run_benchmark(tiny_zoo, ["naive", "wm", "am", "sinkhorn"], num_pairs=3, progress=False)
    assert res["pairs"] == 3 and res["split"] == "test" and res["torch_threads"] >= 1
    for s in res["methods"].values():
        assert len(s["per_pair"]) == 3 and len(s["curve_mean"]) == 25
        for key in ("barrier_deepalign", "auc_deepalign", "barrier_rebasin", "acc_barrier"):
            assert s[key]["mean"] >= 0.0
        assert s["median_seconds"] >= 0.0
    assert res["methods"]["am"]["data"].startswith("train split")
    # the same seed draws the same pairs; aligning can only be judged on the same pairs
    again = run_benchmark(tiny_zoo, ["naive"], num_pairs=3, progress=False)
    assert [p["pair"] for p in again["methods"]["naive"]["per_pair"]] == \
        [p["pair"] for p in res["methods"]["naive"]["per_pair"]]
    paths = write_results(res, tmp_path / "out")
    assert [p.name for p in paths] == ["results.json", "results.md", "curves.png"]
    assert json.loads(paths[0].read_text())["zoo"] == res["zoo"]
    md = to_markdown(res)
    assert all(f"| {m} |" in md for m in res["methods"])


def test_bench_cli_reports_unknown_methods_and_zoos(tiny_mlp_test_zoo, tmp_path, capsys):
    tiny_zoo = tiny_mlp_test_zoo
    root = str(tiny_zoo.parent)
    assert main(["bench", "--zoo", tiny_zoo.name, "--root", root, "--methods", "naive,magic"]) == 2
    assert "unknown method(s) ['magic']" in capsys.readouterr().err
    assert main(["bench", "--zoo", "nope", "--root", root]) == 2
    assert "zoo folder not found" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main(["bench", "--zoo", tiny_zoo.name, "--root", root, "--methods", "naive,wm", "--pairs", "2",
                 "--out", str(out), "--reset-bn"]) == 0
    assert "BatchNorm statistics reset" in (out / "results.md").read_text()


@pytest.mark.slow
def test_learned_aligner_methods_join_the_same_table(tiny_zoo):
    import torch

    from gnn_align.aligner import GNNAligner
    from gnn_align.methods import aligner_methods, method_table

    torch.manual_seed(0)
    al = GNNAligner(hidden=8, num_layers=1, edge_dim=9, edge_hidden=4, probes=0, head_scale=1.0).eval()
    names = list(aligner_methods(al))
    res = run_benchmark(tiny_zoo, ["naive", "wm"] + names, num_pairs=2, progress=False, table=method_table(al))
    assert list(res["methods"]) == ["naive", "wm", "gnn", "gnn+wm", "gnn+sinkhorn", "gnn+ste", "auto"]
    for m in ("gnn+wm", "auto"):  # what the refiner kept, or auto chose, is counted over the pairs
        assert sum(res["methods"][m]["kept"].values()) == 2
    pairs = [p["pair"] for p in res["methods"]["naive"]["per_pair"]]
    for s in res["methods"].values():  # every method is scored on the same pairs
        assert [p["pair"] for p in s["per_pair"]] == pairs


def test_benchmark_of_one_member_and_unknown_member(tiny_mlp_test_zoo):
    from gnn_align.zoo.storage import ZooError

    res = run_benchmark(tiny_mlp_test_zoo, ["naive"], num_pairs=2, progress=False, member="digits-mlp")
    assert res["member"] == "digits-mlp" and res["pairs"] == 2 and "/ digits-mlp" in to_markdown(res)
    with pytest.raises(ZooError, match="no member 'nope'.*digits-mlp"):
        run_benchmark(tiny_mlp_test_zoo, ["naive"], num_pairs=2, progress=False, member="nope")


def test_zoo_pairs_are_the_seeded_pairs_with_what_evaluating_them_needs(tiny_mlp_test_zoo):
    import torch

    from gnn_align.studies.bench import zoo_pairs
    from gnn_align.zoo import ModelZoo
    from gnn_align.zoo.pairs import independent_pairs

    zoo = ModelZoo(str(tiny_mlp_test_zoo), split="test", log=False)
    got = list(zoo_pairs(zoo, 3, seed=4))
    assert [(p.i, p.j) for p in got] == list(independent_pairs(zoo, 3, torch.Generator().manual_seed(4)))
    assert [(p.i, p.j) for p in got] != [(p.i, p.j) for p in zoo_pairs(zoo, 3, seed=5)]
    for p in got:
        assert p.member == zoo.member_of(p.i) == zoo.member_of(p.j) and p.module is got[0].module
        assert all(torch.equal(p.a[k], v) for k, v in zoo.state_dict(p.i).items())
        assert all(torch.equal(p.b[k], v) for k, v in zoo.state_dict(p.j).items())
        p.spec.validate(p.b)
        assert p.task.x_test.shape[0] > 0 and not p.module.training
