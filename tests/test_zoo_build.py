"""Zoo recipes and builds: tiny builds of every recipe, determinism, resume, splits, default sizes."""

import json

import pytest
import torch

from datasets.__main__ import card, main
from datasets.build import build, plan
from datasets.recipes import RECIPES, get_recipe
from gnn_align import spec_from_module
from gnn_align.archs import build_arch
from gnn_align.zoo.storage import ZooError, load_manifest, read_shard


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.safetensors"))}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tiny_version_of_every_recipe_builds(name, tmp_path):
    recipe = get_recipe(name, tiny=True)
    out = build(recipe, tmp_path, progress=False)
    man = load_manifest(out)
    assert len(man["networks"]) == sum(m["count"] for m in recipe["members"])
    assert (out / "test_accuracy.png").stat().st_size > 1000
    for net in man["networks"]:
        assert "train_loss" in net and "test_loss" in net and torch.isfinite(torch.tensor(net["test_loss"]))
    for sh in man["shards"]:
        member = man["members"][sh["member"]]
        stacked = read_shard(out / sh["file"], sh["sha256"])
        # every stored network fits its architecture's derived spec
        module = build_arch(member["arch"])
        spec = spec_from_module(module, torch.zeros(2, *member["input_shape"]))
        spec.validate({k: v[0].double() if v.is_floating_point() else v[0] for k, v in stacked.items()})
        assert next(iter(stacked.values())).shape[0] == sh["num_networks"]
    assert name.replace("-", "") in card(out).replace("-", "")


def test_same_seed_gives_byte_identical_shards(tmp_path):
    recipe = get_recipe("digits-cnn", tiny=True)
    a = build(recipe, tmp_path / "a", progress=False)
    b = build(recipe, tmp_path / "b", progress=False)
    assert _files(a) == _files(b) and len(_files(a)) == 2
    ma, mb = load_manifest(a), load_manifest(b)
    assert ma["networks"] == mb["networks"]


def test_interrupted_build_resumes_to_the_same_zoo(tmp_path):
    recipe = get_recipe("digits-resnet", tiny=True)
    full = build(recipe, tmp_path / "full", progress=False)
    assert build(recipe, tmp_path / "cut", max_shards=1, progress=False) is None
    cut = tmp_path / "cut" / recipe["name"]
    assert len(_files(cut)) == 1 and not (cut / "manifest.json").exists()
    with pytest.raises(ZooError, match="manifest.json: file not found"):
        load_manifest(cut)
    resumed = build(recipe, tmp_path / "cut", progress=False)
    assert _files(resumed) == _files(full)
    assert load_manifest(resumed)["networks"] == load_manifest(full)["networks"]


def test_no_network_in_two_splits_and_signals_stay_together():
    for name in RECIPES:
        recipe = get_recipe(name)
        members, networks, shards = plan(recipe)
        assert [n["id"] for n in networks] == list(range(len(networks)))
        assert sorted(i for sh in shards for i in sh["ids"]) == list(range(len(networks)))
        for n in networks:
            assert n["split"] in ("train", "val", "test", "heldout")
            assert (n["split"] == "heldout") == members[n["member"]]["heldout"]
        signal_split = {}
        for n in networks:
            if "signal" in n:
                assert signal_split.setdefault(n["signal"], n["split"]) == n["split"]


def test_default_sizes():
    for name in RECIPES:
        members, networks, _ = plan(get_recipe(name))
        n_test = sum(n["split"] in ("test", "heldout") for n in networks)
        if get_recipe(name)["splits"] == {"test": 1.0}:  # evaluation-only zoos (shifted task, residual widths)
            assert n_test == len(networks), name
        else:
            assert len(networks) >= (2000 if name.endswith("-mlp") else 1000), name
        assert n_test >= 200, name
    members, networks, _ = plan(get_recipe("mixed"))
    trained = {tuple(m["arch"].get("hidden", ())) for m in members if not m["heldout"]}
    for m in members:
        if m["heldout"]:  # held-out architectures use widths/depths no training member uses
            assert tuple(m["arch"]["hidden"]) not in trained


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["build", "no-such-zoo", "--root", str(tmp_path)]) == 2
    assert "unknown zoo recipe 'no-such-zoo'" in capsys.readouterr().err
    assert main(["info", "digits-mlp", "--root", str(tmp_path)]) == 2
    assert "zoo folder not found" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "digits-mlp" in capsys.readouterr().out


def test_manifest_pointing_at_missing_shard_is_refused(tmp_path):
    out = build(get_recipe("digits-mlp", tiny=True), tmp_path, progress=False)
    (out / "shard-00001.safetensors").unlink()
    with pytest.raises(ZooError, match="shard-00001.safetensors: shard listed in the manifest is missing"):
        load_manifest(out)
    man = json.loads((out / "manifest.json").read_text())
    man["networks"] = []
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ZooError, match="the zoo is empty"):
        load_manifest(out)
