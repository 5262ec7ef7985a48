"""One table of every measured benchmark under benchmarks/: mean Deep-Align barrier per zoo and method,
then the speed and planted-accuracy figures. Writes benchmarks/SUMMARY.md (atomically) and prints it.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

from gnn_align.zoo.storage import atomic_write

HERE = Path(__file__).parent
METHODS = ("naive", "wm", "am", "sinkhorn", "gnn", "gnn+wm", "gnn+sinkhorn")


def _load(pattern: str, name: str) -> dict:
    return {p.parent.name.split("-", 1)[1]: json.loads(p.read_text()) for p in sorted(HERE.glob(f"{pattern}/{name}"))}


def summary() -> str:
    bench = _load("bench-*", "results.json")
    lines = ["Mean Deep-Align barrier on held-out test pairs (lower is better; – not run). Full tables, "
             "seconds and the data each method used: `benchmarks/bench-ZOO/results.md`.", "",
             "| zoo | pairs | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for zoo, r in bench.items():
        cells = [f"{r['methods'][m]['barrier_deepalign']['mean']:.4f}" if m in r["methods"] else "–" for m in METHODS]
        lines.append(f"| {zoo} ({r.get('loss', 'ce')}) | {r['pairs']} | " + " | ".join(cells) + " |")
    speed = _load("speed-*", "speed.json")
    if speed:
        lines += ["", "| zoo | torch threads | WM s/pair | gnn s/pair (batch 1) | WM pairs/s | gnn pairs/s (batched) |",
                  "|---|---|---|---|---|---|"]
        for zoo, s in speed.items():
            lines.append(f"| {zoo} | {s['torch_threads']} | {s['wm_median_seconds'] * 1e3:.1f} ms | "
                         f"{s['gnn_median_seconds'] * 1e3:.1f} ms | {s['wm_pairs_per_second']:.1f} | "
                         f"{s['gnn_batched_pairs_per_second']:.1f} (batch {s['batch_size']}) |")
    planted = _load("planted-*", "planted.json")
    if planted:
        lines += ["", "| zoo | planted test networks | neuron accuracy | networks recovered exactly |", "|---|---|---|---|"]
        for zoo, p in planted.items():
            lines.append(f"| {zoo} | {p['pairs']} | {p['neuron_accuracy']:.5f} | {p['networks_exact']:.3f} |")
    warm = _load("warmstart-*", "warmstart.json")
    if warm:
        lines += ["", "| zoo | pairs | WM barrier | Sinkhorn steps to reach it from: identity | wm | gnn |",
                  "|---|---|---|---|---|---|"]
        for zoo, w in warm.items():
            steps = [w["steps_to_wm"].get(k) for k in ("identity", "wm", "gnn")]
            lines.append(f"| {zoo} ({w.get('loss', 'ce')}) | {w['pairs']} | {w['wm_barrier']:.4f} | "
                         + " | ".join("not reached" if s is None else str(s) for s in steps) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = summary()
    atomic_write(HERE / "SUMMARY.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
