"""Train a GNNAligner on a model zoo: ``python train.py --help``.

Self-supervised: planted pairs (A, pi . augment(A)) with known pi (cross-entropy of each neuron
against its partner), plus independent pairs scored by the weight distance after soft alignment and
the task loss of the interpolated network. Writes to ``--out``: ``config.json`` (the resolved
config), ``aligner.safetensors`` (the weights of the best validation epoch), ``checkpoint.pt``
(weights, optimiser and RNG state, for ``--resume``; loaded with ``weights_only=True``) and
``metrics.jsonl`` (one line per epoch).

With ``--ema D`` the weights validated and saved are an exponential moving average of the trained
ones (decay ``min(D, (1 + t) / (10 + t))`` after step ``t``). ``--select wm_ratio`` picks the best
epoch by the geometric mean, over the validation members, of the aligner's mean barrier divided by
weight matching's on the same pairs: a scale-free criterion, where the plain mean barrier
(``--select barrier``) is dominated by the architectures with the largest barriers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from gnn_align import to_graph
from gnn_align.aligner import GNNAligner, load_aligner
from gnn_align.archs import build_arch
from gnn_align.config import AlignerConfig, upgrade_keys
from gnn_align.errors import GNNAlignError
from gnn_align.io import atomic_write, write_json
from gnn_align.losses import interpolation_task_loss, pair_matrices, planted_cross_entropy, weight_distance
from gnn_align.methods import METHODS, PairContext, aligner_methods, method_table
from gnn_align.metrics import matching_accuracy
from gnn_align.runtime import keep_freed_memory
from gnn_align.studies.bench import evaluate_alignment, run_benchmark, to_markdown, write_results
from gnn_align.tasks import network_task
from gnn_align.training import distributed as ddp
from gnn_align.training.checkpoint import load_training_state, save_training_state
from gnn_align.training.runconfig import parse_dataclass_args
from gnn_align.zoo import ModelZoo, independent_pairs, member_weights, planted_pair, sample_networks

#: the defaults of the aligner's fields of :class:`Config`: :class:`~gnn_align.config.AlignerConfig`'s (the one set)
_ALIGNER = AlignerConfig()


@dataclass
class Config:
    """Every setting of a training run (the command line is generated from these fields). The aligner's
    settings have :class:`~gnn_align.config.AlignerConfig`'s names and defaults."""

    zoo: str = "digits-mlp"  # zoo to train on (built with `python -m datasets build` if missing)
    zoo_root: str = "data/zoos"  # folder of built zoos
    out: str = "runs/digits-mlp"  # run folder
    hidden: int = _ALIGNER.hidden  # encoder width
    num_layers: int = _ALIGNER.num_layers  # message-passing rounds after the probe pass
    conv: str = _ALIGNER.conv  # message passing: weight (WeightConv, dense, no edge states) or edge (NetConv)
    scale_invariant: bool = _ALIGNER.scale_invariant  # node parameters divided by their RMS over their layer
    edge_hidden: int = _ALIGNER.edge_hidden  # edge state width (conv=edge)
    head_scale: float = _ALIGNER.head_scale  # initial scale s of the scores s² cos(f_A, f_B)
    probes: int = _ALIGNER.probes  # probe channels (network run on learned virtual inputs/outputs; 0: none)
    epochs: int = 3
    steps_per_epoch: int = 100
    planted_per_step: int = 2  # planted pairs per step
    unlabelled_per_step: int = 4  # independent pairs per step (weight-distance + task losses)
    member_weights: str = ""  # GLOB=W,... per-member sampling weights ("": the zoo's own mix)
    lr: float = 2e-3
    schedule: str = "cosine"  # learning-rate schedule over all steps: cosine (to 0) or none
    weight_decay: float = 5e-4
    clip: float = 1.0  # gradient-norm clip
    pseudo_labels: str = ""  # JSON of permutations of training pairs to imitate (explore/pseudo_labels.py)
    pseudo_per_step: int = 0  # pairs of pseudo_labels per step (cross-entropy towards their permutations)
    w_planted: float = 1.0
    w_l2: float = 1.0
    w_task: float = 1.0
    w_pseudo: float = 1.0
    task_batch: int = 32  # inputs per task-loss evaluation
    sinkhorn_iters: int = 20
    tau: float = 1.0
    val_planted: int = 16  # planted validation pairs (matching accuracy)
    val_pairs: int = 48  # independent validation pairs (barrier at hard permutations)
    bench_pairs: int = 200  # test pairs of the final benchmark (0: skip it)
    seed: int = 0
    threads: int = 0  # torch threads per process (0: torch's default)
    resume: bool = False  # continue from OUT/checkpoint.pt
    checkpoint_every: int = 0  # also checkpoint every this many steps within an epoch (0: at epoch ends)
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and saved (0: off)
    select: str = "barrier"  # best epoch by: barrier (mean validation barrier) or wm_ratio (relative to WM)

    def aligner_config(self, edge_dim: int, activation: str = "relu", w0: float = 1.0) -> AlignerConfig:
        """The architecture of the run's aligner: its fields named as AlignerConfig's, and what the zoo
        decides (the graphs' edge width, the networks' activation and SIREN frequency)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in AlignerConfig.names()}
        return AlignerConfig(**own, edge_dim=edge_dim, activation=activation, w0=w0)


#: how often each member of the mixed zoos is drawn (CNNs, residual nets, width-128 and MNIST-1D MLPs
#: more often than the zoo's own mix)
_MIXED_WEIGHTS = "*cnn*=4,*resnet*=4,*resmlp*=2,*w128*=2,mnist1d-mlp-*=2"
# the mixed preset on networks of many training recipes too (zoo mixed-recipes), with two rounds of
# WeightConv message passing after the probe pass and node parameters normalised per layer
_V2 = {"zoo": "mixed-recipes", "out": "runs/v2", "hidden": 64, "num_layers": 2, "conv": "weight",
       "scale_invariant": True, "epochs": 24, "steps_per_epoch": 150, "planted_per_step": 4,
       "unlabelled_per_step": 4, "member_weights": _MIXED_WEIGHTS, "ema": 0.995, "select": "wm_ratio",
       "val_pairs": 64, "bench_pairs": 0}

_TRANSFORMER = {"zoo": "digits-transformer", "out": "runs/transformer", "hidden": 64, "num_layers": 2,
                "epochs": 25, "steps_per_epoch": 200, "planted_per_step": 4, "unlabelled_per_step": 8, "w_l2": 0.0,
                "task_batch": 128, "ema": 0.995, "select": "wm_ratio", "val_pairs": 48, "bench_pairs": 0}

#: named sets of Config defaults (``--preset NAME``; flags given on the command line still win)
PRESETS = {
    # one aligner for every architecture family of the mixed zoo (MLPs of many widths and depths,
    # 1-D/2-D CNNs, residual nets with BatchNorm, LayerNorm MLPs; two tasks): the shipped aligner.
    # The saved weights are a moving average, selected by the barrier relative to weight matching
    "mixed": {"zoo": "mixed", "out": "runs/mixed", "hidden": 64, "epochs": 24, "steps_per_epoch": 150,
              "planted_per_step": 4, "unlabelled_per_step": 4, "member_weights": _MIXED_WEIGHTS,
              "ema": 0.995, "select": "wm_ratio", "val_pairs": 144, "bench_pairs": 0},
    "v2": _V2,
    # the shipped v2 run (weight decay 0.2, raw node parameters, 40 epochs) on the mixed zoo with
    # transformers too (zoo mixed-transformer), transformers drawn as often as CNNs
    "mixed-transformer": _V2 | {"zoo": "mixed-transformer", "out": "runs/mixed-transformer",
                                "scale_invariant": False, "weight_decay": 0.2, "epochs": 40,
                                "member_weights": _MIXED_WEIGHTS + ",*transformer*=4"},
    # transformers (zoo digits-transformer, read as their flat view: gnn_align/flat.py): two rounds of
    # message passing after the probe pass; the task loss of the interpolated network on batches of 128
    # inputs and no weight-distance loss (the loss issue 16's sweep found best): the shipped `transformer`
    "transformer": _TRANSFORMER,
    # the same on the `transformers` zoo (d_model 32-64, 2-4 heads, 1-3 blocks, pre- and post-LN), 16 epochs
    # (70 minutes on one core); not shipped: `transformer` is better on this zoo's validation pairs too
    "transformers": _TRANSFORMER | {"zoo": "transformers", "out": "runs/transformers", "epochs": 16},
}


#: keys of a run's ``config.json`` that train.py derives (ignored when it is read back as ``--config``)
DERIVED_KEYS = ("edge_dim", "aligner")


def parse_config(argv: list | None = None) -> Config:
    """Config from the command line: dataclass defaults < ``--preset`` < ``--config FILE`` < flags (a file
    of an older run that says ``layers`` is read as ``num_layers``: :func:`~gnn_align.config.upgrade_keys`)."""
    return parse_dataclass_args(Config, argv, PRESETS, DERIVED_KEYS, __doc__.split("\n\n")[0], upgrade=upgrade_keys)


def ensure_zoo(cfg: Config) -> Path:
    """The folder of the run's zoo, built first when it has no manifest yet."""
    root = Path(cfg.zoo_root) / cfg.zoo
    if not (root / "manifest.json").is_file():
        from datasets.build import build
        from datasets.recipes import get_recipe

        print(f"zoo {cfg.zoo} not found under {cfg.zoo_root}: building it")
        build(get_recipe(cfg.zoo), cfg.zoo_root)
    return root


