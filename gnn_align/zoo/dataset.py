"""A built model zoo as a PyTorch Geometric dataset of network graphs.

Memory: a zoo holds thousands of networks with tens of thousands of edges each, so the graphs are
never materialised together. :meth:`ModelZoo.process` gathers the stacked state tensors of the
requested split from the shards (verifying their sha256) into one processed file; :meth:`ModelZoo.get`
draws one network's :class:`~gnn_align.graph.NetGraph` on demand.

Integrity: the processed file is named by a key over the manifest's shard checksums and holds a
checksum of its own contents. Every load checks both: the contents against that checksum (a flipped
byte in the cache) and the shards the view draws from against the manifest's sha256 (a shard changed
after the cache was made), so neither is served silently.
"""

from __future__ import annotations

import copy
import json
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch_geometric.data import InMemoryDataset

from ..archs import build_arch
from ..errors import check_keys
from ..graph import NetGraph, to_graph
from ..io import atomic_write, content_sha256, verified_sha256
from ..spec import PermutationSpec
from ..trace import spec_from_module
from .storage import ZooError, load_manifest, read_shard

#: layout version of the processed file; part of its name, so a layout change never reads old caches
#: (3: the file holds the sha256 of its own contents)
PROCESSED_FORMAT = 3


def zoo_cache_key(manifest: dict) -> str:
    """8 hex digits (CRC32) of the JSON of the zoo's recipe, members and shard checksums."""
    blob = json.dumps({"recipe": manifest.get("recipe"), "members": manifest["members"],
                       "shards": [sh.get("sha256") for sh in manifest["shards"]]},
                      sort_keys=True, default=str)
    return f"{zlib.crc32(blob.encode()) & 0xFFFFFFFF:08x}"


