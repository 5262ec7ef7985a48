"""train.py end to end on a tiny zoo: outputs, resume, loading the best aligner."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import train

from .helpers import train_flags

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def zoo_root(tiny_mlp_train_zoo):
    return tiny_mlp_train_zoo


def _cfg(zoo_root, out, **kw):
    return train.Config(**train_flags(zoo_root, out, **kw))


def _interrupt_in_epoch_2(monkeypatch, cfg):
    """Run ``cfg`` and interrupt it at its second validation: epoch 2 is done but not checkpointed."""
    validate, calls = train.Trainer.validate, []

    def killed_in_epoch_2(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return validate(self)

    monkeypatch.setattr(train.Trainer, "validate", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.main(cfg)
    monkeypatch.undo()


@pytest.mark.slow
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
    _interrupt_in_epoch_2(monkeypatch, _cfg(zoo_root, tmp_path / "cut"))
    cut = train.main(_cfg(zoo_root, tmp_path / "cut", resume=True))
    assert [json.loads(s)["epoch"] for s in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    full = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    resumed = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.slow
def test_moving_average_is_what_is_validated_saved_and_resumed(zoo_root, tmp_path, monkeypatch):
    torch.set_default_dtype(torch.float32)
    cfg = _cfg(zoo_root, tmp_path / "ema", ema=0.9, select="wm_ratio", val_pairs=2)
    # one step by hand: the average moves by 1 - min(0.9, 2/11) towards the stepped weights
    trainer = train.Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.aligner.state_dict().items()}
    trainer.step()
    after = trainer.aligner.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed
    for k in changed:
        expect = before[k] + (after[k] - before[k]) * (1 - 2 / 11)
        torch.testing.assert_close(trainer.ema.state_dict()[k], expect, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(trainer.ema.state_dict()[k], after[k])  # control: not the raw weights
    assert all(not p.requires_grad for p in trainer.ema.parameters())
    # the saved aligner is the average of the best epoch, selected by the ratio to weight matching
    out = train.main(dataclasses.replace(cfg, epochs=1))
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    saved = load_file(out / "aligner.safetensors")
    assert all(torch.equal(saved[k], ck["ema"][k]) for k in saved)
    assert any(not torch.equal(saved[k], ck["model"][k]) for k in saved)
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["val_wm_ratio"] > 0 and record["best_val_wm_ratio"] == record["val_wm_ratio"]
    # killed in epoch 2 and resumed: the same average as an uninterrupted run
    full = train.main(dataclasses.replace(cfg, out=str(tmp_path / "full")))
    _interrupt_in_epoch_2(monkeypatch, dataclasses.replace(cfg, out=str(tmp_path / "cut")))
    cut = train.main(dataclasses.replace(cfg, out=str(tmp_path / "cut"), resume=True))
    a = torch.load(full / "checkpoint.pt", weights_only=True)["ema"]
    b = torch.load(cut / "checkpoint.pt", weights_only=True)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint with an average cannot continue a run without one (and the reverse)
    with pytest.raises(train.GNNAlignError, match="checkpoint.pt: checkpoint has moving-average weights"):
        train.Trainer(dataclasses.replace(cfg, ema=0.0)).load(full / "checkpoint.pt")
    plain = train.main(_cfg(zoo_root, tmp_path / "plain", epochs=1))
    with pytest.raises(train.GNNAlignError, match="lacks moving-average weights but this run has ema=0.9"):
        train.Trainer(cfg).load(plain / "checkpoint.pt")


def test_wm_ratio_is_the_geometric_mean_of_per_member_ratios():
    # member 0: (1 + 3) / (2 + 2) = 1; member 1: 2 / 1 = 2; member 2: WM sums to 0, skipped
    got = train.wm_ratio([0, 0, 1, 2], [1.0, 3.0, 2.0, 5.0], [2.0, 2.0, 1.0, 0.0])
    assert got == pytest.approx(2 ** 0.5, rel=1e-12)
    assert train.wm_ratio([0], [1.0], [0.0]) != train.wm_ratio([0], [1.0], [0.0])  # NaN: nothing to compare
    # a member whose barriers sum to about 0 or below counts as the floor, not as minus infinity
    for tiny in (0.0, -0.5, 1e-9):
        got = train.wm_ratio([0, 1], [tiny, 2.0], [1.0, 1.0])
        assert got == pytest.approx((train.WM_RATIO_FLOOR * 2.0) ** 0.5, rel=1e-12)


@pytest.mark.parametrize("field, value, message", [("select", "loss", "select must be one of"),
                                                    ("ema", 1.0, r"ema must be in \[0, 1\)")])
def test_bad_selection_settings_are_refused(zoo_root, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        train.Trainer(_cfg(zoo_root, tmp_path / "bad", **{field: value}))


def test_config_cli_is_generated_from_the_dataclass():
    cfg = train.parse_config(["--hidden", "12", "--resume", "--lr", "0.01"])
    assert cfg.hidden == 12 and cfg.resume and cfg.lr == 0.01 and cfg.zoo == "digits-mlp"


def test_preset_sets_defaults_and_flags_still_win():
    cfg = train.parse_config(["--preset", "mixed"])
    assert cfg.zoo == "mixed" and cfg.out == "runs/mixed" and cfg.epochs == train.PRESETS["mixed"]["epochs"]
    cfg = train.parse_config(["--preset", "mixed", "--epochs", "2", "--zoo", "other"])
    assert cfg.epochs == 2 and cfg.zoo == "other" and cfg.planted_per_step == train.PRESETS["mixed"]["planted_per_step"]
    assert train.parse_config([]) == train.Config()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, folder):
    """One rank of a data-parallel run (torch.multiprocessing target): trains, saves its parameters."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    trainer = train.train(cfg)
    save_file({k: v.contiguous() for k, v in trainer.aligner.state_dict().items()}, f"{folder}/rank{rank}.safetensors")


