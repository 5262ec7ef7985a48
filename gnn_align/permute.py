"""The group action: the one place where weights are permuted.

A permutation is a dict from group name to a 1-D LongTensor. **Direction convention** (stated here
and nowhere else): ``perm[g][i] = j`` means that neuron ``j`` of the network being permuted (B) moves
to slot ``i``, so that it sits opposite neuron ``i`` of the reference network (A). On every tensor
axis that group ``g`` acts on::

    apply_permutation(theta, perm, spec)[key].select(axis, i) == theta[key].select(axis, perm[g][i])

(for an axis with ``block = b``, entry ``i * b + r`` receives entry ``perm[g][i] * b + r``).
Composition follows: applying ``p`` and then ``q`` equals applying ``compose_permutations(p, q)``,
whose entries are ``p[g][q[g]]``; ``invert_permutation(p)`` undoes ``p``.

**Attention heads** (the one place the order of groups matters). An axis may be split into
:class:`~gnn_align.spec.Piece` s, applied in the order the spec lists them; a head group
(``block = d``: head ``i`` owns entries ``i*d .. i*d + d - 1`` of its piece) is listed before its
within-head groups, one per head *slot* (``spec.heads[h] = (qk groups, v groups)``). So the head
group moves whole heads first, then the within-head group of slot ``i`` reorders the dimensions of
the head now in slot ``i`` (opposite A's head ``i``)::

    new[i*d + r] = old[perm[h][i]*d + perm[heads_i][r]]      (heads_i = spec.heads[h][family][i])

The within-head groups therefore do not compose group by group: with the spec,
``compose_permutations(p, q, spec)`` is ``h: p[h][q[h]]`` and ``heads_i: p[heads_j][q[heads_i]]`` with
``j = q[h][i]``, and ``invert_permutation(p, spec)`` is ``h: argsort(p[h])``, ``heads_i:
argsort(p[heads_j])`` with ``j = argsort(p[h])[i]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import PermutationError
from .spec import Axis, PermutationSpec, axis_pieces

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
    for axis, entry in enumerate(axes):
        for a in axis_pieces(entry):
            if a.group not in perm or a.group == skip:
                continue
            idx = _axis_index(perm[a.group].to(t.device), a.block)
            if not isinstance(entry, Axis):  # a piece: entries start.. of the axis, the rest stay
                n, end = t.shape[axis], a.start + len(perm[a.group]) * a.block
                idx = torch.cat([torch.arange(a.start, device=t.device), idx + a.start,
                                 torch.arange(end, n, device=t.device)])
            t = t.index_select(axis, idx)
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
        for axis, entry in enumerate(spec.axes[key]):
            for a in axis_pieces(entry):
                if a.group in mats:
                    moved = t.movedim(axis, 0)
                    n = spec.group_sizes[a.group]
                    start = getattr(a, "start", 0)
                    end = start + n * a.block
                    piece = moved[start:end]
                    flat = piece.reshape(n, -1)  # neuron i owns rows i*block..
                    done = (mats[a.group].to(t.dtype) @ flat).reshape(piece.shape)
                    t = torch.cat([moved[:start], done, moved[end:]]).movedim(0, axis)
        out[key] = t
    return out


def identity_permutation(spec: PermutationSpec) -> Permutation:
    """The identity element: ``arange(size)`` for every group."""
    return {g: torch.arange(n) for g, n in spec.group_sizes.items()}


def random_permutation(spec: PermutationSpec, generator: torch.Generator | None = None) -> Permutation:
    """A uniformly random element of the group, drawn from ``generator`` (group by group, in order)."""
    return {g: torch.randperm(n, generator=generator) for g, n in spec.group_sizes.items()}


def _families(perm: Mapping[str, torch.Tensor], spec: PermutationSpec | None):
    """(head group, family of within-head groups) pairs of ``spec`` (none without one), checked
    against ``perm``: a permutation of a spec with heads holds all its groups or none of them."""
    for h, fams in ({} if spec is None else spec.heads).items():
        for fam in fams:
            have = [g in perm for g in (h, *fam)]
            if any(have) and not all(have):
                raise PermutationError(f"head group '{h}' and its within-head groups '{fam[0]}'.. must be "
                                       "given together")
            if all(have):
                yield h, fam


def invert_permutation(perm: Mapping[str, torch.Tensor], spec: PermutationSpec | None = None) -> Permutation:
    """The inverse: applying ``perm`` and then ``invert_permutation(perm)`` gives back the network.

    Args:
        spec: needed when the spec has attention heads (``spec.heads``; see the module docstring).
    """
    _check(perm)
    out = {g: torch.argsort(p) for g, p in perm.items()}
    for h, fam in _families(perm, spec):
        src = out[h]
        for i, g in enumerate(fam):
            out[g] = torch.argsort(perm[fam[int(src[i])]])
    return out


def compose_permutations(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor],
                         spec: PermutationSpec | None = None) -> Permutation:
    """The permutation equal to applying ``first`` and then ``second`` (``first[g][second[g]]``).

    Args:
        spec: needed when the spec has attention heads (``spec.heads``; see the module docstring).
    """
    _check(first)
    _check(second)
    if set(first) != set(second):
        raise PermutationError(f"cannot compose permutations of different groups: "
                               f"{sorted(set(first) ^ set(second))}")
    out = {g: first[g][second[g]] for g in first}
    for h, fam in _families(first, spec):
        for i, g in enumerate(fam):
            out[g] = first[fam[int(second[h][i])]][second[g]]
    return out
