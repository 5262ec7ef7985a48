"""Offline task data: shapes, dtypes, splits, determinism, cache safety, shift and sine signals."""

import random

import numpy as np
import pytest
import torch

from gnn_align.tasks import TASK_NAMES, Task, _rotate, load_task, sine_signals

SHAPES = {
    "digits": ((1437, 64), (360, 64)),
    "digits-2d": ((1437, 1, 8, 8), (360, 1, 8, 8)),
    "digits-rows": ((1437, 8, 8), (360, 8, 8)),
    "digits-shift": ((1437, 64), (360, 64)),
    "digits-shift-2d": ((1437, 1, 8, 8), (360, 1, 8, 8)),
    "mnist1d": ((4000, 40), (1000, 40)),
    "mnist1d-1d": ((4000, 1, 40), (1000, 1, 40)),
}


def test_all_tasks_covered():
    assert set(SHAPES) == set(TASK_NAMES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_and_dtypes(name):
    task = load_task(name)
    assert isinstance(task, Task) and task.name == name
    assert task.loss == "ce" and task.num_outputs == 10
    (train_shape, test_shape) = SHAPES[name]
    assert tuple(task.x_train.shape) == train_shape and tuple(task.x_test.shape) == test_shape
    assert task.y_train.shape == (train_shape[0],) and task.y_test.shape == (test_shape[0],)
    assert task.x_train.dtype == task.x_test.dtype == torch.float32
    assert task.y_train.dtype == task.y_test.dtype == torch.int64
    for y in (task.y_train, task.y_test):
        assert y.min() >= 0 and y.max() <= 9
        assert set(y.tolist()) == set(range(10))
    assert torch.isfinite(task.x_train).all() and torch.isfinite(task.x_test).all()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_deterministic(name):
    a, b = load_task(name), load_task(name)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize("name", ["digits", "mnist1d-1d"])
def test_returned_tensors_do_not_alias_cache(name):
    a = load_task(name)
    reference = load_task(name)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        getattr(a, field).fill_(7)
    b = load_task(name)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(b, field), getattr(reference, field))
        assert getattr(b, field).data_ptr() != getattr(reference, field).data_ptr()


def test_digits_values_and_stratified_split():
    task = load_task("digits")
    assert task.x_train.min() >= 0 and task.x_train.max() <= 1
    assert len(task.y_train) + len(task.y_test) == 1797
    p_train = torch.bincount(task.y_train, minlength=10).double() / len(task.y_train)
    p_test = torch.bincount(task.y_test, minlength=10).double() / len(task.y_test)
    assert (p_train - p_test).abs().max() < 0.02
    # the 2-d variant is the same data, reshaped
    task2d = load_task("digits-2d")
    assert torch.equal(task2d.x_train.reshape(-1, 64), task.x_train)
    assert torch.equal(task2d.y_test, task.y_test)


def test_mnist1d_variants_agree_and_leave_global_rng_alone():
    random.seed(3)
    np.random.seed(3)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(3)
    np.random.seed(3)
    flat, conv = load_task("mnist1d"), load_task("mnist1d-1d")
    assert random.random() == expected_py and np.random.rand() == expected_np
    assert torch.equal(conv.x_train.squeeze(1), flat.x_train)
    assert torch.equal(conv.y_train, flat.y_train)


def test_digits_shift_differs_with_same_labels():
    base, shifted = load_task("digits"), load_task("digits-shift")
    assert torch.equal(base.y_train, shifted.y_train) and torch.equal(base.y_test, shifted.y_test)
    for clean, noisy in ((base.x_train, shifted.x_train), (base.x_test, shifted.x_test)):
        assert not torch.allclose(clean, noisy, atol=0.05)
        residual = (noisy - clean).abs().mean()
        assert 0.05 < residual < 1.0  # shifted, but still the same images roughly
    shifted2d = load_task("digits-shift-2d")
    assert torch.equal(shifted2d.x_train.reshape(-1, 64), shifted.x_train)
    assert torch.equal(shifted2d.x_test.reshape(-1, 64), shifted.x_test)


def test_rotate_zero_is_identity():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand((3, 1, 8, 8), generator=gen, dtype=torch.float32)
    out = _rotate(images, torch.zeros(3, dtype=torch.float32))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, images, atol=1e-6, rtol=0)


def test_rotate_90_is_counterclockwise_rot90():
    image = torch.zeros((1, 1, 4, 4), dtype=torch.float32)
    image[0, 0, 0, 0] = 1.0  # top-left corner
    image[0, 0, 0, 1] = 2.0
    image[0, 0, 2, 3] = 3.0
    out = _rotate(image, torch.tensor([90.0], dtype=torch.float32))
    expected = torch.rot90(image, 1, dims=(-2, -1))
    assert expected[0, 0, 3, 0] == 1.0  # counter-clockwise: top-left goes to bottom-left
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    back = _rotate(image, torch.tensor([-90.0], dtype=torch.float32))
    torch.testing.assert_close(back, torch.rot90(image, -1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_sine_signals():
    out = sine_signals(5, torch.Generator().manual_seed(1), num_points=16)
    a = out["a"]
    assert a.shape == (5,) and (a >= 0.5).all() and (a <= 10).all()
    assert out["x_train"].shape == (16, 1) and out["y_train"].shape == (5, 16, 1)
    assert out["x_test"].shape == (15, 1) and out["y_test"].shape == (5, 15, 1)
    assert all(v.dtype == torch.float32 for v in out.values())
    x = out["x_train"]
    assert x[0, 0] == torch.tensor(-torch.pi, dtype=torch.float32)
    assert x[-1, 0] == torch.tensor(torch.pi, dtype=torch.float32)
    torch.testing.assert_close(out["x_test"], (x[:-1] + x[1:]) / 2, atol=0, rtol=0)
    assert torch.equal(out["y_train"], torch.sin(a[:, None, None] * x))
    assert torch.equal(out["y_test"], torch.sin(a[:, None, None] * out["x_test"]))
    same = sine_signals(5, torch.Generator().manual_seed(1), num_points=16)
    assert all(torch.equal(out[k], same[k]) for k in out)
    other = sine_signals(5, torch.Generator().manual_seed(2), num_points=16)
    assert not torch.equal(out["a"], other["a"])


def test_sine_signals_default_points():
    out = sine_signals(2, torch.Generator().manual_seed(0))
    assert out["x_train"].shape == (128, 1) and out["y_test"].shape == (2, 127, 1)


def test_unknown_task():
    with pytest.raises(ValueError, match="no-such-task") as info:
        load_task("no-such-task")
    assert "digits" in str(info.value) and "mnist1d" in str(info.value)
