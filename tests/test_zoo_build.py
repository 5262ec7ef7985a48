"""Zoo recipes and builds: tiny builds of every recipe, determinism, resume, sharded builds, splits, sizes."""

import json
import re

import pytest
import torch

import datasets.build as build_mod
from datasets.__main__ import card, main
from datasets.build import build, build_shards, merge, plan
from datasets.recipes import RECIPES, get_recipe
from gnn_align import spec_from_module
from gnn_align.archs import build_arch
from gnn_align.zoo.storage import BUILD_LOG, ZooError, load_manifest, read_shard


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.safetensors"))}


def _zoo_files(root):
    """Every file of a zoo folder but the build log (wall-clock times, not part of the zoo), by name."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.name != BUILD_LOG}


def _four_shard_recipe():
    """The tiny digits-mlp recipe in shards of one network: 4 shards, so slices interleave."""
    return dict(get_recipe("digits-mlp", tiny=True), shard_size=1)


#: recipes whose members are those of others, up to how many networks each trains (their tiny builds
#: cover it)
UNIONS = {"mixed-recipes": ("mixed", "recipes"), "mixed-transformer": ("mixed", "recipes", "digits-transformer")}


def test_union_recipes_are_exactly_their_parts():
    uncounted = lambda members: [{k: v for k, v in m.items() if k != "count"} for m in members]
    for name, parts in UNIONS.items():
        members = [m for p in parts for m in get_recipe(p)["members"]]
        assert uncounted(get_recipe(name)["members"]) == uncounted(members), name
        assert get_recipe(name, tiny=True)["members"] == [m for p in parts for m in get_recipe(p, tiny=True)["members"]]
    assert get_recipe("mixed-recipes")["members"] == get_recipe("mixed")["members"] + get_recipe("recipes")["members"]


#: the recipes of many architectures take seconds even tiny: the slow set builds them
MANY_ARCHITECTURES = {"mixed", "recipes", "residual", "transformers"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in MANY_ARCHITECTURES else n
                                  for n in sorted(set(RECIPES) - set(UNIONS))])
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


# -- sharded builds -------------------------------------------------------------------------------
def test_sharded_build_equals_unsharded_build_byte_for_byte(tmp_path):
    recipe = _four_shard_recipe()
    whole = build(recipe, tmp_path / "whole", progress=False)
    assert build_shards(recipe, tmp_path / "split", part="1/2", progress=False)
    assert build_shards(recipe, tmp_path / "split", part="0/2", progress=False)
    split = tmp_path / "split" / recipe["name"]
    assert not (split / "manifest.json").exists()  # slices never write the manifest
    assert merge(recipe, tmp_path / "split") == split
    files = _zoo_files(whole)
    assert set(files) == {"manifest.json", "test_accuracy.png"} | {
        f"shard-{k:05d}.{ext}" for k in range(4) for ext in ("safetensors", "json")}
    assert _zoo_files(split) == files
    for root in (whole, split):  # timing lives in the build log only, one entry per shard
        assert "seconds" not in files["manifest.json"].decode()
        assert sorted(json.loads((root / BUILD_LOG).read_text())["shards"]) == sorted(
            f"shard-{k:05d}.safetensors" for k in range(4))


def test_merge_before_every_slice_is_built_names_the_missing_shards(tmp_path):
    recipe = _four_shard_recipe()
    assert build_shards(recipe, tmp_path, part="0/2", progress=False)  # shards 0 and 2
    out = tmp_path / recipe["name"]
    shard0 = out / "shard-00000.safetensors"
    data = bytearray(shard0.read_bytes())
    data[-1] ^= 1  # shard 0 no longer matches the checksum in its record
    shard0.write_bytes(bytes(data))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ZooError) as err:
        merge(recipe, tmp_path)
    msg = str(err.value)
    assert "3 of 4 shards not built yet" in msg and "shard-00002" not in msg
    assert "shard-00000.safetensors, shard-00001.safetensors, shard-00003.safetensors" in msg
    assert f"python -m datasets build digits-mlp --tiny --root {tmp_path} --shard i/n" in msg
    assert sorted(p.name for p in out.iterdir()) == before and "manifest.json" not in before


def test_rerunning_a_slice_trains_nothing_new(tmp_path, monkeypatch, capsys):
    trained = []
    original = build_mod._train_shard

    def counting(member, data, recs, progress):
        trained.append([r["id"] for r in recs])
        return original(member, data, recs, progress)

    monkeypatch.setattr(build_mod, "_train_shard", counting)
    cli = ["digits-mlp", "--tiny", "--root", str(tmp_path)]
    assert main(["build", *cli, "--shard", "1/2"]) == 0 and trained == [[2, 3]]
    out = tmp_path / "digits-mlp-tiny"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["build", *cli, "--shard", "1/2"]) == 0 and trained == [[2, 3]]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert "run `merge` once all slices are done" in capsys.readouterr().out
    assert main(["merge", *cli]) == 2
    assert "1 of 2 shards not built yet" in capsys.readouterr().err
    assert main(["build", *cli, "--shard", "0/2"]) == 0 and trained == [[2, 3], [0, 1]]
    assert main(["merge", *cli]) == 0 and "networks: 4" in capsys.readouterr().out
    assert main(["build", *cli]) == 0 and len(trained) == 2  # a plain build of a finished zoo trains nothing


def test_bad_shard_values_are_refused(tmp_path, capsys):
    for bad in ["3/2", "2/2", "-1/2", "0/0", "1", "a/b", "1/2/3", "", "1.0/2"]:
        assert main(["build", "digits-mlp", "--tiny", "--root", str(tmp_path), f"--shard={bad}"]) == 2
        assert f"--shard must be i/n with 0 <= i < n, got '{bad}'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=re.escape("got '3/2'")):
        build_shards(get_recipe("digits-mlp", tiny=True), tmp_path, part="3/2")


def test_card_reads_the_build_time_from_the_log(tmp_path):
    out = build(get_recipe("digits-mlp", tiny=True), tmp_path, progress=False)
    assert re.search(r"build time: \d+ s of training", card(out))
    (out / BUILD_LOG).unlink()
    assert "build time: unknown" in card(out)
    man = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(dict(man, build_seconds=1234.5)))  # a zoo built before the log
    assert "build time: 1234 s of training" in card(out)
    (out / BUILD_LOG).write_text("{not json")
    with pytest.warns(UserWarning, match="build-log.json: not valid JSON"):
        assert "build time: 1234 s" in card(out)
