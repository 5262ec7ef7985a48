"""Train a GNNAligner on a model zoo: ``python train.py --help``.

Self-supervised: planted pairs (A, pi . augment(A)) with known pi (cross-entropy of each neuron
against its partner), plus independent pairs scored by the weight distance after soft alignment and
the task loss of the interpolated network. Writes to ``--out``: ``config.json`` (the resolved
config), ``aligner.safetensors`` (the best weights by validation barrier), ``checkpoint.pt``
(weights, optimiser and RNG state, for ``--resume``; loaded with ``weights_only=True``) and
``metrics.jsonl`` (one line per epoch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from gnn_align import to_graph
from gnn_align.aligner import GNNAligner, load_aligner
from gnn_align.archs import build_arch
from gnn_align.bench import evaluate_alignment, register_aligner, run_benchmark, to_markdown, write_results
from gnn_align.losses import interpolation_task_loss, pair_matrices, planted_cross_entropy, weight_distance
from gnn_align.metrics import matching_accuracy
from gnn_align.permute import invert_permutation
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo, independent_pairs, member_weights, planted_pair, sample_networks
from gnn_align.zoo.storage import atomic_write, write_json


@dataclass
class Config:
    """Every setting of a training run (the command line is generated from these fields)."""

    zoo: str = "digits-mlp"  # zoo to train on (built with `python -m datasets build` if missing)
    zoo_root: str = "data/zoos"  # folder of built zoos
    out: str = "runs/digits-mlp"  # run folder
    hidden: int = 32  # encoder width
    layers: int = 0  # NetConv rounds (node + edge states) after the probe pass
    edge_hidden: int = 4  # edge state width
    head_scale: float = 5.0  # initial scale s of the scores s² cos(f_A, f_B)
    probes: int = 128  # probe channels (network run on learned virtual inputs/outputs; 0: none)
    epochs: int = 3
    steps_per_epoch: int = 100
    planted_per_step: int = 2  # planted pairs per step
    unlabelled_per_step: int = 4  # independent pairs per step (weight-distance + task losses)
    member_weights: str = ""  # GLOB=W,... per-member sampling weights ("": the zoo's own mix)
    lr: float = 2e-3
    schedule: str = "cosine"  # learning-rate schedule over all steps: cosine (to 0) or none
    weight_decay: float = 5e-4
    clip: float = 1.0  # gradient-norm clip
    w_planted: float = 1.0
    w_l2: float = 1.0
    w_task: float = 1.0
    task_batch: int = 32  # inputs per task-loss evaluation
    sinkhorn_iters: int = 20
    tau: float = 1.0
    val_planted: int = 16  # planted validation pairs (matching accuracy)
    val_pairs: int = 48  # independent validation pairs (barrier at hard permutations)
    bench_pairs: int = 200  # test pairs of the final benchmark (0: skip it)
    seed: int = 0
    threads: int = 0  # torch threads (0: torch's default)
    resume: bool = False  # continue from OUT/checkpoint.pt


#: named sets of Config defaults (``--preset NAME``; flags given on the command line still win)
PRESETS = {
    # one aligner for every architecture family of the mixed zoo (MLPs of many widths and depths,
    # 1-D/2-D CNNs, residual nets with BatchNorm, LayerNorm MLPs; two tasks)
    "mixed": {"zoo": "mixed", "out": "runs/mixed", "epochs": 16, "steps_per_epoch": 150,
              "planted_per_step": 4, "unlabelled_per_step": 4, "val_pairs": 64, "bench_pairs": 0},
}


def parse_config(argv: list | None = None) -> Config:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    known, _ = pre.parse_known_args(argv)
    defaults = dataclasses.asdict(Config()) | PRESETS.get(known.preset, {})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="start from a named set of defaults: " + ", ".join(sorted(PRESETS)))
    for f in dataclasses.fields(Config):
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", default=defaults[f.name])
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=defaults[f.name])
    args = vars(parser.parse_args(argv))
    args.pop("preset")
    return Config(**args)


def ensure_zoo(cfg: Config) -> Path:
    root = Path(cfg.zoo_root) / cfg.zoo
    if not (root / "manifest.json").is_file():
        from datasets.build import build
        from datasets.recipes import get_recipe

        print(f"zoo {cfg.zoo} not found under {cfg.zoo_root}: building it")
        build(get_recipe(cfg.zoo), cfg.zoo_root)
    return root


class Trainer:
    """Holds the zoos, the aligner and the optimiser of one run."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        root = ensure_zoo(cfg)
        self.train_zoo = ModelZoo(str(root), split="train", log=False)
        self.val_zoo = ModelZoo(str(root), split="val", log=False)
        self.edge_dim = max(ly.edge_len for m in range(len(self.train_zoo.members))
                            for ly in self.train_zoo.spec(m).structure.layers)
        acts = {(m.get("activation", "relu"), float(m["arch"].get("w0", 1.0))) for m in self.train_zoo.members}
        if len(acts) > 1:
            raise ValueError(f"zoo {cfg.zoo}: members use different activations {sorted(acts)}; "
                             "one aligner runs its probe pass with one activation")
        (activation, w0), = acts
        with torch.random.fork_rng():  # initialise from the run's seed without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.aligner = GNNAligner(cfg.hidden, cfg.layers, self.edge_dim, edge_hidden=cfg.edge_hidden,
                                      head_scale=cfg.head_scale, probes=cfg.probes,
                                      activation=activation, w0=w0)
        self.opt = torch.optim.AdamW(self.aligner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     amsgrad=True)
        if cfg.schedule not in ("cosine", "none"):
            raise ValueError(f"schedule must be 'cosine' or 'none', got '{cfg.schedule}'")
        total = max(cfg.epochs * cfg.steps_per_epoch, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, (lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
                                                       if cfg.schedule == "cosine" else (lambda t: 1.0))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.weights = member_weights(self.train_zoo, cfg.member_weights)
        self.modules = [build_arch(m["arch"]).eval() for m in self.train_zoo.members]
        vgen = torch.Generator().manual_seed(cfg.seed + 1)
        self.val_planted = [planted_pair(self.val_zoo, int(i), vgen)
                            for i in torch.randint(0, len(self.val_zoo), (cfg.val_planted,), generator=vgen)]
        self.val_pairs = independent_pairs(self.val_zoo, cfg.val_pairs, vgen)

    def graph(self, state, zoo, member):
        return to_graph(state, zoo.spec(member), edge_dim=self.edge_dim)

    def step(self) -> dict:
        cfg, zoo, gen = self.cfg, self.train_zoo, self.gen
        planted = [planted_pair(zoo, i, gen) for i in sample_networks(zoo, cfg.planted_per_step, gen, self.weights)]
        pairs = (independent_pairs(zoo, cfg.unlabelled_per_step, gen, weights=self.weights)
                 if cfg.unlabelled_per_step else [])
        # (A, B, member, task of A): B fits the same data (same member; in INR zoos the same signal)
        states = [(zoo.state_dict(i), zoo.state_dict(j), zoo.member_of(i), network_task(zoo, i)) for i, j in pairs]
        ga = [self.graph(p.a, zoo, p.member) for p in planted] + [self.graph(s[0], zoo, s[2]) for s in states]
        gb = [self.graph(p.b, zoo, p.member) for p in planted] + [self.graph(s[1], zoo, s[2]) for s in states]
        soft, scores, mask, groups = self.aligner.soft(ga, gb, cfg.sinkhorn_iters, cfg.tau)
        losses = {}
        rows = [r for r, (k, _) in enumerate(groups) if k < len(planted)]
        if rows:
            targets = torch.zeros(len(rows), mask.shape[1], dtype=torch.long)
            for t, r in enumerate(rows):
                k, g = groups[r]
                inv = invert_permutation(planted[k].perm)[g]
                targets[t, :len(inv)] = inv
            losses["planted"] = planted_cross_entropy(scores[rows], mask[rows], targets)
        if states:
            mats = pair_matrices(soft, mask, groups, len(ga))[len(planted):]
            l2, task = 0.0, 0.0
            for (a, b, member, t), m in zip(states, mats, strict=True):
                spec = zoo.spec(member)
                l2 = l2 + weight_distance(a, b, m, spec)
                sel = torch.randint(0, t.x_train.shape[0], (cfg.task_batch,), generator=gen)
                lam = float(torch.rand((), generator=gen))
                task = task + interpolation_task_loss(self.modules[member], a, b, m, spec, t.x_train[sel],
                                                      t.y_train[sel], lam, t.loss)
            losses["l2"], losses["task"] = l2 / len(states), task / len(states)
        total = sum(getattr(cfg, f"w_{k}") * v for k, v in losses.items())
        self.opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.aligner.parameters(), cfg.clip)
        self.opt.step()
        self.sched.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def validate(self) -> dict:
        al, zoo = self.aligner.eval(), self.val_zoo
        preds = al.predict([self.graph(p.a, zoo, p.member) for p in self.val_planted],
                           [self.graph(p.b, zoo, p.member) for p in self.val_planted])
        acc = sum(matching_accuracy(pr, invert_permutation(p.perm)) for pr, p in zip(preds, self.val_planted,
                                                                                        strict=True))
        barriers = []
        for i, j in self.val_pairs:
            a, b, member = zoo.state_dict(i), zoo.state_dict(j), zoo.member_of(i)
            spec, t = zoo.spec(member), network_task(zoo, i)
            perm = al.predict([self.graph(a, zoo, member)], [self.graph(b, zoo, member)])[0]
            barriers.append(evaluate_alignment(self.modules[member], a, b, perm, spec, t)[0]["barrier_deepalign"])
        al.train()
        return {"val_planted_acc": acc / len(self.val_planted), "val_barrier": sum(barriers) / len(barriers)}


