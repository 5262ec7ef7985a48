"""Offline task data for training model zoos.

Every task is built locally without any download: scikit-learn's bundled ``digits`` data set (also
as ``digits-rows``, sequences of 8 row tokens for transformers) and the procedurally generated
``mnist1d`` data set, plus a rotated-and-noised ``digits-shift`` variant for distribution-shift
experiments. :func:`sine_signals` provides 1-D signals for
implicit neural representations (SIREN zoos); :func:`network_task` answers which data one network
of a zoo is trained and evaluated on (its member's task, or its own signal in an INR zoo), and
:func:`task_loss` is the per-network loss (``"ce"`` or ``"mse"``) that zoos train with and every
evaluation and training loss uses.

All tensors are created explicitly as float32 (inputs, regression targets) or int64 (class
labels), independent of torch's default dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TASK_NAMES = ("digits", "digits-2d", "digits-rows", "digits-shift", "digits-shift-2d", "mnist1d", "mnist1d-1d")

_SHIFT_MAX_DEGREES = 45.0
_SHIFT_NOISE_STD = 0.1
_SHIFT_SEED_TRAIN = 12345
_SHIFT_SEED_TEST = 54321


@dataclass(frozen=True)
class Task:
    """A supervised task with a fixed train/test split.

    Attributes:
        name: The task name as passed to :func:`load_task`.
        x_train: Float32 training inputs, batch first.
        y_train: Int64 class labels (``loss == "ce"``) or float32 targets (``loss == "mse"``).
        x_test: Float32 test inputs, batch first.
        y_test: Test labels or targets, like ``y_train``.
        loss: ``"ce"`` (cross-entropy) or ``"mse"``.
        num_outputs: Number of network outputs (classes for ``"ce"``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    loss: str
    num_outputs: int


def load_task(name: str) -> Task:
    """Load a task by name.

    Tasks are built once and cached; the returned tensors are fresh clones, so callers may modify
    them freely without affecting later calls.

    Args:
        name: One of ``TASK_NAMES``: ``"digits"`` (N, 64), ``"digits-2d"`` (N, 1, 8, 8),
            ``"digits-rows"`` (N, 8, 8): the digits as sequences of 8 row tokens of 8 pixels (for
            transformers; same split and scaling),
            ``"digits-shift"`` / ``"digits-shift-2d"`` (digits rotated by U(-45°, 45°) with
            Gaussian pixel noise of std 0.1, same shapes and split), ``"mnist1d"`` (N, 40) and
            ``"mnist1d-1d"`` (N, 1, 40).

    Returns:
        The task, with float32 inputs and int64 labels.

    Raises:
        ValueError: If ``name`` is not a known task.
    """
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task '{name}'; choose from {list(TASK_NAMES)}")
    task = _build_task(name)
    return dataclasses.replace(task, x_train=task.x_train.clone(), y_train=task.y_train.clone(),
                               x_test=task.x_test.clone(), y_test=task.y_test.clone())


@functools.cache
def _build_task(name: str) -> Task:
    """Build (once) the cached task; its tensors must never be handed out without cloning."""
    if name.startswith("digits"):
        x_tr, y_tr, x_te, y_te = _digits()
        if "shift" in name:
            x_tr = _shift(x_tr, _SHIFT_SEED_TRAIN)
            x_te = _shift(x_te, _SHIFT_SEED_TEST)
        if name.endswith("-rows"):  # 8 row tokens of 8 pixels each
            x_tr, x_te = x_tr.reshape(-1, 8, 8), x_te.reshape(-1, 8, 8)
        elif not name.endswith("-2d"):
            x_tr, x_te = x_tr.reshape(-1, 64), x_te.reshape(-1, 64)
    else:
        x_tr, y_tr, x_te, y_te = _mnist1d()
        if name.endswith("-1d"):
            x_tr, x_te = x_tr.unsqueeze(1), x_te.unsqueeze(1)
    return Task(name, x_tr, y_tr, x_te, y_te, loss="ce", num_outputs=10)


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stratified digits split, inputs scaled to [0, 1] with shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    as_img = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32).reshape(-1, 1, 8, 8)
    as_lbl = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(torch.int64)
    return as_img(x_tr), as_lbl(y_tr), as_img(x_te), as_lbl(y_te)


@functools.cache
def _mnist1d() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate MNIST-1D procedurally (never downloaded), inputs of shape (N, 40).

    ``make_dataset`` reseeds Python's and NumPy's global RNGs; their states are restored so that
    loading the task has no side effect on callers' randomness. Its printing is suppressed.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    as_x = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32).copy())
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64).copy())
    return as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]), as_y(data["y_test"])


