"""The aligner shipped inside the package, and what it was trained on.

``gnn_align/pretrained/<name>.safetensors`` holds the weights and ``<name>.json`` the training
run's config (with the command that produced it) plus a summary of every architecture of its
training zoo (:func:`signature`). :func:`coverage_problems` compares a new model with that summary,
so that :func:`gnn_align.align` can warn when a model lies outside what the aligner has seen.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..aligner import GNNAligner, load_aligner
from ..archs import activation_name
from ..errors import GNNAlignError
from ..spec import NODE_FEATURES, PermutationSpec

HERE = Path(__file__).resolve().parent
DEFAULT = "mixed"


def available() -> list:
    """Names of the aligners shipped in the package."""
    return sorted(p.stem for p in HERE.glob("*.safetensors"))


def load_pretrained(name: str = DEFAULT) -> GNNAligner:
    """The shipped aligner ``name``: an alias of :func:`~gnn_align.aligner.load_aligner` for shipped names
    only (kept for code written before ``load_aligner`` took names), with its metadata as ``.meta``.

    Raises:
        GNNAlignError: naming the missing aligner and the aligners that exist.
    """
    weights = HERE / f"{name}.safetensors"
    if name not in available() or not (HERE / f"{name}.json").is_file():
        raise GNNAlignError(f"no pretrained aligner '{name}' ({weights}); available: {available() or 'none'}")
    return load_aligner(weights)


def activation_of(module: nn.Module) -> str | None:
    """The hidden activation of ``module`` when it uses exactly one activation module type.

    Returns:
        Its name in :data:`gnn_align.archs.ACTIVATIONS` (``"sine"`` for SIREN), else ``None`` (unknown,
        e.g. a functional call, or several).
    """
    found = {activation_name(m) for m in module.modules()} - {None}
    return found.pop() if len(found) == 1 else None


def signature(spec: PermutationSpec, module: nn.Module | None = None) -> dict:
    """What an aligner must have seen to be trusted on a network: its node features (bias, norm
    parameters, BatchNorm statistics), whether it has residual skips, the widest group, the depth,
    the edge feature lengths (kernel sizes), the activation and whether it has attention."""
    attention = bool(spec.heads)
    spec = spec.graph_spec  # attention: its flat view
    st = spec.require_structure("signature")
    feats = sorted({NODE_FEATURES[c] for ns in st.nodesets for c, k in enumerate(ns.features) if k is not None})
    return {"features": feats, "residual": bool(st.skips),
            "max_width": max(spec.group_sizes.values(), default=0),
            "depth": max(ns.depth for ns in st.nodesets),
            "edge_lens": sorted({ly.edge_len for ly in st.layers}),
            "activation": None if module is None else activation_of(module), "attention": attention}


def merge_signatures(sigs: list) -> dict:
    """The union of several :func:`signature` s (what a zoo of architectures covers)."""
    return {"features": sorted({f for s in sigs for f in s["features"]}),
            "residual": any(s["residual"] for s in sigs),
            "max_width": max(s["max_width"] for s in sigs), "depth": max(s["depth"] for s in sigs),
            "edge_lens": sorted({e for s in sigs for e in s["edge_lens"]}),
            "activation": sorted({s["activation"] for s in sigs if s["activation"]}),
            "attention": any(s.get("attention", False) for s in sigs)}


def coverage_problems(trained: dict, sig: dict, edge_dim: int | None = None) -> list:
    """Reasons why a network of signature ``sig`` lies outside ``trained`` (a :func:`merge_signatures`);
    empty when it is covered. Widths up to twice and depths up to two layers beyond the training
    zoo count as covered (the held-out architectures of the mixed zoo are that far out)."""
    out = []
    new = sorted(set(sig["features"]) - set(trained["features"]))
    if new:
        out.append(f"node features never seen in training: {', '.join(new)}")
    if sig["residual"] and not trained["residual"]:
        out.append("residual connections (trained on none)")
    if sig["max_width"] > 2 * trained["max_width"]:
        out.append(f"a group of {sig['max_width']} neurons (trained up to {trained['max_width']})")
    if sig["depth"] > trained["depth"] + 2:
        out.append(f"depth {sig['depth']} (trained up to {trained['depth']})")
    lens = sorted(set(sig["edge_lens"]) - set(trained["edge_lens"]))
    if lens:
        out.append(f"edge features (kernel sizes) of length {lens} (trained on {trained['edge_lens']})")
    if edge_dim is not None and max(sig["edge_lens"], default=0) > edge_dim:
        out.append(f"edges of {max(sig['edge_lens'])} values, more than the aligner's edge_dim {edge_dim}")
    if sig.get("attention") and not trained.get("attention"):  # metadata older than the key: none
        out.append("attention (trained on none; the shipped 'transformer' aligner was)")
    if sig["activation"] and trained["activation"] and sig["activation"] not in trained["activation"]:
        out.append(f"activation {sig['activation']} (trained on {', '.join(trained['activation'])})")
    return out
