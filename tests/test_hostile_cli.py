"""Hostile inputs to the ``gnn-align`` CLI (issue 18, the CLI items): every bad input ends with one
line on stderr (``gnn-align: error: ...``), exit code 2 and nothing written; nothing is unpickled;
outputs keep their permissions and never replace an input. The CLI runs in-process
(``gnn_align.cli.main``) except where a separate interpreter or mount namespace is the point."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gnn_align import cli
from gnn_align.models import build_model, load_state_file, save_state_file

ARCH = "mlp:64,8,10"  # digits inputs, 10 classes
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pair(tmp_path):
    """Two random models of ARCH as a.safetensors and b.pt."""
    paths = []
    for seed, name in ((1, "a.safetensors"), (2, "b.pt")):
        torch.manual_seed(seed)
        paths.append(save_state_file(build_model(ARCH).state_dict(), tmp_path / name))
    return paths


def run(capsys, *args):
    """``gnn-align ARGS`` in-process: (exit code, stdout, stderr)."""
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert err.startswith("gnn-align") and ": error: " in err and err.strip().count("\n") == 0, err
    assert "Traceback" not in err and "\x1b" not in err, err
    for n in needles:
        assert n in err, (n, err)


def nothing_new(folder: Path, before: set):
    assert set(folder.iterdir()) == before, sorted(set(folder.iterdir()) - before)


def test_item03_merge_weights_must_be_finite_numbers(capsys, pair, tmp_path):
    """``merge --weights`` nan,1 / inf,1 / 1,x / -1,1 / 1 (too few): one line naming --weights, exit 2, no file."""
    a, b = pair
    before = set(tmp_path.iterdir())
    for w in ("nan,1", "inf,1", "1,x", "-1,1", "1", "0,0"):
        rc, _, err = run(capsys, "merge", a, b, "-o", tmp_path / "m.pt", "--model", ARCH, "--method", "wm",
                         "--weights", w)
        one_line_error(rc, err, "--weights")
        nothing_new(tmp_path, before)


def test_item06_output_naming_model_a_is_refused(capsys, pair, tmp_path):
    """align/merge -o naming model A (or any input, also through a symlink) is refused and leaves it untouched; --force
    allows it."""
    a, b = pair
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(a)
    for args in (("align", a, b, "-o", a), ("align", a, b, "-o", b), ("align", a, b, "-o", link),
                 ("merge", a, b, "-o", a), ("merge", a, b, "-o", b)):
        rc, _, err = run(capsys, *args, "--model", ARCH, "--method", "wm")
        one_line_error(rc, err, "refusing to overwrite an input", "--force")
        assert a.read_bytes() == raw_a and b.read_bytes() == raw_b
    rc, _, err = run(capsys, "align", a, b, "-o", b, "--model", ARCH, "--method", "wm", "--force")
    assert rc == 0, err


def test_item06_overwriting_an_output_keeps_its_permissions(capsys, pair, tmp_path):
    """Overwriting an existing output (align -o, merge -o) keeps the file's permissions (0600 stays 0600)."""
    a, b = pair
    for cmd, suffix in (("align", ".pt"), ("merge", ".safetensors")):
        out = tmp_path / f"out{suffix}"
        out.write_bytes(b"old")
        os.chmod(out, 0o600)
        rc, _, err = run(capsys, cmd, a, b, "-o", out, "--model", ARCH, "--method", "wm")
        assert rc == 0, err
        assert out.stat().st_mode & 0o7777 == 0o600
        assert load_state_file(out).keys() == load_state_file(a).keys()


