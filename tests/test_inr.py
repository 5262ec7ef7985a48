"""INR zoos (one sine signal per network) in pairs, tasks, the benchmark, the warm-start study and train.py."""

import json
from collections import Counter

import pytest
import torch

import train
from datasets.build import _member_data, build
from datasets.recipes import get_recipe
from gnn_align.aligner import GNNAligner
from gnn_align.archs import build_arch
from gnn_align.metrics import interpolation_curve
from gnn_align.studies.bench import run_benchmark, to_markdown, write_results
from gnn_align.studies.warmstart import to_markdown as warm_markdown
from gnn_align.studies.warmstart import warm_start_study
from gnn_align.tasks import load_task, network_task, sine_grid, sine_task
from gnn_align.zoo import ModelZoo, ZooError, independent_pairs

from .helpers import write_tiny_zoo


@pytest.fixture(scope="module")
def sine_zoo(tmp_path_factory):
    """The tiny sine-inr recipe: 2 signals x 4 views, all networks in the test split."""
    recipe = get_recipe("sine-inr", tiny=True)
    recipe["splits"] = {"test": 1.0}
    return build(recipe, tmp_path_factory.mktemp("zoos"), progress=False), recipe


def test_independent_pairs_stay_within_one_signal(sine_zoo):
    zoo = ModelZoo(str(sine_zoo[0]), split="test", log=False)
    signal = [zoo.record(i)["signal"] for i in range(len(zoo))]
    assert sorted(Counter(signal).values()) == [4, 4]
    pairs = independent_pairs(zoo, 960, torch.Generator().manual_seed(0))
    assert all(i != j and signal[i] == signal[j] for i, j in pairs)
    # uniform over the 2 signals x 4 x 3 ordered pairs of one signal (40 expected draws of each)
    counts = Counter(pairs)
    assert len(counts) == 24 and min(counts.values()) > 15 and max(counts.values()) < 70
    assert pairs == independent_pairs(zoo, 960, torch.Generator().manual_seed(0))
    # two networks of different signals (positions 0 and 4) cannot be paired
    with pytest.raises(ZooError, match="signal"):
        independent_pairs(zoo[[0, 4]], 3, torch.Generator().manual_seed(0))


def test_classification_pairs_are_unchanged(tmp_path):
    """Pinned values of independent_pairs before INR zoos grouped pairs by signal."""
    write_tiny_zoo(str(tmp_path / "tiny"))
    zoo = ModelZoo(str(tmp_path / "tiny"), log=False)
    assert independent_pairs(zoo, 12, torch.Generator().manual_seed(3)) == [
        (3, 2), (6, 0), (0, 4), (6, 0), (4, 3), (0, 2), (3, 0), (3, 4), (3, 5), (10, 7), (0, 1), (0, 6)]
    train_view = ModelZoo(str(tmp_path / "tiny"), split="train", log=False)
    assert independent_pairs(train_view, 6, torch.Generator().manual_seed(4)) == [
        (1, 3), (0, 2), (0, 3), (4, 5), (5, 4), (1, 3)]


def test_network_task_rebuilds_the_data_of_the_build(sine_zoo):
    root, recipe = sine_zoo
    zoo = ModelZoo(str(root), split="test", log=False)
    data = _member_data(recipe, recipe["members"][0])
    module = build_arch(zoo.members[0]["arch"]).eval()
    for i in range(len(zoo)):
        rec, task = zoo.record(i), network_task(zoo, i)
        assert task.loss == "mse" and task.num_outputs == 1
        assert task.x_train.dtype == task.y_train.dtype == torch.float32
        for key in ("x_train", "x_test"):
            assert torch.equal(getattr(task, key), data[key])
        for key in ("y_train", "y_test"):
            assert torch.equal(getattr(task, key), data[key][rec["signal"]])
        state = {k: v.double() for k, v in zoo.state_dict(i).items()}
        curve = interpolation_curve(module, state, state, task.x_test.double(), task.y_test.double(), "mse",
                                    num_lambdas=2)
        assert curve["loss"][0] == pytest.approx(rec["test_loss"], rel=1e-4)
    x_train, x_test = sine_grid()
    assert x_train.shape == (128, 1) and x_test.shape == (127, 1)
    assert sine_task(1.5) is sine_task(1.5)  # cached
    # classification members get their member's task
    write_tiny_zoo(str(root.parent / "toy"))
    toy = ModelZoo(str(root.parent / "toy"), log=False)
    with pytest.raises(ValueError, match="toy"):
        network_task(toy, 0)