class ModelZoo(InMemoryDataset):
    """The networks of a built zoo (one split, or all), each served as a :class:`NetGraph`.

    Args:
        root: a built zoo folder (``manifest.json`` + shards, see :mod:`gnn_align.zoo.storage`).
        split: ``"train"``, ``"val"``, ``"test"``, ``"heldout"``, or ``None`` for every network.
        edge_dim: edge feature width passed to :func:`~gnn_align.to_graph` (give a common value to
            batch members with different kernel sizes; default: each network's longest kernel).
        transform: applied to every graph on access (PyG convention).
        force_reload: re-process even if a processed file exists.
        log: let PyG print "Processing..." while the cache is built.

    Index ``i`` of the dataset (``zoo[i]``, :meth:`state_dict`, :meth:`record`) is a position in this
    view: after ``zoo[2:5]`` or ``zoo.shuffle()`` it refers to the subset's order. Networks are in
    manifest (``id``) order in a fresh view.

    Each graph carries ``network_id`` (the manifest id) and ``member`` (index into :attr:`members`).

    Implementation: this subclasses :class:`~torch_geometric.data.InMemoryDataset` but stores state
    tensors rather than collated graphs: ``len()``/``get()`` are overridden (``get`` builds the graph
    lazily and caches nothing), ``copy()`` gathers the selected networks' tensors instead of collating
    graphs, and ``to()`` supports only the CPU. Indexing, slicing, index tensors, iteration and
    ``shuffle()`` come unchanged from PyG's ``Dataset``. The processed file is a plain dict saved with
    ``torch.save`` and read with ``weights_only=True``; its name encodes the zoo name, version, split
    and :func:`zoo_cache_key`, so a rebuilt or changed zoo never reads a stale cache.
    """

    def __init__(self, root: str | Path, split: str | None = None, edge_dim: int | None = None,
                 transform: Callable | None = None, *, force_reload: bool = False, log: bool = True):
        root = str(Path(root).expanduser())
        self._manifest = load_manifest(root)
        self.split = split
        self.edge_dim = edge_dim
        self.name = str(self._manifest["name"])
        self.version = self._manifest["version"]
        self._specs: dict = {}
        processed = Path(root) / "processed"
        fresh = not processed.exists()
        try:
            super().__init__(root, transform, log=log, force_reload=force_reload)
        except ZooError:
            if fresh and processed.is_dir() and not any(processed.iterdir()):
                processed.rmdir()  # PyG creates it before process(): a refused zoo is left as it was
            raise
        self._load(self.processed_paths[0])

    # -- PyG dataset plumbing -------------------------------------------------------------------
    @property
    def raw_file_names(self) -> list:
        return []

    @property
    def processed_dir(self) -> str:
        return str(Path(self.root) / "processed")

    @property
    def processed_file_names(self) -> list:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        tag = "all" if self.split is None else re.sub(r"[^A-Za-z0-9_.-]", "_", str(self.split))
        return [f"{safe}-v{self.version}-{tag}-{zoo_cache_key(self._manifest)}-p{PROCESSED_FORMAT}.pt"]

    def process(self) -> None:
        man, root = self._manifest, Path(self.root)
        members, shards, nets = man["members"], man["shards"], man["networks"]
        recs = [r for r in nets if self.split is None or r.get("split") == self.split]
        if not recs:
            present = sorted({str(r.get("split")) for r in nets})
            raise ZooError(f"{root}: zoo '{self.name}' has no networks in split '{self.split}' "
                           f"(splits present: {', '.join(present)})")
        wanted: dict = {}  # shard index -> [(position, row)]
        for pos, r in enumerate(recs):
            m, s = r["member"], r["shard"]
            if not 0 <= m < len(members):
                raise ZooError(f"{root / 'manifest.json'}: network {r['id']} names member {m}, "
                               f"the zoo has {len(members)}")
            if shards[s].get("member", m) != m:
                raise ZooError(f"{root / 'manifest.json'}: network {r['id']} of member {m} points at "
                               f"shard {shards[s]['file']} of member {shards[s]['member']}")
            wanted.setdefault(s, []).append((pos, int(r["row"])))
        chunks: dict = {}  # member -> list of (positions, {key: tensor})
        for s in sorted(wanted):
            sh = shards[s]
            path = root / sh["file"]
            data = read_shard(path, sh.get("sha256"))
            m = recs[wanted[s][0][0]]["member"]
            check_keys(data, self.spec(m).axes, f"{path}: keys do not match member '{members[m].get('name', m)}'",
                       "the member", ZooError)
            n = next(iter(data.values())).shape[0]
            rows = [row for _, row in wanted[s]]
            if max(rows) >= n or min(rows) < 0:
                raise ZooError(f"{path}: the manifest asks for row {max(rows)}, the shard holds {n} networks")
            idx = torch.tensor(rows, dtype=torch.long)
            picked = {k: v.index_select(0, idx).contiguous() for k, v in data.items()}
            chunks.setdefault(m, []).append(([p for p, _ in wanted[s]], picked))
            del data
        member_of = torch.tensor([r["member"] for r in recs], dtype=torch.long)
        row_of = torch.empty(len(recs), dtype=torch.long)
        states: list = [{} for _ in members]
        for m, parts in chunks.items():
            positions = [p for ps, _ in parts for p in ps]
            row_of[torch.tensor(positions)] = torch.arange(len(positions))
            states[m] = {k: torch.cat([t[k] for _, t in parts]) for k in parts[0][1]}
        out = {"format": PROCESSED_FORMAT, "name": self.name, "version": self.version, "split": self.split,
               "cache_key": zoo_cache_key(man), "members": members, "records": recs,
               "member": member_of, "row": row_of, "states": states}
        out["sha256"] = content_sha256(out)
        atomic_write(Path(self.processed_paths[0]), lambda tmp: torch.save(out, tmp))

    def _load(self, path: str) -> None:
        try:
            blob = torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable cache is reported by file name
            raise ZooError(f"{path}: cannot read processed zoo file ({e}); delete it or pass "
                           "force_reload=True") from None
        if not isinstance(blob, dict) or blob.get("format") != PROCESSED_FORMAT or \
                blob.get("cache_key") != zoo_cache_key(self._manifest):
            raise ZooError(f"{path}: processed file does not belong to this zoo; delete it or pass "
                           "force_reload=True")
        digest = blob.pop("sha256", None)
        if digest != content_sha256(blob):
            raise ZooError(f"{path}: checksum mismatch (the processed cache changed since it was written); "
                           "delete it or pass force_reload=True")
        self._verify_shards(blob["records"])
        self._members = blob["members"]
        self._records = blob["records"]
        self._member = blob["member"]
        self._member_list = self._member.tolist()
        self._row = blob["row"]
        self._states = blob["states"]

    def _verify_shards(self, records: list) -> None:
        """Check the shards the cached networks came from against the manifest's sha256."""
        shards, root = self._manifest["shards"], Path(self.root)
        for s in sorted({int(r["shard"]) for r in records}):
            path, expected = root / shards[s]["file"], shards[s].get("sha256")
            if expected is None:
                continue
            try:
                ok = verified_sha256(path) == expected
            except OSError as e:
                raise ZooError(f"{path}: cannot read shard ({e.strerror})") from None
            if not ok:
                raise ZooError(f"{path}: checksum mismatch (file changed or truncated since the build); "
                               "rebuild the zoo (`python -m datasets build`)")

    def len(self) -> int:
        return len(self._records)

    def get(self, idx: int) -> NetGraph:
        m = self._member_list[idx]
        graph = to_graph(self._state(idx), self.spec(m), edge_dim=self.edge_dim)
        graph.network_id = int(self._records[idx]["id"])
        graph.member = int(m)
        return graph

    def copy(self, idx=None) -> ModelZoo:
        """A dataset holding its own copy of the tensors of the selected networks (all by default)."""
        sel = list(self.indices() if idx is None else self.index_select(idx).indices())
        out = copy.copy(self)
        out._indices = None
        out._data_list = None
        out._records = [self._records[i] for i in sel]
        out._member_list = [self._member_list[i] for i in sel]
        out._member = torch.tensor(out._member_list, dtype=torch.long)
        out._row = torch.empty(len(sel), dtype=torch.long)
        out._states = [{} for _ in self._members]
        for m in sorted(set(out._member_list)):
            pos = [p for p, mm in enumerate(out._member_list) if mm == m]
            rows = self._row[torch.tensor([sel[p] for p in pos], dtype=torch.long)]
            out._row[torch.tensor(pos)] = torch.arange(len(pos))
            out._states[m] = {k: v.index_select(0, rows).clone() for k, v in self._states[m].items()}
        return out

    def to(self, device) -> ModelZoo:
        if torch.device(device).type != "cpu":
            raise NotImplementedError("ModelZoo stays on the CPU; move batches of graphs instead")
        return self

    def __repr__(self) -> str:
        split = "all" if self.split is None else self.split
        return f"{type(self).__name__}('{self.name}' v{self.version}, split={split}, {len(self)} networks)"

    # -- access by position in this view --------------------------------------------------------
    def _state(self, i: int) -> dict:
        m, r = self._member_list[i], int(self._row[i])
        return {k: v[r] for k, v in self._states[m].items()}

    def _storage_index(self, idx: int) -> int:
        return self.indices()[idx]

    def state_dict(self, idx: int) -> dict:
        """The state dict of the ``idx``-th network of this view (a fresh copy, dtype as stored)."""
        return {k: v.clone() for k, v in self._state(self._storage_index(idx)).items()}

    def record(self, idx: int) -> dict:
        """The manifest record of the ``idx``-th network of this view (id, member, split, metrics)."""
        return dict(self._records[self._storage_index(idx)])

    def member_of(self, idx: int) -> int:
        """The member (architecture) index of the ``idx``-th network of this view."""
        return self._member_list[self._storage_index(idx)]

    @property
    def members(self) -> list:
        """The zoo's members (architecture, task, input shape, loss, activation), as in the manifest."""
        return self._members

    @property
    def network_ids(self) -> list:
        """Manifest ids of the networks of this view, in view order."""
        return [int(self._records[i]["id"]) for i in self.indices()]

    def member_index(self, name: str) -> int:
        """The index in :attr:`members` of the member called ``name``.

        Raises:
            ZooError: naming the zoo, the split and its members, when there is none."""
        names = [m["name"] for m in self.members]
        if name not in names:
            raise ZooError(f"zoo '{self.name}' ({self.root}): no member '{name}' in split '{self.split}'; "
                           f"members: {names}")
        return names.index(name)

    def indices_of(self, member: int | None = None) -> list:
        """Positions in this view of the networks of ``member`` (all positions for ``None``)."""
        return [p for p, i in enumerate(self.indices())
                if member is None or self._member_list[i] == member]

    def spec(self, member: int) -> PermutationSpec:
        """The :class:`PermutationSpec` (with structure) of a member, derived once and cached."""
        if member not in self._specs:
            mem = self._manifest["members"][member]
            module = build_arch(mem["arch"])
            self._specs[member] = spec_from_module(module, torch.zeros(2, *mem["input_shape"]))
        return self._specs[member]

    @property
    def manifest(self) -> dict:
        return self._manifest

