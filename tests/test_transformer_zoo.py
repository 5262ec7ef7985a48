"""The transformer family, the ``digits-rows`` task and the ``digits-transformer`` zoo recipe (issue 21)."""

import pytest
import torch

from gnn_align import random_permutation, spec_from_module
from gnn_align.archs import FAMILIES, Transformer, build_arch, reset_parameters
from gnn_align.tasks import NETWORK_TASKS, TASK_NAMES, load_task
from gnn_align.testing import assert_function_preserved
from gnn_align.zoo.batched import StackedForward, evaluate, train_networks

ARCH = {"family": "transformer", "in_features": 8, "tokens": 8, "d_model": 8, "heads": 2, "blocks": 2, "mlp": 6,
        "num_classes": 10}


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_spec_has_heads_and_preserves_function(norm_first):
    torch.manual_seed(0)
    module = build_arch(dict(ARCH, norm_first=norm_first)).double().eval()
    assert isinstance(module, Transformer) and FAMILIES["transformer"] is Transformer
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    spec = spec_from_module(module, x)
    assert set(spec.heads) == {"blocks.0.heads", "blocks.1.heads"}
    assert all(len(fams) == 2 and len(fams[0]) == 2 for fams in spec.heads.values())  # qk and v, 2 heads each
    for seed in range(3):
        perm = random_permutation(spec, torch.Generator().manual_seed(seed))
        assert assert_function_preserved(module, spec, perm, x, atol=1e-10) <= 1e-10


def test_reset_parameters_draws_the_positional_embedding():
    module = build_arch(ARCH)
    pos = [reset_parameters(module, torch.Generator().manual_seed(s)).pos.detach().clone() for s in (0, 1, 0)]
    assert not torch.equal(pos[0], pos[1]) and torch.equal(pos[0], pos[2])
    assert 0.005 < float(pos[0].std()) < 0.05


def test_digits_rows_task():
    rows, flat = load_task("digits-rows"), load_task("digits")
    assert "digits-rows" in TASK_NAMES and "digits-rows" in NETWORK_TASKS
    assert rows.x_train.shape == (1437, 8, 8) and rows.x_test.shape == (360, 8, 8)
    assert torch.equal(rows.x_train.reshape(-1, 64), flat.x_train) and torch.equal(rows.y_test, flat.y_test)


def test_transformers_train_under_vmap():
    task = load_task("digits-rows")
    x, y = task.x_train[:256].double(), task.y_train[:256]
    state, history = train_networks(ARCH, x, y, [0, 1], epochs=3, lr=1e-2, batch_size=64)
    assert state["pos"].shape == (2, 1, 8, 8) and not torch.equal(state["pos"][0], state["pos"][1])
    assert history[-1] < history[0]
    acc = evaluate(StackedForward(ARCH), state, x, y, "ce")["acc"]
    assert acc.shape == (2,) and (acc > 0.1).all()  # above chance after 12 small steps


def test_tiny_transformer_zoo_builds(tiny_zoos):
    from gnn_align.zoo.storage import load_manifest, read_shard

    folder = tiny_zoos("digits-transformer", {"train": 0.5, "test": 0.5})
    man = load_manifest(folder)
    members, nets = man["members"], man["networks"]
    assert len(nets) == 12 and {m["recipe"] for m in members} == {"adamw-cos-wd", "sgd-cos-wd", "adam-const-b2"}
    assert {m["arch"]["blocks"] for m in members} == {1, 2} and {m["task"] for m in members} == {"digits-rows"}
    assert {n["split"] for n in nets} == {"train", "test"} and all(0.0 <= n["test_acc"] <= 1.0 for n in nets)
    shard = read_shard(folder / man["shards"][0]["file"])
    module = build_arch(members[man["shards"][0]["member"]]["arch"])
    module.load_state_dict({k: v[0] for k, v in shard.items()})
    assert not torch.equal(shard["pos"][0], shard["pos"][1])
