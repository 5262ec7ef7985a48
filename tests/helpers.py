"""Helpers shared by several test modules (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from gnn_align.config import AlignerConfig
from gnn_align.io import write_json
from gnn_align.models import build_model, example_input
from gnn_align.trace import spec_from_module
from gnn_align.zoo import init_states, stable_seed, write_shard

REPO = Path(__file__).resolve().parents[1]

#: the aligner configuration the memory tests estimate for (the shipped aligner's, at width 32)
SHIPPED = AlignerConfig(hidden=32, num_layers=0, edge_dim=10, edge_hidden=4, probes=128)

#: ``train.py`` settings of a tiny run: 2 epochs of 2 steps, a width-8 encoder (about a second)
TINY_RUN = {"hidden": 8, "num_layers": 1, "edge_hidden": 4, "probes": 8, "epochs": 2, "steps_per_epoch": 2,
            "planted_per_step": 2, "unlabelled_per_step": 1, "val_planted": 2, "val_pairs": 1, "bench_pairs": 0}

#: marks a fenced block of a Markdown file as a command the tests run: ``<!-- readme-test: fast -->``
#: (run by the fast set) or ``<!-- readme-test: slow -->`` (the slow set), on the line before the fence
_BLOCK = re.compile(r"<!-- readme-test: (fast|slow) -->\n```(\w+)\n(.*?)\n```", re.DOTALL)


def markdown_links(text: str) -> list:
    """The targets of the inline Markdown links ``[text](target)`` in ``text``."""
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


def marked_blocks(text: str) -> list:
    """``(speed, language, code)`` of every fenced block marked ``<!-- readme-test: SPEED -->``, in order."""
    return _BLOCK.findall(text)


def repo_env() -> dict:
    """The environment for a subprocess that must import this checkout's ``gnn_align`` (not an installed
    copy) and find the ``gnn-align`` entry point next to the running Python."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_block(language: str, code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one fenced block as written: ``python`` blocks with this interpreter, ``bash`` blocks with
    ``bash -e`` (every line must succeed), in ``cwd``."""
    if language == "python":
        cmd = [sys.executable, "-c", code]
    elif language == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        raise ValueError(f"cannot run a {language!r} block")
    return subprocess.run(cmd, cwd=cwd, env=repo_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def train_flags(zoo_root: tuple, out, **kw) -> dict:
    """``train.Config`` fields of a :data:`TINY_RUN` on the zoo ``zoo_root = (root, name)``, into ``out``."""
    root, name = zoo_root
    return {"zoo": name, "zoo_root": str(root), "out": str(out), **TINY_RUN, **kw}


def meta_spec(arch: str):
    """The spec of an architecture string built on the ``meta`` device (shapes without storage)."""
    with torch.device("meta"):
        module = build_model(arch)
        return spec_from_module(module, example_input(module, 2))


MLP_ARCH = {"family": "mlp", "in_features": 5, "hidden": [4, 6], "out_features": 3}
RESNET_ARCH = {"family": "resnet", "in_channels": 1, "stem_channels": 3, "channels": [3, 4],
               "num_classes": 3, "dim": 2}
# member -> (shard sizes, split of each network)
LAYOUT = [([4, 3], ["train", "train", "val", "test", "train", "train", "test"]),
          ([4], ["train", "train", "val", "test"])]
N_NETWORKS = 11


def write_tiny_zoo(root, mlp_activation="relu", recipe_note="a"):
    """A 2-member zoo of untrained networks in the build's folder format; returns the stacked states."""
    mlp_arch = dict(MLP_ARCH, **({} if mlp_activation == "relu" else {"activation": mlp_activation}))
    members = [
        {"name": "tiny-mlp", "arch": mlp_arch, "task": "toy", "input_shape": [5], "loss": "ce",
         "activation": mlp_activation, "heldout": False},
        {"name": "tiny-resnet", "arch": RESNET_ARCH, "task": "toy-img", "input_shape": [1, 6, 6],
         "loss": "ce", "activation": "relu", "heldout": False},
    ]
    shards, networks, states = [], [], []
    for mi, (sizes, splits) in enumerate(LAYOUT):
        seeds = [stable_seed("tiny", mi, k) for k in range(sum(sizes))]
        stacked = {k: v.float() if v.is_floating_point() else v
                   for k, v in init_states(members[mi]["arch"], seeds).items()}
        states.append(stacked)
        start = 0
        for n in sizes:
            name = f"shard-{len(shards):05d}.safetensors"
            part = {k: v[start:start + n] for k, v in stacked.items()}
            digest = write_shard(os.path.join(root, name), part, {"member": mi})
            for r in range(n):
                k = start + r
                networks.append({"id": len(networks), "member": mi, "shard": len(shards), "row": r,
                                 "seed": seeds[k], "split": splits[k], "train_loss": 1.0 + k,
                                 "test_loss": 2.0 + k, "train_acc": 0.5, "test_acc": 0.25})
            shards.append({"file": name, "member": mi, "sha256": digest, "num_networks": n})
            start += n
    write_json(os.path.join(root, "manifest.json"),
               {"name": "tiny", "version": 1, "recipe": {"name": "tiny", "note": recipe_note},
                "members": members, "shards": shards, "networks": networks})
    return states


def original_state(states, net_id):
    """State dict of manifest id ``net_id`` from write_tiny_zoo's stacked states."""
    n0 = sum(LAYOUT[0][0])
    m, row = (0, net_id) if net_id < n0 else (1, net_id - n0)
    return {k: v[row] for k, v in states[m].items()}


class MarkerPickle:
    """A pickle payload whose *unpickling* creates the file ``marker``: put it in a ``torch.save``d
    dict to prove that a loader never ran pickled code (the marker must not exist afterwards)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))
