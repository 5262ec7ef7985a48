"""Warm starts: how fast do the optimisers converge when started from a learned prediction?

For fixed, seeded test pairs of a zoo, Sinkhorn re-basin is run from three starting permutations
(the identity, weight matching's result, and a trained aligner's prediction) and the test barrier of
its Hungarian decode is recorded at a list of step counts; weight matching's sweeps are recorded
the same way from the identity and from the prediction. The summary is the mean barrier per step
count and, per start, the first step count at which the mean barrier reaches weight matching's
(``steps_to_wm``). Written as ``warmstart.json``, ``warmstart.md`` and ``warmstart.png``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..archs import build_arch
from ..baselines import sinkhorn_rebasin, weight_matching
from ..methods import WARM_START_SCALE
from ..permute import identity_permutation
from ..tasks import loss_label, network_task
from ..zoo.dataset import ModelZoo
from ..zoo.pairs import independent_pairs
from .bench import evaluate_alignment, pair_generator
from .report import markdown_table, write_report

CHECKPOINTS = (0, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300)


def _first_reach(steps: list, means: list, level: float):
    return next((s for s, m in zip(steps, means, strict=True) if m <= level), None)


def warm_start_study(zoo_dir: str | Path, aligner, num_pairs: int = 20, seed: int = 0,
                     checkpoints: tuple = CHECKPOINTS, init_scale: float = WARM_START_SCALE, num_lambdas: int = 25,
                     progress: bool = True) -> dict:
    """Barrier against optimiser iterations from the identity, from WM and from ``aligner``.

    Args:
        zoo_dir: a built zoo (test split).
        aligner: a trained :class:`~gnn_align.aligner.GNNAligner`.
        checkpoints: Sinkhorn re-basin step counts at which the decode is scored (0: the start).
        init_scale: logit scale of a warm start's one-hot matrix (the identity start uses 1, as the
            ``sinkhorn`` benchmark method does).

    Returns:
        ``{"sinkhorn": {start: mean barrier per checkpoint}, "wm_sweeps": {start: mean barrier per
        sweep}, "wm_barrier", "steps_to_wm": {start: steps or None}, ...}``.
    """
    zoo = ModelZoo(str(zoo_dir), split="test", log=False)
    pairs = independent_pairs(zoo, num_pairs, torch.Generator().manual_seed(seed))
    steps = sorted({int(c) for c in checkpoints} | {0})
    sk: dict = {s: [] for s in ("identity", "wm", "gnn")}
    sweeps: dict = {s: [] for s in ("identity", "gnn")}
    wm_bar, modules, losses = [], {}, set()
    for i, j in tqdm(pairs, desc="warm-start pairs", disable=not progress):
        member = zoo.member_of(i)
        info = zoo.members[member]
        module = modules.setdefault(member, build_arch(info["arch"]).eval())
        task = network_task(zoo, i)  # j fits the same data (same member; in INR zoos the same signal)
        losses.add(task.loss)
        spec, a, b = zoo.spec(member), zoo.state_dict(i), zoo.state_dict(j)

        def score(perm, a=a, b=b, spec=spec, module=module, task=task) -> float:
            return evaluate_alignment(module, a, b, perm, spec, task, num_lambdas)[0]["barrier_deepalign"]

        gen = pair_generator(seed, i, j)
        wm = weight_matching(a, b, spec, generator=gen)
        pred = aligner.align(a, b, spec)
        wm_bar.append(score(wm.perm))
        gen_state = gen.get_state()
        wm_gnn = weight_matching(a, b, spec, init=pred, generator=gen)
        sweeps["identity"].append([score(p) for _, p in wm.trace])
        sweeps["gnn"].append([score(p) for _, p in wm_gnn.trace])
        starts = {"identity": (identity_permutation(spec), 1.0), "wm": (wm.perm, init_scale),
                  "gnn": (pred, init_scale)}
        for name, (init, scale) in starts.items():
            gen.set_state(gen_state)  # every start sees the same batches and lambdas
            res = sinkhorn_rebasin(module, a, b, spec, task.x_train, task.y_train, loss=task.loss,
                                   steps=steps[-1], init=init, init_scale=scale, generator=gen,
                                   checkpoints=steps)
            sk[name].append([score(p) for _, p in res.trace])
    wm_level = statistics.fmean(wm_bar)
    mean_sk = {s: [statistics.fmean(v) for v in zip(*rows, strict=True)] for s, rows in sk.items()}
    n_sweeps = max(len(r) for rows in sweeps.values() for r in rows)
    mean_sw = {s: [statistics.fmean(r[min(k, len(r) - 1)] for r in rows) for k in range(n_sweeps)]
               for s, rows in sweeps.items()}  # a converged run keeps its last value
    return {"zoo": zoo.manifest["name"], "pairs": len(pairs), "seed": seed, "checkpoints": steps,
            "init_scale": init_scale, "torch_threads": torch.get_num_threads(), "loss": "+".join(sorted(losses)),
            "wm_barrier": wm_level, "sinkhorn": mean_sk, "wm_sweeps": mean_sw,
            "steps_to_wm": {s: _first_reach(steps, m, wm_level) for s, m in mean_sk.items()},
            "sweeps_to_wm": {s: _first_reach(list(range(n_sweeps)), m, wm_level) for s, m in mean_sw.items()}}


def _curve_rows(curves: dict, reached: dict) -> list:
    """One row per start: its mean barriers, then when it reached WM's (``never``: not within the run)."""
    return [[name] + [f"{m:.4f}" for m in means] + ["never" if reached[name] is None else reached[name]]
            for name, means in curves.items()]


