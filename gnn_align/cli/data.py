"""``--data``: a built-in task or the user's own data file, checked against ``--model``.

Data files hold inputs ``x`` and optionally labels ``y``: ``.npy`` (inputs only), ``.npz`` (arrays
``x``, ``y``), ``.pt``/``.pth`` (``torch.load(weights_only=True)``: a tensor, an ``(x, y)`` pair or a
dict with ``x``/``y``), ``.safetensors`` (tensors ``x``, ``y``) and ``.csv`` (numbers; a column named
``label`` or ``y`` holds the labels). Nothing is unpickled. A file is used whole, as training and as
evaluation data. Every problem is a :class:`GNNAlignError` naming the file (and the key or line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import GNNAlignError

DATA_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors", ".csv")


@dataclass
class Data:
    """What a command needs of ``--data`` (the fields of :class:`gnn_align.tasks.Task` it uses)."""

    name: str
    x_train: object
    y_train: object | None
    x_test: object
    y_test: object | None
    loss: str


def is_data_file(name: str) -> bool:
    """Whether ``--data name`` names a file rather than a built-in task."""
    p = Path(name)
    return p.suffix.lower() in DATA_SUFFIXES or p.exists() or "/" in name


def load_data(name: str) -> Data:
    """The built-in task ``name``, or the data file ``name``."""
    if not is_data_file(name):
        from ..tasks import load_task

        try:
            t = load_task(name)
        except (KeyError, ValueError) as e:
            raise GNNAlignError(f"--data {name}: {e} (or name a data file: {', '.join(DATA_SUFFIXES)})") from None
        return Data(name, t.x_train, t.y_train, t.x_test, t.y_test, t.loss)
    return _from_file(Path(name))


def _from_file(path: Path) -> Data:
    import numpy as np
    import torch

    from ..models import _readable_file

    _readable_file(path, "data file")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise GNNAlignError(f"--data {path}: unknown data file type '{path.suffix}' (use {', '.join(DATA_SUFFIXES)})")
    try:
        if suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z.files:
                    raise GNNAlignError(f"--data {path}: no array 'x' (the inputs); it holds {sorted(z.files)}")
                x, y = z["x"], (z["y"] if "y" in z.files else None)
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            z = load_file(str(path))
            if "x" not in z:
                raise GNNAlignError(f"--data {path}: no tensor 'x' (the inputs); it holds {sorted(z)}")
            x, y = z["x"], z.get("y")
        elif suffix == ".csv":
            x, y = _csv(path)
        else:
            from ..models import _torch_load

            x, y = _unpack(path, _torch_load(path))
    except GNNAlignError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/safetensors raise many types on bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GNNAlignError(f"--data {path}: not a readable {suffix} data file ({first})") from None
    x = _tensor(path, "x", x)
    y = None if y is None else _tensor(path, "y", y)
    if x.ndim < 2 or x.shape[0] == 0:
        raise GNNAlignError(f"--data {path}: inputs x have shape {tuple(x.shape)}; expected (examples, features...) "
                            "with at least one example")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise GNNAlignError(f"--data {path}: inputs x contain NaN or Inf values")
    loss = "ce"
    if y is not None:
        if y.shape[0] != x.shape[0]:
            raise GNNAlignError(f"--data {path}: {x.shape[0]} inputs x but {y.shape[0]} labels y")
        if not bool(torch.isfinite(y.double()).all()):
            raise GNNAlignError(f"--data {path}: labels y contain NaN or Inf values")
        if y.ndim == 1 and (not y.is_floating_point() or bool((y == y.round()).all())):
            y = y.long()
            if int(y.min()) < 0:
                raise GNNAlignError(f"--data {path}: class labels y must be >= 0 (found {int(y.min())})")
        else:
            y, loss = y.float(), "mse"
    return Data(str(path), x, y, x, y, loss)


def _tensor(path: Path, key: str, value):
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise GNNAlignError(f"--data {path}: '{key}' has dtype {value.dtype}; expected numbers")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise GNNAlignError(f"--data {path}: '{key}' is a {type(value).__name__}, not an array of numbers")
    if value.is_complex() or value.dtype == torch.bool:
        raise GNNAlignError(f"--data {path}: '{key}' has dtype {value.dtype}; expected real numbers")
    return value


def _unpack(path: Path, obj) -> tuple:
    """(x, y) from what a ``.pt`` data file holds: a tensor, an (x, y) pair or a dict with x/y."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    if isinstance(obj, dict):
        if "x" not in obj:
            raise GNNAlignError(f"--data {path}: no key 'x' (the inputs); it holds {sorted(map(str, obj))}")
        return obj["x"], obj.get("y")
    raise GNNAlignError(f"--data {path}: holds a {type(obj).__name__}; expected a tensor of inputs, an (x, y) pair "
                        "or a dict with keys x and y")


