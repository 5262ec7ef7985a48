"""Package a train.py run as a shipped aligner: ``python -m gnn_align.pretrained RUN [--name NAME]``.

Copies the run's best weights to ``gnn_align/pretrained/NAME.safetensors`` and writes ``NAME.json``:
the run's config, the command that trained it, and the signature of every architecture of its
training zoo (what :func:`gnn_align.pretrained.coverage_problems` checks new models against).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..io import atomic_write, write_json
from ..zoo import ModelZoo
from . import HERE, merge_signatures, signature


def main(argv: list | None = None) -> None:
    """The command line of ``python -m gnn_align.pretrained`` (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished train.py run folder")
    p.add_argument("--name", default="mixed", help="name of the shipped aligner (default mixed)")
    p.add_argument("--command", required=True, help="the train.py command that produced the run (stored)")
    args = p.parse_args(argv)
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())
    zoo = ModelZoo(str(Path(cfg["zoo_root"]) / cfg["zoo"]), split="train", log=False)
    sigs = []
    for m, member in enumerate(zoo.members):
        if not member.get("heldout"):
            sig = signature(zoo.spec(m))
            sig["activation"] = member.get("activation", "relu")
            sigs.append(sig)
    trained = merge_signatures(sigs)
    meta = {"name": args.name, "command": args.command, "config": cfg,
            "zoo": {"name": zoo.manifest["name"], "version": zoo.manifest["version"],
                    "members": [m["name"] for m in zoo.members if not m.get("heldout")]},
            "trained_on": trained}
    atomic_write(HERE / f"{args.name}.safetensors", lambda tmp: shutil.copyfile(run / "aligner.safetensors", tmp))
    write_json(HERE / f"{args.name}.json", meta)
    print(f"wrote {HERE / args.name}.safetensors and .json; trained on: {json.dumps(trained)}")


if __name__ == "__main__":
    main()