@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process_run_with_the_same_global_batch(zoo_root, tmp_path):
    torch.set_default_dtype(torch.float32)  # as in the spawned ranks (the suite's default is float64)
    cfg = _cfg(zoo_root, tmp_path / "ddp", epochs=2, steps_per_epoch=3, planted_per_step=2, unlabelled_per_step=2,
               threads=1)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # ranks end identical
    # rank 0 alone wrote the run's files; its checkpoint holds the final parameters
    assert [json.loads(s)["epoch"] for s in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    single = train.train(dataclasses.replace(cfg, out=str(tmp_path / "one"))).aligner.state_dict()
    diff = max(float((single[k] - ranks[0][k]).abs().max()) for k in single)
    assert diff < 1e-5, diff
    # negative control: a 1-process run on half the global batch (one rank's share) is not the same run
    half = train.train(dataclasses.replace(cfg, out=str(tmp_path / "half"), planted_per_step=1,
                                           unlabelled_per_step=1)).aligner.state_dict()
    assert max(float((half[k] - ranks[0][k]).abs().max()) for k in half) > 100 * max(diff, 1e-7)
    # same losses logged: rank 0 logs the global batch's losses
    logs = [[json.loads(s) for s in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("ddp", "one")]
    for a, b in zip(*logs, strict=True):
        assert a["train_planted"] == pytest.approx(b["train_planted"], rel=1e-5)
        assert a["train_task"] == pytest.approx(b["train_task"], rel=1e-5)


def _write_config(cfg, path):
    path.write_text(json.dumps(dataclasses.asdict(cfg)))
    return path


def _train_cmd(*args):
    return [sys.executable, str(ROOT / "train.py"), *args]


@pytest.mark.slow
def test_torchrun_reads_the_same_config_file_and_only_rank_0_writes(zoo_root, tmp_path):
    torch.set_default_dtype(torch.float32)
    cfg = _cfg(zoo_root, tmp_path / "one", epochs=1, steps_per_epoch=2, planted_per_step=2, unlabelled_per_step=2,
               threads=1)
    path = _write_config(cfg, tmp_path / "cfg.json")
    assert train.parse_config(["--config", str(path)]) == cfg
    try:
        # static rendezvous on the loopback address (no hostname lookup; --standalone resolves the host)
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                              "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(ROOT / "train.py"),
                              "--config", str(path), "--out", str(tmp_path / "ddp")],
                             check=False, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun did not finish in 240 s:\n{e.stdout}\n{e.stderr}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('"epoch": 1') == 1  # one rank logs
    single = train.train(cfg).aligner.state_dict()
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["model"]
    assert max(float((single[k] - ddp[k]).abs().max()) for k in single) < 1e-5
    # a config file with a field train.py does not know is refused, naming the field
    (tmp_path / "bad.json").write_text(json.dumps({"hidden": 8, "hiden": 9}))
    with pytest.raises(SystemExit, match="bad.json: unknown field.*hiden"):
        train.parse_config(["--config", str(tmp_path / "bad.json")])


def _position(checkpoint, cfg):
    """Steps a checkpoint has done."""
    return checkpoint["epoch"] * cfg.steps_per_epoch + checkpoint["step"]


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_the_same_weights(zoo_root, tmp_path):
    cfg = _cfg(zoo_root, tmp_path / "full", epochs=2, steps_per_epoch=8, checkpoint_every=1, threads=1)
    path = _write_config(cfg, tmp_path / "cfg.json")
    full = subprocess.run(_train_cmd("--config", str(path)), check=False, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd("--config", str(path), "--out", str(cut)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck, total = cut / "checkpoint.pt", cfg.epochs * cfg.steps_per_epoch
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # kill once a few steps are checkpointed
        if ck.is_file() and _position(torch.load(ck, weights_only=True), cfg) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= _position(torch.load(ck, weights_only=True), cfg) < total  # killed mid-run
    again = subprocess.run(_train_cmd("--config", str(path), "--out", str(cut), "--resume"),
                           check=False, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(ck, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"], b["rng"])
    assert [json.loads(s)["epoch"] for s in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (cut / "aligner.safetensors").read_bytes() == (tmp_path / "full" / "aligner.safetensors").read_bytes()


def test_pseudo_labels_add_a_cross_entropy_towards_their_permutations(zoo_root, tmp_path, monkeypatch):
    """Pseudo-label a pair whose B is A permuted: the right permutation costs less than a wrong one (the
    untrained probe pass already matches a permuted copy). A file of another zoo is refused in one line."""
    from gnn_align import apply_permutation, invert_permutation, random_permutation
    from gnn_align.errors import GNNAlignError

    cfg = _cfg(zoo_root, tmp_path / "run", planted_per_step=1, unlabelled_per_step=0, pseudo_per_step=1)
    zoo = train.Trainer(dataclasses.replace(cfg, pseudo_per_step=0)).train_zoo
    assert zoo.member_of(1) == zoo.member_of(0)
    spec = zoo.spec(zoo.member_of(0))
    perm = random_permutation(spec, torch.Generator().manual_seed(3))  # aligns B (network "1") to A (0)
    a = zoo.state_dict(0)
    b = apply_permutation(a, invert_permutation(perm, spec), spec)
    assert torch.equal(apply_permutation(b, perm, spec)["0.weight"], a["0.weight"])
    losses = {}
    for name, label in [("right", perm), ("wrong", {g: v.roll(1) for g, v in perm.items()})]:
        path = tmp_path / f"{name}.json"
        pairs = [[0, 1, {g: v.tolist() for g, v in label.items()}, 0]]
        path.write_text(json.dumps({"zoo": cfg.zoo, "split": "train", "pairs": pairs}))
        trainer = train.Trainer(dataclasses.replace(cfg, pseudo_labels=str(path)))
        assert len(trainer.pseudo) == 1
        real = trainer.train_zoo.state_dict
        monkeypatch.setattr(trainer.train_zoo, "state_dict", lambda i, real=real: b if i == 1 else real(i))
        losses[name] = trainer.step()["pseudo"]
    assert losses["right"] < 0.01 * losses["wrong"]  # found at once against a loss of about 20
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zoo": "other", "split": "train", "pairs": [[0, 1, {}, 0]]}))
    with pytest.raises(GNNAlignError, match="bad.json: pseudo-labels of other/train"):
        train.Trainer(dataclasses.replace(cfg, pseudo_labels=str(bad)))