def to_markdown(res: dict) -> str:
    """The Markdown report of a :func:`warm_start_study` result: Sinkhorn re-basin's table, then WM's."""
    steps = res["checkpoints"]
    n = len(next(iter(res["wm_sweeps"].values())))
    intro = (f"**{res['zoo']}**: {res['pairs']} test pairs (seed {res['seed']}); mean Deep-Align barrier "
             f"(test {loss_label(res.get('loss', 'ce'))}); "
             f"weight matching's barrier {res['wm_barrier']:.4f}; warm starts at logit scale "
             f"{res['init_scale']}; torch threads {res['torch_threads']}")
    sinkhorn = markdown_table(["Sinkhorn re-basin from", *(f"{s} steps" for s in steps), "steps to reach WM"],
                              _curve_rows(res["sinkhorn"], res["steps_to_wm"]))
    wm = markdown_table(["WM from", *(f"{k} sweeps" for k in range(n)), "sweeps to reach WM"],
                        _curve_rows(res["wm_sweeps"], res["sweeps_to_wm"]))
    return f"{intro}\n\n{sinkhorn}\n\n{wm}\n"


def write_warm_start(res: dict, out_dir: str | Path) -> list:
    """Write ``warmstart.json``, ``warmstart.md`` and ``warmstart.png`` atomically; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for name, means in res["sinkhorn"].items():
        ax.plot([max(s, 0.5) for s in res["checkpoints"]], means, marker="o", label=f"from {name}")
    for name, means in res["wm_sweeps"].items():
        bx.plot(range(len(means)), means, marker="o", label=f"from {name}")
    panels = ((ax, "Sinkhorn re-basin", "steps (0 plotted at 0.5)"), (bx, "weight matching", "sweeps"))
    for axis, title, xlabel in panels:
        axis.axhline(res["wm_barrier"], color="gray", ls="--", label="WM (converged)")
        axis.set_title(f"{res['zoo']}: {title}")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("test barrier")
        axis.legend()
    ax.set_xscale("log")
    fig.tight_layout()
    return write_report(out_dir, "warmstart", res, to_markdown(res), fig)
