"""Pairs of networks for training and evaluating aligners.

* :func:`independent_pairs`: two independently trained networks of one architecture (and, in INR
  zoos, of one signal; no known alignment; for unsupervised objectives and evaluation).
* :func:`planted_pair`: a network and a randomly permuted, augmented copy of it, with the planted
  permutation as the ground truth (Deep-Align's supervised pairs; :attr:`PlantedPair.target`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..permute import apply_permutation, invert_permutation, random_permutation
from .augment import augment
from .batched import stable_seed
from .storage import ZooError

if TYPE_CHECKING:  # the dataset imports torch_geometric
    from ..spec import PermutationSpec
    from .dataset import ModelZoo


def _pair_groups(zoo: ModelZoo, member: int | None = None) -> list:
    """Positions of the networks that may be paired: one group per member (or only ``member``), or,
    for members whose records carry a ``"signal"`` (INR zoos), one group per (member, signal) in order
    of appearance."""
    groups = []
    for m in range(len(zoo.members)) if member is None else [member]:
        pos = zoo.indices_of(m)
        signals = [zoo.record(p).get("signal") for p in pos]
        if all(s is None for s in signals):
            groups.append(pos)
            continue
        by_signal: dict = {}
        for p, s in zip(pos, signals, strict=True):
            by_signal.setdefault(s, []).append(p)
        groups.extend(by_signal.values())
    return groups


def member_weights(zoo: ModelZoo, rules: str) -> torch.Tensor | None:
    """Per-member sampling weights from ``rules``, a comma-separated list of ``GLOB=WEIGHT`` (matched
    against member names with :func:`fnmatch.fnmatchcase`; the last matching rule wins, unmatched
    members weigh 1). ``""`` gives ``None``: sampling proportional to the networks (or pairs) each
    member has, the zoo's own mix.

    Raises:
        ValueError: naming the rule, when it is not ``GLOB=WEIGHT`` with a weight ≥ 0, or matches
            no member of the zoo.
    """
    if not rules.strip():
        return None
    names = [m["name"] for m in zoo.members]
    w = torch.ones(len(names), dtype=torch.float64)
    for rule in rules.split(","):
        glob, sep, value = rule.strip().rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not glob or not weight >= 0:
            raise ValueError(f"member weight rule '{rule.strip()}': expected GLOB=WEIGHT with a weight >= 0")
        hits = [k for k, n in enumerate(names) if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            raise ValueError(f"member weight rule '{rule.strip()}' matches no member of zoo '{zoo.name}' "
                             f"({', '.join(names)})")
        w[hits] = weight
    return w


def sample_networks(zoo: ModelZoo, num: int, generator: torch.Generator | None = None,
                    weights: torch.Tensor | None = None) -> list:
    """``num`` positions of ``zoo``: uniform over its networks, or with per-member ``weights`` (see
    :func:`member_weights`) first a member with probability proportional to its weight, then a
    uniform network of it."""
    if weights is None:
        return torch.randint(0, len(zoo), (num,), generator=generator).tolist()
    w = torch.tensor([float(weights[m]) if zoo.indices_of(m) else 0.0 for m in range(len(zoo.members))],
                     dtype=torch.float64)
    if w.sum() <= 0:
        raise ZooError(f"zoo '{zoo.name}' (split={zoo.split}): no member with a positive weight has networks")
    members = torch.multinomial(w, num, replacement=True, generator=generator).tolist()
    u = torch.rand(num, generator=generator, dtype=torch.float64).tolist()
    out = []
    for m, x in zip(members, u, strict=True):
        pos = zoo.indices_of(m)
        out.append(pos[min(int(x * len(pos)), len(pos) - 1)])
    return out


def independent_pairs(zoo: ModelZoo, num_pairs: int, generator: torch.Generator | None = None,
                      member: int | None = None, weights: torch.Tensor | None = None) -> list:
    """``num_pairs`` ordered pairs ``(i, j)``, ``i != j``, of positions in ``zoo`` of one member and,
    when the records carry a ``"signal"`` (INR zoos: networks fitted to one signal), of one signal.

    Uniform over all such pairs of this view: first a group (a member, or a member's signal), with
    probability proportional to its number of pairs ``n (n - 1)``, then a uniform pair of distinct
    networks of it. Deterministic in the generator's state. With ``member`` (an index into
    ``zoo.members``), only that member's networks are paired. With per-member ``weights`` (see
    :func:`member_weights`), a member is drawn with probability proportional to its weight, and
    within it a group in proportion to its pairs.

    Raises:
        ZooError: naming the zoo, when no member (signal) has two networks in this view.
    """
    groups = _pair_groups(zoo, member)
    counts = torch.tensor([len(g) * (len(g) - 1) for g in groups], dtype=torch.float64)
    if weights is not None:
        owner = torch.tensor([zoo.member_of(g[0]) if g else 0 for g in groups])
        per_member = torch.zeros(len(zoo.members), dtype=torch.float64).index_add_(0, owner, counts)
        counts = torch.where(counts > 0, counts / per_member[owner].clamp_min(1) * weights.double()[owner], 0.0)
    if counts.sum() == 0:
        raise ZooError(f"zoo '{zoo.name}' ({zoo.root}, split={zoo.split}): no member (in an INR zoo: no "
                       "signal of a member) has two networks to pair")
    if num_pairs <= 0:
        return []
    members = torch.multinomial(counts, num_pairs, replacement=True, generator=generator)
    u = torch.rand(num_pairs, 2, generator=generator, dtype=torch.float64)
    pairs = []
    for k, m in enumerate(members.tolist()):
        pos = groups[m]
        n = len(pos)
        i = min(int(u[k, 0] * n), n - 1)
        j = min(int(u[k, 1] * (n - 1)), n - 2)
        j += j >= i
        pairs.append((pos[i], pos[j]))
    return pairs


@dataclass
class PlantedPair:
    """A network ``a``, its augmented copy ``a_augmented`` and ``b``, that copy permuted by ``perm``.

    ``b == apply_permutation(a_augmented, perm, spec)`` exactly, hence
    ``apply_permutation(b, target, spec)`` gives back ``a_augmented``: :attr:`target`, the inverse of
    ``perm``, is the ground truth for aligning ``b`` to reference ``a`` (what ``align(a, b)`` should
    predict, in the direction convention of :mod:`gnn_align.permute`); ``perm`` is the permutation that
    made ``b``. ``member`` indexes ``zoo.members``; ``network_id`` is the manifest id of ``a``.
    """

    a: dict
    b: dict
    perm: dict
    a_augmented: dict
    member: int
    network_id: int
    spec: PermutationSpec | None = None

    @property
    def target(self) -> dict:
        """The alignment that recovers A from B (``invert_permutation(perm, spec)``): group name ->
        permutation with ``apply_permutation(b, target, spec) == a_augmented``."""
        return invert_permutation(self.perm, self.spec)

    @property
    def graph_target(self) -> dict:
        """:attr:`target` on the groups of the pair's graphs: for a network with attention, its flat
        view's (:meth:`~gnn_align.flat.FlatView.flat_perm`), else :attr:`target` itself."""
        view = None if self.spec is None else self.spec.flat
        return self.target if view is None else view.flat_perm(self.target)


