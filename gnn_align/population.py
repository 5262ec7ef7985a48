"""Distances between networks after alignment, the distance matrix of a population, nearest models.

A raw distance between two networks' weights is meaningless: permuting hidden neurons changes it
without changing the function. Every distance here is taken after aligning the pair:

``d(A, B) = ||theta_A - pi . theta_B|| / sqrt(||theta_A||^2 + ||theta_B||^2)`` over the learnable
tensors (:meth:`~gnn_align.spec.PermutationSpec.learnable_keys`), with ``pi`` the alignment of B to
A. It is 0 for a network and any permutation of it, 1 for orthogonal weight vectors, at most
``sqrt(2)``, and invariant to scaling both networks. A group's distance is the same over the tensors
that group acts on. Which of the two networks is aligned to the other is fixed by a fingerprint of
their weights (:func:`~gnn_align.provenance.weights_hash`), so ``distance(a, b)`` and ``distance(b, a)`` run the same
alignment: symmetric by construction, for every method.

With the learned aligner, :func:`pairwise` and :func:`nearest` embed every network once and score
each pair from the embeddings (the aligner is Siamese), so a population of N networks costs N
encoder passes plus one Hungarian decode per group and pair.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .api import _checked_aligner, _Prepared, _run
from .errors import GNNAlignError
from .io import atomic_write, write_json
from .metrics import barrier, input_batches, interpolation_curve, midpoint_disagreement
from .permute import apply_permutation, invert_permutation
from .provenance import weights_hash as fingerprint
from .refine import has_batchnorm
from .spec import PermutationSpec

#: most pairs a chunk of :func:`pairwise` holds (the unit of resumption)
CHUNK_PAIRS = 2048


class _Flat:
    """The learnable tensors of a spec as one float64 vector, and which entries each distance sums:
    row 0 of ``member`` marks every entry (overall), row 1 + k those group k acts on."""

    def __init__(self, spec: PermutationSpec):
        self.keys = spec.learnable_keys()
        self.groups = list(spec.group_sizes)
        self.spec = spec
        self.member: torch.Tensor | None = None

    def __call__(self, state: dict) -> torch.Tensor:
        flat = torch.cat([state[k].detach().double().reshape(-1) for k in self.keys])
        if self.member is None:
            sizes = [state[k].numel() for k in self.keys]
            member = torch.zeros(1 + len(self.groups), sum(sizes), dtype=torch.float64)
            member[0] = 1.0
            for r, g in enumerate(self.groups, start=1):
                acted = {k for k, _, _ in self.spec.acts_on(g)}
                member[r] = torch.cat([torch.full((n,), float(k in acted), dtype=torch.float64)
                                       for k, n in zip(self.keys, sizes, strict=True)])
            self.member = member
        return flat

    def distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(..., 1 + G) normalised distances of flat vectors ``a`` and ``b`` (..., P): overall, then per group."""
        sq = ((a - b) ** 2) @ self.member.T
        norms = (a * a + b * b) @ self.member.T
        return torch.where(norms > 0, (sq / norms.clamp_min(1e-300)).sqrt(), torch.zeros_like(sq))


def weight_distance(state_a: dict, state_b: dict, spec: PermutationSpec) -> tuple:
    """Normalised distance between two state dicts *as given* (align B first).

    Returns:
        ``(overall, {group: distance})`` (see the module docstring), in float64.
    """
    flat = _Flat(spec)
    d = flat.distances(flat(state_a), flat(state_b)).tolist()
    return d[0], dict(zip(flat.groups, d[1:], strict=True))


@dataclass
class Distance:
    """The distance between networks A and B after aligning them.

    Attributes:
        weight: normalised weight distance after alignment (module docstring); ``groups`` per group.
        raw: the same distance before alignment (what a permutation-blind comparison sees).
        barrier: with data, the loss barrier (Deep-Align's) between A and aligned B.
        functional: with data, the mean distance of their outputs: total variation of the softmax
            outputs (``loss="ce"``) or the root-mean-square difference (``"mse"``); alignment-free.
        midpoint: with inputs, how far the midpoint of A and aligned B departs from their ensemble
            (:func:`~gnn_align.metrics.midpoint_disagreement`; no labels needed): tracks the barrier
            much better than the weight distance (``docs/population.md``).
        perm: the alignment of B to A (``apply_permutation(state_b, perm, spec)``).
        method, seconds: the alignment method and its wall time.
    """

    weight: float
    groups: dict
    raw: float
    barrier: float | None
    functional: float | None
    perm: dict = field(repr=False)
    method: str = ""
    seconds: float = 0.0
    midpoint: float | None = None

    def summary(self) -> dict:
        """JSON-ready figures (everything but ``perm``)."""
        return {"weight": self.weight, "groups": self.groups, "raw": self.raw, "barrier": self.barrier,
                "functional": self.functional, "midpoint": self.midpoint, "method": self.method,
                "seconds": self.seconds}


