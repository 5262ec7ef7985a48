"""Zoo recipes: named, versioned configs. Bump a recipe's ``version`` whenever its content changes.

A recipe lists *members* (one architecture trained on one task, ``count`` networks each, with the
training hyper-parameters) plus the network-level split fractions. Members marked ``heldout`` are
architectures kept for testing generalisation only: all their networks are in split ``heldout``.
"""

from __future__ import annotations

import copy

SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _mlp(d_in: int, width: int, depth: int, d_out: int = 10, layernorm: bool = False) -> dict:
    arch = {"family": "mlp", "in_features": d_in, "hidden": [width] * depth, "out_features": d_out}
    if layernorm:
        arch["layernorm"] = True
    return arch


def _member(name, arch, task, count, train, activation="relu", heldout=False, recipe="default") -> dict:
    return {"name": name, "arch": arch, "task": task, "count": count, "activation": activation,
            "heldout": heldout, "train": train, "recipe": recipe}


DIGITS_MLP_TRAIN = {"epochs": 20, "lr": 5e-3, "batch_size": 64}
MNIST1D_MLP_TRAIN = {"epochs": 20, "lr": 3e-3, "batch_size": 128}
DIGITS_CNN = {"family": "cnn", "in_channels": 1, "channels": [8, 16, 16], "num_classes": 10, "dim": 2,
              "stride": [1, 2, 1]}
DIGITS_CNN_TRAIN = {"epochs": 30, "lr": 3e-2, "batch_size": 64}
MNIST1D_CNN = {"family": "cnn", "in_channels": 1, "channels": [16, 16, 16], "num_classes": 10, "dim": 1,
               "kernel_size": 5, "stride": 2, "head": "flatten", "input_size": 40}
MNIST1D_CNN_TRAIN = {"epochs": 30, "lr": 1e-2, "batch_size": 128}
DIGITS_RESNET = {"family": "resnet", "in_channels": 1, "stem_channels": 8, "channels": [8, 16],
                 "num_classes": 10, "dim": 2}
DIGITS_RESNET_TRAIN = {"epochs": 12, "lr": 1e-2, "batch_size": 64}
DIGITS_TRANSFORMER = {"family": "transformer", "in_features": 8, "tokens": 8, "d_model": 32, "heads": 2,
                      "blocks": 1, "mlp": 64, "num_classes": 10, "norm_first": True}
#: training recipes of the ``digits-transformer`` zoo: (member suffix, blocks, count, train)
TRANSFORMER_RECIPES = [
    ("adamw-cos-wd", 1, 400, {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-2, "epochs": 20, "batch_size": 64}),
    ("sgd-cos-wd", 1, 300, {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "epochs": 20, "batch_size": 64}),
    ("adam-const-b2", 2, 300, {"optimizer": "adam", "lr": 2e-3, "schedule": "constant", "epochs": 20,
                               "batch_size": 64}),
]
#: members of the ``transformers`` zoo, spanning d_model 32-64, 2-4 heads and 1-3 blocks (MLP 2 x d_model):
#: (d_model, heads, blocks, pre-LN, recipe name, train)
WIDE_TRANSFORMER_RECIPES = [
    (32, 2, 1, True, "adamw-cos-wd", TRANSFORMER_RECIPES[0][3]),
    (32, 4, 3, True, "sgd-cos-wd", TRANSFORMER_RECIPES[1][3]),
    (48, 3, 1, True, "adam-const", TRANSFORMER_RECIPES[2][3]),
    (48, 2, 2, True, "adamw-step-ls", {"optimizer": "adamw", "lr": 3e-3, "schedule": "step", "weight_decay": 1e-2,
                                       "label_smoothing": 0.1, "epochs": 20, "batch_size": 64}),
    (64, 4, 1, True, "sgd-cos-wd", TRANSFORMER_RECIPES[1][3]),
    (64, 4, 2, False, "adam-const", {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "epochs": 20,
                                     "batch_size": 64}),
]
SIREN = {"family": "siren", "in_features": 1, "hidden": [32, 32], "out_features": 1, "w0": 3.0}
SIREN_TRAIN = {"epochs": 400, "lr": 3e-3, "batch_size": 128}


