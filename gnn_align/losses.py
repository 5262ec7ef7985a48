"""Training losses of the learned aligner.

* planted cross-entropy: each neuron of A against its known partner in B (planted pairs);
* weight distance: ``sum_k mean((theta_A[k] - (S . theta_B)[k])^2)`` after soft alignment ``S``;
* task loss of the interpolated network ``(1 - lam) theta_A + lam (S . theta_B)`` on a data batch,
  evaluated with ``torch.func.functional_call`` on the architecture.

Soft alignments act through :func:`gnn_align.permute.apply_permutation_matrix`, the group action
extended to matrices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torch.func import functional_call

from .metrics import interpolate
from .permute import apply_permutation_matrix
from .spec import PermutationSpec
from .tasks import task_loss

#: BatchNorm buffers (copied before a train-mode forward writes into them)
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def planted_cross_entropy(scores: Tensor, mask: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of every real row of the scores against the true partner column.

    Args:
        reduction: ``mean`` over the real rows, or ``sum`` (data-parallel training divides the
            sum by the global number of rows).

    Shapes:
        scores, mask: (G, n, n); targets: (G, n) long (entries beyond a group's size are ignored).
    """
    logits = scores.masked_fill(~mask, float("-inf"))
    rows = mask.any(-1)
    return nn.functional.cross_entropy(logits[rows], targets[rows], reduction=reduction)


def pair_matrices(soft: Tensor, mask: Tensor, groups: Sequence, num_pairs: int) -> list:
    """Split batched group matrices into one ``{group: (n, n) matrix}`` dict per pair.

    Shapes:
        soft, mask: (G, n_max, n_max) as returned by :meth:`GNNAligner.soft`.
    """
    out: list = [{} for _ in range(num_pairs)]
    for (k, name), s, m in zip(groups, soft, mask, strict=True):
        n = int(m[:, 0].sum())
        out[k][name] = s[:n, :n]
    return out


def _graph_form(state_a: Mapping, state_b: Mapping, spec: PermutationSpec, mats: Mapping) -> tuple:
    """The two networks and the spec ``mats`` act on: the flat view's when they are over the flat
    groups of a network with attention (the aligner's soft output; :mod:`gnn_align.flat`), else
    themselves (matrices over the spec's own groups, e.g. Sinkhorn re-basin's)."""
    if spec.flat is None or set(mats) <= set(spec.group_sizes):
        return state_a, state_b, spec
    return spec.flat.flatten(state_a), spec.flat.flatten(state_b), spec.flat.spec


def weight_distance(state_a: Mapping, state_b: Mapping, mats: Mapping, spec: PermutationSpec) -> Tensor:
    """Sum over the learnable tensors of the mean squared difference between A and soft-aligned B
    (for a network with attention and matrices over its flat groups: over its flat view)."""
    state_a, state_b, spec = _graph_form(state_a, state_b, spec, mats)
    pb = apply_permutation_matrix(state_b, mats, spec)
    return sum(((state_a[k] - pb[k]) ** 2).mean() for k in spec.learnable_keys())


def state_task_loss(module: nn.Module, state: Mapping, x: Tensor, y: Tensor, loss: str = "ce") -> Tensor:
    """Task loss of the architecture ``module`` holding ``state`` on ``(x, y)``, differentiable in ``state``.

    The network runs in eval mode except its BatchNorm layers, which normalise with the statistics
    of the batch ``x``: the running statistics stored in ``state`` belong to the networks it was made
    from (for an interpolated or permuted-and-averaged network, averages that match none of its
    layers), while batch statistics always match the weights being evaluated. ``state``'s running
    statistics are not updated (BatchNorm writes into copies). Neither ``module``'s values nor its
    modes are changed.
    """
    state = {k: v.clone() if k.endswith(_BN_BUFFERS) else v for k, v in state.items()}
    modes = {m: m.training for m in module.modules()}
    module.eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    try:
        out = functional_call(module, state, (x,))
    finally:
        for m, was in modes.items():
            m.train(was)
    return task_loss(out[None], y[None], loss)[0]


def interpolation_task_loss(module: nn.Module, state_a: Mapping, state_b: Mapping, mats: Mapping,
                            spec: PermutationSpec, x: Tensor, y: Tensor, lam: float, loss: str = "ce") -> Tensor:
    """Task loss of ``(1 - lam) theta_A + lam (S . theta_B)`` on ``(x, y)`` (:func:`state_task_loss`:
    BatchNorm on the batch's statistics). Gradients flow through the learnable tensors only. For a
    network with attention the matrices may be over its flat groups (:mod:`gnn_align.flat`)."""
    nested, (state_a, state_b, spec) = spec, _graph_form(state_a, state_b, spec, mats)
    view = None if spec is nested else nested.flat
    learnable = set(spec.learnable_keys())
    mixed = {k: v if k in learnable else v.detach()
             for k, v in interpolate(state_a, apply_permutation_matrix(state_b, mats, spec), lam).items()}
    return state_task_loss(module, mixed if view is None else view.unflatten(mixed), x, y, loss)