def save_checkpoint(path: Path, trainer: Trainer, epoch: int, best: float) -> None:
    state = {"model": trainer.aligner.state_dict(), "opt": trainer.opt.state_dict(),
             "sched": trainer.sched.state_dict(), "epoch": epoch,
             "best": best, "rng": trainer.gen.get_state()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


#: settings that do not change what a run computes
RUNTIME_FIELDS = ("threads", "resume", "bench_pairs")


def _same_run(out: Path, cfg: Config) -> bool:
    """Whether ``out`` holds a checkpointed run of the same config (runtime settings aside)."""
    if not (out / "config.json").is_file() or not (out / "checkpoint.pt").is_file():
        return False
    old = json.loads((out / "config.json").read_text())
    new = dataclasses.asdict(cfg)
    return all(old.get(k) == v for k, v in new.items() if k not in RUNTIME_FIELDS)


def main(cfg: Config) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    same = _same_run(out, cfg)
    trainer = Trainer(cfg)
    write_json(out / "config.json", dataclasses.asdict(cfg) | {"edge_dim": trainer.edge_dim,
                                                               "aligner": trainer.aligner.config})
    start, best = 0, float("inf")
    if same and not cfg.resume:
        print(f"{out} holds a run with this config: continuing it (its aligner is loaded if it finished; "
              "use another --out to train afresh)")
    if (cfg.resume or same) and (out / "checkpoint.pt").is_file():
        ck = torch.load(out / "checkpoint.pt", weights_only=True)
        trainer.aligner.load_state_dict(ck["model"])
        trainer.opt.load_state_dict(ck["opt"])
        trainer.sched.load_state_dict(ck["sched"])
        trainer.gen.set_state(ck["rng"])
        start, best = ck["epoch"], ck["best"]
    for epoch in range(start, cfg.epochs):
        t0, sums = time.perf_counter(), {}
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for s in bar:
            for k, v in trainer.step().items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (s + 1):.3f}" for k, v in sums.items()})
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 2),
                  **{f"train_{k}": v / cfg.steps_per_epoch for k, v in sums.items()}, **trainer.validate()}
        if record["val_barrier"] < best:
            best = record["val_barrier"]
            tensors = {k: v.detach().contiguous() for k, v in trainer.aligner.state_dict().items()}
            atomic_write(out / "aligner.safetensors", lambda tmp, t=tensors: save_file(t, tmp))
        record["best_val_barrier"] = best
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        save_checkpoint(out / "checkpoint.pt", trainer, epoch + 1, best)
        print(json.dumps(record))
    if cfg.bench_pairs:
        names = ["naive", "wm", "am", "sinkhorn"] + register_aligner(load_aligner(out))
        res = run_benchmark(Path(cfg.zoo_root) / cfg.zoo, names, num_pairs=cfg.bench_pairs, seed=cfg.seed)
        write_results(res, out / "bench")
        print(to_markdown(res))
    return out


if __name__ == "__main__":
    main(parse_config())