@torch.no_grad()
def functional_distance(module: nn.Module, state_a: dict, state_b: dict, x: torch.Tensor, loss: str = "ce") -> float:
    """Mean output distance of two networks on inputs ``x`` (see :attr:`Distance.functional`)."""
    net = copy.deepcopy(module).eval()
    outs = []
    for s in (state_a, state_b):
        net.load_state_dict(s)
        outs.append(torch.cat([net(b) for b in x.split(1024)]).double())
    fa, fb = outs
    if loss == "ce":
        return float(0.5 * (fa.softmax(-1) - fb.softmax(-1)).abs().sum(-1).mean())
    return float(((fa - fb) ** 2).mean() ** 0.5)


def _ordered(prints: Sequence[str], i: int, j: int) -> tuple:
    """``(reference, aligned)``: the network with the smaller fingerprint is the reference."""
    return (i, j) if prints[i] <= prints[j] else (j, i)


def distance(model_a, model_b, method: str = "gnn", data=None, *, aligner=None, module: nn.Module | None = None,
             loss: str = "ce", seed: int = 0, num_lambdas: int = 11) -> Distance:
    """The distance between two networks after alignment; symmetric, 0 for a network and its permutations.

    Args:
        model_a, model_b: two networks of one architecture (modules, or state dicts with ``module=``).
        method: the alignment method (any of :func:`gnn_align.align`'s).
        data: inputs ``x`` or ``(x, y)`` (up to 1024 samples used): adds the functional distance and,
            with targets, the barrier; also what the data-based methods use.
        aligner: the learned aligner for the ``gnn`` methods (default the shipped one).
        module: the architecture, when the models are state dicts.
        loss: ``ce`` or ``mse``.
        seed: seed of the methods' random choices.
        num_lambdas: points of the interpolation curve of the barrier.

    Returns:
        :class:`Distance`.
    """
    prep = _Prepared([model_a, model_b], module, data, None, seed)
    ref, other = _ordered([fingerprint(s) for s in prep.states], 0, 1)
    res = _run(prep, ref, other, method, aligner, loss, None)
    state_ref, aligned = prep.states[ref], res.state
    weight, groups = weight_distance(state_ref, aligned, prep.spec)
    raw, _ = weight_distance(state_ref, prep.states[other], prep.spec)
    bar = func = mid = None
    if prep.x is not None:
        x, y = prep.x[:1024], None if prep.y is None else prep.y[:1024]
        func = functional_distance(prep.module, prep.states[0], prep.states[1], x, loss)
        reset = input_batches(prep.x) if has_batchnorm(prep.module) else None
        mid = midpoint_disagreement(prep.module, state_ref, aligned, x, loss, reset_bn=reset)
        if y is not None:
            curve = interpolation_curve(prep.module, state_ref, aligned, x, y, loss, num_lambdas, reset_bn=reset)
            bar = barrier(curve["loss"])
    perm = res.perm if ref == 0 else invert_permutation(res.perm, prep.spec)
    return Distance(weight, groups, raw, bar, func, perm, method, res.seconds, mid)


@dataclass
class DistanceMatrix:
    """Distances of every pair of a population (:func:`pairwise`: square, symmetric, zero diagonal)
    or of queries to a population (:func:`distances_to`: Q x N), float64.

    Attributes:
        weight: (N, N) normalised weight distance after alignment; ``groups``: group -> (N, N).
        raw: (N, N) the same before alignment.
        method, seconds: the alignment method and the wall time of the whole matrix.
    """

    weight: torch.Tensor
    groups: dict
    raw: torch.Tensor
    method: str
    seconds: float

    def nearest(self, i: int, k: int = 5) -> list:
        """The ``k`` networks closest to row ``i`` (in a square matrix, ``i`` itself left out):
        ``[(index, distance)]``."""
        d = self.weight[i].clone()
        if self.weight.shape[0] == self.weight.shape[1]:
            d[i] = float("inf")
        order = torch.argsort(d, stable=True)[:k]
        return [(int(j), float(d[j])) for j in order]


