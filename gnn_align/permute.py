"""The group action: the one place where weights are permuted.

A permutation is a dict from group name to a 1-D LongTensor. **Direction convention** (stated here
and nowhere else): ``perm[g][i] = j`` means that neuron ``j`` of the network being permuted (B) moves
to slot ``i``, so that it sits opposite neuron ``i`` of the reference network (A). On every tensor
axis that group ``g`` acts on::

    apply_permutation(theta, perm, spec)[key].select(axis, i) == theta[key].select(axis, perm[g][i])

(for an axis with ``block = b``, entry ``i * b + r`` receives entry ``perm[g][i] * b + r``).
Composition follows: applying ``p`` and then ``q`` equals applying ``compose_permutations(p, q)``,
whose entries are ``p[g][q[g]]``; ``invert_permutation(p)`` undoes ``p``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import PermutationError
from .spec import PermutationSpec

Permutation = dict  # dict[str, torch.LongTensor]


def _check(perm: Mapping[str, torch.Tensor], spec: PermutationSpec | None = None) -> None:
    for g, p in perm.items():
        if not isinstance(p, torch.Tensor) or p.dtype != torch.long or p.dim() != 1:
            raise PermutationError(f"permutation of group '{g}' must be a 1-D LongTensor")
        if spec is not None:
            if g not in spec.group_sizes:
                raise PermutationError(f"unknown permutation group '{g}'")
            if p.numel() != spec.group_sizes[g]:
                raise PermutationError(f"permutation of group '{g}' has {p.numel()} entries, "
                                       f"the group has {spec.group_sizes[g]} neurons")
        if not torch.equal(torch.sort(p).values, torch.arange(p.numel(), device=p.device)):
            raise PermutationError(f"entries of group '{g}' are not a permutation of 0..{p.numel() - 1}")


def _axis_index(p: torch.Tensor, block: int) -> torch.Tensor:
    if block == 1:
        return p
    return (p[:, None] * block + torch.arange(block, device=p.device)).reshape(-1)


def apply_permutation(state_dict: Mapping[str, torch.Tensor], perm: Mapping[str, torch.Tensor],
                      spec: PermutationSpec) -> dict:
    """Permute the neurons of a network: ``new[key].select(axis, i) = old[key].select(axis, perm[g][i])``.

    Args:
        state_dict: the network's tensors; its keys must be exactly the spec's.
        perm: group name -> LongTensor permutation (see the module docstring for the direction).
            Groups left out are not permuted.
        spec: the network's :class:`PermutationSpec`.

    Returns:
        A new dict with the same keys, shapes and dtypes. Inputs are not modified.

    Raises:
        PermutationError: unknown group, wrong size, or not a permutation.
        StateDictError: keys that do not match the spec, or a tensor whose shape does not (naming
            the key and both shapes); nothing is cropped.
    """
    _check(perm, spec)
    spec.validate(state_dict, check_finite=False)  # same keys and shapes, or a StateDictError naming the key
    out = {}
    for key, t in state_dict.items():
        moved = permute_tensor(t, spec.axes[key], perm)
        out[key] = moved if moved is not t else t.clone()
    return out


def permute_tensor(t: torch.Tensor, axes: tuple, perm: Mapping[str, torch.Tensor],
                   skip: str | None = None) -> torch.Tensor:
    """One tensor of :func:`apply_permutation`, unchecked: ``t`` reordered on every axis of a group in
    ``perm`` (except ``skip``); ``t`` itself when no axis moves.

    Args:
        t: the tensor.
        axes: its entry of ``spec.axes`` (one :class:`~gnn_align.spec.Axis` or ``None`` per axis).
        perm: group name -> indices: a permutation, or a partial match (distinct indices, fewer than
            the group has: the axis is then cut to the matched neurons, see :mod:`gnn_align.partial`).
        skip: a group whose axes are left as they are.
    """
    for axis, a in enumerate(axes):
        if a is not None and a.group in perm and a.group != skip:
            t = t.index_select(axis, _axis_index(perm[a.group].to(t.device), a.block))
    return t


def apply_permutation_matrix(state_dict: Mapping[str, torch.Tensor], mats: Mapping[str, torch.Tensor],
                             spec: PermutationSpec) -> dict:
    """The group action extended linearly to (soft) permutation matrices, for differentiable alignment.

    On every axis acted on by group ``g``: ``new.select(axis, i) = sum_j mats[g][i, j] *
    old.select(axis, j)``. With ``mats[g]`` the one-hot matrix of ``perm[g]`` (``P[i, perm[g][i]] = 1``)
    this equals :func:`apply_permutation` (a test pins it); with a doubly stochastic matrix it is the
    soft alignment used by Sinkhorn re-basin and the learned aligner's losses. Differentiable in both
    the matrices and the tensors. Groups left out are not permuted.

    Shapes:
        ``mats[g]``: (n_g, n_g) for a group of n_g neurons.
    """
    for g, m in mats.items():
        n = spec.group_sizes.get(g)
        if n is None or tuple(m.shape) != (n, n):
            raise PermutationError(f"matrix of group '{g}' must be ({n}, {n}), got {tuple(m.shape)}"
                                   if n is not None else f"unknown permutation group '{g}'")
    out = {}
    for key, t in state_dict.items():
        for axis, a in enumerate(spec.axes[key]):
            if a is not None and a.group in mats:
                moved = t.movedim(axis, 0)
                rest = moved.shape[1:]
                flat = moved.reshape(spec.group_sizes[a.group], -1)  # neuron i owns rows i*block..
                t = (mats[a.group].to(t.dtype) @ flat).reshape(moved.shape[0], *rest).movedim(0, axis)
        out[key] = t
    return out


def identity_permutation(spec: PermutationSpec) -> Permutation:
    """The identity element: ``arange(size)`` for every group."""
    return {g: torch.arange(n) for g, n in spec.group_sizes.items()}


def random_permutation(spec: PermutationSpec, generator: torch.Generator | None = None) -> Permutation:
    """A uniformly random element of the group, drawn from ``generator`` (group by group, in order)."""
    return {g: torch.randperm(n, generator=generator) for g, n in spec.group_sizes.items()}


def invert_permutation(perm: Mapping[str, torch.Tensor]) -> Permutation:
    """The inverse: applying ``perm`` and then ``invert_permutation(perm)`` gives back the network."""
    _check(perm)
    return {g: torch.argsort(p) for g, p in perm.items()}


def compose_permutations(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> Permutation:
    """The permutation equal to applying ``first`` and then ``second`` (``first[g][second[g]]``)."""
    _check(first)
    _check(second)
    if set(first) != set(second):
        raise PermutationError(f"cannot compose permutations of different groups: "
                               f"{sorted(set(first) ^ set(second))}")
    return {g: first[g][second[g]] for g in first}