def test_item12_bad_outputs_data_and_aligners_are_one_line(capsys, pair, tmp_path):
    """Output that is a directory, --data not fitting --model (both shapes named), eval --data of the wrong task, a
    truncated aligner file, an invalid aligner config.json: one line naming the file, exit 2, nothing written."""
    a, b = pair
    (tmp_path / "dir.pt").mkdir()
    rc, _, err = run(capsys, "align", a, b, "-o", tmp_path / "dir.pt", "--model", ARCH, "--method", "wm")
    one_line_error(rc, err, "dir.pt", "is a directory")
    # inputs of digits (64 features) for a 40-input model: both shapes, not an fx traceback
    torch.manual_seed(0)
    a40, b40 = (save_state_file(build_model("mlp:40,8,10").state_dict(), tmp_path / n) for n in ("a40.pt", "b40.pt"))
    before = set(tmp_path.iterdir())
    rc, _, err = run(capsys, "align", a40, b40, "-o", tmp_path / "o.pt", "--model", "mlp:40,8,10", "--method", "am",
                     "--data", "digits")
    one_line_error(rc, err, "(64,)", "(40,)", "digits")
    rc, _, err = run(capsys, "eval", a40, b40, "--model", "mlp:40,8,10", "--data", "digits-2d",
                     "--out", tmp_path / "ev")
    one_line_error(rc, err, "(1, 8, 8)", "(40,)")
    # right input shape, wrong task: digits has 10 classes, this model 3 outputs
    a3, b3 = (save_state_file(build_model("mlp:64,8,3").state_dict(), tmp_path / n) for n in ("a3.pt", "b3.pt"))
    before = set(tmp_path.iterdir())
    rc, _, err = run(capsys, "eval", a3, b3, "--model", "mlp:64,8,3", "--data", "digits", "--out", tmp_path / "ev")
    one_line_error(rc, err, "3 outputs", "labels")
    nothing_new(tmp_path, before)
    # aligner run folders: truncated weights, config.json that is not JSON, config.json with bad arguments
    shipped = REPO / "gnn_align" / "pretrained"
    config = {"aligner": json.loads((shipped / "mixed.json").read_text())["config"]["aligner"]}
    weights = (shipped / "mixed.safetensors").read_bytes()
    for name, cfg, raw, needle in (("cut", json.dumps(config), weights[: len(weights) // 2], "aligner.safetensors"),
                                   ("notjson", "{not json", weights, "config.json"),
                                   ("badarg", json.dumps({"aligner": {"bogus": 1}}), weights, "config.json")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "config.json").write_text(cfg)
        (run_dir / "aligner.safetensors").write_bytes(raw)
        before = set(tmp_path.iterdir())
        rc, _, err = run(capsys, "align", a, b, "-o", tmp_path / "o.pt", "--model", ARCH, "--method", "gnn",
                         "--aligner", run_dir)
        one_line_error(rc, err, str(run_dir / needle))
        nothing_new(tmp_path, before)


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
                       capture_output=True, timeout=30, check=False)
    return r.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs unshare and tmpfs mounts in a user namespace")
def test_item12_read_only_and_full_disk_are_one_line(tmp_path):
    """Output on a read-only filesystem (refused before the work) and on a full disk ("no space left on device"): one
    line, exit 2, no partial file."""
    arch = "mlp:64,64,64,10"  # a ~35 kB float32 model file, more than the full disk has left
    torch.manual_seed(0)
    big = [save_state_file({k: v.float() for k, v in build_model(arch).state_dict().items()}, tmp_path / n)
           for n in ("A.pt", "B.pt")]
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    cmd = f"""
mount -t tmpfs -o ro,size=64k tmpfs {ro}
mount -t tmpfs -o size=128k tmpfs {full}
dd if=/dev/zero of={full}/filler bs=4k count=30 2>/dev/null
for out in {ro}/o.pt {full}/o.pt {full}/o.safetensors; do
  {sys.executable} -m gnn_align.cli align {big[0]} {big[1]} -o $out --model {arch} --method wm
  echo "rc=$?"
  ls -a {full}
done
"""
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", cmd], capture_output=True,
                       text=True, cwd=REPO, timeout=600, check=False)
    errs = [e for e in r.stderr.splitlines() if e.strip()]
    assert r.stdout.count("rc=2") == 3, (r.stdout, r.stderr)
    assert len(errs) == 3 and all(e.startswith("gnn-align: error: ") for e in errs), r.stderr
    assert "read-only file system" in errs[0] and "ro/o.pt" in errs[0]
    assert all("no space left on device" in e for e in errs[1:]), errs
    assert "o.pt" not in r.stdout and ".tmp" not in r.stdout  # no output, no temporary file left