def _mixed_members() -> list:
    m = []
    for w, d in [(16, 1), (32, 2), (64, 3), (128, 2), (32, 4), (64, 1), (128, 4), (16, 3)]:
        m.append(_member(f"digits-mlp-w{w}-d{d}", _mlp(64, w, d), "digits", 64, DIGITS_MLP_TRAIN))
    for w, d in [(16, 2), (32, 3), (64, 2), (128, 1)]:
        m.append(_member(f"mnist1d-mlp-w{w}-d{d}", _mlp(40, w, d), "mnist1d", 64, MNIST1D_MLP_TRAIN))
    m.append(_member("digits-mlp-ln-w64-d2", _mlp(64, 64, 2, layernorm=True), "digits", 48, DIGITS_MLP_TRAIN))
    m.append(_member("mnist1d-mlp-ln-w32-d3", _mlp(40, 32, 3, layernorm=True), "mnist1d", 48,
                     MNIST1D_MLP_TRAIN))
    m.append(_member("digits-cnn-8-16-16", DIGITS_CNN, "digits-2d", 48, DIGITS_CNN_TRAIN))
    m.append(_member("digits-cnn-16-16", dict(DIGITS_CNN, channels=[16, 16], stride=[1, 2]), "digits-2d", 48,
                     DIGITS_CNN_TRAIN))
    m.append(_member("mnist1d-cnn-16-16-16", MNIST1D_CNN, "mnist1d-1d", 48, MNIST1D_CNN_TRAIN))
    m.append(_member("mnist1d-cnn-8-16", dict(MNIST1D_CNN, channels=[8, 16]), "mnist1d-1d", 48,
                     MNIST1D_CNN_TRAIN))
    m.append(_member("digits-resnet-8-16", DIGITS_RESNET, "digits-2d", 48, DIGITS_RESNET_TRAIN))
    m.append(_member("digits-resmlp-w32-b2", {"family": "residual_mlp", "in_features": 64, "width": 32,
                                              "num_blocks": 2, "out_features": 10}, "digits", 48,
                     DIGITS_MLP_TRAIN))
    # held-out architectures: widths and depths that no training member uses
    for w, d in [(48, 2), (96, 3), (64, 5)]:
        m.append(_member(f"digits-mlp-w{w}-d{d}", _mlp(64, w, d), "digits", 64, DIGITS_MLP_TRAIN, heldout=True))
    m.append(_member("mnist1d-mlp-w96-d2", _mlp(40, 96, 2), "mnist1d", 64, MNIST1D_MLP_TRAIN, heldout=True))
    return m


#: training recipes of the ``recipes`` zoo (keyword arguments of ``gnn_align.zoo.train_networks``, plus an
#: MLP's ``dropout``); the learning rates are the MLP's (see ``_FAMILY_LR``)
TRAIN_RECIPES = {
    "adamw-cos": {"optimizer": "adamw", "lr": 5e-3, "schedule": "cosine", "epochs": 20, "batch_size": 64},
    "sgd-step-wd": {"optimizer": "sgd", "lr": 0.05, "schedule": "step", "weight_decay": 5e-4, "epochs": 30,
                    "batch_size": 32},
    "adam-const-ls": {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "label_smoothing": 0.1,
                      "epochs": 40, "batch_size": 128},
    "sgd-cos-drop-noise": {"optimizer": "sgd", "lr": 0.1, "schedule": "cosine", "weight_decay": 1e-4,
                           "dropout": 0.1, "input_noise": 0.1, "epochs": 20, "batch_size": 64},
    "adamw-under-wd": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-2, "epochs": 5, "batch_size": 64,
                       "init_scale": 0.5},
    "adam-over": {"optimizer": "adam", "lr": 5e-3, "schedule": "constant", "epochs": 80, "batch_size": 128,
                  "init_scale": 2.0},
}
#: held-out recipes: new combinations of the values above (never trained on)
HELDOUT_RECIPES = {
    "sgd-cos-wd-ls": {"optimizer": "sgd", "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4,
                      "label_smoothing": 0.1, "epochs": 25, "batch_size": 64},
    "adamw-step-drop-noise": {"optimizer": "adamw", "lr": 3e-3, "schedule": "step", "weight_decay": 5e-3,
                              "dropout": 0.2, "input_noise": 0.2, "epochs": 15, "batch_size": 32,
                              "init_scale": 1.5},
}
#: learning-rate multipliers per family: (adaptive optimisers, SGD)
_FAMILY_LR = {"mlp": (1.0, 1.0), "cnn": (4.0, 1.5), "resnet": (2.0, 1.0)}


def _recipe_members() -> list:
    m = []
    families = [("mlp", "digits-mlp", _mlp(64, 64, 3), "digits", 96, 64),
                ("cnn", "digits-cnn", DIGITS_CNN, "digits-2d", 48, 64),
                ("resnet", "digits-resnet", DIGITS_RESNET, "digits-2d", 48, 64)]
    for fam, prefix, arch, task, count, count_heldout in families:
        for heldout, table in ((False, TRAIN_RECIPES), (True, HELDOUT_RECIPES)):
            for rname, r in table.items():
                train, a = dict(r), dict(arch)
                dropout = train.pop("dropout", 0.0)
                if fam == "mlp" and dropout:  # dropout is an MLP option; conv nets train without it
                    a["dropout"] = dropout
                train["lr"] *= _FAMILY_LR[fam][train["optimizer"] == "sgd"]
                m.append(_member(f"{prefix}-{rname}", a, task, count_heldout if heldout else count, train,
                                 heldout=heldout, recipe=rname))
    return m


def _transformer_members(scale: float = 1.0) -> list:
    return [_member(f"digits-transformer-{name}", dict(DIGITS_TRANSFORMER, blocks=blocks), "digits-rows",
                    round(count * scale), train, recipe=name) for name, blocks, count, train in TRANSFORMER_RECIPES]