def planted_pair(zoo: ModelZoo, idx: int, generator: torch.Generator,
                 augment_kwargs: dict | None = None) -> PlantedPair:
    """The planted pair of the ``idx``-th network of ``zoo``.

    Draws, in this order from ``generator``: ``perm = random_permutation(spec, generator)``, then
    ``a_augmented = augment(a, spec, generator, **augment_kwargs)`` with rescaling only when the
    member's ``activation`` is ``"relu"`` (``rescale=None`` otherwise, whatever ``augment_kwargs``
    says); finally ``b = apply_permutation(a_augmented, perm, spec)``.
    """
    m = zoo.member_of(idx)
    spec = zoo.spec(m)
    a = zoo.state_dict(idx)
    perm = random_permutation(spec, generator)
    kwargs = dict(augment_kwargs or {})
    if zoo.members[m].get("activation") != "relu":
        kwargs["rescale"] = None
    a_aug = augment(a, spec, generator, **kwargs)
    b = apply_permutation(a_aug, perm, spec)
    return PlantedPair(a=a, b=b, perm=perm, a_augmented=a_aug, member=m,
                       network_id=int(zoo.record(idx)["id"]), spec=spec)


class PlantedPairs(torch.utils.data.Dataset):
    """Planted pairs of a list of networks of a zoo, reproducible per ``seed`` and epoch.

    Item ``k`` is :func:`planted_pair` of position ``indices[k]`` with a generator seeded by
    ``stable_seed(seed, epoch, network_id)``: independent of iteration order and of DataLoader
    workers. Call :meth:`set_epoch` to draw fresh permutations and augmentations. With a
    :class:`torch.utils.data.DataLoader`, pass ``collate_fn=list`` (items are dataclasses).

    Args:
        zoo: the zoo view.
        indices: positions in ``zoo`` (default: all).
        seed: base seed.
        augment_kwargs: passed to :func:`planted_pair`.
    """

    def __init__(self, zoo: ModelZoo, indices: Sequence[int] | None = None, seed: int = 0,
                 augment_kwargs: dict | None = None):
        self.zoo = zoo
        self.indices = list(range(len(zoo))) if indices is None else [int(i) for i in indices]
        self.seed = int(seed)
        self.epoch = 0
        self.augment_kwargs = augment_kwargs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> PlantedPair:
        i = self.indices[k]
        gen = torch.Generator().manual_seed(stable_seed(self.seed, self.epoch, self.zoo.record(i)["id"]))
        return planted_pair(self.zoo, i, gen, self.augment_kwargs)

    def __iter__(self) -> Iterator[PlantedPair]:
        for k in range(len(self)):
            yield self[k]
