"""train.py end to end on a tiny zoo: outputs, resume, loading the best aligner."""

import json

import pytest
import torch

import train
from datasets.build import build
from datasets.recipes import get_recipe


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory):
    recipe = get_recipe("digits-mlp", tiny=True)
    recipe["splits"] = {"train": 0.5, "val": 0.5}
    root = tmp_path_factory.mktemp("zoos")
    build(recipe, root, progress=False)
    return root, recipe["name"]


def _cfg(zoo_root, out, **kw):
    root, name = zoo_root
    base = dict(zoo=name, zoo_root=str(root), out=str(out), hidden=8, layers=1, edge_hidden=4, probes=8,
                epochs=2, steps_per_epoch=2, planted_per_step=2, unlabelled_per_step=1, val_planted=2, val_pairs=1,
                bench_pairs=0)
    return train.Config(**(base | kw))


def test_training_writes_config_weights_metrics_and_resumes(zoo_root, tmp_path, monkeypatch):
    torch.set_default_dtype(torch.float32)
    out = train.main(_cfg(zoo_root, tmp_path / "run"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden"] == 8 and cfg["aligner"]["hidden"] == 8
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert {"train_planted", "train_l2", "train_task", "val_planted_acc", "val_barrier"} <= set(r)
        assert 0.0 <= r["val_planted_acc"] <= 1.0
    al = train.load_aligner(out)
    assert isinstance(al, train.GNNAligner)
    # resuming a finished run trains nothing more; resuming after epoch 1 reproduces epoch 2
    again = train.main(_cfg(zoo_root, tmp_path / "run", resume=True))
    assert len((again / "metrics.jsonl").read_text().splitlines()) == 2
    # the same config again (the main job run twice) loads the finished run instead of retraining it,
    # (runtime settings such as threads may differ); a changed config trains afresh
    before = (out / "aligner.safetensors").read_bytes()
    train.main(_cfg(zoo_root, tmp_path / "run"))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "aligner.safetensors").read_bytes() == before
    assert train._same_run(out, _cfg(zoo_root, tmp_path / "run", bench_pairs=3))
    assert not train._same_run(out, _cfg(zoo_root, tmp_path / "run", lr=1e-4))
    # a run killed during epoch 2 (before its checkpoint) resumes from epoch 1: same schedule, RNG, weights
    validate, calls = train.Trainer.validate, []

    def killed_in_epoch_2(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return validate(self)

    monkeypatch.setattr(train.Trainer, "validate", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.main(_cfg(zoo_root, tmp_path / "cut"))
    monkeypatch.undo()
    cut = train.main(_cfg(zoo_root, tmp_path / "cut", resume=True))
    assert [json.loads(s)["epoch"] for s in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    full = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    resumed = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_config_cli_is_generated_from_the_dataclass():
    cfg = train.parse_config(["--hidden", "12", "--resume", "--lr", "0.01"])
    assert cfg.hidden == 12 and cfg.resume and cfg.lr == 0.01 and cfg.zoo == "digits-mlp"


def test_preset_sets_defaults_and_flags_still_win():
    cfg = train.parse_config(["--preset", "mixed"])
    assert cfg.zoo == "mixed" and cfg.out == "runs/mixed" and cfg.epochs == train.PRESETS["mixed"]["epochs"]
    cfg = train.parse_config(["--preset", "mixed", "--epochs", "2", "--zoo", "other"])
    assert cfg.epochs == 2 and cfg.zoo == "other" and cfg.planted_per_step == train.PRESETS["mixed"]["planted_per_step"]
    assert train.parse_config([]) == train.Config()
