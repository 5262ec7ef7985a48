"""Partial matching: network A is a narrower copy of B (same groups, same depth, fewer neurons).

A **match** is a dict from group name to a 1-D LongTensor of distinct indices into B's group, one
per neuron of A: ``match[g][i] = j`` puts neuron ``j`` of B opposite neuron ``i`` of A. It extends
the direction convention of :mod:`gnn_align.permute` to injective maps: when A and B have the same
width in ``g``, ``match[g]`` is a permutation and means exactly what ``perm[g]`` means there.

:func:`extract_subnetwork` cuts B's matched sub-network out of B, in A's order and A's shapes, with
the group action of :mod:`gnn_align.permute` (:func:`~gnn_align.permute.permute_tensor`): every
tensor axis that a group acts on keeps the matched neurons, in A's order. This is B permuted by the
match completed to a permutation of B's group (:func:`complete_match`: matched neurons first, then
the unmatched ones in increasing order) and cut to its first ``len(match[g])`` neurons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .errors import PermutationError, StateDictError, check_keys
from .permute import permute_tensor
from .spec import PermutationSpec


def check_narrower(spec_a: PermutationSpec, spec_b: PermutationSpec) -> None:
    """Check that A is a narrower (or equal) copy of B: same groups, keys and axes, no wider group.

    Args:
        spec_a: A's spec.
        spec_b: B's spec.

    Raises:
        PermutationError: naming the first group that differs or that is wider in A than in B.
        StateDictError: naming the first key whose presence or axes (group, block) differ.
    """
    if list(spec_a.group_sizes) != list(spec_b.group_sizes):
        diff = sorted(set(spec_a.group_sizes) ^ set(spec_b.group_sizes))
        raise PermutationError(f"A and B have different permutation groups: {diff or 'same names, other order'}")
    for g, n_a in spec_a.group_sizes.items():
        if n_a > spec_b.group_sizes[g]:
            raise PermutationError(f"group '{g}' of A has {n_a} neurons, wider than B's "
                                   f"{spec_b.group_sizes[g]}: partial matching needs A narrower than B")
    check_keys(spec_a.axes, spec_b.axes, "the spec of A", "the spec of B")
    for key in spec_a.axes:
        if spec_a.axes[key] != spec_b.axes[key]:
            raise StateDictError(f"key '{key}' has axes {spec_a.axes[key]} in A but {spec_b.axes[key]} in B")


def complete_match(match: torch.Tensor, n_b: int, group: str = "?") -> torch.Tensor:
    """The permutation of B's group that puts the matched neurons first, in A's order, then the
    unmatched ones in increasing order.

    Args:
        match: distinct indices into B's group, one per neuron of A.
        n_b: the number of neurons of B's group.
        group: the group's name, for error messages.

    Returns:
        LongTensor ``p`` with ``p[:len(match)] == match``, a permutation of ``0..n_b - 1``.

    Shapes:
        match: ``(n_a,)`` with ``n_a <= n_b``. Returns: ``(n_b,)``.

    Raises:
        PermutationError: naming the group, when ``match`` is not a 1-D LongTensor, is longer than
            B's group, has entries outside ``0..n_b - 1`` or repeats an entry.
    """
    if not isinstance(match, torch.Tensor) or match.dtype != torch.long or match.dim() != 1:
        raise PermutationError(f"match of group '{group}' must be a 1-D LongTensor")
    if match.numel() > n_b:
        raise PermutationError(f"match of group '{group}' has {match.numel()} entries, B's group has "
                               f"only {n_b} neurons")
    if match.numel() and (int(match.min()) < 0 or int(match.max()) >= n_b):
        raise PermutationError(f"match of group '{group}' has entries outside 0..{n_b - 1}")
    used = torch.zeros(n_b, dtype=torch.bool, device=match.device)
    used[match] = True
    if int(used.sum()) != match.numel():
        raise PermutationError(f"match of group '{group}' is not injective: it repeats a neuron of B")
    return torch.cat([match, torch.nonzero(~used).flatten()])


def extract_subnetwork(state_b: Mapping[str, torch.Tensor], match: Mapping[str, torch.Tensor],
                       spec_b: PermutationSpec, spec_a: PermutationSpec | None = None,
                       keys: Sequence[str] | None = None) -> dict:
    """B's matched sub-network, in A's order: ``out[key].select(axis, i) = B[key].select(axis,
    match[g][i])`` on every axis that a group ``g`` of ``match`` acts on (block-wise for ``block > 1``).

    Equals :func:`~gnn_align.permute.apply_permutation` with each map completed by
    :func:`complete_match`, then every axis that ``g`` acts on cut to its first ``len(match[g])``
    neurons (``len(match[g]) * block`` entries). For maps of full width this is
    ``apply_permutation(state_b, match, spec_b)``.

    Args:
        state_b: B's tensors (keys exactly those of ``spec_b``).
        match: group name -> distinct indices into B's group (see the module docstring). Groups
            left out are neither permuted nor cut (only allowed without ``spec_a``).
        spec_b: B's :class:`~gnn_align.spec.PermutationSpec`.
        spec_a: A's spec. When given, A must be a narrower copy of B (:func:`check_narrower`),
            ``match`` must cover every group with ``match[g]`` of A's width, and the result is
            validated against it (it then has A's keys and shapes).
        keys: only these keys of B (default all); the result is then not validated against ``spec_a``.

    Returns:
        A new dict with B's keys (or ``keys``); shapes cut to the matched widths. Inputs are not modified.

    Shapes:
        ``match[g]``: ``(n_a(g),)`` with ``n_a(g) <= n_b(g)``; a tensor of shape ``(..., n_b(g) *
        block, ...)`` on an axis of ``g`` comes out ``(..., n_a(g) * block, ...)``.

    Raises:
        PermutationError: naming the group: unknown, missing, wrong length, not injective, out of
            range, or wider in A than in B.
        StateDictError: keys that do not match the specs.
    """
    if spec_a is not None:
        check_narrower(spec_a, spec_b)
        for g, n_a in spec_a.group_sizes.items():
            if g not in match:
                raise PermutationError(f"match has no entry for group '{g}'")
            if match[g].numel() != n_a:
                raise PermutationError(f"match of group '{g}' has {match[g].numel()} entries, "
                                       f"A's group has {n_a} neurons")
    for g in match:
        if g not in spec_b.group_sizes:
            raise PermutationError(f"unknown permutation group '{g}'")
    for g, m in match.items():
        complete_match(m, spec_b.group_sizes[g], g)  # a 1-D LongTensor of distinct indices into B's group
    spec_b.validate(state_b, check_finite=False)  # B's keys and shapes
    out = {}
    for key in state_b if keys is None else keys:
        t = state_b[key]
        cut = permute_tensor(t, spec_b.axes[key], match)
        out[key] = cut.contiguous() if cut is not t else t.clone(memory_format=torch.contiguous_format)
    if spec_a is not None and keys is None:
        spec_a.validate(out, check_finite=False)
    return out
