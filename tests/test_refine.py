"""Refinement that keeps the better answer, BatchNorm on batch statistics in the interpolated loss,
STE re-basin, and ``auto``'s choice."""

import time
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import gnn_align as ga
from gnn_align import apply_permutation, random_permutation, spec_from_module
from gnn_align import refine as refine_module
from gnn_align.archs import MLP
from gnn_align.losses import interpolation_task_loss, state_task_loss
from gnn_align.methods import (
    AUTO_LONG_REFINE,
    AUTO_REFINE_STEPS,
    METHODS,
    SINKHORN_LR,
    SINKHORN_STEPS,
    Method,
    PairContext,
    auto_refine_schedule,
    has_method,
    lookup,
    refined,
)
from gnn_align.metrics import interpolate, recompute_bn_stats
from gnn_align.refine import auto_align, keep_better, midpoint_loss, split_scoring

from .conftest import make_family

EPS = 1e-5  # BatchNorm's default eps


def _linear_bn(seed: int) -> tuple:
    """Linear(4 -> 3, no bias) + BatchNorm1d(3) (gamma 1, beta 0), its running statistics those of
    the batch ``x`` (as after training on it)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3)).eval()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(99))
    state = recompute_bn_stats(net, net.state_dict(), [x])
    return net, state, x


def test_interpolated_loss_uses_the_statistics_of_the_interpolated_weights():
    """Hand-checked: BN(x W^T) with batch statistics has mean square var / (var + eps) per channel,
    whatever W is, so the MSE to 0 of the midpoint of two such layers is mean_c v_c / (v_c + eps),
    v the biased variance of the midpoint's pre-activations. Averaging the endpoints' running
    variances instead (eval mode) is wrong: for two independent layers the midpoint's variance is
    about half their average, and the loss comes out near 1/2."""
    net, a, x = _linear_bn(0)
    _, b, _ = _linear_bn(1)
    spec = spec_from_module(net, x)
    eye = {g: torch.eye(n) for g, n in spec.group_sizes.items()}
    zeros = torch.zeros(64, 3)
    pre = x @ (0.5 * (a["0.weight"] + b["0.weight"])).T
    v = pre.var(0, unbiased=False)
    hand = float((v / (v + EPS)).mean())
    got = float(interpolation_task_loss(net, a, b, eye, spec, x, zeros, 0.5, loss="mse"))
    assert got == pytest.approx(hand, abs=1e-12)
    net.eval()
    averaged = float(((torch.func.functional_call(net, interpolate(a, b, 0.5), (x,))) ** 2).mean())  # the old way
    assert abs(averaged - hand) > 0.1  # negative control: averaged running statistics give a wrong loss
    # the midpoint score recomputes the statistics (unbiased variance): within 1/64 of the hand value
    ident = {g: torch.arange(n) for g, n in spec.group_sizes.items()}
    assert midpoint_loss(net, spec, a, b, ident, x, zeros, "mse") == pytest.approx(hand, rel=2 / 64)
    # neither the states nor the module change
    assert net.training is False and torch.equal(a["1.running_var"], recompute_bn_stats(net, a, [x])["1.running_var"])


def test_state_task_loss_leaves_module_modes_and_state_alone():
    module, x = make_family("resnet2d_bn")
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    state_task_loss(module, state, x, torch.zeros(7, dtype=torch.long))
    assert module.training and all(m.training for m in module.modules())
    assert all(torch.equal(before[k], state[k]) for k in state)


def test_keep_better_rejects_a_refiner_that_makes_things_worse():
    base, worse = {"g": torch.tensor([0, 1])}, {"g": torch.tensor([1, 0])}
    better = worse
    score = lambda p: float(p["g"][0])
    perm, out = keep_better(("x", base, 0.1), ("x+r", worse, 0.2), score)
    assert perm is base and out.kept == "x" and out.scores == {"x": 0.0, "x+r": 1.0}
    perm, out = keep_better(("x", worse, 0.1), ("x+r", base, 0.2), score)
    assert perm is base and out.kept == "x+r"
    # the refiner's own test overrules even without data
    perm, out = keep_better(("x", base, 0.1), ("x+r", better, 0.2), None, own_test=lambda b, r: False)
    assert perm is base and out.kept == "x" and "own acceptance test" in out.note
    perm, out = keep_better(("x", base, 0.1), ("x+r", better, 0.2), None, own_test=lambda b, r: True)
    assert perm is better and out.kept == "x+r"


def _pair(seed: int = 0):
    module, x = make_family("mlp")
    spec = spec_from_module(module, x)
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    b = {k: v.detach().clone() for k, v in make_family("mlp", seed + 1)[0].state_dict().items()}
    xs = torch.randn(40, 5, generator=torch.Generator().manual_seed(3))
    ys = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(4))
    return PairContext(module, spec, a, b, xs, ys, "ce", torch.Generator().manual_seed(0))


def test_refined_method_keeps_the_base_when_the_refiner_hurts_and_says_so():
    ctx = _pair()
    score = lambda p: midpoint_loss(ctx.module, ctx.spec, ctx.state_a, ctx.state_b, p, ctx.x_train, ctx.y_train)
    perms = [random_permutation(ctx.spec, torch.Generator().manual_seed(s)) for s in range(6)]
    perms.sort(key=score)
    good, bad = perms[0], perms[-1]
    assert score(good) < score(bad)
    method = refined("base+bad", lambda c: good, lambda c, init: bad)
    assert method(ctx) is good and ctx.info["kept"] == "base"
    ctx.info.clear()
    method = refined("base+good", lambda c: bad, lambda c, init: good)
    assert method(ctx) is good and ctx.info["kept"] == "base+good"
    assert set(ctx.info["scores"]) == {"base", "base+good"} and set(ctx.info["seconds"]) == {"base", "base+good"}


def _auto_case(winner: str, refine_seconds: float = 0.0) -> tuple:
    """Candidates gnn, wm, am, gnn+wm with constructed answers and scores (``winner`` lowest, or the
    refined answer when ``winner="refine"``; then gnn is the best candidate), and a refiner that records
    where it started and takes ``refine_seconds``."""
    names = ["gnn", "wm", "am", "gnn+wm"]
    answers = {n: {"g": torch.tensor([k])} for k, n in enumerate(names)}
    scores = {n: 1.0 + k for k, n in enumerate(names)}
    scores[winner if winner != "refine" else "gnn"] = 0.5
    refined_answer = {"g": torch.tensor([9])}
    scores["ref"] = 0.1 if winner == "refine" else 2.0
    seen = {"refine": []}

    def candidate(name):
        def run(init):
            seen[name] = init
            return answers[name]
        return run

    def refine(init, left):
        seen["refine"].append(init)
        time.sleep(refine_seconds)
        return refined_answer

    key = {int(v["g"][0]): n for n, v in answers.items()} | {9: "ref"}
    return {n: candidate(n) for n in names}, refine, lambda p: scores[key[int(p["g"][0])]], answers, seen


@pytest.mark.parametrize("winner", ["gnn", "wm", "am", "gnn+wm", "refine"])
def test_auto_picks_each_candidate_when_it_wins(winner):
    """A constructed case per candidate: the one whose answer scores lowest is returned, with every
    candidate's score and time; refinement starts from the best candidate, then (time enough) from the
    others by score and from the extra starts."""
    cands, refine, score, answers, seen = _auto_case(winner)
    naive = {"g": torch.tensor([7])}
    perm, out = auto_align(cands, refine, score, budget=60.0, starts={"naive": naive})
    best = winner if winner != "refine" else "gnn"
    assert seen["gnn+wm"] is answers["gnn"]
    order = [best] + sorted((n for n in answers if n != best), key=lambda n: list(answers).index(n))
    assert seen["refine"] == [answers[n] for n in order] + [naive]  # best first, then by score, then starts
    assert perm["g"].item() == (9 if winner == "refine" else answers[winner]["g"].item())
    assert out.kept == (f"{best}+sinkhorn" if winner == "refine" else winner)
    assert set(out.scores) == set(out.seconds) == set(answers) | {f"{n}+sinkhorn" for n in [*answers, "naive"]}


def test_auto_refines_until_the_budget_is_spent(monkeypatch):
    """Refinements start, from the next start each, while time is left, each told how much (a fake
    clock: candidates take no time, a refinement 0.2 s); the last one may be cut short by it."""
    clock = [0.0]
    monkeypatch.setattr(refine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    cands, refine, score, answers, seen = _auto_case("refine")
    lefts = []

    def timed(init, left):
        lefts.append(left)
        clock[0] += 0.2
        return refine(init, left)

    _, out = auto_align(cands, timed, score, budget=0.5, starts={"naive": {"g": torch.tensor([7])}})
    assert seen["refine"] == [answers["gnn"], answers["wm"], answers["am"]] and out.kept == "gnn+sinkhorn"
    assert lefts == pytest.approx([0.5, 0.3, 0.1])
    assert set(out.scores) == set(answers) | {"gnn+sinkhorn", "wm+sinkhorn", "am+sinkhorn"}


def test_auto_without_a_budget_refines_the_best_candidate_once_by_each_refiner_whatever_the_clock(monkeypatch):
    """The default plan: the best candidate refined by every refiner, told no time (``None``), and nothing
    more; a clock that jumps by an hour at every reading changes nothing."""
    clock = [0.0]

    def jumping():
        clock[0] += 3600.0
        return clock[0]

    monkeypatch.setattr(refine_module, "time", SimpleNamespace(perf_counter=jumping))
    cands, refine, score, answers, seen = _auto_case("refine")
    lefts = []
    two = {name: (lambda init, left: lefts.append(left) or refine(init, left)) for name in ("u", "mid")}
    perm, out = auto_align(cands, two, score, starts={"naive": {"g": torch.tensor([7])}})
    assert seen["refine"] == [answers["gnn"], answers["gnn"]] and lefts == [None, None]
    assert out.kept == "gnn+u" and perm["g"].item() == 9
    assert set(out.scores) == set(answers) | {"gnn+u", "gnn+mid"}


def test_auto_by_default_gives_the_same_answer_twice():
    ctx = _pair()
    runs = [ga.align(ctx.state_a, ctx.state_b, "auto", data=(ctx.x_train, ctx.y_train), module=ctx.module)
            for _ in range(2)]
    assert runs[0].info["scores"] == runs[1].info["scores"] and runs[0].info["kept"] == runs[1].info["kept"]
    assert all(torch.equal(runs[0].perm[g], runs[1].perm[g]) for g in ctx.spec.group_sizes)
    scores = runs[0].info["scores"]
    best = min(("gnn", "wm", "am", "gnn+wm"), key=scores.get)
    assert set(scores) == {"gnn", "wm", "am", "gnn+wm", f"{best}+sinkhorn", f"{best}+sinkhorn-mid"}


def test_auto_skips_refinement_without_time_and_falls_back_without_data():
    _, out = auto_align({"wm": lambda _: {"g": torch.tensor([0])}}, lambda i, t: pytest.fail("no time left"),
                           lambda p: 1.0, budget=0.0)
    assert out.kept == "wm" and list(out.scores) == ["wm"]
    net = MLP(4, [3], 2).eval()
    with pytest.warns(UserWarning, match="auto: no data"):
        res = ga.align(net, net, "auto")
    assert res.info["kept"] == "gnn"


def test_auto_refinement_schedule_grows_with_the_budget():
    assert auto_refine_schedule(AUTO_LONG_REFINE - 0.01)["steps"] == AUTO_REFINE_STEPS
    assert auto_refine_schedule(0.5) == auto_refine_schedule(0.0)
    assert auto_refine_schedule(AUTO_LONG_REFINE) == {"steps": SINKHORN_STEPS, "lr": SINKHORN_LR}


def test_lookup_gives_auto_the_budget_after_the_at_sign():
    seen = []
    table = {"auto": Method("auto", lambda c: seen.append(c.budget) or {}, "data"), "wm": METHODS["wm"]}
    ctx = PairContext(None, None, {}, {}, None, None, "ce", torch.Generator())
    m = lookup(table, "auto@12.5")
    assert m.name == "auto@12.5" and m.needs == "data"
    m(ctx)
    lookup(table, "auto")(ctx)
    assert seen == [12.5, ctx.budget] and ctx.budget != 12.5  # the caller's context is left alone
    assert lookup(table, "wm") is METHODS["wm"]
    for bad in ("auto@", "auto@-1", "auto@x", "wm@3", "gnn@2"):
        assert not has_method(table, bad)
        with pytest.raises(KeyError):
            lookup(table, bad)


def test_auto_end_to_end_returns_its_best_scoring_candidate():
    ctx = _pair()
    net = ctx.module
    res = ga.align(ctx.state_a, ctx.state_b, "auto", data=(ctx.x_train, ctx.y_train), module=net, budget=0.3)
    info = res.info
    assert {"gnn", "wm", "am", "gnn+wm"} <= set(info["scores"]) and info["kept"] in info["scores"]
    assert info["scores"][info["kept"]] == min(info["scores"].values())
    _, _, xs, ys = split_scoring(ctx.x_train, ctx.y_train)
    assert xs.shape[0] == 8  # 20% held out
    assert midpoint_loss(net, ctx.spec, ctx.state_a, ctx.state_b, res.perm, xs, ys) == pytest.approx(
        info["scores"][info["kept"]], abs=1e-12)
    assert res.summary()["info"] == info


def test_midpoint_loss_is_the_loss_of_the_averaged_network():
    ctx = _pair()
    net, a, b, spec, x, y = ctx.module, ctx.state_a, ctx.state_b, ctx.spec, ctx.x_train, ctx.y_train
    perm = {g: torch.randperm(n, generator=torch.Generator().manual_seed(1)) for g, n in spec.group_sizes.items()}
    pb = apply_permutation(b, perm, spec)
    mid = {k: 0.5 * (a[k] + pb[k]) for k in a}  # by hand: the averaged network's cross-entropy
    hand = float(torch.nn.functional.cross_entropy(torch.func.functional_call(net, mid, (x,)), y))
    assert midpoint_loss(net, spec, a, b, perm, x, y) == pytest.approx(hand, abs=1e-12)


def test_new_methods_through_the_api_keep_the_function():
    ctx = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny MLP lies outside the aligner's training zoo
        for method in ("ste", "gnn+ste", "gnn+wm"):
            res = ga.align(ctx.state_a, ctx.state_b, method, data=(ctx.x_train, ctx.y_train), module=ctx.module)
            assert res.max_abs_diff <= 1e-12
            if method != "ste":
                assert res.info["kept"] in (method, "gnn")


def test_sinkhorn_respects_its_budget():
    ctx = _pair()
    from gnn_align.baselines import sinkhorn_rebasin

    res = sinkhorn_rebasin(ctx.module, ctx.state_a, ctx.state_b, ctx.spec, ctx.x_train, ctx.y_train, steps=50,
                           budget=0.0, generator=torch.Generator().manual_seed(0))
    assert res.iterations == 1
    assert sinkhorn_rebasin(ctx.module, ctx.state_a, ctx.state_b, ctx.spec, ctx.x_train, ctx.y_train,
                            steps=3).iterations == 3


def test_auto_runs_every_refiner_from_each_start_in_turn(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(refine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    order = []

    def refiner(tag):
        def run(init, left):
            order.append((tag, int(init["g"][0])))
            clock[0] += 0.2
            return {"g": torch.tensor([10 + len(order)])}
        return run

    cands = {"wm": lambda _: {"g": torch.tensor([1])}, "am": lambda _: {"g": torch.tensor([2])}}
    score = lambda p: -float(p["g"][0]) if int(p["g"][0]) != 13 else -100.0  # the third refinement wins
    perm, out = auto_align(cands, {"u": refiner("u"), "mid": refiner("mid")}, score, budget=0.7)
    assert order == [("u", 2), ("mid", 2), ("u", 1), ("mid", 1)]  # best start (am) first; the last one cut short
    assert out.kept == "wm+u" and int(perm["g"][0]) == 13
    assert set(out.scores) == {"wm", "am", "am+u", "am+mid", "wm+u", "wm+mid"}
