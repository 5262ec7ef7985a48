"""Reports of studies and benchmarks: the one Markdown table builder and the one report writer.

A study's result is a JSON-able dict; its report is ``STEM.json`` (the result), ``STEM.md`` (the
Markdown a human reads, tables built by :func:`markdown_table`) and, when the study draws one, a
PNG of a matplotlib figure. :func:`write_report` writes all of them atomically (:mod:`gnn_align.io`),
so an interrupted run leaves every file either as it was or complete.

Nothing here imports torch or matplotlib: the command line uses :func:`markdown_table` for the
tables it prints, and figures come in already drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ..io import atomic_write, write_json, write_text


def _row(cells: Sequence) -> str:
    # an empty cell is written "| |" (a blank corner cell), every other one "| text |"
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def markdown_table(header: Sequence, rows: Iterable[Sequence]) -> str:
    r"""A Markdown (GitHub) table: the header, the ``|---|`` rule, one line per row.

    Cells are written with ``str``, as given: format numbers before (``f"{x:.4f}"``) and escape a
    ``|`` inside a cell (``\|``) where one can occur.

    Args:
        header: the column names.
        rows: the rows, each a sequence of cells (normally as many as ``header``).

    Returns:
        The table's lines joined by ``"\n"``, without a trailing newline.

    Example:
        >>> print(markdown_table(["method", "barrier"], [["wm", "0.0123"], ["gnn", "0.0101"]]))
        | method | barrier |
        |---|---|
        | wm | 0.0123 |
        | gnn | 0.0101 |
    """
    return "\n".join([_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)])


def write_png(path: str | Path, figure, dpi: int = 100) -> Path:
    """Save the matplotlib ``figure`` to ``path`` as a PNG, atomically; returns the path.

    The figure is left open (close it with ``plt.close(figure)`` when done).
    """
    path = Path(path)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
    return path


def write_report(out_dir: str | Path, stem: str, result: dict, markdown: str, figure=None, *,
                 figure_name: str | None = None, echo: bool = False) -> list:
    """Write a study's ``STEM.json``, ``STEM.md`` and (given a figure) ``STEM.png`` to ``out_dir``.

    Each file is written atomically, in that order; the folder is created when missing.

    Args:
        out_dir: the output folder.
        stem: the file stem (``results``, ``warmstart``, ...).
        result: the study's result, written as indented JSON (:func:`gnn_align.io.write_json`).
        markdown: the Markdown report, written as given.
        figure: a matplotlib figure, saved as a PNG (100 dpi) and then closed; ``None``: no PNG.
        figure_name: the PNG's file name (default ``STEM.png``).
        echo: print the Markdown and the paths written.

    Returns:
        The paths written: JSON, Markdown, then the PNG when there was a figure.
    """
    out = Path(out_dir)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    write_json(paths[0], result)
    write_text(paths[1], markdown)
    if figure is not None:
        import matplotlib.pyplot as plt  # loaded already: the caller drew the figure

        paths.append(write_png(out / (figure_name or f"{stem}.png"), figure))
        plt.close(figure)
    if echo:
        print(markdown)
        print("wrote " + ", ".join(str(p) for p in paths))
    return paths


def curves_figure(lambdas, curves: dict, ylabel: str, title: str, xlabel: str = "λ  (0: A, 1: aligned B)"):
    """Interpolation curves of several methods: ``curves`` maps a name to ``(mean, std or None)``.

    With ``naive`` among several methods a second panel zooms on the others, whose curves the naive
    one would otherwise squash into one band. Returns the matplotlib figure.
    """
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zoom = "naive" in curves and len(curves) > 1
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(10 if zoom else 6, 4), squeeze=False)
    panels = [(axes[0, 0], list(curves), title)]
    if zoom:
        panels.append((axes[0, 1], [n for n in curves if n != "naive"], "aligned methods (zoomed)"))
    for ax, names, name in panels:
        for k, n in enumerate(curves):
            if n not in names:
                continue
            mean, std = curves[n]
            mean = torch.as_tensor(mean, dtype=torch.float64)
            ax.plot(lambdas, mean, marker="o", ms=3, label=n, color=f"C{k}")
            if std is not None:
                std = torch.as_tensor(std, dtype=torch.float64)
                ax.fill_between(lambdas, mean - std, mean + std, alpha=0.2, color=f"C{k}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    return fig
