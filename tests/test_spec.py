"""spec_from_module: equals hand-written specs; refuses what it cannot derive; validation errors."""

import pytest
import torch
from torch import nn

from gnn_align import PermutationSpec, StateDictError, UnsupportedLayerError, spec_from_module
from gnn_align.archs import CNN, MLP, ResNet

from .conftest import make_family


def test_mlp_spec_equals_hand_written():
    spec = spec_from_module(MLP(5, [4, 6], 3), torch.randn(2, 5))
    hand = PermutationSpec({"0": 4, "2": 6}, {
        "0.weight": ("0", None), "0.bias": ("0",),
        "2.weight": ("2", "0"), "2.bias": ("2",),
        "4.weight": (None, "2"), "4.bias": (None,)})
    assert spec == hand


def test_cnn_flatten_spec_equals_hand_written():
    net = CNN(1, [3, 4], 3, dim=1, kernel_size=5, head="flatten", input_size=8)
    hand = PermutationSpec({"0": 3, "2": 4}, {
        "0.weight": ("0", None, None), "0.bias": ("0",),
        "2.weight": ("2", "0", None), "2.bias": ("2",),
        "5.weight": (None, ("2", 8)), "5.bias": (None,)})
    assert spec_from_module(net, torch.randn(2, 1, 8)) == hand


def test_residual_cnn_spec_equals_hand_written():
    net = ResNet(2, 3, [3, 5], 4, dim=2)
    conv = (None, None)
    bn = ("weight", "bias", "running_mean", "running_var")
    axes = {"stem.0.weight": ("s",) + (None,) + conv,
            "blocks.0.conv1.weight": ("b0",) + ("s",) + conv,
            "blocks.0.conv2.weight": ("s", "b0") + conv,
            "blocks.1.conv1.weight": ("b1", "s") + conv,
            "blocks.1.conv2.weight": ("t", "b1") + conv,
            "blocks.1.shortcut.0.weight": ("t", "s") + conv,
            "head.weight": (None, "t"), "head.bias": (None,)}
    for module, group in [("stem.1", "s"), ("blocks.0.bn1", "b0"), ("blocks.0.bn2", "s"),
                          ("blocks.1.bn1", "b1"), ("blocks.1.bn2", "t"), ("blocks.1.shortcut.1", "t")]:
        axes.update({f"{module}.{p}": (group,) for p in bn})
        axes[f"{module}.num_batches_tracked"] = ()
    names = {"s": "stem.0", "b0": "blocks.0.conv1", "b1": "blocks.1.conv1", "t": "blocks.1.conv2"}
    hand = PermutationSpec({names[g]: n for g, n in [("s", 3), ("b0", 3), ("b1", 5), ("t", 5)]},
                           {k: tuple(None if a is None else names[a] for a in v) for k, v in axes.items()})
    spec = spec_from_module(net, torch.randn(2, 2, 8, 8))
    assert spec == hand
    # the negative control of the comparison itself: one wrong axis makes the specs differ
    wrong = dict(hand.axes)
    wrong["blocks.1.shortcut.0.weight"] = (names["t"], None, None, None)
    assert spec != PermutationSpec(hand.group_sizes, wrong)


def test_tracing_leaves_module_untouched():
    net = ResNet(1, 3, [3], 2).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    spec_from_module(net, torch.randn(4, 1, 6, 6))
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_residual_groups_and_skips_in_structure(family):
    name, module, x = family
    spec = spec_from_module(module, x)
    st = spec.structure
    assert (len(st.skips) > 0) == name.startswith("res")
    for a, b in st.skips:
        assert st.nodesets[a].group == st.nodesets[b].group is not None
    kinds = [ns.kind for ns in st.nodesets]
    assert kinds[0] == "input" and kinds.count("output") == 1
    spec.validate({k: v for k, v in module.state_dict().items()})


def test_describe_names_groups_sizes_and_axes():
    spec = spec_from_module(CNN(1, [3, 4], 3, dim=1, kernel_size=5, head="flatten", input_size=8),
                            torch.randn(2, 1, 8))
    text = spec.describe()
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["group", "size"]
    assert any(line.split()[:2] == ["2", "4"] and "5.weight[1]x8" in line for line in lines)
    assert "not permuted: 5.bias" in text


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x)[0])


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return self.fc(x)
        return x


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return nn.functional.linear(x, self.w)


@pytest.mark.parametrize("module, x, path, op", [
    (_Attention(), torch.randn(2, 4), "attn", "MultiheadAttention"),
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)), torch.randn(2, 4, 3, 3),
     "0", "groups=2"),
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4, 2)), torch.randn(2, 4, 3, 3),
     "0", "depthwise"),
    (_Concat(), torch.randn(2, 4), "_Concat.forward", "cat"),
    (_Branchy(), torch.randn(2, 4), "_Branchy", "torch.fx trace"),
    (_Tied(), torch.randn(2, 4), "fc", "tied weights"),
    (_Functional(), torch.randn(2, 4), "w", "get_attr"),
    (nn.Sequential(nn.Conv1d(1, 3, 3), nn.LayerNorm(6), nn.Flatten(), nn.Linear(18, 2)),
     torch.randn(2, 1, 8), "1", "LayerNorm"),
    (nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2)), torch.randn(2, 4), "1", "GroupNorm"),
])
def test_unsupported_layers_raise_naming_path_and_op(module, x, path, op):
    with pytest.raises(UnsupportedLayerError) as err:
        spec_from_module(module, x)
    assert f"'{path}'" in str(err.value) and op in str(err.value)


