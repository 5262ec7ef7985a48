"""Per-group matching scores between the neurons of two networks."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..config import AlignerConfig
from ..graph import global_group


def group_rows(g) -> Tensor:
    """The rows of the nodes that belong to a permutation group (the hidden neurons), ascending: the
    only embeddings :func:`pool_groups` reads. Shapes: (M,) long."""
    return (global_group(g) >= 0).nonzero().flatten()


def pool_groups(h: Tensor, g, rows: Tensor | None = None) -> tuple:
    """Average node embeddings over the node sets of each permutation group, position by position.

    A residual stream's group spans several node sets whose neurons move together; its neuron ``i``
    is represented by the mean embedding of position ``i`` over all those node sets.

    Args:
        h: the embeddings of every node, or with ``rows`` of those nodes only.
        g: the graph(s).
        rows: :func:`group_rows` of ``g``, when ``h`` holds only theirs.

    Returns:
        ``(emb, mask)``: ``emb`` (G, n_max, H) per global group (in batch order) and position,
        ``mask`` (G, n_max) marking the real positions of each group.
    """
    if rows is None:
        rows = group_rows(g)
        h = h[rows]
    gg, pos = global_group(g)[rows], g.perm_pos[rows]
    num = int(torch.as_tensor(g.num_groups).sum())
    sizes = scatter(pos + 1, gg, dim_size=num, reduce="max")
    n_max = int(sizes.max()) if num else 0
    slot = gg * n_max + pos
    if len(slot) == num * n_max and torch.equal(slot, torch.arange(len(slot), device=slot.device)):
        emb = h  # every group one node set of n_max neurons, in order (a batch of one MLP architecture)
    elif len(slot) and int(torch.bincount(slot).max()) == 1:  # every group one node set (no residual stream)
        emb = h.new_zeros(num * n_max, h.shape[1]).index_copy_(0, slot, h)
    else:
        emb = scatter(h, slot, dim=0, dim_size=num * n_max, reduce="mean")
    mask = torch.arange(n_max, device=h.device)[None, :] < sizes[:, None]
    return emb.view(num, n_max, -1), mask


def unit(emb: Tensor) -> Tensor:
    """Embeddings scaled to unit length (the cosine of :class:`MatchingHead`)."""
    return nn.functional.normalize(emb, dim=-1)


class MatchingHead(nn.Module):
    r"""Scores :math:`Q_{ij} = s^2 \cos(f^A_i, f^B_j)` between A's and B's neurons of one group
    (Deep-Align's head, one learned scale :math:`s`, initially ``init_scale``, by default
    :class:`~gnn_align.config.AlignerConfig`'s ``head_scale``). Symmetric: swapping A and B transposes Q.

    Shapes:
        - **input:** emb_a, emb_b :math:`(G, n, H)`, mask_a, mask_b :math:`(G, n)`
        - **output:** scores :math:`(G, n, n)`, mask :math:`(G, n, n)` (padded entries masked)
    """

    def __init__(self, init_scale: float = AlignerConfig.head_scale):
        super().__init__()
        self.init_scale = init_scale
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.scale.fill_(self.init_scale)

    def forward(self, emb_a: Tensor, emb_b: Tensor, mask_a: Tensor, mask_b: Tensor) -> tuple:
        return self.score_units(unit(emb_a), unit(emb_b), mask_a, mask_b)

    def score_units(self, a: Tensor, b: Tensor, mask_a: Tensor, mask_b: Tensor) -> tuple:
        """:meth:`forward` on embeddings already passed through :func:`unit` (to normalise each
        network's embeddings once when it meets many others)."""
        mask = mask_a[:, :, None] & mask_b[:, None, :]
        scores = self.scale ** 2 * torch.einsum("gih,gjh->gij", a, b)
        return scores.masked_fill(~mask, 0.0), mask
