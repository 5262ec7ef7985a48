"""Model files and architecture strings: safe loading (no unpickling), clear errors, atomic writes."""

import json
import pickle

import pytest
import torch

from gnn_align.archs import CNN, MLP, ResidualMLP, ResNet
from gnn_align.errors import GNNAlignError, StateDictError
from gnn_align.models import build_model, check_state, example_input, load_state_file, save_state_file

from .helpers import MarkerPickle


def test_builtin_architecture_strings():
    m = build_model("mlp:64,32,16,10")
    assert isinstance(m, MLP) and [l.out_features for l in m if isinstance(l, torch.nn.Linear)] == [32, 16, 10]
    assert any(isinstance(l, torch.nn.LayerNorm) for l in build_model("mlp-ln:8,4,2"))
    assert isinstance(build_model("resmlp:64,32,2,10"), ResidualMLP)
    c = build_model("cnn1d:1,8,16,10")
    assert isinstance(c, CNN) and isinstance(c[0], torch.nn.Conv1d)
    assert isinstance(build_model("resnet2d:1,8,8,16,10"), ResNet)
    assert isinstance(build_model(json.dumps({"family": "mlp", "in_features": 3, "hidden": [2], "out_features": 1})),
                      MLP)
    assert isinstance(build_model("tests.test_models:_factory"), MLP)
    for bad, msg in [("mlp:64", "at least 2"), ("mlp:a,b", "positive integers"), ("transformer", "FAMILY:SIZES"),
                     ("resmlp:1,2,3,4,5", "IN,WIDTH,BLOCKS,OUT"), ("nosuchpkg.mod:f", "cannot import"),
                     ("tests.test_models:_not_a_module", "not an nn.Module"), ('{"family": "rnn"}', "rnn")]:
        with pytest.raises(GNNAlignError, match=msg):
            build_model(bad)


def _factory():
    return MLP(3, [2], 1)


def _not_a_module():
    return 3


def test_example_input_is_accepted_by_the_model():
    for m in (build_model("mlp:7,3,2"), build_model("cnn2d:3,4,2"), build_model("resnet1d:2,4,4,3")):
        m(example_input(m, 4))
    flat = CNN(1, [4], 3, dim=1, head="flatten", input_size=40)
    assert example_input(flat).shape[-1] == 40


def test_state_files_round_trip_and_refuse_what_they_cannot_trust(tmp_path):
    state = MLP(4, [3], 2).state_dict()
    for name in ("m.safetensors", "m.pt", "m.pth"):
        back = load_state_file(save_state_file(state, tmp_path / name))
        assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    assert load_state_file(tmp_path / "ckpt.pt").keys() == state.keys()
    # a pickle that would run code: refused, and the code never ran
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": MarkerPickle(marker)}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(GNNAlignError, match="evil.pt: refused"):
        load_state_file(tmp_path / "evil.pt")
    assert not marker.exists()
    with open(tmp_path / "evil.pt", "rb") as f:  # the control: a plain unpickle would have run it
        torch.load(f, weights_only=False)
    assert marker.exists()
    raw = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GNNAlignError, match="cut.safetensors: not a readable safetensors"):
        load_state_file(tmp_path / "cut.safetensors")
    raw = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GNNAlignError, match="cut.pt: not a readable torch file"):
        load_state_file(tmp_path / "cut.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(GNNAlignError, match="list.pt: holds a list"):
        load_state_file(tmp_path / "list.pt")
    with pytest.raises(GNNAlignError, match="missing.pt: file not found"):
        load_state_file(tmp_path / "missing.pt")
    with pytest.raises(GNNAlignError, match="unknown model file type '.npz'"):
        save_state_file(state, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(state, f)
    with pytest.raises(GNNAlignError, match="unknown model file type '.pkl'"):
        load_state_file(tmp_path / "raw.pkl")


def test_check_state_names_the_first_problem():
    m = MLP(4, [3], 2)
    check_state(m, m.state_dict())
    wrong = MLP(4, [5], 2).state_dict()
    with pytest.raises(StateDictError,
                       match=r"f: key '0.weight' has shape \(5, 4\), the architecture expects \(3, 4\)"):
        check_state(m, wrong, "f")
    extra = dict(m.state_dict(), **{"9.weight": torch.zeros(1)})
    with pytest.raises(StateDictError, match="unexpected key '9.weight'"):
        check_state(m, extra)
    inf = {k: v.clone() for k, v in m.state_dict().items()}
    inf["0.weight"][0, 0] = float("inf")
    with pytest.raises(StateDictError, match="'0.weight' contains NaN or Inf"):
        check_state(m, inf)
