"""End to end: drive ``gnn-align`` as a subprocess on two small digits classifiers (inspect, align,
merge, eval) and on bad inputs, which must end with one line on stderr, exit code 2 and no output."""

import json
import subprocess
import sys

import pytest
import torch

from gnn_align.models import build_model, load_state_file, save_state_file
from gnn_align.tasks import load_task
from gnn_align.zoo import train_networks, unstack_state

from .helpers import MarkerPickle

ARCH = "mlp:64,32,32,10"
CLI = [sys.executable, "-m", "gnn_align.cli"]
pytestmark = pytest.mark.slow  # every test here runs the CLI as a subprocess


def gnn_align(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two digits MLPs trained from different seeds (float32), as .safetensors and .pt files."""
    root = tmp_path_factory.mktemp("models")
    t = load_task("digits")
    arch = {"family": "mlp", "in_features": 64, "hidden": [32, 32], "out_features": 10}
    stacked, _ = train_networks(arch, t.x_train.float(), t.y_train, [11, 12], epochs=8, lr=5e-3, progress=False)
    paths = [save_state_file(unstack_state(stacked, 0), root / "a.safetensors"),
             save_state_file(unstack_state(stacked, 1), root / "b.pt")]
    return root, paths


def test_inspect_prints_the_groups(models):
    _root, (a, _) = models
    r = gnn_align("inspect", a, "--model", ARCH)
    assert r.returncode == 0 and "group" in r.stdout and "0.weight[0]" in r.stdout
    info = json.loads(gnn_align("inspect", "--model", ARCH, "--json").stdout)
    assert info["groups"] == {"0": 32, "2": 32}


def test_align_writes_b_aligned_and_preserves_its_function(models):
    root, (a, b) = models
    out = root / "aligned.safetensors"
    r = gnn_align("align", a, b, "-o", out, "--model", ARCH, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["max_abs_diff"] < 1e-4 and info["distance_after"] < info["distance_before"]
    net = build_model(ARCH)
    x = load_task("digits").x_test.double()  # the module is float64 here (conftest)
    with torch.no_grad():
        net.load_state_dict(load_state_file(b))
        y_b = net(x)
        net.load_state_dict(load_state_file(out))
        assert float((net(x) - y_b).abs().max()) < 1e-4


def test_merge_beats_the_naive_average(models):
    root, (a, b) = models
    out = root / "merged.pt"
    r = gnn_align("merge", a, b, "-o", out, "--model", ARCH, "--data", "digits", "--json")
    assert r.returncode == 0, r.stderr
    acc = json.loads(r.stdout)["test_accuracy"]
    assert acc["aligned_average"] >= acc["naive_average"]
    assert load_state_file(out).keys() == build_model(ARCH).state_dict().keys()


def test_eval_writes_the_curve_and_png(models):
    root, (a, b) = models
    out = root / "eval"
    r = gnn_align("eval", a, b, "--model", ARCH, "--data", "digits", "--align", "wm", "--lambdas", "5",
                  "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    curve = json.loads((out / "curve.json").read_text())
    assert len(curve["curve"]["loss"]) == 5 and curve["barrier_deepalign"] >= 0


def test_bad_inputs_end_with_one_line_and_write_nothing(models, tmp_path):
    _, (a, b) = models
    state = load_state_file(a)
    nan = dict(state)
    nan["2.bias"] = nan["2.bias"].clone()
    nan["2.bias"][3] = float("nan")
    save_state_file(nan, tmp_path / "nan.safetensors")
    raw = a.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 3])
    marker = tmp_path / "pwned"
    torch.save({k: MarkerPickle(marker) if k == "0.bias" else v for k, v in state.items()}, tmp_path / "evil.pt")
    cases = [
        ((a, b, "--model", "mlp:64,16,32,10"), "key '0.weight' has shape (32, 64), the architecture expects (16, 64)"),
        ((a, tmp_path / "nan.safetensors", "--model", ARCH), "key '2.bias' contains NaN or Inf"),
        ((a, tmp_path / "cut.safetensors", "--model", ARCH), "cut.safetensors: not a readable safetensors file"),
        ((a, tmp_path / "evil.pt", "--model", ARCH), "evil.pt: refused"),
        ((a, b, "--model", "transformer:12"), "architecture 'transformer:12'"),
    ]
    for args, msg in cases:
        out = tmp_path / "out.safetensors"
        r = gnn_align("align", *args, "-o", out)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("gnn-align: error: "), r.stderr
        assert msg in r.stderr, r.stderr
        assert not out.exists() and not list(tmp_path.glob(".out.safetensors.*"))
    assert not marker.exists()
    r = gnn_align("merge", a, "-o", tmp_path / "m.pt", "--model", ARCH)
    assert r.returncode == 2 and "at least 2" in r.stderr and not (tmp_path / "m.pt").exists()


def test_every_subcommand_explains_itself(capfd):
    from gnn_align import cli

    for cmd in ("inspect", "align", "merge", "eval", "bench", "warmstart", "speed", "demo"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        out = capfd.readouterr().out
        assert e.value.code == 0 and "usage: gnn-align " + cmd in out and len(out) > 300
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capfd.readouterr().out
    assert all(c in top for c in ("inspect", "align", "merge", "eval", "zoo", "train", "bench"))
    assert cli.main(["train", "--help"]) == 0  # forwarded to train.py / python -m datasets
    assert "--preset" in capfd.readouterr().out
    assert cli.main(["zoo", "--help"]) == 0
    assert "build" in capfd.readouterr().out


def test_eval_compares_several_methods_in_one_table_and_plot(models):
    root, (a, b) = models
    out = root / "ev"
    r = gnn_align("eval", a, b, "--model", ARCH, "--data", "digits", "--align", "naive,wm", "--lambdas", "5",
                  "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert list(info["methods"]) == ["naive", "wm"]
    naive, wm = info["methods"]["naive"], info["methods"]["wm"]
    # the endpoints are A and B (B permuted computes what B computes: equal up to float32 summation order)
    assert naive["curve"]["loss"][0] == wm["curve"]["loss"][0]
    assert naive["curve"]["loss"][-1] == pytest.approx(wm["curve"]["loss"][-1], rel=1e-5)
    assert wm["barrier_deepalign"] < naive["barrier_deepalign"]  # aligning lowers the barrier of trained nets
    md = (out / "curve.md").read_text()
    assert "test loss (naive)" in md and "test loss (wm)" in md and (out / "curve.png").stat().st_size > 0
