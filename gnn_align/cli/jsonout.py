"""Strict JSON for ``--json``: NaN and infinities become ``null``, listed in ``"nan_fields"``.

``json.dumps`` writes ``NaN``/``Infinity``, which are not JSON and which most parsers refuse; every
JSON the CLI prints or writes goes through :func:`dumps_json` instead.
"""

from __future__ import annotations

import json
import math


def finite(obj, path: str = "", found: list | None = None):
    """``obj`` with every NaN/Inf float (also inside dicts, lists and tuples) replaced by ``None``;
    each replaced value's path (``curve.loss[3]``) and value (``"nan"``, ``"inf"``, ``"-inf"``) is
    appended to ``found``."""
    found = [] if found is None else found
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append({"field": path or ".", "value": str(obj)})
        return None
    if isinstance(obj, dict):
        return {k: finite(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def strict(obj):
    """:func:`finite` of ``obj``; a dict gets ``"nan_fields"`` (the fields that were NaN or infinite
    and are ``null`` here: the computation produced no finite number for them, e.g. a diverging loss)
    when there were any."""
    found: list = []
    clean = finite(obj, found=found)
    if found and isinstance(clean, dict):
        clean["nan_fields"] = found
    elif found:
        clean = {"result": clean, "nan_fields": found}
    return clean


def dumps_json(obj, indent: int | None = 1) -> str:
    """``json.dumps`` of :func:`strict` ``(obj)``, refusing anything that is not strict JSON."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False, default=str)
