"""GNNAligner: a Siamese graph encoder plus a per-group matching head that predicts alignments."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .batch import collate
from .config import AlignerConfig, resolve
from .errors import GNNAlignError
from .graph import NetGraph, to_graph
from .nn import MatchingHead, NetEncoder
from .ot import hungarian, sinkhorn
from .spec import PermutationSpec


class GNNAligner(nn.Module):
    r"""Learned alignment of network B to network A.

    The same :class:`~gnn_align.nn.NetEncoder` embeds both networks; for every permutation group,
    :class:`~gnn_align.nn.MatchingHead` scores A's neurons against B's. Inference decodes each score
    matrix with the Hungarian algorithm; training uses log-domain Sinkhorn. A prediction ``perm``
    follows the package's convention: ``apply_permutation(theta_B, perm, spec)`` is B aligned to A.

    Args:
        config: its architecture (default :class:`~gnn_align.config.AlignerConfig` (), ``train.py``'s
            defaults); kept as :attr:`config`.
        **overrides: settings that replace the config's, by name (``GNNAligner(hidden=64, probes=0)``).

    Raises:
        GNNAlignError: an unknown setting, named.
    """

    def __init__(self, config: AlignerConfig | None = None, **overrides):
        super().__init__()
        self.config = resolve(config, overrides)
        self.encoder = NetEncoder(self.config)
        self.head = MatchingHead(self.config.head_scale)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        self.head.reset_parameters()

    def scores(self, graphs_a: Sequence[NetGraph], graphs_b: Sequence[NetGraph]) -> tuple:
        """Score matrices of every group of every pair (A_k, B_k); pairs share an architecture,
        up to the widths of its groups (A narrower than B: partial matching).

        Returns:
            ``(scores, mask, groups)``: (G, n, n) scores and mask over the groups of all pairs,
            and for each group the pair index and group name.

        Shapes:
            scores[g, i, j]: A's neuron i against B's neuron j; ``n`` the widest group of the
            batch; ``mask[g]`` marks the ``n_a x n_b`` block of the group's real neurons.

        Raises:
            ValueError: pairs whose permutation groups differ (names or order).
        """
        if len(graphs_a) != len(graphs_b):
            raise ValueError(f"got {len(graphs_a)} networks A but {len(graphs_b)} networks B")
        for k, (a, b) in enumerate(zip(graphs_a, graphs_b, strict=True)):
            if a.group_names != b.group_names:
                raise ValueError(f"pair {k}: A and B are not the same architecture")
        batch = self.batch(list(graphs_a) + list(graphs_b))
        emb, mask = self.encoder.embed_groups(batch)
        half = emb.shape[0] // 2
        scores, m = self.head(emb[:half], emb[half:], mask[:half], mask[half:])
        groups = [(k, name) for k, a in enumerate(graphs_a) for name in a.group_names]
        return scores, m, groups

    def batch(self, graphs: Sequence[NetGraph]):
        """The graphs batched as the encoder reads them (:func:`~gnn_align.batch.collate`, without the sparse
        edges unless it reads them), node and edge features in the aligner's precision."""
        batch = collate(graphs, edges=self.encoder.reads_edges)
        dtype = next(self.parameters()).dtype
        for key in ("x", "edge_attr"):  # networks in another precision than the aligner's
            if batch[key].dtype != dtype:
                batch[key] = batch[key].to(dtype)
        return batch

    def soft(self, graphs_a, graphs_b, n_iters: int = 20, tau: float = 1.0) -> tuple:
        """Differentiable soft permutations (masked Sinkhorn of the scores), for training.

        Returns:
            ``(soft, scores, mask, groups)``: the Sinkhorn matrices, then as :meth:`scores`.
        """
        scores, mask, groups = self.scores(graphs_a, graphs_b)
        return sinkhorn(scores, n_iters=n_iters, tau=tau, mask=mask), scores, mask, groups

    def forward(self, graphs_a, graphs_b, n_iters: int = 20, tau: float = 1.0) -> tuple:
        """:meth:`soft` (the training pass; ``forward`` so that wrappers such as
        ``DistributedDataParallel`` see it)."""
        return self.soft(graphs_a, graphs_b, n_iters, tau)

    @torch.no_grad()
    def predict(self, graphs_a: Sequence[NetGraph], graphs_b: Sequence[NetGraph],
                specs: Sequence[PermutationSpec | None] | None = None) -> list:
        """Hard permutations (Hungarian) for a batch of pairs, in one forward pass.

        Args:
            specs: each pair's spec (or None). A network with attention is read as its flat view
                (:mod:`gnn_align.flat`); with its spec given, its scores are decoded into the
                nested, function-preserving permutation (heads and within-head groups:
                :meth:`~gnn_align.flat.FlatView.decode`), else into the flat groups.

        Returns:
            one dict ``group -> LongTensor`` per pair: a permutation, or where A's group is
            narrower than B's an injective map (rectangular Hungarian on the ``n_a x n_b`` block;
            see :mod:`gnn_align.partial`).

        Raises:
            GNNAlignError: a group of A wider than B's, naming the pair and group.
        """
        with torch.inference_mode():  # no autograd bookkeeping at all (about 1 ms of a 9 ms pair)
            scores, mask, groups = self.scores(graphs_a, graphs_b)
            n_a, n_b = mask.any(2).sum(1).tolist(), mask.any(1).sum(1).tolist()
        scores = scores.clone()  # a normal tensor again: what is decoded may meet autograd later
        blocks: list = [{} for _ in graphs_a]
        for (k, name), s, na, nb in zip(groups, scores, n_a, n_b, strict=True):
            if na > nb:
                raise GNNAlignError(f"pair {k}: group '{name}' of A has {na} neurons, wider than B's {nb}")
            blocks[k][name] = s[:na, :nb]
        views = [getattr(sp, "flat", None) for sp in specs] if specs is not None else [None] * len(blocks)
        by_shape: dict = {}  # one Hungarian call per block shape, over every pair decoded plainly
        for k, (b, v) in enumerate(zip(blocks, views, strict=True)):
            for g, s in b.items() if v is None else ():
                by_shape.setdefault(tuple(s.shape), []).append((k, g, s))
        perms: list = [{} for _ in blocks]
        for items in by_shape.values():
            for (k, g, _), p in zip(items, hungarian(torch.stack([s for _, _, s in items])), strict=True):
                perms[k][g] = p
        return [{g: perms[k][g] for g in b} if v is None else v.decode(b)
                for k, (b, v) in enumerate(zip(blocks, views, strict=True))]

    def align(self, state_a: dict, state_b: dict, spec: PermutationSpec,
              spec_b: PermutationSpec | None = None) -> dict:
        """The permutation aligning B to A (one pair); ``spec_b``: B's spec when B is a wider copy
        of A (then a partial match, see :func:`~gnn_align.partial.extract_subnetwork`). Kernels longer
        than the aligner's ``edge_dim`` are pooled to fit (:meth:`graph`)."""
        return self.predict([self.graph(state_a, spec)], [self.graph(state_b, spec if spec_b is None else spec_b)],
                            [spec])[0]

    def graph(self, state: dict, spec: PermutationSpec) -> NetGraph:
        """The graph this aligner reads of a network: ``to_graph(state, spec, edge_dim=config.edge_dim,
        fit="pool")``, so that a kernel longer than ``edge_dim`` (a 7x7 stem, a flattened 7x7 map) is
        pooled to the largest layout that fits, its sum kept (:func:`~gnn_align.graph.pooling_plan`)."""
        return to_graph(state, spec, edge_dim=self.config.edge_dim, fit="pool")