def test_network_task_of_a_classification_zoo(tmp_path):
    recipe = get_recipe("digits-mlp", tiny=True)
    recipe["members"][0]["count"] = 2
    zoo = ModelZoo(str(build(recipe, tmp_path, progress=False)), log=False)
    task, ref = network_task(zoo, 0), load_task("digits")
    assert task is network_task(zoo, 1) and task.loss == "ce"
    assert torch.equal(task.x_train, ref.x_train) and torch.equal(task.y_test, ref.y_test)


@pytest.mark.slow
def test_benchmark_on_a_sine_zoo(sine_zoo, tmp_path):
    root, _ = sine_zoo
    res = run_benchmark(root, ["naive", "wm", "am", "sinkhorn"], num_pairs=2, progress=False)
    assert res["loss"] == "mse" and res["pairs"] == 2
    signal = {r["id"]: r["signal"] for r in json.loads((root / "manifest.json").read_text())["networks"]}
    for s in res["methods"].values():
        assert "acc_barrier" not in s  # no accuracy for a regression task
        assert s["barrier_deepalign"]["mean"] >= 0.0 and len(s["curve_mean"]) == 25
        assert all(signal[p["pair"][0]] == signal[p["pair"][1]] for p in s["per_pair"])
    # naive's endpoints are the networks' own test losses on their signals
    manifest = {r["id"]: r for r in json.loads((root / "manifest.json").read_text())["networks"]}
    first = res["methods"]["naive"]["per_pair"][0]
    assert first["loss_a"] == pytest.approx(manifest[first["pair"][0]]["test_loss"], rel=1e-4)
    paths = write_results(res, tmp_path / "out")
    md = paths[1].read_text()
    assert md == to_markdown(res) and "test MSE" in md and "cross-entropy" not in md
    assert "| wm |" in md


@pytest.mark.slow
def test_warm_start_study_on_a_sine_zoo(sine_zoo):
    torch.manual_seed(0)
    al = GNNAligner(hidden=8, num_layers=1, edge_dim=1, edge_hidden=4, probes=8, head_scale=1.0).eval()
    res = warm_start_study(sine_zoo[0], al, num_pairs=2, checkpoints=(0, 2), progress=False)
    ref = run_benchmark(sine_zoo[0], ["naive"], num_pairs=2, progress=False)["methods"]["naive"]
    assert res["loss"] == "mse"
    assert res["sinkhorn"]["identity"][0] == pytest.approx(ref["barrier_deepalign"]["mean"])
    assert "test MSE" in warm_markdown(res)


@pytest.mark.slow
def test_train_py_on_a_sine_zoo(tmp_path):
    recipe = get_recipe("sine-inr", tiny=True)
    recipe["splits"] = {"train": 0.5, "val": 0.5}  # one signal (4 views) each
    build(recipe, tmp_path / "zoos", progress=False)
    torch.set_default_dtype(torch.float32)
    cfg = train.Config(zoo=recipe["name"], zoo_root=str(tmp_path / "zoos"), out=str(tmp_path / "run"), hidden=8,
                       num_layers=1, edge_hidden=4, probes=8, epochs=1, steps_per_epoch=2, planted_per_step=1,
                       unlabelled_per_step=2, val_planted=2, val_pairs=2, bench_pairs=0)
    out = train.main(cfg)
    (record,) = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["train_task"] >= 0.0 and record["val_barrier"] >= 0.0
