"""AlignerConfig: one set of defaults (GNNAligner, train.py), one name per setting, old names mapped;
load_aligner from a run folder, a weights file or a shipped name."""

import dataclasses
import json
import shutil

import pytest
import torch

import train
from gnn_align.aligner import GNNAligner, load_aligner
from gnn_align.config import RENAMED, AlignerConfig, upgrade_keys
from gnn_align.errors import GNNAlignError
from gnn_align.nn import NetEncoder
from gnn_align.pretrained import HERE, available, load_pretrained


def test_gnn_aligner_defaults_are_train_configs():
    cfg = train.Config()
    assert GNNAligner().config == AlignerConfig() == cfg.aligner_config(edge_dim=1)
    shared = [f.name for f in dataclasses.fields(train.Config) if f.name in AlignerConfig.names()]
    assert set(shared) == {"hidden", "num_layers", "conv", "scale_invariant", "edge_hidden", "head_scale", "probes"}
    assert all(getattr(cfg, k) == getattr(AlignerConfig(), k) for k in shared)
    assert not set(RENAMED) & {f.name for f in dataclasses.fields(train.Config)}  # only today's names


def test_the_modules_are_built_from_the_config():
    config = AlignerConfig(hidden=8, num_layers=2, conv="edge", edge_hidden=3, probes=4, edge_dim=9, pos_dim=6,
                           max_fixed=20, head_scale=2.0)
    al = GNNAligner(config)
    assert al.config is config and al.encoder.config is config
    assert al.encoder.node_in.out_features == 8 and len(al.encoder.convs) == 2
    assert al.encoder.edge_in.out_features == 3 and al.encoder.probe.in_probe.num_embeddings == 20
    assert al.encoder.probe.read_fwd.shape == (9, 4) and al.head.init_scale == 2.0
    # overrides by name replace the config's settings; the config itself is unchanged
    assert GNNAligner(config, probes=0).encoder.probe is None and config.probes == 4
    assert NetEncoder(hidden=5).config == AlignerConfig(hidden=5)


def test_unknown_settings_are_one_line_errors():
    for make in (lambda: AlignerConfig.from_dict({"hidden": 8, "bogus": 1}), lambda: GNNAligner(bogus=1),
                 lambda: NetEncoder(bogus=1), lambda: AlignerConfig().replace(bogus=1)):
        with pytest.raises(GNNAlignError, match="unknown aligner setting 'bogus'; known: hidden, num_layers") as e:
            make()
        assert "\n" not in str(e.value)
    with pytest.raises(GNNAlignError, match="unknown conv 'sparse'; choose from weight, edge"):
        AlignerConfig(conv="sparse")
    with pytest.raises(TypeError, match="config must be an AlignerConfig.*pass settings by name"):
        GNNAligner(64)


def test_config_is_frozen_and_round_trips():
    config = AlignerConfig(hidden=16, conv="edge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden = 8
    assert AlignerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert list(config.to_dict()) == list(AlignerConfig.names())
    assert AlignerConfig.from_dict({}) == AlignerConfig()  # settings a dict lacks take the defaults


def test_the_old_layers_key_is_mapped():
    assert AlignerConfig.from_dict({"layers": 2}).num_layers == 2
    assert upgrade_keys({"layers": 3, "hidden": 8}) == {"num_layers": 3, "hidden": 8}
    assert upgrade_keys({"layers": 3, "num_layers": 3}) == {"num_layers": 3}
    with pytest.raises(GNNAlignError, match="both 'layers' .* and its new name 'num_layers'"):
        upgrade_keys({"layers": 3, "num_layers": 1})


@pytest.mark.parametrize("name", available())
def test_shipped_metadata_with_old_names_still_reads(name, tmp_path):
    """The shipped ``NAME.json`` loads (``mixed`` and ``v2`` were written before the rename and say
    ``layers``), and its training config is a train.py ``--config`` file again."""
    meta = json.loads((HERE / f"{name}.json").read_text())
    old = "layers" in meta["config"]
    assert old == (name in ("mixed", "v2"))  # written before the rename: kept as shipped
    al = load_aligner(name)
    assert al.config == AlignerConfig.from_dict(meta["config"]["aligner"]) and al.meta == meta
    assert al.config.num_layers == meta["config"]["layers" if old else "num_layers"]
    (tmp_path / "config.json").write_text(json.dumps(meta["config"]))
    cfg = train.parse_config(["--config", str(tmp_path / "config.json")])
    fields = {f.name for f in dataclasses.fields(train.Config)}
    recorded = [k for k in upgrade_keys(meta["config"]) if k in AlignerConfig.names() and k in fields]
    assert "num_layers" in recorded and all(getattr(cfg, k) == getattr(al.config, k) for k in recorded)


def test_load_aligner_takes_a_run_folder_a_weights_file_or_a_name(tmp_path):
    ref = load_pretrained("mixed")
    same = lambda al: all(torch.equal(v, ref.state_dict()[k]) for k, v in al.state_dict().items())
    by_name, by_file = load_aligner("mixed"), load_aligner(HERE / "mixed.safetensors")
    run = tmp_path / "run"  # a run folder whose config.json says "layers", as before the rename
    run.mkdir()
    shutil.copyfile(HERE / "mixed.safetensors", run / "aligner.safetensors")
    config = json.loads((HERE / "mixed.json").read_text())["config"]
    (run / "config.json").write_text(json.dumps(config))
    by_run, by_run_file = load_aligner(run), load_aligner(run / "aligner.safetensors")
    for al in (by_name, by_file, by_run, by_run_file):
        assert same(al) and al.config == ref.config and not al.training
    assert by_file.meta == ref.meta and not hasattr(by_run, "meta")
    with pytest.raises(GNNAlignError, match=f"no aligner 'nope': .* \\(shipped: {', '.join(available())}\\)"):
        load_aligner("nope")
    (tmp_path / "lone.safetensors").write_bytes((HERE / "mixed.safetensors").read_bytes())
    with pytest.raises(GNNAlignError, match="lone.safetensors: neither lone.json nor config.json"):
        load_aligner(tmp_path / "lone.safetensors")
    with pytest.raises(GNNAlignError, match="no pretrained aligner 'nope'"):
        load_pretrained("nope")
