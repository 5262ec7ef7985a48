"""Activation matching (Git Re-Basin): match neurons by the correlation of their activations on data.

For every permutation group, the activations of A's and B's neurons (the outputs of the layers that
produce the group's node sets, i.e. pre-activation values, every spatial position of a feature map
counting as a sample) are correlated over the data; residual streams sum the correlations of all
their node sets; one linear assignment per group maximises the total correlation. Statistics are
streamed batch by batch, so memory does not grow with the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..ot import hungarian
from ..spec import PermutationSpec
from .weight_matching import MatchResult


class CorrelationStats:
    """Streamed first and second moments of paired activations ``a`` (A's neurons), ``b`` (B's).

    Shapes:
        ``update(a, b)``: a (samples, n), b (samples, n). ``correlation()``: (n, n), entry (i, j)
        the Pearson correlation of A's neuron i with B's neuron j.
    """

    def __init__(self, n: int):
        self.count = 0
        self.sa, self.sb = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        self.saa, self.sbb = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        self.sab = torch.zeros(n, n, dtype=torch.float64)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.detach().double(), b.detach().double()
        self.count += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def correlation(self, eps: float = 1e-12) -> torch.Tensor:
        n = self.count
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - ma[:, None] * mb[None, :]
        sa = (self.saa / n - ma * ma).clamp_min(0).sqrt()
        sb = (self.sbb / n - mb * mb).clamp_min(0).sqrt()
        return cov / (sa[:, None] * sb[None, :] + eps)


def _samples(t: torch.Tensor) -> torch.Tensor:
    """(batch, C, *spatial) -> (batch * prod(spatial), C)."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def activation_matching(module: nn.Module, state_a: Mapping, state_b: Mapping, spec: PermutationSpec,
                        batches: Iterable[torch.Tensor]) -> MatchResult:
    """Align B to A by activation matching.

    Args:
        module: the architecture (its own parameters are not used or changed).
        state_a, state_b: the two networks' state dicts.
        spec: their spec, with structure (from :func:`gnn_align.spec_from_module`).
        batches: input batches (the data split is the caller's choice; say which in results).

    Returns:
        :class:`MatchResult` with the permutation to apply to B.

    Raises:
        StateDictError: a spec without structure (:meth:`~gnn_align.PermutationSpec.require_structure`).
    """
    st = spec.require_structure("activation matching")
    sets = {i: ns for i, ns in enumerate(st.nodesets) if ns.group is not None}
    stats = {i: CorrelationStats(ns.size) for i, ns in sets.items()}
    captured: dict = {}
    hooks = [module.get_submodule(ns.name).register_forward_hook(
        lambda _m, _inp, out, i=i: captured.__setitem__(i, out)) for i, ns in sets.items()]
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            for x in batches:
                functional_call(module, dict(state_a), (x,))
                acts_a = dict(captured)
                functional_call(module, dict(state_b), (x,))
                for i in sets:
                    stats[i].update(_samples(acts_a[i]), _samples(captured[i]))
    finally:
        for h in hooks:
            h.remove()
        module.train(was)
    perm = {}
    for g in spec.group_sizes:
        corr = sum(stats[i].correlation() for i, ns in sets.items() if ns.group == g)
        perm[g] = hungarian(corr)
    return MatchResult(perm)