def _rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate images about their centre with bilinear sampling and zero padding.

    Convention: a positive angle rotates the image counter-clockwise as displayed (row 0 at the
    top), so a rotation by +90° of a square image equals ``torch.rot90(images, 1, dims=(-2, -1))``.

    Args:
        images: (N, C, H, W) images.
        degrees: (N,) rotation angles in degrees.

    Returns:
        The rotated images, same shape and dtype as ``images``.
    """
    theta = degrees.to(images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # affine_grid maps output coordinates (x right, y down) to input coordinates.
    # Output pixel p samples the input at R(-angle) p in display coordinates (y up), which in
    # affine_grid's y-down coordinates is the matrix [[cos, -sin], [sin, cos]].
    zero = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], -2)
    grid = F.affine_grid(mat, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _shift(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Random rotation in U(-45°, 45°) plus Gaussian noise (std 0.1), deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    degrees = (torch.rand(n, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * _SHIFT_MAX_DEGREES
    noise = torch.randn(images.shape, generator=gen, dtype=torch.float32) * _SHIFT_NOISE_STD
    return _rotate(images, degrees) + noise


SINE_POINTS = 128  # training grid points of the sine INR signals


def sine_grid(num_points: int = SINE_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of the sine INR signals: ``x_train`` (num_points, 1), ``num_points`` points on
    [-pi, pi] with both endpoints, and ``x_test`` (num_points - 1, 1), the midpoints between
    consecutive training points; float32."""
    x_train = torch.linspace(-math.pi, math.pi, num_points, dtype=torch.float32).unsqueeze(1)
    return x_train, 0.5 * (x_train[:-1] + x_train[1:])


def _sine(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sin(a x)`` for every frequency of ``a`` (S,) on the grid ``x`` (N, 1): (S, N, 1)."""
    return torch.sin(a[:, None, None] * x)


def sine_signals(num_signals: int, generator: torch.Generator, num_points: int = SINE_POINTS) -> dict:
    """Sine signals ``sin(a x)`` for implicit-neural-representation zoos.

    Args:
        num_signals: Number S of signals (one network is fitted per signal).
        generator: Source of the frequencies ``a ~ U(0.5, 10)``.
        num_points: Number of training grid points on [-pi, pi], endpoints included
            (see :func:`sine_grid`).

    Returns:
        A dict of float32 tensors: ``"a"`` (S,), ``"x_train"`` (num_points, 1), ``"y_train"``
        (S, num_points, 1), ``"x_test"`` (num_points - 1, 1) the midpoints between consecutive
        training points, and ``"y_test"`` (S, num_points - 1, 1).
    """
    a = 0.5 + 9.5 * torch.rand(num_signals, generator=generator, dtype=torch.float32)
    x_train, x_test = sine_grid(num_points)
    return {"a": a, "x_train": x_train, "y_train": _sine(a, x_train), "x_test": x_test, "y_test": _sine(a, x_test)}


@functools.lru_cache(maxsize=4096)
def sine_task(a: float, num_points: int = SINE_POINTS) -> Task:
    """The regression task of one sine signal ``sin(a x)`` on :func:`sine_grid`, as
    :func:`sine_signals` builds it (bit for bit, for a float32-representable ``a``).

    Cached per ``(a, num_points)``: the returned tensors are shared and must not be modified.
    """
    x_train, x_test = sine_grid(num_points)
    freq = torch.tensor([a], dtype=torch.float32)
    return Task(f"sine(a={a!r})", x_train, _sine(freq, x_train)[0], x_test, _sine(freq, x_test)[0],
                loss="mse", num_outputs=1)


_LOSS_LABELS = {"ce": "cross-entropy", "mse": "MSE"}


def loss_label(loss: str) -> str:
    """How results tables name a task loss: ``"cross-entropy"`` (``"ce"``), ``"MSE"`` (``"mse"``)."""
    return _LOSS_LABELS.get(loss, loss)


def check_loss(loss: str) -> None:
    """Raise a ValueError for a task loss other than ``ce`` and ``mse``."""
    if loss not in ("ce", "mse"):
        raise ValueError(f"unknown loss '{loss}' (use 'ce' or 'mse')")


def task_loss(out: torch.Tensor, y: torch.Tensor, loss: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-network mean loss. Shapes: out (M, B, C), y (M, B) labels or (M, B, C) targets -> (M,)."""
    check_loss(loss)
    if loss == "ce":
        m, b, c = out.shape
        return F.cross_entropy(out.reshape(m * b, c), y.reshape(-1), reduction="none",
                               label_smoothing=label_smoothing).view(m, b).mean(1)
    return ((out - y) ** 2).flatten(1).mean(1)


#: tasks a zoo member may have: the classification tasks of :func:`load_task` and the per-network
#: sine signals of INR zoos
NETWORK_TASKS = TASK_NAMES + ("sine",)


@functools.cache
def _shared_task(name: str) -> Task:
    return load_task(name)


def network_task(zoo, idx: int) -> Task:
    """The data the ``idx``-th network of the zoo view ``zoo`` (a :class:`~gnn_align.zoo.ModelZoo`)
    was trained on and is evaluated on.

    Classification members: ``load_task(member["task"])``. ``"sine"`` members (INR zoos): the
    network's own signal ``sin(a x)``, ``a`` from its manifest record, on :func:`sine_grid` (128
    points), with loss ``"mse"`` — the data the zoo build fitted it to. Tasks are cached: the returned
    tensors are shared and must not be modified (use :func:`load_task` for private copies).

    Raises:
        ValueError: for a member task not in :data:`NETWORK_TASKS`, or a ``"sine"`` record without ``"a"``.
    """
    name = zoo.members[zoo.member_of(idx)].get("task")
    if name == "sine":
        rec = zoo.record(idx)
        if "a" not in rec:
            raise ValueError(f"zoo '{zoo.name}': network {rec.get('id')} of a sine member has no 'a' "
                             "(frequency) in its manifest record")
        return sine_task(float(rec["a"]))
    if name not in TASK_NAMES:
        raise ValueError(f"zoo '{zoo.name}': unknown member task '{name}'; supported: {list(NETWORK_TASKS)}")
    return _shared_task(name)
