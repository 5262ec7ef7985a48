"""The picture of a population's distance matrix: the matrix ordered by clustering, and a 2-D map."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cluster_order(dist: torch.Tensor) -> list:
    """Leaf order of average-linkage hierarchical clustering of a symmetric distance matrix."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    d = dist.double().clone()
    d.fill_diagonal_(0.0)
    d = (d + d.T) / 2
    return leaves_list(linkage(squareform(d.numpy(), checks=False), method="average")).tolist()


def classical_mds(dist: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """(N, dims) coordinates whose Euclidean distances best match ``dist`` (Torgerson's classical MDS:
    the top eigenvectors of the double-centred squared distances)."""
    d2 = dist.double() ** 2
    n = d2.shape[0]
    j = torch.eye(n, dtype=torch.float64) - 1.0 / n
    b = -0.5 * j @ d2 @ j
    vals, vecs = torch.linalg.eigh((b + b.T) / 2)
    top = torch.argsort(vals, descending=True)[:dims]
    return vecs[:, top] * vals[top].clamp_min(0).sqrt()


def distance_figure(dist: torch.Tensor, color: Sequence[float] | None = None, title: str = "",
                    color_label: str = "test accuracy", labels: Sequence[str] | None = None):
    """A figure: left the distance matrix ordered by :func:`cluster_order`, right the networks placed
    by :func:`classical_mds`, coloured by ``labels`` (categories, e.g. training recipes; a legend) when
    given, else by ``color`` (e.g. test accuracy; a colour bar). Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = cluster_order(dist)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    off = dist[~torch.eye(len(dist), dtype=torch.bool)]
    im = ax1.imshow(dist[order][:, order].numpy(), cmap="viridis", vmin=float(off.min()) if len(off) else None,
                    vmax=float(off.max()) if len(off) else None)
    ax1.set_title("distance after alignment (ordered by clustering)")
    ax1.set_xlabel("network")
    ax1.set_ylabel("network")
    fig.colorbar(im, ax=ax1, fraction=0.046)
    xy = classical_mds(dist).numpy()
    if labels is not None:
        for name in dict.fromkeys(labels):
            pick = [k for k, lab in enumerate(labels) if lab == name]
            ax2.scatter(xy[pick, 0], xy[pick, 1], s=12, label=name)
        ax2.legend(fontsize=7, markerscale=1.5)
    else:
        sc = ax2.scatter(xy[:, 0], xy[:, 1], c=None if color is None else list(color), s=12, cmap="plasma")
        if color is not None:
            fig.colorbar(sc, ax=ax2, fraction=0.046, label=color_label)
    ax2.set_title("2-D map (classical MDS)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