def test_every_user_of_the_structure_refuses_a_spec_without_it_alike():
    """One check, one exception type and one message for each function that needs the graph structure."""
    from gnn_align.baselines import activation_matching
    from gnn_align.graph import from_graph, to_graph
    from gnn_align.memory import graph_size
    from gnn_align.pretrained import signature
    from gnn_align.zoo.augment import augment, rescalable_nodesets

    module, x = make_family("mlp")
    full = spec_from_module(module, x)
    bare = PermutationSpec(full.group_sizes, full.axes)
    state = module.state_dict()
    calls = {"to_graph": lambda: to_graph(state, bare), "from_graph": lambda: from_graph(to_graph(state, full), bare),
             "augment": lambda: augment(state, bare, torch.Generator()),
             "rescalable_nodesets": lambda: rescalable_nodesets(bare),
             "activation matching": lambda: activation_matching(module, state, state, bare, [x]),
             "signature": lambda: signature(bare), "graph_size": lambda: graph_size(bare)}
    for what, call in calls.items():
        with pytest.raises(StateDictError, match=rf"^{what} needs a PermutationSpec with graph structure, and this one "
                                                 r"has none: derive it with gnn_align\.spec_from_module\(module, "
                                                 r"example_input\)$"):
            call()
    assert full.require_structure("anything") is full.structure


def test_key_set_checks_share_one_message():
    """spec.validate, check_state, interpolate, check_fits and check_narrower all name the first
    missing (else unexpected) key through errors.check_keys, in one pattern, with the count of the rest."""
    from gnn_align.errors import GNNAlignError, check_keys
    from gnn_align.metrics import interpolate
    from gnn_align.models import check_state
    from gnn_align.partial import check_narrower
    from gnn_align.training.checkpoint import check_fits

    net = MLP(3, [4], 2)
    state = net.state_dict()
    fewer = {k: v for k, v in state.items() if k.startswith("2.")}
    more = dict(state, extra=torch.zeros(5, 1))
    with pytest.raises(StateDictError, match=r"^m: missing key '0.weight' \(the architecture has it, shape \(4, 3\); "
                                             r"1 more missing\)$"):
        check_state(net, fewer, "m")
    with pytest.raises(StateDictError,
                       match=r"^m: unexpected key 'extra' \(not in the architecture, shape \(5, 1\)\)$"):
        check_state(net, more, "m")
    with pytest.raises(StateDictError, match=r"^state_b: missing key '0.weight' \(state_a has it, shape \(4, 3\)"):
        interpolate(state, fewer, 0.5)
    with pytest.raises(GNNAlignError, match=r"^f.pt: checkpoint does not fit this model: unexpected key 'extra' "):
        check_fits("f.pt", net, more)
    spec = spec_from_module(net, torch.zeros(1, 3))
    with pytest.raises(StateDictError, match=r"^the spec of A: missing key '2.bias' \(the spec of B has it\)$"):
        check_narrower(PermutationSpec(spec.group_sizes, {k: a for k, a in spec.axes.items() if k != "2.bias"}),
                       spec)
    with pytest.raises(TypeError, match=r"^x: missing key 'b' \(y has it; 1 more missing\)$"):
        check_keys(["a"], ["a", "b", "c"], "x", "y", TypeError)
    check_keys(state, dict(state), "x", "y")


def test_validation_names_the_offending_key():
    module, x = make_family("resnet2d_bn")
    spec = spec_from_module(module, x)
    good = {k: v.clone() for k, v in module.state_dict().items()}
    spec.validate(good)
    bad = dict(good, **{"blocks.1.bn1.running_var": torch.ones(4)})
    with pytest.raises(StateDictError, match=r"'blocks.1.bn1.running_var' has shape \(4,\), expected \(5,\)"):
        spec.validate(bad)
    bad = dict(good)
    bad["blocks.0.conv2.weight"] = bad["blocks.0.conv2.weight"].clone()
    bad["blocks.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(StateDictError, match="'blocks.0.conv2.weight' contains NaN or Inf"):
        spec.validate(bad)
    with pytest.raises(StateDictError, match=r"^state dict: missing key 'head.bias' \(the spec has it\)$"):
        spec.validate({k: v for k, v in good.items() if k != "head.bias"})
    with pytest.raises(StateDictError, match=r"^state dict: unexpected key 'foo' \(not in the spec, shape \(1,\)\)$"):
        spec.validate(dict(good, foo=torch.ones(1)))
    # a hand-written spec whose sizes disagree with the tensors
    hand = PermutationSpec({"h": 3}, {"w": ("h", None)})
    with pytest.raises(StateDictError, match="key 'w' axis 0 has size 4, but group 'h' has 3"):
        hand.validate({"w": torch.ones(4, 2)})
