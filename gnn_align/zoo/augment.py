"""Weight-space augmentations of Deep-Align (Navon et al., 2023) for training aligners.

:func:`augment` perturbs a network's parameters in four ways, in this order:

1. **rescaling** (optional, ReLU networks only): each hidden neuron ``i`` of an eligible layer gets a
   factor ``s_i ~ U(lo, hi)``; its incoming weights and bias are multiplied by ``s_i`` and its outgoing
   weights divided by it. ReLU is positively homogeneous (``relu(s z) = s relu(z)`` for ``s > 0``),
   and so are max/average pooling, so the network computes exactly the same function.
2. **noise**: Gaussian noise of std ``noise * tensor.std()`` per tensor (``noise * |value|`` for
   one-element tensors; a constant tensor, e.g. a fresh norm weight of ones, gets no noise).
3. **dropout**: every entry is zeroed with probability ``dropout`` (no rescaling of the rest).
4. **quantile dropout**: one ``q ~ U(0, max_quantile)`` per call; in every tensor the entries whose
   ``|w|`` lies below the ``q``-quantile of ``|w|`` over that tensor are zeroed.

Only weights, biases and normalisation weights/biases are touched; running statistics
(``running_mean``/``running_var``), tensors with no place in the graph (``num_batches_tracked``) and
integer tensors are copied unchanged. All randomness comes from ``generator``, so the result is a
deterministic function of the input and the generator's state.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..spec import PermutationSpec


def rescalable_nodesets(spec: PermutationSpec) -> list:
    """Indices of the node sets whose neurons may be rescaled (see :func:`augment`).

    A node set qualifies when it is the only node set of its permutation group (no residual merge),
    no skip touches it, it has no normalisation features, exactly one layer writes into it and some
    layer reads it (not the queries and keys of an attention's flat view, whose scale the softmax sees).
    """
    st = spec.require_structure("rescalable_nodesets")
    count: dict = {}
    for ns in st.nodesets:
        if ns.group is not None:
            count[ns.group] = count.get(ns.group, 0) + 1
    in_skip = {s for pair in st.skips for s in pair}
    out = []
    for i, ns in enumerate(st.nodesets):
        if ns.group is None or count[ns.group] != 1 or i in in_skip:
            continue
        if any(f is not None for f in ns.features[1:]):
            continue
        if sum(1 for ly in st.layers if ly.dst == i) != 1 or not any(ly.src == i for ly in st.layers):
            continue
        out.append(i)
    return out


def _uniform(shape, lo: float, hi: float, generator, like: torch.Tensor) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=like.dtype)
    return (lo + (hi - lo) * u).to(like.device)


def _scale_axis(t: torch.Tensor, s: torch.Tensor, axis: int, block: int, divide: bool) -> torch.Tensor:
    s = s.repeat_interleave(block) if block > 1 else s
    shape = [1] * t.dim()
    shape[axis] = s.numel()
    s = s.reshape(shape)
    return t / s if divide else t * s


@torch.no_grad()
def augment(state: Mapping[str, torch.Tensor], spec: PermutationSpec, generator: torch.Generator, *,
            noise: float = 0.01, dropout: float = 0.05, rescale: tuple | None = (0.9, 1.1),
            max_quantile: float = 0.1) -> dict:
    """A randomly perturbed copy of a network's state dict (see the module docstring).

    Args:
        state: the network's tensors (keys exactly the spec's).
        spec: its :class:`PermutationSpec`, with structure (from :func:`gnn_align.spec_from_module`).
        generator: a CPU generator; the only source of randomness.
        noise: relative std of the Gaussian noise (0 disables it).
        dropout: probability of zeroing each entry (0 disables it).
        rescale: ``(lo, hi)`` with ``0 < lo <= hi`` for per-neuron positive rescaling, or ``None``.
            Only valid for networks whose activations are positively homogeneous (ReLU); the caller
            decides. Node sets joined by residual skips or carrying normalisation are never rescaled.
        max_quantile: upper bound of the quantile-dropout level ``q`` (0 disables it).

    Returns:
        A new dict with the same keys, shapes and dtypes; ``state`` is not modified.

    Raises:
        StateDictError: a spec without structure, or a state dict that does not fit the spec.
    """
    if spec.flat is not None:  # attention: the flat view, whose value neurons may be rescaled too
        spec.validate(state)
        return spec.flat.unflatten(augment(spec.flat.flatten(state), spec.flat.spec, generator, noise=noise,
                                           dropout=dropout, rescale=rescale, max_quantile=max_quantile))
    st = spec.require_structure("augment")
    spec.validate(state)
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must lie in [0, 1], got {dropout}")
    if not 0.0 <= max_quantile <= 1.0:
        raise ValueError(f"max_quantile must lie in [0, 1], got {max_quantile}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    out = {k: v.clone() for k, v in state.items()}
    keys = [k for k in spec.learnable_keys() if out[k].is_floating_point()]

    if rescale is not None:
        lo, hi = float(rescale[0]), float(rescale[1])
        if not 0 < lo <= hi:
            raise ValueError(f"rescale must be (lo, hi) with 0 < lo <= hi, got {rescale!r}")
        for i in rescalable_nodesets(spec):
            ns = st.nodesets[i]
            (incoming,) = [ly for ly in st.layers if ly.dst == i]
            w = out[incoming.weight]
            if not w.is_floating_point():
                continue
            s = _uniform(ns.size, lo, hi, generator, w)
            out[incoming.weight] = _scale_axis(w, s, 0, 1, divide=False)
            if ns.features[0] is not None:
                out[ns.features[0]] = _scale_axis(out[ns.features[0]], s, 0, 1, divide=False)
            for ly in st.layers:
                if ly.src == i:
                    out[ly.weight] = _scale_axis(out[ly.weight], s, 1, ly.block, divide=True)

    if noise > 0:
        for k in keys:
            t = out[k]
            std = t.std() if t.numel() >= 2 else t.abs()
            eps = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
            out[k] = t + noise * std * eps

    if dropout > 0:
        for k in keys:
            t = out[k]
            keep = torch.rand(t.shape, generator=generator, dtype=t.dtype).to(t.device) >= dropout
            out[k] = torch.where(keep, t, torch.zeros_like(t))

    if max_quantile > 0:
        q = float(torch.rand((), generator=generator, dtype=torch.float64)) * max_quantile
        for k in keys:
            t = out[k]
            if t.numel() == 0:
                continue
            mag = t.abs()
            thr = torch.quantile(mag.reshape(-1).to(torch.float64), q).to(t.dtype)
            out[k] = torch.where(mag < thr, torch.zeros_like(t), t)
    return out