def load_aligner(path_or_name: str | Path) -> GNNAligner:
    """A trained aligner, in eval mode, read from a run folder, a weights file or a shipped name.

    ``path_or_name`` is any of:

    * a ``train.py`` run folder: architecture from its ``config.json``, weights (the best epoch's) from
      its ``aligner.safetensors``;
    * a weights file ``X.safetensors``, described by ``X.json`` beside it (a shipped aligner's metadata)
      or else by the ``config.json`` of its folder (a run's);
    * the name of an aligner shipped in the package (``"mixed"``, ``"v2"``; see
      :func:`gnn_align.pretrained.available`). A path that exists wins over a name.

    Weights are read with safetensors (no unpickling). An aligner described by shipped metadata keeps
    it as ``.meta`` (what :func:`gnn_align.align` checks new models against).

    Raises:
        GNNAlignError: one line naming the missing, unreadable or mismatched file, or the unknown name
            with the shipped ones.
    """
    src = Path(path_or_name)
    if src.is_dir():
        config, weights = src / "config.json", src / "aligner.safetensors"
        for f in (config, weights):
            if not f.is_file():
                raise GNNAlignError(f"{f}: not found (is {src} a finished train.py run folder?)")
    elif src.is_file():
        weights, config = src, src.with_suffix(".json")
        config = config if config.is_file() else src.parent / "config.json"
        if not config.is_file():
            raise GNNAlignError(f"{src}: neither {src.with_suffix('.json').name} nor config.json beside it "
                                "describes the aligner")
    else:
        from .pretrained import HERE, available

        name = str(path_or_name)
        if name not in available() or not (HERE / f"{name}.json").is_file():
            raise GNNAlignError(f"no aligner '{name}': not a run folder, a weights file or a shipped aligner "
                                f"(shipped: {', '.join(available()) or 'none'})")
        weights, config = HERE / f"{name}.safetensors", HERE / f"{name}.json"
    return _load_files(config, weights)


def _load_files(config: Path, weights: Path) -> GNNAligner:
    """The aligner described by ``config`` (a run's ``config.json`` or a shipped aligner's metadata)
    with the weights of ``weights``."""
    from safetensors.torch import load_file

    try:
        info = json.loads(config.read_text())
        shipped = isinstance(info, dict) and "aligner" not in info  # a shipped aligner's metadata: under "config"
        al = GNNAligner(AlignerConfig.from_dict((info["config"] if shipped else info)["aligner"]))
    except json.JSONDecodeError as e:
        raise GNNAlignError(f"{config}: not valid JSON ({e})") from None
    except OSError as e:
        raise GNNAlignError(f"{config}: cannot read ({e.strerror or e})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise GNNAlignError(f"{config}: not a valid aligner config (its 'aligner' entry must hold "
                            f"AlignerConfig's settings): {type(e).__name__}: {e}") from None
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on bad headers
        raise GNNAlignError(f"{weights}: not a readable safetensors file (truncated or corrupt?): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        al.load_state_dict(state)
    except RuntimeError as e:
        raise GNNAlignError(f"{weights}: does not fit the aligner described by {config}: "
                            f"{' '.join(str(e).split())[:300]}") from None
    if shipped:
        al.meta = info
    return al.eval()
