"""Warm-start study, speed comparison and the CLI commands that load a trained aligner, on a tiny zoo."""

import json

import pytest
import torch
from safetensors.torch import save_file

from gnn_align.aligner import GNNAligner, load_aligner
from gnn_align.cli import main
from gnn_align.errors import GNNAlignError
from gnn_align.studies.bench import run_benchmark, speed_comparison
from gnn_align.studies.warmstart import to_markdown, warm_start_study, write_warm_start


@pytest.fixture(scope="module")
def tiny(tiny_mlp_test_zoo, tmp_path_factory):
    zoo = tiny_mlp_test_zoo
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    al = GNNAligner(hidden=8, num_layers=1, edge_dim=1, edge_hidden=4, probes=8, head_scale=1.0).eval()
    (run / "config.json").write_text(json.dumps({"aligner": al.config.to_dict()}))
    save_file({k: v.contiguous() for k, v in al.state_dict().items()}, str(run / "aligner.safetensors"))
    return zoo, run


def test_load_aligner_round_trips_and_names_missing_files(tiny, tmp_path):
    _, run = tiny
    al = load_aligner(run)
    assert al.config.probes == 8 and not al.training
    with pytest.raises(GNNAlignError, match="aligner.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        load_aligner(tmp_path)


def test_warm_start_study_starts_where_it_says(tiny, tmp_path):
    zoo, run = tiny
    al = load_aligner(run)
    res = warm_start_study(zoo, al, num_pairs=2, checkpoints=(0, 3), progress=False)
    assert res["checkpoints"] == [0, 3] and res["pairs"] == 2
    # step 0 is the start itself: identity = naive, the WM start = WM, the gnn start = gnn
    ref = run_benchmark(zoo, ["naive", "wm"], num_pairs=2, progress=False)["methods"]
    assert res["sinkhorn"]["identity"][0] == pytest.approx(ref["naive"]["barrier_deepalign"]["mean"])
    assert res["sinkhorn"]["wm"][0] == pytest.approx(res["wm_barrier"])
    assert res["steps_to_wm"]["wm"] == 0
    assert res["wm_sweeps"]["identity"][0] == pytest.approx(res["sinkhorn"]["identity"][0])
    assert res["wm_sweeps"]["identity"][-1] == pytest.approx(res["wm_barrier"])  # converged WM
    assert res["wm_sweeps"]["gnn"][0] == pytest.approx(res["sinkhorn"]["gnn"][0])
    paths = write_warm_start(res, tmp_path / "w")
    assert [p.name for p in paths] == ["warmstart.json", "warmstart.md", "warmstart.png"]
    assert "| gnn |" in to_markdown(res) and "steps to reach WM" in to_markdown(res)


def test_speed_comparison_and_cli(tiny, tmp_path):
    zoo, run = tiny
    res = speed_comparison(zoo, load_aligner(run), num_pairs=3, batch_size=2)
    assert res["pairs"] == 3 and min(res["gnn_median_seconds"], res["wm_median_seconds"]) > 0
    assert res["gnn_batched_pairs_per_second"] > 0
    out = tmp_path / "s"
    assert main(["speed", "--zoo", zoo.name, "--root", str(zoo.parent), "--aligner", str(run), "--pairs", "2",
                 "--out", str(out)]) == 0
    speed = json.loads((out / "speed.json").read_text())
    assert speed["pairs"] == 2 and speed["provenance"]["aligner_weights_sha256"]
    assert main(["bench", "--zoo", zoo.name, "--root", str(zoo.parent), "--aligner", str(tmp_path / "none"),
                 "--methods", "gnn"]) == 2
    out = tmp_path / "b"
    assert main(["bench", "--zoo", zoo.name, "--root", str(zoo.parent), "--aligner", str(run),
                 "--methods", "naive,gnn", "--pairs", "2", "--out", str(out)]) == 0
    assert "| gnn |" in (out / "results.md").read_text()


def test_sinkhorn_trace_ends_at_the_result(tiny):
    from gnn_align.archs import build_arch
    from gnn_align.baselines import sinkhorn_rebasin
    from gnn_align.tasks import load_task
    from gnn_align.zoo import ModelZoo

    z = ModelZoo(str(tiny[0]), split="test", log=False)
    t = load_task("digits")
    res = sinkhorn_rebasin(build_arch(z.members[0]["arch"]).eval(), z.state_dict(0), z.state_dict(1), z.spec(0),
                           t.x_train, t.y_train, steps=4, checkpoints=(0, 2, 4),
                           generator=torch.Generator().manual_seed(0))
    assert [s for s, _ in res.trace] == [0, 2, 4]
    assert all(torch.equal(res.trace[-1][1][g], res.perm[g]) for g in res.perm)
