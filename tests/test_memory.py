"""gnn_align.memory (peak RSS, available memory, the aligner's memory estimate and pre-check) and
benchmarks/scale/scale.py on tiny models."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from gnn_align import memory, spec_from_module, to_graph
from gnn_align.errors import GNNAlignError
from gnn_align.memory import (
    check_aligner_memory,
    estimate_aligner_memory_mb,
    graph_size,
    measure_peak,
    peak_memory,
)
from gnn_align.models import build_model
from gnn_align.pretrained import load_pretrained

from .conftest import FAMILIES, make_family
from .helpers import SHIPPED, meta_spec

SCALE = Path(__file__).resolve().parents[1] / "benchmarks" / "scale" / "scale.py"


def _needs_proc():
    with peak_memory() as rec:
        pass
    if rec.note:
        pytest.skip(rec.note)


def test_peak_sees_a_known_allocation_and_not_a_noop():
    _needs_proc()
    size = 200 * 2**20

    def allocate():
        x = torch.ones(size // 4, dtype=torch.float32)  # written, so resident
        return float(x[-1])

    out, rec = measure_peak(allocate)
    assert out == 1.0
    assert rec.increase_mb >= 150, rec
    assert rec.peak_mb >= rec.start_mb and rec.seconds > 0
    with peak_memory() as idle:
        pass
    assert idle.increase_mb < 20, idle
    # the peak is reset: a later, smaller block does not inherit the 200 MB peak
    _, small = measure_peak(lambda: torch.ones(10 * 2**20 // 4).sum())
    assert small.increase_mb < 60, small


def test_figures_are_none_and_say_why_without_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(memory.measure, "_STATUS", tmp_path / "missing-status")
    monkeypatch.setattr(memory.measure, "_MEMINFO", tmp_path / "missing-meminfo")
    monkeypatch.setattr(memory.measure, "_CGROUP", tmp_path / "missing-cgroup")  # nor any other memory limit
    monkeypatch.setattr(memory.measure, "_getrlimit_as", lambda: None)
    with peak_memory() as rec:
        pass
    assert rec.peak_mb is None and rec.increase_mb is None and "not measured" in rec.note
    assert memory.available_memory_mb() is None and memory.rss_mb() is None
    with pytest.warns(UserWarning, match="not checked"):
        assert check_aligner_memory("m", graph_size(meta_spec("mlp:64,8,8,10")), SHIPPED) is None


def test_available_memory_is_positive():
    avail = memory.available_memory_mb()
    if avail is None:
        pytest.skip("no /proc/meminfo")
    assert avail > 0


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_graph_size_is_what_to_graph_builds(name):
    module, x = make_family(name)
    spec = spec_from_module(module, x)
    g, size = to_graph(module.state_dict(), spec), graph_size(spec)
    assert (size.nodes, size.edges) == (g.num_nodes, g.num_edges)
    assert size.edge_len == g.edge_attr.shape[1]
    assert size.group_widths == tuple(spec.group_sizes.values())
    assert size.params == sum(module.state_dict()[ly.weight].numel() for ly in spec.structure.layers)


@pytest.mark.parametrize("config", [SHIPPED, SHIPPED.replace(num_layers=2), SHIPPED.replace(probes=0, num_layers=1)])
def test_estimate_is_monotone(config):
    base = {"num_nodes": 1000, "num_edges": 100_000, "edge_dim": 10, "group_widths": (300, 300), "params": 100_000,
            "edge_len": 1}
    ref = estimate_aligner_memory_mb(aligner_config=config, **base)
    assert ref > 0
    for key, bigger in (("num_nodes", 2000), ("num_edges", 200_000), ("edge_dim", 11), ("group_widths", (600, 300)),
                        ("params", 900_000), ("edge_len", 9)):
        assert estimate_aligner_memory_mb(aligner_config=config, **(base | {key: bigger})) > ref, key
    assert estimate_aligner_memory_mb(aligner_config=config, float_bytes=8, **base) > ref
    for key in ("hidden", "probes", "num_layers"):
        bigger = config.replace(**{key: getattr(config, key) + 1})
        assert estimate_aligner_memory_mb(aligner_config=bigger, **base) >= ref, key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estimate_bounds_the_measured_peak_within_3x(dtype):
    _needs_proc()
    torch.set_default_dtype(dtype)  # the aligner and the networks (conftest restores float64)
    arch = "mlp:64,384,384,384,10"
    torch.manual_seed(0)
    a, b = build_model(arch).state_dict(), build_model(arch).state_dict()
    aligner, spec = load_pretrained(), meta_spec(arch)
    size = graph_size(spec)
    _, rec = measure_peak(aligner.align, a, b, spec)
    est = estimate_aligner_memory_mb(size.nodes, size.edges, 10, aligner.config, group_widths=size.group_widths,
                                     float_bytes=dtype.itemsize, edge_len=size.edge_len)
    assert rec.increase_mb <= est <= 3 * rec.increase_mb, (rec.increase_mb, est)


def test_check_names_the_model_and_skips_when_memory_is_short(monkeypatch):
    size = graph_size(meta_spec("mlp:64,2048,2048,2048,10"))
    monkeypatch.setattr(memory.estimate, "available_memory_mb", lambda: 512.0)
    msg = check_aligner_memory("mlp-2048-d3", size, SHIPPED, raise_error=False)
    assert msg.startswith("mlp-2048-d3: 8.54M edges need ~") and msg.endswith("GB for the aligner, 512 MB available")
    with pytest.raises(GNNAlignError, match="mlp-2048-d3: .* 512 MB available: align it with method='wm'"):
        check_aligner_memory("mlp-2048-d3", size, SHIPPED)
    monkeypatch.setattr(memory.estimate, "available_memory_mb", lambda: 1e6)
    assert check_aligner_memory("mlp-2048-d3", size, SHIPPED) is None
    assert check_aligner_memory("mlp-2048-d3", size, SHIPPED, available_mb=100.0, raise_error=False)


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_scale", None)


def test_scale_benchmark_on_tiny_models(scale, tmp_path):
    models = ["mlp:64,16,16,10", "cnn2d:3,8,8,10"]
    res = scale.main(["--models", *models, "--threads", "1", "--repeats", "2", "--out", str(tmp_path)])
    for name in ("results.json", "results.md", "scale.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    assert [r["model"] for r in saved["rows"]] == models
    for row in saved["rows"]:
        assert row["nodes"] > 0 and row["edges"] > 0 and row["gnn_estimate_mb"] > 0
        assert row["memory_check"] == "fits"
        for method in ("gnn", "wm"):
            r = row["methods"][method]
            assert r["status"] == "ok" and r["repeats"] == 2 and len(r["seconds_all"]) == 2
            assert r["seconds"] > 0 and r["wall_seconds"] >= r["seconds"]
            assert r["peak_mb"] is None or r["peak_mb"] >= 0
    md = (tmp_path / "results.md").read_text()
    assert "| model | nodes | edges | gnn s/pair | gnn peak MB" in md and "`cnn2d:3,8,8,10` | 29 | 168 |" in md


def test_scale_benchmark_skips_gnn_before_running_when_memory_is_short(scale, tmp_path, monkeypatch):
    from gnn_align.api import align

    def wm_only(*args, method, **kwargs):
        assert method != "gnn", "gnn ran although the memory check failed"
        return align(*args, method=method, **kwargs)

    monkeypatch.setattr(scale, "available_memory_mb", lambda: 1.0)
    monkeypatch.setattr(scale, "warm_up", lambda *args: None)
    monkeypatch.setattr(scale, "align", wm_only)
    res = scale.main(["--models", "mlp:64,16,16,10", "mlp:64,32,32,10", "--max-edges", "2000", "--repeats", "1",
                      "--out", str(tmp_path)])
    small, big = res["rows"]
    assert small["methods"]["gnn"]["status"] == "skipped"
    assert small["methods"]["gnn"]["note"].startswith("mlp:64,16,16,10: 1.44k edges need ~")
    assert small["methods"]["gnn"]["note"].endswith("MB for the aligner, 1 MB available: skipped")
    assert small["methods"]["wm"]["status"] == "ok"
    assert big["methods"]["wm"] == {"status": "skipped", "note": "3,392 edges > --max-edges 2,000: not run"}
    assert "gnn: 1.44k edges need ~" in (tmp_path / "results.md").read_text()
