"""Hostile inputs and faults of training, zoo storage and infrastructure (issue 18, items 2, 5, 10, 11).

Each test is named after its item and states the expected behaviour in its docstring.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest
import torch

import datasets.build as build_mod
import train
from datasets.__main__ import main as datasets_main
from datasets.build import build_shards
from datasets.recipes import get_recipe
from gnn_align import io as gio
from gnn_align import memory
from gnn_align.errors import GNNAlignError
from gnn_align.memory import available_memory_mb, check_aligner_memory, graph_size
from gnn_align.memory import measure as measure_mod
from gnn_align.training.checkpoint import load_training_state, save_training_state
from gnn_align.zoo import ModelZoo, ZooError

from .helpers import SHIPPED, meta_spec, train_flags, write_tiny_zoo


# -- item 2: train.py --resume ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo_root(tiny_mlp_train_zoo):
    return tiny_mlp_train_zoo


def _argv(zoo_root, out, **kw):
    """train.py flags of a tiny run (as in tests/test_train.py) into ``out``."""
    argv = []
    for k, v in train_flags(zoo_root, out, **kw).items():
        flag = "--" + k.replace("_", "-")
        argv += ([flag] if v is True else []) if isinstance(v, bool) else [flag, str(v)]
    return argv


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished_run(zoo_root, tmp_path_factory):
    torch.set_default_dtype(torch.float32)
    out = tmp_path_factory.mktemp("runs") / "run"
    train.main(train.parse_config(_argv(zoo_root, out)))
    torch.set_default_dtype(torch.float64)
    return out


def test_item02_resume_with_changed_flag_leaves_the_run_intact(zoo_root, finished_run, tmp_path, capsys):
    """--resume with a changed architecture flag exits 2 with one line naming the flag and writes nothing."""
    torch.set_default_dtype(torch.float32)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    capsys.readouterr()
    assert train.cli(_argv(zoo_root, run, resume=True, hidden=16)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "hidden" in err, err
    assert _snapshot(run) == before  # config.json, checkpoint, metrics and weights untouched
    assert train.load_aligner(run).config.hidden == 8  # the run still loads


def test_item02_resume_without_checkpoint_says_so_and_exits_2(zoo_root, tmp_path, capsys):
    """--resume into a folder without checkpoint.pt exits 2 with one line naming it, creating nothing."""
    out = tmp_path / "nothing-yet"
    assert train.cli(_argv(zoo_root, out, resume=True)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.pt" in err and "no checkpoint" in err, err
    assert not out.exists()


def test_item02_rerun_without_checkpoint_does_not_duplicate_metrics_epochs(zoo_root, tmp_path):
    """A run restarted without its checkpoint lists each epoch once in metrics.jsonl."""
    torch.set_default_dtype(torch.float32)
    out = tmp_path / "run"
    argv = _argv(zoo_root, out, epochs=1, steps_per_epoch=1)
    assert train.cli(argv) == 0
    (out / "checkpoint.pt").unlink()  # e.g. lost, or killed before the first one was written
    assert train.cli(argv) == 0
    assert [json.loads(s)["epoch"] for s in (out / "metrics.jsonl").read_text().splitlines()] == [1]


# -- item 5: checksums of the zoo cache and of checkpoints --------------------------------------------
def _flip_byte_of(path, tensor):
    """Flip one byte of ``tensor``'s data where it is stored in the file ``path`` (a changed weight)."""
    raw = bytearray(path.read_bytes())
    needle = tensor.contiguous().numpy().tobytes()
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0, "tensor bytes not found once in the file"
    raw[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_item05_flipped_byte_in_the_zoo_cache_is_detected(tmp_path):
    """A flipped byte in a weight of processed/*.pt raises ZooError naming the cache file."""
    root = tmp_path / "tiny"
    write_tiny_zoo(str(root))
    zoo = ModelZoo(root, "train")
    cache = root / "processed" / zoo.processed_file_names[0]
    blob = torch.load(cache, weights_only=True)
    weight = next(v for v in blob["states"][0].values() if v.is_floating_point() and v.numel() > 8)
    _flip_byte_of(cache, weight)
    with pytest.raises(ZooError, match=f"{cache.name}.*checksum mismatch"):
        ModelZoo(root, "train")


def test_item05_shard_corrupted_after_caching_is_detected(tmp_path, monkeypatch):
    """A shard changed after the processed cache was made raises ZooError naming the shard."""
    root = tmp_path / "tiny"
    write_tiny_zoo(str(root))
    ModelZoo(root, "train")  # the cache exists now
    shard = root / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, one weight changed
    shard.write_bytes(bytes(data))
    monkeypatch.setattr(gio, "_SHA256_SEEN", {})  # as a new process would see it
    with pytest.raises(ZooError, match="shard-00000.safetensors.*checksum mismatch"):
        ModelZoo(root, "train")


def test_item05_flipped_byte_in_a_checkpoint_is_detected(tmp_path):
    """A flipped byte in a weight of checkpoint.pt raises GNNAlignError naming the file on load."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "checkpoint.pt"
    save_training_state(path, model, opt, sched, gen, epoch=1)
    assert load_training_state(path, model, opt, sched, gen) == {"epoch": 1}  # control: intact file loads
    _flip_byte_of(path, model.weight.detach())
    with pytest.raises(GNNAlignError, match="checkpoint.pt: checksum mismatch"):
        load_training_state(path, model, opt, sched, gen)


# -- item 10: memory limits ---------------------------------------------------------------------------
def test_item10_memory_check_honours_rlimit_as_and_cgroup_limits(tmp_path, monkeypatch):
    """Available memory is the smallest of MemAvailable, RLIMIT_AS headroom and cgroup (v2/v1) headroom."""
    mib = 1 << 20
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {16 << 20} kB\nMemAvailable: {8 << 20} kB\n")  # 8 GiB free
    status = tmp_path / "status"
    status.write_text(f"VmSize: {1536 * 1024} kB\n")  # 1.5 GiB of address space in use
    v2 = tmp_path / "cg2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{1024 * mib}\n")
    (v2 / "memory.current").write_text(f"{300 * mib}\n")
    (v2 / "memory.stat").write_text(f"anon 1\ninactive_file {100 * mib}\n")
    self_cgroup = tmp_path / "cgroup"
    self_cgroup.write_text("0::/\n")
    no_limit = (-1, -1)
    src = {"meminfo": meminfo, "status": status, "self_cgroup": self_cgroup}
    # cgroup v2: 1024 MB limit less 200 MB not reclaimable
    assert available_memory_mb(**src, cgroup_root=v2, rlimit_as=lambda: no_limit) == pytest.approx(824)
    # RLIMIT_AS of 2 GiB with 1.5 GiB mapped leaves 512 MB: the smallest
    limits = memory.memory_limits_mb(**src, cgroup_root=v2, rlimit_as=lambda: (2048 * mib, -1))
    assert limits["RLIMIT_AS"] == pytest.approx(512) and limits["MemAvailable"] == pytest.approx(8192)
    assert min(limits.values()) == pytest.approx(512)
    # cgroup v1 in a nested group: the parent's limit binds
    v1 = tmp_path / "cg1"
    (v1 / "memory" / "job").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{256 * mib}\n")
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited
    self_cgroup.write_text("4:memory:/job\n0::/\n")
    assert available_memory_mb(**src, cgroup_root=v1, rlimit_as=lambda: no_limit) == pytest.approx(256)
    # the aligner's pre-check uses the smallest figure
    monkeypatch.setattr(measure_mod, "_MEMINFO", meminfo)
    monkeypatch.setattr(measure_mod, "_CGROUP", v1, raising=False)
    monkeypatch.setattr(measure_mod, "_SELF_CGROUP", self_cgroup, raising=False)
    monkeypatch.setattr(measure_mod, "_getrlimit_as", lambda: no_limit, raising=False)
    size = graph_size(meta_spec("mlp:64,2048,2048,2048,10"))  # needs GBs: more than 256 MB, less than 8 GB
    msg = check_aligner_memory("m", size, SHIPPED, raise_error=False)
    assert msg is not None and "256 MB available" in msg, msg


# -- item 11: zoo builds ------------------------------------------------------------------------------
def test_item11_negative_max_shards_is_refused_in_one_line(tmp_path, capsys):
    """`datasets build --max-shards -1` exits 2 with one line naming --max-shards and writes nothing."""
    assert datasets_main(["build", "digits-mlp", "--tiny", "--root", str(tmp_path), "--max-shards", "-1"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--max-shards" in err, err
    assert "stopped" not in captured.out and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="max-shards"):
        build_shards(get_recipe("digits-mlp", tiny=True), tmp_path, max_shards=-1, progress=False)


def test_item11_stale_tmp_files_are_removed_at_the_next_build(tmp_path):
    """Temporary files left by a killed atomic write are removed when the next build starts."""
    recipe = get_recipe("digits-mlp", tiny=True)
    out = tmp_path / recipe["name"]
    out.mkdir()
    stale = [out / ".shard-00000.safetensors.k3j2h1g0.tmp", out / ".build-log.json.a1b2c3d4.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = out / "notes.tmp.txt"
    keep.write_text("the user's")
    assert build_shards(recipe, tmp_path, max_shards=0, progress=False) is False  # trains nothing
    assert not any(p.exists() for p in stale) and keep.exists()
    assert not list(out.glob(".*lock*"))  # the build's lock is gone with it


def test_item11_second_concurrent_build_is_refused_and_a_dead_lock_is_taken_over(tmp_path, monkeypatch):
    """A second build of a zoo into the same folder is refused naming the lock and pid; a dead one's lock is taken."""
    recipe = get_recipe("digits-mlp", tiny=True)
    started, release, trained = threading.Event(), threading.Event(), []

    class Killed(Exception):
        pass

    def slow_shard(*args, **kwargs):
        trained.append(threading.current_thread().name)
        if threading.current_thread().name != "first":
            raise AssertionError("the second build trains a shard the first one is training")
        started.set()
        release.wait(60)
        raise Killed  # the first build is killed before it writes its shard

    monkeypatch.setattr(build_mod, "_train_shard", slow_shard)
    errors = []

    def first():
        try:
            build_shards(recipe, tmp_path, progress=False)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    t = threading.Thread(target=first, name="first")
    t.start()
    try:
        assert started.wait(60)
        with pytest.raises(ZooError, match=rf"\.build\.lock: zoo {recipe['name']} is being built by another "
                                           rf"process \(pid {os.getpid()}"):
            build_shards(recipe, tmp_path, progress=False)
    finally:
        release.set()
        t.join(60)
    assert trained == ["first"] and isinstance(errors[0], Killed)
    lock = tmp_path / recipe["name"] / ".build.lock"
    assert not lock.exists()  # released by the killed (interrupted) build
    # a lock left by a process that no longer exists is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    assert build_shards(recipe, tmp_path, max_shards=0, progress=False) is False
    assert not lock.exists()