class Trainer:
    """Holds the zoos, the aligner and the optimiser of one run (one rank of it, when distributed).

    Args:
        cfg: the run's config.
        info: this process's rank and world size; every rank draws the same global batch and
            computes its slice (see :mod:`gnn_align.training.distributed`).
    """

    def __init__(self, cfg: Config, info: ddp.DistInfo | None = None):
        self.cfg, self.info = cfg, info or ddp.DistInfo()
        info = self.info
        if cfg.planted_per_step + cfg.unlabelled_per_step < info.world:
            raise ValueError(f"a global batch of {cfg.planted_per_step} planted + {cfg.unlabelled_per_step} "
                             f"unlabelled pairs cannot be split over {info.world} ranks (one pair each at least)")
        with ddp.main_first(info):  # rank 0 builds and caches the zoo; the others then read its files
            root = ensure_zoo(cfg)
            self.train_zoo = ModelZoo(str(root), split="train", log=False)
            self.val_zoo = ModelZoo(str(root), split="val", log=False)
        self.edge_dim = max(ly.edge_len for m in range(len(self.train_zoo.members))
                            for ly in self.train_zoo.spec(m).graph_spec.structure.layers)
        acts = {(m.get("activation", "relu"), float(m["arch"].get("w0", 1.0))) for m in self.train_zoo.members}
        if len(acts) > 1:
            raise ValueError(f"zoo {cfg.zoo}: members use different activations {sorted(acts)}; "
                             "one aligner runs its probe pass with one activation")
        (activation, w0), = acts
        with torch.random.fork_rng():  # initialise from the run's seed without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.aligner = GNNAligner(cfg.aligner_config(self.edge_dim, activation, w0))
        # DDP all-reduces (averages) the gradients; one process calls the aligner directly
        self.model = torch.nn.parallel.DistributedDataParallel(self.aligner) if info.active else self.aligner
        self.opt = torch.optim.AdamW(self.aligner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     amsgrad=True)
        if cfg.select not in SELECT:
            raise ValueError(f"select must be one of {list(SELECT)}, got '{cfg.select}'")
        if not 0.0 <= cfg.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {cfg.ema}")
        # the averaged weights: what is validated and saved when ema > 0
        self.ema = copy.deepcopy(self.aligner).eval().requires_grad_(False) if cfg.ema else None
        if cfg.schedule not in ("cosine", "none"):
            raise ValueError(f"schedule must be 'cosine' or 'none', got '{cfg.schedule}'")
        total = max(cfg.epochs * cfg.steps_per_epoch, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, (lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
                                                       if cfg.schedule == "cosine" else (lambda t: 1.0))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.pseudo = read_pseudo_labels(cfg, self.train_zoo) if cfg.pseudo_per_step else []
        self.weights = member_weights(self.train_zoo, cfg.member_weights)
        self.modules = [build_arch(m["arch"]).eval() for m in self.train_zoo.members]
        vgen = torch.Generator().manual_seed(cfg.seed + 1)
        self.val_planted = [planted_pair(self.val_zoo, int(i), vgen)
                            for i in torch.randint(0, len(self.val_zoo), (cfg.val_planted,), generator=vgen)]
        self.val_pairs = independent_pairs(self.val_zoo, cfg.val_pairs, vgen)
        # weight matching's validation barriers, once (only rank 0 validates)
        self.val_wm = ([self.barrier(i, j, METHODS["wm"]) for i, j in self.val_pairs]
                       if cfg.select == "wm_ratio" and info.is_main else None)

    @property
    def best_model(self) -> GNNAligner:
        """The weights that are validated and saved: the moving average, or the trained weights."""
        return self.ema if self.ema is not None else self.aligner

    def barrier(self, i: int, j: int, method) -> float:
        """Deep-Align barrier of validation networks ``i`` and ``j`` aligned by ``method(PairContext)``."""
        zoo = self.val_zoo
        a, b, member = zoo.state_dict(i), zoo.state_dict(j), zoo.member_of(i)
        spec, t = zoo.spec(member), network_task(zoo, i)
        ctx = PairContext(self.modules[member], spec, a, b, t.x_train, t.y_train, t.loss,
                          torch.Generator().manual_seed(i * 100_003 + j))
        return evaluate_alignment(self.modules[member], a, b, method(ctx), spec, t)[0]["barrier_deepalign"]

    def save(self, path: Path, **position) -> None:
        """Checkpoint the run at ``position`` (finished epochs, steps into the next, its loss sums, best)."""
        extra = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        save_training_state(path, self.aligner, self.opt, self.sched, self.gen, **position, **extra)

    def load(self, path: Path) -> dict:
        """Restore a checkpoint written by :meth:`save`; returns its position."""
        pos = load_training_state(path, self.aligner, self.opt, self.sched, self.gen)
        ema = pos.pop("ema", None)
        if (ema is None) != (self.ema is None):
            raise GNNAlignError(f"{path}: checkpoint {'lacks' if ema is None else 'has'} moving-average "
                                f"weights but this run has ema={self.cfg.ema}")
        if ema is not None:
            self.ema.load_state_dict(ema)
        return pos

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the averaged weights towards the trained ones (after the optimiser's step)."""
        t = self.sched.last_epoch  # optimiser steps taken so far
        decay = min(self.cfg.ema, (1 + t) / (10 + t))
        for e, w in zip(self.ema.state_dict().values(), self.aligner.state_dict().values(), strict=True):
            e.lerp_(w, 1.0 - decay) if e.is_floating_point() else e.copy_(w)

    def graph(self, state, zoo, member):
        return to_graph(state, zoo.spec(member), edge_dim=self.edge_dim)

    def draw(self) -> tuple:
        """The global batch of one step, drawn from the run's generator (the same on every rank).

        Returns:
            ``(planted, unlabelled, pseudo)``: planted pairs, ``(i, j, sel, lam)`` per independent pair
            (zoo indices, the task-batch rows and the interpolation weight of its task loss), and
            ``(i, j, permutation)`` per pseudo-labelled pair (``pseudo_per_step``).
        """
        cfg, zoo, gen = self.cfg, self.train_zoo, self.gen
        planted = [planted_pair(zoo, i, gen) for i in sample_networks(zoo, cfg.planted_per_step, gen, self.weights)]
        pairs = (independent_pairs(zoo, cfg.unlabelled_per_step, gen, weights=self.weights)
                 if cfg.unlabelled_per_step else [])
        unlabelled = []
        for i, j in pairs:
            n = network_task(zoo, i).x_train.shape[0]
            sel = torch.randint(0, n, (cfg.task_batch,), generator=gen)
            unlabelled.append((i, j, sel, float(torch.rand((), generator=gen))))
        pseudo = []
        if cfg.pseudo_per_step:  # drawn last, so that runs without pseudo-labels draw what they drew before
            picks = torch.randint(0, len(self.pseudo), (cfg.pseudo_per_step,), generator=gen).tolist()
            pseudo = [self.pseudo[k] for k in picks]
        return planted, unlabelled, pseudo

    def step(self) -> dict:
        """One optimiser step on the global batch; returns its losses (summed over ranks)."""
        cfg, zoo = self.cfg, self.train_zoo
        planted, unlabelled, pseudo = self.draw()
        mine = ddp.shard([("planted", p) for p in planted] + [("pair", u) for u in unlabelled]
                         + [("pseudo", u) for u in pseudo], self.info)
        planted = [p for kind, p in mine if kind == "planted"]
        # (A, B, member, task of A, rows, lam): B fits the same data (same member; in INR zoos the same signal)
        states = [(zoo.state_dict(i), zoo.state_dict(j), zoo.member_of(i), network_task(zoo, i), sel, lam)
                  for i, j, sel, lam in (u for kind, u in mine if kind == "pair")]
        pseudo = [u for kind, u in mine if kind == "pseudo"]  # (i, j, target permutation)
        ga = [self.graph(p.a, zoo, p.member) for p in planted] + [self.graph(s[0], zoo, s[2]) for s in states]
        gb = [self.graph(p.b, zoo, p.member) for p in planted] + [self.graph(s[1], zoo, s[2]) for s in states]
        ga += [self.graph(zoo.state_dict(i), zoo, zoo.member_of(i)) for i, _, _ in pseudo]
        gb += [self.graph(zoo.state_dict(j), zoo, zoo.member_of(i)) for i, j, _ in pseudo]
        soft, scores, mask, groups = self.model(ga, gb, cfg.sinkhorn_iters, cfg.tau)
        # losses normalised by the global batch: planted rows counted over all ranks, pairs drawn
        losses, zero = {}, scores.new_zeros(())
        if cfg.planted_per_step:
            losses["planted"] = self.cross_entropy(scores, mask, groups, range(len(planted)),
                                                   lambda k, g: planted[k].graph_target[g])
        if cfg.pseudo_per_step:  # towards the optimiser's permutations, per neuron, as the planted pairs'
            first = len(planted) + len(states)
            losses["pseudo"] = self.cross_entropy(scores, mask, groups, range(first, len(ga)),
                                                  lambda k, g: pseudo[k - first][2][g])
        if unlabelled:
            mats = pair_matrices(soft, mask, groups, len(ga))[len(planted):len(planted) + len(states)]
            l2, task = zero, zero
            for (a, b, member, t, sel, lam), m in zip(states, mats, strict=True):
                spec = zoo.spec(member)
                l2 = l2 + weight_distance(a, b, m, spec)
                task = task + interpolation_task_loss(self.modules[member], a, b, m, spec, t.x_train[sel],
                                                      t.y_train[sel], lam, t.loss)
            losses["l2"], losses["task"] = l2 / len(unlabelled), task / len(unlabelled)
        total = sum(getattr(cfg, f"w_{k}") * v for k, v in losses.items())
        self.opt.zero_grad()
        (total * ddp.rank_scale(self.info)).backward()
        torch.nn.utils.clip_grad_norm_(self.aligner.parameters(), cfg.clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.update_ema()
        summed = ddp.all_reduce_sum(torch.stack([v.detach() for v in losses.values()]), self.info)
        return dict(zip(losses, summed.tolist(), strict=True))

    def cross_entropy(self, scores, mask, groups, pairs: range, target_of) -> torch.Tensor:
        """:func:`~gnn_align.losses.planted_cross_entropy` of the groups of the pairs ``pairs`` (positions in
        this rank's batch) towards ``target_of(pair, group)``, normalised by their rows over all ranks."""
        rows = [r for r, (k, _) in enumerate(groups) if k in pairs]
        n_rows = ddp.all_reduce_sum(torch.tensor(float(mask[rows].any(-1).sum()) if rows else 0.0), self.info)
        if not rows:
            return scores.new_zeros(())
        targets = torch.zeros(len(rows), mask.shape[1], dtype=torch.long)
        for t, r in enumerate(rows):
            target = target_of(*groups[r])
            targets[t, :len(target)] = target
        return planted_cross_entropy(scores[rows], mask[rows], targets, "sum") / n_rows

    @torch.no_grad()
    def validate(self) -> dict:
        """Planted accuracy and mean barrier on the validation pairs (and, with ``select=wm_ratio``,
        the geometric mean over members of the barrier relative to weight matching's)."""
        al, zoo = self.best_model, self.val_zoo
        was_training = al.training
        al.eval()
        preds = al.predict([self.graph(p.a, zoo, p.member) for p in self.val_planted],
                           [self.graph(p.b, zoo, p.member) for p in self.val_planted],
                           [zoo.spec(p.member) for p in self.val_planted])
        acc = sum(matching_accuracy(pr, p.target) for pr, p in zip(preds, self.val_planted, strict=True))
        barriers = [self.barrier(i, j, lambda c: al.align(c.state_a, c.state_b, c.spec)) for i, j in self.val_pairs]
        al.train(was_training)
        record = {"val_planted_acc": acc / len(self.val_planted), "val_barrier": sum(barriers) / len(barriers)}
        if self.val_wm is not None:
            record["val_wm_ratio"] = wm_ratio([zoo.member_of(i) for i, _ in self.val_pairs], barriers, self.val_wm)
        return record


#: the lowest per-member ratio :func:`wm_ratio` counts: a member whose barriers sum to about 0 (or below)
#: would otherwise outweigh every other member (one such member took a run's ratio from 0.85 to 0.38)
WM_RATIO_FLOOR = 0.1


def read_pseudo_labels(cfg: Config, zoo: ModelZoo) -> list:
    """``[(i, j, {group: LongTensor})]``: the permutations of ``cfg.pseudo_labels`` (made by
    ``benchmarks/aligner-v2/explore/pseudo_labels.py`` on the training split of the run's zoo), on the groups
    of the pairs' graphs (a network with attention: its flat view's, as :attr:`PlantedPair.graph_target`)."""
    try:
        info = json.loads(Path(cfg.pseudo_labels).read_text())
        pairs = [(int(i), int(j), {g: torch.tensor(v) for g, v in perm.items()}) for i, j, perm, *_ in info["pairs"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GNNAlignError(f"{cfg.pseudo_labels}: not a pseudo-label file ({type(e).__name__}: {e})") from None
    if info.get("zoo") != cfg.zoo or info.get("split") != "train" or not pairs:
        raise GNNAlignError(f"{cfg.pseudo_labels}: pseudo-labels of {info.get('zoo')}/{info.get('split')} "
                            f"({len(pairs)} pairs); the run needs some of {cfg.zoo}/train")
    out = []
    for i, j, perm in pairs:
        spec = zoo.spec(zoo.member_of(i)) if max(i, j) < len(zoo) else None
        if spec is None or set(perm) != set(spec.group_sizes):
            raise GNNAlignError(f"{cfg.pseudo_labels}: pair ({i}, {j}) does not fit the zoo's training split")
        out.append((i, j, perm if spec.flat is None else spec.flat.flat_perm(perm)))
    return out


def wm_ratio(members: list, barriers: list, wm: list) -> float:
    """Geometric mean over members of (sum of ``barriers``) / (sum of ``wm``) on each member's pairs,
    each ratio floored at :data:`WM_RATIO_FLOOR`.

    Members whose weight-matching barriers sum to 0 are skipped (their ratio is undefined).
    """
    logs = []
    for m in sorted(set(members)):
        got = sum(b for b, k in zip(barriers, members, strict=True) if k == m)
        ref = sum(w for w, k in zip(wm, members, strict=True) if k == m)
        if ref > 0:
            logs.append(math.log(max(got / ref, WM_RATIO_FLOOR)))
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


#: validation criteria ``--select`` chooses from: the record key whose minimum marks the best epoch
SELECT = {"barrier": "val_barrier", "wm_ratio": "val_wm_ratio"}


#: settings that do not change what a run computes
RUNTIME_FIELDS = ("threads", "resume", "bench_pairs", "checkpoint_every")


def _read_run_config(out: Path) -> dict | None:
    """The run's ``config.json`` (old setting names upgraded), or ``None`` when it is missing or not a
    readable JSON object."""
    try:
        old = json.loads((out / "config.json").read_text())
        return upgrade_keys(old) if isinstance(old, dict) else None
    except (OSError, ValueError):
        return None


def _same_run(out: Path, cfg: Config) -> bool:
    """Whether ``out`` holds a checkpointed run of the same config (runtime settings aside)."""
    if not (out / "checkpoint.pt").is_file():
        return False
    old = _read_run_config(out)
    if old is None:
        return False
    new = dataclasses.asdict(cfg)
    return all(old.get(k, Config.__dataclass_fields__[k].default) == v for k, v in new.items()
               if k not in RUNTIME_FIELDS)


def _drop_metrics_after(path: Path, epoch: int) -> None:
    """Keep only the lines of ``metrics.jsonl`` of epochs up to ``epoch`` (those the run starts from).

    A run that starts afresh (``epoch`` 0) in a folder with an old ``metrics.jsonl`` empties it, so its
    epochs are never listed twice.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for ln in lines:
        try:
            if ln.strip() and json.loads(ln)["epoch"] <= epoch:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):
            continue  # a torn or foreign line: not an epoch of this run
    if keep != lines:
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{ln}\n" for ln in keep)))


def train(cfg: Config) -> Trainer:
    """Train (or continue) the run of ``cfg``; under ``torchrun`` one rank of a data-parallel run.

    Rank 0 writes every file and log; all ranks load the same checkpoint when resuming, and the
    run ends by checking that every rank holds the same parameters.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = ddp.init_distributed("gloo")
    try:
        return _train(cfg, info)
    finally:
        ddp.shutdown(info)


def _check_architecture(out: Path, trainer: Trainer) -> None:
    """Refuse to continue the run in ``out`` with an aligner unlike the one its ``config.json`` records."""
    old = _read_run_config(out)
    if old is None or "aligner" not in old:
        return  # nothing recorded: the checkpoint's own shapes are checked when it is loaded
    recorded = dict(upgrade_keys(old["aligner"]), edge_dim=old.get("edge_dim", old["aligner"].get("edge_dim")))
    now = dict(trainer.aligner.config.to_dict(), edge_dim=trainer.edge_dim)
    # keys a run of an older version did not record are left to the checkpoint's shape check
    changed = [k for k in sorted(set(recorded) & set(now)) if recorded[k] != now[k]]
    if changed:
        k = changed[0]
        raise GNNAlignError(f"{out / 'config.json'}: the run's aligner has {k}={recorded.get(k)!r}, this config "
                            f"{now.get(k)!r}; resume it with its own settings (--config {out / 'config.json'}) "
                            "or train into another --out")


def _train(cfg: Config, info: ddp.DistInfo) -> Trainer:
    out = Path(cfg.out)
    main_rank = info.is_main
    checkpoint = out / "checkpoint.pt"
    if cfg.resume and not checkpoint.is_file():
        raise GNNAlignError(f"{checkpoint}: no checkpoint to resume (the run has not saved one); "
                            "run without --resume to start it afresh")
    same = _same_run(out, cfg)
    resuming = cfg.resume or same
    trainer = Trainer(cfg, info)
    start, step0, sums0, best = 0, 0, {}, float("inf")
    if resuming:  # check the checkpoint against this config before anything in the run folder is written
        _check_architecture(out, trainer)
        pos = trainer.load(checkpoint)
        start, step0, sums0, best = pos["epoch"], pos.get("step", 0), pos.get("sums", {}), pos["best"]
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", dataclasses.asdict(cfg) | {"edge_dim": trainer.edge_dim,
                                                                   "aligner": trainer.aligner.config.to_dict()})
        if same and not cfg.resume:
            print(f"{out} holds a run with this config: continuing it (its aligner is loaded if it finished; "
                  "use another --out to train afresh)")
        _drop_metrics_after(out / "metrics.jsonl", start)
    if info.active and main_rank:
        print(f"data-parallel run: {info.world} ranks (gloo), global batch {cfg.planted_per_step} planted + "
              f"{cfg.unlabelled_per_step} unlabelled pairs per step")
    for epoch in range(start, cfg.epochs):
        t0, sums = time.perf_counter(), dict(sums0) if epoch == start else {}
        first = step0 if epoch == start else 0
        bar = tqdm(range(first, cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not main_rank, initial=first, total=cfg.steps_per_epoch)
        for s in bar:
            for k, v in trainer.step().items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (s + 1):.3f}" for k, v in sums.items()})
            if cfg.checkpoint_every and (s + 1) % cfg.checkpoint_every == 0 and s + 1 < cfg.steps_per_epoch \
                    and main_rank:
                trainer.save(out / "checkpoint.pt", epoch=epoch, step=s + 1, sums=sums, best=best)
        if main_rank:
            record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 2),
                      **{f"train_{k}": v / cfg.steps_per_epoch for k, v in sums.items()}, **trainer.validate()}
            if record[SELECT[cfg.select]] < best:
                best = record[SELECT[cfg.select]]
                tensors = {k: v.detach().contiguous() for k, v in trainer.best_model.state_dict().items()}
                atomic_write(out / "aligner.safetensors", lambda tmp, t=tensors: save_file(t, tmp))
            record[f"best_{SELECT[cfg.select]}"] = best
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            trainer.save(out / "checkpoint.pt", epoch=epoch + 1, step=0, sums={}, best=best)
            print(json.dumps(record))
        ddp.barrier(info)  # the other ranks wait for rank 0's validation and checkpoint
    ddp.check_ranks_agree(trainer.aligner, info)
    trainer.model = trainer.aligner  # free the DDP wrapper now: freed after the process group, it can hang
    return trainer


def main(cfg: Config) -> Path:
    """Train, then (rank 0, ``bench_pairs`` > 0) benchmark the best aligner on the zoo's test pairs."""
    train(cfg)
    out = Path(cfg.out)
    if cfg.bench_pairs and int(os.environ.get("RANK", "0")) == 0:
        aligner = load_aligner(out)
        names = ["naive", "wm", "am", "sinkhorn"] + list(aligner_methods(aligner))
        res = run_benchmark(Path(cfg.zoo_root) / cfg.zoo, names, num_pairs=cfg.bench_pairs, seed=cfg.seed,
                            table=method_table(aligner))
        write_results(res, out / "bench")
        print(to_markdown(res))
    return out


def cli(argv: list | None = None) -> int:
    """``python train.py ...``: returns the exit code (2, with one line on stderr, on a clear error)."""
    cfg = parse_config(argv)
    try:
        main(cfg)
    except GNNAlignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # the process is ours: no page faults on every large tensor (gnn_align.runtime)
    sys.exit(cli())
