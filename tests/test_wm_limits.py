"""Issue 22, item 2: weight matching on large models. ``max_sweeps`` and ``time_limit`` cap it, from
:func:`~gnn_align.baselines.weight_matching`, :func:`gnn_align.align` / :func:`gnn_align.merge` (``wm``,
``gnn+wm``, ``auto``) and the CLI (``--max-sweeps``, ``--time-limit``); the result says when a cap
stopped it. Float64 copies made once give the same permutations as before."""

import importlib
import json

import pytest
import torch

import gnn_align as ga
from gnn_align.baselines import weight_matching
from gnn_align.cli import main
from gnn_align.models import save_state_file

from .conftest import make_family

WM = importlib.import_module("gnn_align.baselines.weight_matching")


def _setup(name="resnet2d_bn"):
    a, x = make_family(name, 0)
    b, _ = make_family(name, 1)
    return a, b, x, ga.spec_from_module(a, x)


def test_max_sweeps_stops_weight_matching_and_says_so():
    """Unlimited, weight matching converges (a sweep changes nothing: stopped None) after >= 2 sweeps; with
    max_sweeps=1 it stops after one, says 'max_sweeps', and its permutation is the unlimited run's after its first
    sweep."""
    a, b, _, spec = _setup()
    sa, sb = a.state_dict(), b.state_dict()
    full = weight_matching(sa, sb, spec, generator=torch.Generator().manual_seed(0))
    assert full.stopped is None and full.iterations >= 2
    assert len(full.seconds) == len(full.objective) == full.iterations + 1
    assert all(s1 >= s0 for s0, s1 in zip(full.seconds, full.seconds[1:]))
    one = weight_matching(sa, sb, spec, generator=torch.Generator().manual_seed(0), max_sweeps=1)
    assert one.stopped == "max_sweeps" and one.iterations == 1
    assert all(torch.equal(one.perm[g], p) for g, p in full.trace[1][1].items())
    assert one.objective == full.objective[:2]
    # the former name still works
    assert weight_matching(sa, sb, spec, generator=torch.Generator().manual_seed(0), max_iter=1).stopped == "max_sweeps"


def test_time_limit_stops_weight_matching_mid_sweep_and_says_so(monkeypatch):
    """time_limit is checked before each group's step: with a clock that advances one second per reading, a limit of 3
    s ends the first sweep part way; the permutation is still at least as good as the start (objective non-
    decreasing) and 'time_limit' says why it stopped. A limit already spent returns the start."""
    a, b, _, spec = _setup()
    sa, sb = a.state_dict(), b.state_dict()
    clock = iter(range(10_000))
    monkeypatch.setattr(WM.time, "perf_counter", lambda: float(next(clock)))
    res = weight_matching(sa, sb, spec, generator=torch.Generator().manual_seed(0), time_limit=3.5)
    assert res.stopped == "time_limit" and res.iterations == 1
    assert res.objective[-1] >= res.objective[0]
    monkeypatch.undo()
    start = weight_matching(sa, sb, spec, time_limit=1e-12)
    assert start.stopped == "time_limit" and start.iterations == 0
    assert all(torch.equal(p, torch.arange(len(p))) for p in start.perm.values())


def test_align_and_merge_pass_the_caps_to_weight_matching():
    """align(..., 'wm', max_sweeps=1) and time_limit reach weight matching and info says what stopped it (and the
    sweeps); without caps info has no 'stopped'; gnn+wm and merge pass them too; bad values are refused before
    anything runs."""
    a, b, x, _ = _setup()
    free = ga.align(a, b, "wm", example_input=x)
    assert "stopped" not in free.info and free.info["wm_sweeps"] >= 2
    capped = ga.align(a, b, "wm", example_input=x, max_sweeps=1)
    assert capped.info["stopped"] == "max_sweeps" and capped.info["wm_sweeps"] == 1 and capped.max_abs_diff <= 1e-9
    timed = ga.align(a, b, "wm", example_input=x, time_limit=1e-12)
    assert timed.info["stopped"] == "time_limit"
    assert all(torch.equal(p, torch.arange(len(p))) for p in timed.perm.values())
    net, xm = make_family("mlp", 0)
    other, _ = make_family("mlp", 1)
    refined = ga.align(net, other, "gnn+wm", example_input=xm, time_limit=1e-12)
    assert refined.info["stopped"] == "time_limit" and refined.info["kept"] in ("gnn", "gnn+wm")
    with pytest.warns(UserWarning, match="BatchNorm"):  # no data: stale statistics
        merged = ga.merge([a, b, a], method="wm", example_input=x, max_sweeps=1)
    assert [r.info.get("stopped") for r in merged.alignments] == ["max_sweeps", None]  # a to a: converged at once
    for bad in ({"max_sweeps": 0}, {"max_sweeps": 1.5}, {"time_limit": -1.0}, {"time_limit": float("nan")}):
        with pytest.raises(ValueError, match="max_sweeps|time_limit"):
            ga.align(a, b, "wm", example_input=x, **bad)


def test_cli_align_and_merge_take_max_sweeps_and_time_limit(tmp_path, capsys):
    """gnn-align align/merge --max-sweeps N --time-limit S: the JSON result says what stopped weight matching, the text
    output says it in one line."""
    arch = "resnet2d:1,4,4,8,3"
    a, b = ga.models.build_model(arch), ga.models.build_model(arch)
    torch.manual_seed(1)
    for m in (a, b):
        for p in m.parameters():
            p.data.normal_()
    pa = save_state_file(a.state_dict(), tmp_path / "a.safetensors")
    pb = save_state_file(b.state_dict(), tmp_path / "b.safetensors")
    assert main(["align", str(pa), str(pb), "-o", str(tmp_path / "o.safetensors"), "--model", arch, "--method", "wm",
                 "--max-sweeps", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["info"]["stopped"] == "max_sweeps" and info["info"]["wm_sweeps"] == 1
    assert main(["align", str(pa), str(pb), "-o", str(tmp_path / "o.safetensors"), "--force", "--model", arch,
                 "--method", "wm", "--time-limit", "1e-12"]) == 0
    assert "weight matching stopped by --time-limit after 0 sweeps" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="BatchNorm"):  # no data: stale statistics
        assert main(["merge", str(pa), str(pb), "-o", str(tmp_path / "m.safetensors"), "--model", arch,
                     "--method", "wm", "--max-sweeps", "1", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["alignments"][0]["stopped"] == "max_sweeps"
    assert main(["align", str(pa), str(pb), "-o", str(tmp_path / "x.safetensors"), "--model", arch, "--method", "wm",
                 "--max-sweeps", "0", "--json"]) == 2
    assert "max_sweeps must be a positive integer" in capsys.readouterr().err
