"""Models from files and strings: architecture specs, safe state-dict files, example inputs.

Model files are safetensors, or ``.pt``/``.pth`` state dicts read with ``torch.load(...,
weights_only=True)``: a file whose unpickling would build arbitrary objects (run code) is refused
before anything in it runs. An architecture is named by

* a built-in string: ``mlp:IN,H1,...,Hk,OUT`` (``mlp-ln:`` with LayerNorm), ``resmlp:IN,WIDTH,BLOCKS,OUT``,
  ``cnn1d:CIN,C1,...,Ck,CLASSES`` / ``cnn2d:...`` (3-wide kernels, global average pooling) and
  ``resnet1d:CIN,STEM,C1,...,Ck,CLASSES`` / ``resnet2d:...`` (BatchNorm);
* a JSON object ``{"family": ..., **kwargs}`` for :func:`gnn_align.archs.build_arch`;
* ``package.module:factory``, a function called with no arguments that returns the ``nn.Module``.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import pickle
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import archs
from .errors import GNNAlignError, StateDictError, check_keys
from .io import atomic_write


def _ints(name: str, text: str, least: int) -> list:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if len(vals) < least or min(vals, default=0) <= 0:
        raise GNNAlignError(f"architecture '{name}:{text}': expected at least {least} positive integers "
                            "separated by commas")
    return vals


def _builtin(family: str, text: str) -> nn.Module:
    if family in ("mlp", "mlp-ln"):
        v = _ints(family, text, 2)
        return archs.MLP(v[0], v[1:-1], v[-1], layernorm=family == "mlp-ln")
    if family == "resmlp":
        v = _ints(family, text, 4)
        if len(v) != 4:
            raise GNNAlignError(f"architecture 'resmlp:{text}': expected IN,WIDTH,BLOCKS,OUT")
        return archs.ResidualMLP(*v)
    if family in ("cnn1d", "cnn2d"):
        v = _ints(family, text, 3)
        return archs.CNN(v[0], v[1:-1], v[-1], dim=int(family[3]))
    v = _ints(family, text, 4)  # resnet1d / resnet2d
    return archs.ResNet(v[0], v[1], v[2:-1], v[-1], dim=int(family[6]))


BUILTIN_FAMILIES = ("mlp", "mlp-ln", "resmlp", "cnn1d", "cnn2d", "resnet1d", "resnet2d")


def build_model(arch: str) -> nn.Module:
    """The ``nn.Module`` named by ``arch`` (see the module docstring), in eval mode.

    Raises:
        GNNAlignError: naming ``arch`` when it is none of the accepted forms, or its factory fails.
    """
    arch = arch.strip()
    if arch.startswith("{"):
        try:
            return archs.build_arch(json.loads(arch)).eval()
        except (json.JSONDecodeError, ValueError) as e:
            raise GNNAlignError(f"architecture {arch}: {e}") from None
    family, sep, rest = arch.partition(":")
    if not sep:
        raise GNNAlignError(f"architecture '{arch}': expected FAMILY:SIZES (one of {', '.join(BUILTIN_FAMILIES)}), "
                            "a JSON object or package.module:factory")
    if family in BUILTIN_FAMILIES:
        return _builtin(family, rest).eval()
    try:
        factory = getattr(importlib.import_module(family), rest)
    except (ImportError, AttributeError) as e:
        raise GNNAlignError(f"architecture '{arch}': cannot import factory '{rest}' from module '{family}' ({e})") \
            from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise GNNAlignError(f"architecture '{arch}': the factory returned a {type(model).__name__}, not an nn.Module")
    return model.eval()


def _readable_file(path: Path, what: str = "file") -> None:
    """Raise :class:`GNNAlignError` naming ``path`` unless it is a regular file that can be opened:
    missing, a directory, a broken link or a symbolic link loop each get their own message."""
    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise GNNAlignError(f"{path}: symbolic link loop, not a {what}") from None
        if path.is_symlink():
            raise GNNAlignError(f"{path}: broken symbolic link (to {os.readlink(path)}), not a {what}") from None
        if e.errno == errno.ENOENT:
            raise GNNAlignError(f"{path}: file not found") from None
        raise GNNAlignError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise GNNAlignError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise GNNAlignError(f"{path}: not a regular file, not a {what}")
    if not os.access(path, os.R_OK):
        raise GNNAlignError(f"{path}: permission denied")


def _file_kind(path: Path) -> str:
    """``"zip"`` (torch's format), ``"pickle"`` (torch's legacy format), ``"safetensors"`` or
    ``"other"``, from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 28:
        return "safetensors"
    return "other"


def _pickled_globals(path: Path) -> list:
    """The ``module.name`` globals a torch zip file's pickle refers to, read with :mod:`pickletools`
    (nothing is unpickled); empty when they cannot be read."""
    import pickletools
    import zipfile

    names, strings = [], []
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return []
            for op, arg, _ in pickletools.genops(z.read(pkl)):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - a malformed archive or pickle: no names, the generic refusal
        return names
    return names