def test_item13_json_errors_are_json(capsys, pair, tmp_path):
    """With --json a failure prints {"error": ..., "file": ...} on stdout (exit 2), and results never hold bare
    NaN/Infinity (null, listed in nan_fields)."""
    a, b = pair

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON output"))

    missing = tmp_path / "missing.pt"
    rc, out, err = run(capsys, "align", missing, b, "-o", tmp_path / "o.pt", "--model", ARCH, "--json")
    one_line_error(rc, err, "missing.pt")
    assert strict(out) == {"error": err.strip().removeprefix("gnn-align: error: "), "file": str(missing)}
    rc, out, err = run(capsys, "align", a, "--json")  # an argument error
    assert rc == 2 and set(strict(out)) == {"error", "file"}
    # models whose outputs overflow: the loss curve is NaN, the JSON holds null and says where
    huge = {k: v * 1e200 for k, v in load_state_file(a).items()}
    h = save_state_file(huge, tmp_path / "huge.pt")
    rc, out, err = run(capsys, "eval", h, h, "--model", ARCH, "--data", "digits", "--lambdas", "3", "--json",
                       "--out", tmp_path / "ev")
    assert rc == 0, err
    info = strict(out)
    assert info["curve"]["loss"][0] is None and any(f["field"] == "curve.loss[0]" for f in info["nan_fields"])
    strict((tmp_path / "ev" / "curve.json").read_text())


def test_item14_messages_say_what_is_wrong(capsys, pair, tmp_path):
    """A directory or symlink loop is not "file not found"; random bytes or safetensors named .pt are "not a torch
    file"; a pickled nn.Module says "save model.state_dict() instead" (no ANSI escapes); bench --pairs 0 is refused
    in one line."""
    a, b = pair
    (tmp_path / "folder.pt").mkdir()
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    shutil.copy(a, tmp_path / "st.pt")  # a safetensors file named .pt
    torch.save(build_model(ARCH), tmp_path / "module.pt")
    cases = [("folder.pt", "is a directory"), ("loop.pt", "symbolic link loop"), ("random.pt", "not a torch file"),
             ("st.pt", "not a torch file"), ("module.pt", "save model.state_dict() instead")]
    for name, needle in cases:
        rc, _, err = run(capsys, "align", tmp_path / name, b, "-o", tmp_path / "o.pt", "--model", ARCH)
        one_line_error(rc, err, name, needle)
        assert "file not found" not in err and "would unpickle" not in err, err
    rc, _, err = run(capsys, "bench", "--zoo", "none", "--root", tmp_path, "--pairs", "0")
    one_line_error(rc, err, "--pairs 0")


def test_item16_data_accepts_the_users_own_files(capsys, pair, tmp_path):
    """--data takes .npy/.npz/.pt/.safetensors/.csv files (inputs, optional labels) for am and eval, checks them against
    --model in one line naming both shapes, and eval refuses a file without labels."""
    from safetensors.numpy import save_file

    from gnn_align.tasks import load_task

    a, b = pair
    t = load_task("digits")
    x, y = t.x_test[:120].numpy(), t.y_test[:120].numpy()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    torch.save((torch.from_numpy(x), torch.from_numpy(y)), tmp_path / "xy.pt")
    save_file({"x": x, "y": y}, str(tmp_path / "xy.safetensors"))
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    rows = [",".join(f"{v:g}" for v in row) + f",{lab}" for row, lab in zip(x, y, strict=True)]
    (tmp_path / "xy.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    for name in ("x.npy", "xy.npz", "xy.pt", "xy.safetensors", "xy.csv"):
        out = tmp_path / f"aligned-{name}.pt"
        rc, _, err = run(capsys, "align", a, b, "-o", out, "--model", ARCH, "--method", "am", "--data",
                         tmp_path / name)
        assert rc == 0 and out.is_file(), (name, err)
    for name in ("xy.npz", "xy.csv"):
        rc, out, err = run(capsys, "eval", a, b, "--model", ARCH, "--data", tmp_path / name, "--lambdas", "3",
                           "--out", tmp_path / f"ev-{name}", "--json")
        assert rc == 0, (name, err)
        assert len(json.loads(out)["curve"]["loss"]) == 3
    rc, _, err = run(capsys, "eval", a, b, "--model", ARCH, "--data", tmp_path / "x.npy", "--out", tmp_path / "e")
    one_line_error(rc, err, "x.npy", "no labels")
    np.save(tmp_path / "x5.npy", x[:, :5])
    rc, _, err = run(capsys, "align", a, b, "-o", tmp_path / "o.pt", "--model", ARCH, "--method", "am", "--data",
                     tmp_path / "x5.npy")
    one_line_error(rc, err, "x5.npy", "(5,)", "(64,)")
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "e").exists()


