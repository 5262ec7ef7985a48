"""Training checkpoints: exact restore, atomic replace, and refusal of files that cannot be trusted."""

import pytest
import torch

from gnn_align.errors import GNNAlignError
from gnn_align.training.checkpoint import load_training_state, save_training_state

from .helpers import MarkerPickle


def _parts(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    return model, opt, sched, torch.Generator().manual_seed(seed)


def _train_step(model, opt, sched, gen):
    x = torch.randn(4, 3, generator=gen)
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()
    sched.step()


def test_restored_run_continues_exactly_like_the_uninterrupted_one(tmp_path):
    a = _parts(0)
    for _ in range(3):
        _train_step(*a)
    save_training_state(tmp_path / "ck.pt", *a, epoch=1, sums={"loss": 0.5})
    for _ in range(2):
        _train_step(*a)
    b = _parts(1)  # different weights, optimiser state, schedule and data order until restored
    pos = load_training_state(tmp_path / "ck.pt", *b)
    assert pos == {"epoch": 1, "sums": {"loss": 0.5}}
    for _ in range(2):
        _train_step(*b)
    assert all(torch.equal(p, q) for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True))
    assert b[2].get_last_lr() == a[2].get_last_lr()
    # control: without the restore the second run is elsewhere
    c = _parts(1)
    for _ in range(2):
        _train_step(*c)
    assert not torch.equal(c[0].weight, a[0].weight)
    with pytest.raises(ValueError, match="clash"):
        save_training_state(tmp_path / "x.pt", *a, rng=1)
    assert not (tmp_path / "x.pt").exists()


def test_truncated_foreign_and_malicious_checkpoints_are_refused(tmp_path):
    parts = _parts(0)
    save_training_state(tmp_path / "ck.pt", *parts, epoch=0)
    raw = (tmp_path / "ck.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GNNAlignError, match="cut.pt: cannot read checkpoint"):
        load_training_state(tmp_path / "cut.pt", *parts)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(GNNAlignError, match="other.pt: not a training checkpoint"):
        load_training_state(tmp_path / "other.pt", *parts)
    marker = tmp_path / "pwned"
    torch.save({"model": MarkerPickle(marker)}, tmp_path / "evil.pt")
    with pytest.raises(GNNAlignError, match="evil.pt: cannot read checkpoint"):
        load_training_state(tmp_path / "evil.pt", *parts)
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # control: a plain unpickle runs the payload
    assert marker.exists()