def load_state_file(path: str | Path) -> dict:
    """A state dict from a ``.safetensors`` file or a ``.pt``/``.pth`` file (``weights_only=True``).

    Raises:
        GNNAlignError: naming the file when it is missing (or a directory, a broken link, a link
            loop), truncated or corrupt, not a torch file at all, holds anything but tensors (a
            pickled ``nn.Module``: save its ``state_dict()``), or would need arbitrary unpickling
            (which is never attempted).
    """
    path = Path(path)
    _readable_file(path, "model file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types on bad headers
            hint = " (it is a torch file: name it .pt)" if _file_kind(path) in ("zip", "pickle") else ""
            raise GNNAlignError(f"{path}: not a readable safetensors file (truncated or corrupt?){hint}: "
                                f"{_first_line(e)}") from None
    elif path.suffix in (".pt", ".pth"):
        kind = _file_kind(path)
        if kind == "safetensors":
            raise GNNAlignError(f"{path}: not a torch file: it is a safetensors file (name it .safetensors)")
        if kind == "other":
            raise GNNAlignError(f"{path}: not a torch file (neither torch.save's zip nor its legacy format)")
        state = _torch_load(path, kind)
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
    else:
        raise GNNAlignError(f"{path}: unknown model file type '{path.suffix}' (use .safetensors, .pt or .pth)")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GNNAlignError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message without terminal escapes (or its type's name)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _torch_load(path: Path, kind: str = "zip"):
    """``torch.load(path, weights_only=True)`` with one-line errors naming ``path``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _pickled_globals(path) if kind == "zip" else []
        module = next((n for n in names if n.startswith("torch.nn.modules.")), None)
        if module is not None:
            raise GNNAlignError(f"{path}: refused: it holds a pickled nn.Module ({module}), which loading would "
                                "have to unpickle: save model.state_dict() instead") from None
        bad = re.search(r"GLOBAL ([\w.]+)", re.sub(r"\x1b\[[0-9;]*m", "", str(e)))
        raise GNNAlignError(f"{path}: refused: loading it would unpickle objects other than tensors "
                            f"(weights_only=True)" + (f": {bad.group(1)}" if bad else "")) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise GNNAlignError(f"{path}: not a readable torch file (truncated or corrupt?): {_first_line(e)}") from None


def save_state_file(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state`` to ``path`` (``.safetensors``, or ``.pt``/``.pth``) atomically, keeping the
    permissions of a file it replaces. The file is serialised in memory first, so a full disk
    raises ``OSError`` (``ENOSPC``) from the write itself and leaves no partial file."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(tensors)
    elif path.suffix in (".pt", ".pth"):
        buf = io.BytesIO()
        torch.save(tensors, buf)
        data = buf.getvalue()
    else:
        raise GNNAlignError(f"{path}: unknown model file type '{path.suffix}' (use .safetensors, .pt or .pth)")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def check_state(module: nn.Module, state: Mapping[str, torch.Tensor], name: str = "state dict") -> None:
    """Check that ``state`` fits ``module``: same keys, same shapes, real floating-point tensors where
    the architecture has them (integer buffers such as ``num_batches_tracked`` stay integer), values
    (not the meta device), finite.

    Raises:
        StateDictError: naming ``name`` and the first missing or unexpected key
            (:func:`~gnn_align.errors.check_keys`), the first key whose
            shape differs (with both shapes), an integer, bool or complex tensor in place of a float
            (with its dtype), a tensor on the meta device, or the first key holding NaN/Inf.
    """
    ref = module.state_dict()
    check_keys(state, ref, name, "the architecture")
    for k, v in ref.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise StateDictError(f"{name}: key '{k}' has shape {tuple(state[k].shape)}, the architecture "
                                 f"expects {tuple(v.shape)}")
    for k, v in ref.items():
        if v.is_floating_point() and not state[k].is_floating_point():
            raise StateDictError(f"{name}: key '{k}' has dtype {state[k].dtype}, the architecture expects a real "
                                 f"floating-point tensor ({v.dtype})")
    for k, v in state.items():
        if v.is_meta:
            raise StateDictError(f"{name}: key '{k}' is on the meta device (it holds no values): load real weights "
                                 "first")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise StateDictError(f"{name}: key '{k}' contains NaN or Inf values")


_TRY_SIZES = (8, 16, 28, 32, 40, 64, 224)


@torch.no_grad()
def example_input(module: nn.Module, batch: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random input batch that ``module`` accepts, found from its first Linear/Conv layer (for
    convolutions, the first spatial size in (8, 16, 28, 32, 40, 64, 224) that runs; for a module with
    ``nn.MultiheadAttention``, batch-first token sequences first: of a 3-D parameter's length (a
    positional embedding ``(1, T, E)``), then of those lengths).

    Raises:
        GNNAlignError: when no such input is found; pass one explicitly (``example_input=``).
    """
    first = next((m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))), None)
    dtype = next((p.dtype for p in module.parameters()), torch.get_default_dtype())
    if isinstance(first, nn.Linear):
        shapes = [(first.in_features,)]
        if any(isinstance(m, nn.MultiheadAttention) for m in module.modules()):  # tokens: (batch, T, features)
            pos = [p.shape[1] for p in module.parameters() if p.dim() == 3]  # a (1, T, E) positional embedding
            shapes = [(t, first.in_features) for t in dict.fromkeys(pos + list(_TRY_SIZES))] + shapes
    elif first is not None:
        dim = 1 if isinstance(first, nn.Conv1d) else 2
        shapes = [(first.in_channels,) + (s,) * dim for s in _TRY_SIZES]
    else:
        shapes = []
    was = module.training
    module.eval()
    try:
        for shape in shapes:
            x = torch.randn((batch,) + shape, generator=generator, dtype=dtype)
            try:
                module(x)
            except RuntimeError:
                continue
            return x
    finally:
        module.train(was)
    raise GNNAlignError(f"cannot guess an input for {type(module).__name__}: pass example inputs "
                        "(example_input=..., or data=...)")