class _Embedded:
    """Every network embedded once by a learned aligner; pairs scored and decoded from the embeddings."""

    def __init__(self, prep: _Prepared, aligner, batch_size: int = 32, progress: bool = False):
        from .nn.head import unit

        self.aligner, self.spec = aligner, prep.spec
        embs, masks = [], []
        for s in tqdm(range(0, len(prep.states), batch_size), desc="embedding", disable=not progress):
            batch = aligner.batch([aligner.graph(st, prep.spec) for st in prep.work[s:s + batch_size]])
            with torch.no_grad():
                emb, mask = aligner.encoder.embed_groups(batch)
            g = len(prep.spec.graph_spec.group_sizes)
            embs.append(emb.view(-1, g, *emb.shape[1:]))
            masks.append(mask.view(-1, g, mask.shape[-1]))
        self.emb, self.mask = unit(torch.cat(embs)), torch.cat(masks)
        self.sizes = list(prep.spec.graph_spec.group_sizes.values())

    @torch.no_grad()
    def perms(self, pairs: Sequence[tuple]) -> list:
        """The alignment of j to i for every ``(i, j)``, as :meth:`GNNAligner.predict` decodes it."""
        from .ot import hungarian

        i = torch.tensor([p[0] for p in pairs])
        j = torch.tensor([p[1] for p in pairs])
        g = self.emb.shape[1]
        scores, _ = self.aligner.head.score_units(self.emb[i].flatten(0, 1), self.emb[j].flatten(0, 1),
                                      self.mask[i].flatten(0, 1), self.mask[j].flatten(0, 1))
        scores = scores.view(len(pairs), g, *scores.shape[1:])
        names = list(self.spec.graph_spec.group_sizes)
        if self.spec.flat is not None:  # attention: heads decoded jointly (gnn_align.flat)
            sized = list(enumerate(zip(names, self.sizes, strict=True)))
            return [self.spec.flat.decode({name: scores[p, gi, :n, :n] for gi, (name, n) in sized})
                    for p in range(len(pairs))]
        out = [{} for _ in pairs]
        for gi, (name, n) in enumerate(zip(names, self.sizes, strict=True)):
            decoded = hungarian(scores[:, gi, :n, :n])
            for p in range(len(pairs)):
                out[p][name] = decoded[p]
        return out


def _meta(prints: list, pairs: list, method: str, aligner, chunk: int) -> dict:
    """What identifies a resumable computation: its models, pairs, method, aligner and chunking."""
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()[:16]
    return {"method": method, "models": digest(" ".join(prints)), "pairs": len(pairs), "chunk": chunk,
            "pairs_sha256": digest(repr(pairs)),
            "aligner": None if aligner is None or not method.startswith("gnn") else fingerprint(aligner)}