def _csv(path: Path) -> tuple:
    """(inputs, labels or None) of a numeric CSV file with an optional header row."""
    import csv

    import numpy as np

    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise GNNAlignError(f"--data {path}: empty CSV file")

    def numeric(row):
        try:
            [float(c) for c in row]
            return True
        except ValueError:
            return False

    header = None if numeric(rows[0]) else [c.strip().lower() for c in rows[0]]
    body = rows if header is None else rows[1:]
    width = len(rows[0])
    values = []
    for i, row in enumerate(body, start=1 if header is None else 2):
        if len(row) != width:
            raise GNNAlignError(f"--data {path}: line {i} has {len(row)} columns, expected {width}")
        try:
            values.append([float(c) for c in row])
        except ValueError:
            raise GNNAlignError(f"--data {path}: line {i} holds a value that is not a number") from None
    table = np.asarray(values, dtype=np.float64).reshape(len(values), width)
    label = next((header.index(n) for n in ("label", "y") if header and n in header), None)
    if label is None:
        return table.astype(np.float32), None
    return np.delete(table, label, axis=1).astype(np.float32), table[:, label]


def expected_input(module) -> str:
    """The input shape (per example) ``module`` expects, from its first Linear/Conv layer, in words."""
    from torch import nn

    first = next((m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if isinstance(first, nn.Linear):
        return f"({first.in_features},)"
    if first is not None:
        dims = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "D, H, W"}[type(first)]
        return f"({first.in_channels}, {dims})"
    return "another shape"


def check_fits(module, data: Data, arch: str) -> None:
    """Run ``module`` on two examples of ``data`` (cast to the module's dtype); one line naming both
    shapes when the inputs do not fit, or when class labels exceed the module's outputs."""
    import torch

    dtype = next((p.dtype for p in module.parameters()), torch.get_default_dtype())
    x = data.x_train[:2].to(dtype)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception:  # noqa: BLE001 - shape errors surface as RuntimeError, fx or index errors
        raise GNNAlignError(f"--data {data.name}: inputs of shape {tuple(data.x_train.shape[1:])} per example do not "
                            f"fit --model {arch}, which expects {expected_input(module)}") from None
    finally:
        module.train(was)
    if data.loss == "ce" and data.y_train is not None:
        classes = out.shape[-1] if out.ndim >= 2 else 1
        top = int(torch.cat([data.y_train, data.y_test]).max())
        if top >= classes:
            raise GNNAlignError(f"--data {data.name}: class labels go up to {top}, but --model {arch} has "
                                f"{classes} outputs (is it the task the model was trained on?)")
    elif data.loss == "mse" and data.y_train is not None and tuple(data.y_train.shape[1:]) != tuple(out.shape[1:]):
        raise GNNAlignError(f"--data {data.name}: targets of shape {tuple(data.y_train.shape[1:])} per example, but "
                            f"--model {arch} outputs {tuple(out.shape[1:])}")
    if data.x_train.dtype != dtype:
        data.x_train, data.x_test = data.x_train.to(dtype), data.x_test.to(dtype)
