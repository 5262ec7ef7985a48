"""Command lines generated from a dataclass config, with named presets and JSON config files.

The entry point owns its typed config (a ``@dataclass`` whose fields carry defaults); this module
turns it into a command line and back, so no flag is declared twice. Precedence, weakest first:
the dataclass defaults, a named preset (``--preset``), a JSON file (``--config FILE``, e.g. a run's
own ``config.json``), then the flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def read_config_file(path: str | Path, cls: type, derived: Sequence = (), upgrade: Callable | None = None) -> dict:
    """The fields of ``cls`` set by a JSON file.

    Args:
        path: a JSON object of field values.
        cls: the config dataclass.
        derived: keys the program itself writes next to the fields (ignored when read back).
        upgrade: a function that renames the old keys of the file's dict (e.g.
            :func:`gnn_align.config.upgrade_keys`), applied first.

    Raises:
        SystemExit: an unreadable file, or a key that is neither a field nor derived (named).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: --config {path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: --config {path}: expected a JSON object of config fields")
    if upgrade is not None:
        try:
            data = upgrade(data)
        except ValueError as e:
            raise SystemExit(f"error: --config {path}: {e}") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields - set(derived))
    if unknown:
        raise SystemExit(f"error: --config {path}: unknown field(s) {', '.join(unknown)}")
    return {k: v for k, v in data.items() if k in fields}


def parse_dataclass_args(cls: type, argv: Sequence | None = None, presets: Mapping | None = None,
                         derived: Sequence = (), description: str = "", upgrade: Callable | None = None):
    """Build ``cls`` from a command line with one ``--field-name`` flag per dataclass field.

    Args:
        cls: the config dataclass (bool fields become switches: --name and --no-name).
        argv: the arguments (``None``: ``sys.argv[1:]``).
        presets: named dicts of field defaults, chosen with ``--preset NAME``.
        derived: keys of a config file to ignore (see :func:`read_config_file`).
        description: the ``--help`` text.
        upgrade: renames the old keys of a config file (see :func:`read_config_file`).
    """
    presets = dict(presets or {})
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(presets) or None, default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    defaults = dataclasses.asdict(cls()) | presets.get(known.preset, {})
    if known.config:
        defaults |= read_config_file(known.config, cls, derived, upgrade)
    parser = argparse.ArgumentParser(description=description)
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help="start from a named set of defaults: " + ", ".join(sorted(presets)))
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="JSON file of config fields (e.g. a run's config.json); flags still win")
    for f in dataclasses.fields(cls):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=defaults[f.name])
        else:
            parser.add_argument(flag, type=type(f.default), default=defaults[f.name])
    args = vars(parser.parse_args(argv))
    args.pop("preset", None)
    args.pop("config")
    return cls(**args)