def _open_cache(cache: str | Path, meta: dict) -> Path:
    """The chunk folder of a resumable computation; refuses one that holds another computation's chunks."""
    folder = Path(cache)
    found = folder / "meta.json"
    if found.is_file():
        try:
            old = json.loads(found.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise GNNAlignError(f"{found}: not readable ({e}); remove the folder to start again") from None
        if old != meta:
            diff = sorted(k for k in meta if old.get(k) != meta[k])
            raise GNNAlignError(f"{folder}: holds distances of another computation (differs in {', '.join(diff)}); "
                                "use another folder or remove it")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(found, meta)
    return folder


def _distances(prep: _Prepared, pairs: list, method: str, aligner, loss: str, progress: bool,
               cache: str | Path | None = None) -> tuple:
    """``(weight (P,), {group: (P,)}, raw (P,))`` float64 distances of the pairs ``(i, j)`` (j aligned
    to i), computed chunk by chunk (up to 2048 pairs, fewer for large networks: a chunk's stacked
    weights stay near 160 MB); with ``cache`` every finished chunk is kept there and reused."""
    from safetensors.torch import load_file, save_file

    embedded = None
    if method == "gnn":
        aligner = _checked_aligner(prep, aligner)  # coverage and memory checks, as align() makes them
    names = list(prep.spec.group_sizes)
    flat = _Flat(prep.spec)
    flats = torch.stack([flat(st) for st in prep.states])
    chunk = max(1, min(CHUNK_PAIRS, 20_000_000 // flats.shape[1]))
    prints = [fingerprint(s) for s in prep.states]
    folder = None if cache is None else _open_cache(cache, _meta(prints, pairs, method, aligner, chunk))
    parts = []
    bar = tqdm(total=len(pairs), desc=f"distances ({method})", disable=not progress, unit="pair")
    for c, s in enumerate(range(0, len(pairs), chunk)):
        part, path = pairs[s:s + chunk], None if folder is None else folder / f"chunk-{c:05d}.safetensors"
        if path is not None and path.is_file():
            parts.append(load_file(str(path)))
            bar.update(len(part))
            continue
        if method == "gnn" and embedded is None:
            embedded = _Embedded(prep, aligner, progress=progress)
        perms = (embedded.perms(part) if embedded is not None
                 else [_run(prep, i, j, method, aligner, loss, None).perm for i, j in part])
        i, j = (torch.tensor([p[k] for p in part]) for k in (0, 1))
        aligned = torch.stack([flat(apply_permutation(prep.states[jj], perm, prep.spec))
                               for jj, perm in zip(j.tolist(), perms, strict=True)])
        t = flat.distances(flats[i], aligned)
        raw = flat.distances(flats[i], flats[j])[:, 0]
        found = {"weight": t[:, 0].contiguous(), "raw": raw.contiguous(), "groups": t[:, 1:].contiguous()}
        if path is not None:
            atomic_write(path, lambda tmp, found=found: save_file(found, str(tmp)))
        parts.append(found)
        bar.update(len(part))
    bar.close()
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("weight", "raw", "groups")}
    return cat["weight"], {g: cat["groups"][:, k] for k, g in enumerate(names)}, cat["raw"]


def pairwise(models: Sequence, method: str = "gnn", *, aligner=None, module: nn.Module | None = None,
             data=None, loss: str = "ce", seed: int = 0, cache: str | Path | None = None,
             progress: bool = True) -> DistanceMatrix:
    """The N x N matrix of :func:`distance` (weights only) over a population of one architecture.

    With ``method="gnn"`` every network is embedded once and each pair costs one Hungarian decode
    per group; other methods align every pair from scratch.

    Args:
        models: N >= 2 networks (modules, or state dicts with ``module=``).
        method, aligner, module, data, loss, seed: as in :func:`distance` (``data`` only feeds
            data-based methods).
        cache: a folder for a resumable computation: every chunk of pairs is written there
            atomically as it finishes, and a rerun with the same models and method reads the
            finished chunks instead of aligning them again (another computation's folder is refused).
        progress: progress bars on stderr.
    """
    if len(models) < 2:
        raise ValueError(f"pairwise needs at least 2 models, got {len(models)}")
    t0 = time.perf_counter()
    prep = _Prepared(list(models), module, data, None, seed)
    prints = [fingerprint(s) for s in prep.states]
    n = len(models)
    pairs = [_ordered(prints, i, j) for i in range(n) for j in range(i + 1, n)]
    weight, groups, raw = _distances(prep, pairs, method, aligner, loss, progress, cache)
    idx = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)

    def square(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n, n, dtype=torch.float64)
        out[idx[:, 0], idx[:, 1]] = values
        out[idx[:, 1], idx[:, 0]] = values
        return out

    return DistanceMatrix(square(weight), {g: square(v) for g, v in groups.items()}, square(raw), method,
                          time.perf_counter() - t0)


def distances_to(queries: Sequence, models: Sequence, method: str = "gnn", *, aligner=None,
                 module: nn.Module | None = None, data=None, loss: str = "ce", seed: int = 0,
                 progress: bool = False) -> DistanceMatrix:
    """Distances after alignment of every query to every model: a (Q, N) :class:`DistanceMatrix`."""
    if not queries or not models:
        raise ValueError("distances_to needs at least one query and one model")
    t0, q, n = time.perf_counter(), len(queries), len(models)
    prep = _Prepared([*queries, *models], module, data, None, seed)
    prints = [fingerprint(s) for s in prep.states]
    pairs = [_ordered(prints, i, q + j) for i in range(q) for j in range(n)]
    weight, groups, raw = _distances(prep, pairs, method, aligner, loss, progress)
    return DistanceMatrix(weight.view(q, n), {g: v.view(q, n) for g, v in groups.items()}, raw.view(q, n),
                          method, time.perf_counter() - t0)


def nearest(query, models: Sequence, k: int = 5, method: str = "gnn", **kwargs) -> list:
    """The ``k`` networks of ``models`` closest to ``query`` after alignment: ``[(index, distance)]``,
    nearest first (ties by index). ``kwargs``: as :func:`distances_to`'s."""
    d = distances_to([query], models, method, **kwargs).weight[0]
    order = torch.argsort(d, stable=True)[:k]
    return [(int(j), float(d[j])) for j in order]
