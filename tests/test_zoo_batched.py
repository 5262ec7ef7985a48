"""Training recipes of the vmapped zoo trainer: optimisers, schedules, label smoothing, initial scale,
input noise and dropout, each deterministic in the seeds."""

import math

import pytest
import torch

from datasets.recipes import HELDOUT_RECIPES, TRAIN_RECIPES, get_recipe
from gnn_align.tasks import task_loss
from gnn_align.zoo import train_networks
from gnn_align.zoo.batched import lr_factor

ARCH = {"family": "mlp", "in_features": 5, "hidden": [6, 4], "out_features": 3}


def _data(n=64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def test_lr_factor_by_hand():
    total, warm = 100, 10
    assert lr_factor("cosine", 0, total, warm) == pytest.approx(0.1)  # warmup: (t + 1) / warm
    assert lr_factor("cosine", 50, total, warm) == pytest.approx(0.5, abs=1e-7)
    assert lr_factor("cosine", 100, total, warm) == pytest.approx(0.0, abs=1e-7)
    assert lr_factor("constant", 60, total, warm) == 1.0
    assert [lr_factor("step", t, total, warm) for t in (49, 50, 74, 75)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_factor("linear", 0, total, warm)


def test_unknown_optimizer_is_refused_before_training():
    x, y = _data()
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        train_networks(ARCH, x, y, [0], optimizer="rmsprop", progress=False)


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    out = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    eps = 0.1
    target = torch.full((2, 4, 3), eps / 3).scatter_(2, y[..., None], 1 - eps + eps / 3)
    manual = -(target * out.log_softmax(-1)).sum(-1).mean(1)
    assert torch.allclose(task_loss(out, y, "ce", label_smoothing=eps), manual, atol=1e-12)
    assert not torch.allclose(task_loss(out, y, "ce"), manual, atol=1e-3)  # control: smoothing changes it


def test_init_scale_multiplies_the_initial_weights_only():
    x, y = _data()
    one, _ = train_networks(ARCH, x, y, [3, 4], lr=0.0, epochs=1, progress=False)
    two, _ = train_networks(ARCH, x, y, [3, 4], lr=0.0, epochs=1, init_scale=2.0, progress=False)
    for k in one:
        assert torch.equal(two[k], 2 * one[k] if k.endswith("weight") else one[k]), k


@pytest.mark.parametrize("recipe", [
    {"optimizer": "sgd", "schedule": "step", "weight_decay": 5e-4, "label_smoothing": 0.1},
    {"optimizer": "adam", "schedule": "constant", "input_noise": 0.2},
    {"optimizer": "adamw", "dropout": 0.3}])
def test_every_recipe_is_deterministic_in_the_seeds_and_trains(recipe):
    x, y = _data()
    recipe = dict(recipe)
    arch = dict(ARCH, dropout=recipe.pop("dropout")) if "dropout" in recipe else ARCH
    a, hist = train_networks(arch, x, y, [5, 6], epochs=4, batch_size=16, lr=0.05, progress=False, **recipe)
    b, _ = train_networks(arch, x, y, [5, 6], epochs=4, batch_size=16, lr=0.05, progress=False, **recipe)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert hist[-1] < hist[0] and all(math.isfinite(h) for h in hist)
    c, _ = train_networks(arch, x, y, [5, 7], epochs=4, batch_size=16, lr=0.05, progress=False, **recipe)
    assert torch.equal(a["0.weight"][0], c["0.weight"][0]) is ("dropout" not in arch and "input_noise" not in recipe)


def test_noise_and_dropout_change_training():
    x, y = _data()
    plain, _ = train_networks(ARCH, x, y, [5], epochs=2, batch_size=16, progress=False)
    noisy, _ = train_networks(ARCH, x, y, [5], epochs=2, batch_size=16, input_noise=0.5, progress=False)
    dropped, _ = train_networks(dict(ARCH, dropout=0.5), x, y, [5], epochs=2, batch_size=16, progress=False)
    assert not torch.equal(plain["0.weight"], noisy["0.weight"])
    assert not torch.equal(plain["0.weight"], dropped["0.weight"])


def test_recipes_zoo_holds_out_recipe_combinations_of_every_family():
    recipe = get_recipe("recipes")
    seen = {}
    for m in recipe["members"]:
        seen.setdefault(m["arch"]["family"], {}).setdefault(m["heldout"], set()).add(m["recipe"])
    assert set(seen) == {"mlp", "cnn", "resnet"}
    for fam in seen.values():
        assert fam[False] == set(TRAIN_RECIPES) and fam[True] == set(HELDOUT_RECIPES)
    for name, held in HELDOUT_RECIPES.items():
        assert held not in TRAIN_RECIPES.values(), name
        for key in ("optimizer", "schedule"):  # a new combination of choices the training recipes make
            assert held[key] in {r.get(key, "cosine" if key == "schedule" else None) for r in TRAIN_RECIPES.values()}