def _wide_transformer_members() -> list:
    m = []
    for d, h, b, pre, rname, train in WIDE_TRANSFORMER_RECIPES:
        arch = dict(DIGITS_TRANSFORMER, d_model=d, heads=h, blocks=b, mlp=2 * d, norm_first=pre)
        m.append(_member(f"digits-transformer-d{d}-h{h}-b{b}{'' if pre else '-post'}-{rname}", arch, "digits-rows",
                         170, train, recipe=rname))
    return m


def _residual_members() -> list:
    m = []
    for w, b in [(16, 2), (32, 2), (64, 2), (48, 3)]:
        m.append(_member(f"digits-resmlp-w{w}-b{b}", {"family": "residual_mlp", "in_features": 64, "width": w,
                                                      "num_blocks": b, "out_features": 10}, "digits", 32,
                         DIGITS_MLP_TRAIN))
    for stem, ch in [(8, [8, 16]), (12, [12, 24]), (16, [16, 32])]:
        m.append(_member(f"digits-resnet-{ch[0]}-{ch[1]}", dict(DIGITS_RESNET, stem_channels=stem, channels=ch),
                         "digits-2d", 32, DIGITS_RESNET_TRAIN))
    return m


RECIPES = {
    "digits-mlp": {"version": 1, "members": [
        _member("digits-mlp", _mlp(64, 64, 3), "digits", 2000, DIGITS_MLP_TRAIN)]},
    "mnist1d-mlp": {"version": 1, "members": [
        _member("mnist1d-mlp", _mlp(40, 128, 3), "mnist1d", 2000, MNIST1D_MLP_TRAIN)]},
    "digits-cnn": {"version": 1, "members": [
        _member("digits-cnn", DIGITS_CNN, "digits-2d", 1000, DIGITS_CNN_TRAIN)]},
    "mnist1d-cnn": {"version": 1, "members": [
        _member("mnist1d-cnn", MNIST1D_CNN, "mnist1d-1d", 1000, MNIST1D_CNN_TRAIN)]},
    "digits-resnet": {"version": 1, "members": [
        _member("digits-resnet", DIGITS_RESNET, "digits-2d", 1000, DIGITS_RESNET_TRAIN)]},
    "sine-inr": {"version": 1, "views": 4, "members": [
        _member("sine-inr", SIREN, "sine", 1000, SIREN_TRAIN, activation="sine")]},
    "mixed": {"version": 1, "members": _mixed_members()},
    # residual nets of several widths (and a deeper residual MLP), for planted-pair recovery: the mixed
    # zoo trains on one width per residual family (digits-resnet-8-16, digits-resmlp-w32-b2)
    "residual": {"version": 1, "splits": {"test": 1.0}, "members": _residual_members()},
    # every member a (family, training recipe): MLPs, CNNs and BatchNorm ResNets on digits, each trained
    # by 6 recipes (optimiser, schedule, weight decay, label smoothing, batch size, epochs, dropout, input
    # noise, initial scale); 2 held-out recipes per family for testing generalisation across recipes
    "recipes": {"version": 1, "members": _recipe_members()},
    # the aligner's training zoo: every member of `mixed` and of `recipes` (other seeds than theirs)
    "mixed-recipes": {"version": 1, "members": _mixed_members() + _recipe_members()},
    # small pre-LN transformers (d_model 32, 2 heads, 1 or 2 blocks) on the digits as 8 row tokens, by
    # three training recipes (AdamW / SGD / Adam, with and without weight decay)
    "digits-transformer": {"version": 1, "members": _transformer_members()},
    # transformers across issue 21's range (d_model 32-64, 2-4 heads, 1-3 blocks, one post-LN member), six
    # recipes; shards of 85, so two build slices (`--shard 0/2`, `1/2`) hold one shard of every member each
    "transformers": {"version": 1, "shard_size": 85, "members": _wide_transformer_members()},
    # the aligner's training zoo with transformers: every member of `mixed-recipes` and of
    # `digits-transformer` (0.4 of its networks), other seeds than theirs
    "mixed-transformer": {"version": 1, "members": _mixed_members() + _recipe_members() + _transformer_members(0.4)},
    "digits-mlp-shift": {"version": 1, "splits": {"test": 1.0}, "members": [
        _member("digits-mlp-shift", _mlp(64, 64, 3), "digits-shift", 1000, DIGITS_MLP_TRAIN)]},
}


def get_recipe(name: str, tiny: bool = False) -> dict:
    """The full recipe ``name`` (with defaults filled in), or its tiny version for tests.

    The tiny version keeps every architecture and task but trains 4 networks per member (8 views
    of 2 signals for INRs) for one epoch, in shards of 2, so it builds in seconds.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown zoo recipe '{name}'; choose from {', '.join(RECIPES)}")
    r = copy.deepcopy(RECIPES[name])
    r.setdefault("splits", dict(SPLITS))
    r.setdefault("shard_size", 250)
    r.setdefault("seed", 0)
    r["name"] = name
    if tiny:
        r["name"], r["shard_size"] = f"{name}-tiny", 2
        for m in r["members"]:
            m["count"] = 8 if name == "sine-inr" else 4
            m["train"] = dict(m["train"], epochs=1 if name != "sine-inr" else 5)
    return r