@pytest.mark.slow
def test_item17_help_and_argument_errors_do_not_import_torch():
    """`gnn-align --help` and argument errors import neither torch nor torch_geometric; `import gnn_align` and weight
    matching do not import torch_geometric."""
    code = """
import sys
from gnn_align.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
assert main(["align", "a.pt"]) == 2
print("help:", sorted(m for m in ("torch", "torch_geometric") if m in sys.modules))
import gnn_align
from gnn_align import align
from gnn_align.models import build_model
m = build_model("mlp:4,6,3")
res = align(m.state_dict(), m.state_dict(), "wm", module=m)
print("wm:", sorted(m for m in ("torch_geometric",) if m in sys.modules))
from gnn_align.cli.models import AUTO_BUDGET
from gnn_align.refine import AUTO_BUDGET as LIBRARY_BUDGET
print("budget:", AUTO_BUDGET == LIBRARY_BUDGET)
import gnn_align as ga
print("submodule:", callable(ga.api.average_states), hasattr(ga, "no_such_name"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert "help: []" in r.stdout and "wm: []" in r.stdout and "budget: True" in r.stdout, r.stdout
    assert "submodule: True False" in r.stdout, r.stdout  # lazy __getattr__ still reaches submodules


@pytest.fixture(scope="module")
def tiny_cnn_zoo(tmp_path_factory):
    """A built tiny digits-cnn zoo whose networks are all test networks: ``(root, name)``."""
    from datasets.build import build
    from datasets.recipes import get_recipe

    recipe = get_recipe("digits-cnn", tiny=True)
    recipe["splits"] = {"test": 1.0}
    path = build(recipe, tmp_path_factory.mktemp("zoos"), progress=False)
    return Path(path).parent, Path(path).name


def test_item15_bench_runs_the_shipped_aligner_by_default_and_by_name(capsys, tiny_cnn_zoo, tmp_path):
    """`bench --methods gnn` benchmarks the shipped aligner without --aligner and with its name (`--aligner mixed`); an
    unknown name is one line."""
    root, zoo = tiny_cnn_zoo
    means = []
    for extra in ((), ("--aligner", "mixed")):
        out = tmp_path / f"out{len(extra)}"
        rc, stdout, err = run(capsys, "bench", "--zoo", zoo, "--root", root, "--methods", "gnn", "--pairs", 2,
                              "--json", "--out", out, *extra)
        assert rc == 0, err
        res = json.loads(stdout)
        assert res["pairs"] == 2 and (out / "results.json").is_file()
        means.append(res["methods"]["gnn"]["barrier_deepalign"]["mean"])
    assert means[0] == means[1]  # the default is the shipped aligner itself
    rc, _, err = run(capsys, "bench", "--zoo", zoo, "--root", root, "--methods", "gnn", "--pairs", 2,
                     "--aligner", "no-such-aligner", "--out", tmp_path / "bad")
    one_line_error(rc, err, "no-such-aligner")
    assert not (tmp_path / "bad").exists()
