"""The shipped test helpers catch what they are meant to catch."""

import pytest
import torch
from torch import nn

from gnn_align import PermutationSpec, random_permutation, spec_from_module, to_graph
from gnn_align.nn import NetEncoder
from gnn_align.testing import assert_function_preserved, assert_perm_equivariant, one_sided_spec, output_change

from .conftest import make_family


class _PositionDependent(nn.Module):
    """Hidden neurons are weighted by their index: permuting them is *not* a symmetry."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) * torch.arange(1.0, 5.0))


SPEC = PermutationSpec({"h": 4}, {"fc1.weight": ("h", None), "fc1.bias": ("h",),
                                  "fc2.weight": (None, "h"), "fc2.bias": (None,)})


def test_function_check_fails_on_a_broken_symmetry():
    torch.manual_seed(0)
    net, x = _PositionDependent(), torch.randn(5, 3)
    with pytest.raises(AssertionError, match="changed its output"):
        assert_function_preserved(net, SPEC, {"h": torch.tensor([1, 0, 3, 2])}, x)


def test_function_check_passes_on_a_true_symmetry_and_leaves_module_intact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    spec = PermutationSpec({"h": 4}, {"0.weight": ("h", None), "0.bias": ("h",),
                                      "2.weight": (None, "h"), "2.bias": (None,)})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 3)
    assert assert_function_preserved(net, spec, random_permutation(spec, torch.Generator().manual_seed(1)), x) <= 1e-10
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert output_change(net, before, x) == 0.0


def test_one_sided_spec_keeps_exactly_one_axis():
    one = one_sided_spec(SPEC, "h")
    acted = one.acts_on("h")
    assert acted == [("fc1.weight", 0, 1)]


class _NodeReadout(nn.Module):
    """A per-node linear read-out of the node features, plus (``positional``) a learned embedding of the
    node's position in its group: the position of a neuron is an arbitrary label, so that breaks equivariance."""

    def __init__(self, positional: bool):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.pos = nn.Linear(5, 4), nn.Embedding(16, 4) if positional else None

    def forward(self, graph):
        out = self.lin(graph.x)
        return out if self.pos is None else out + self.pos(graph.perm_pos)


def _graph(name="mlp"):
    module, x = make_family(name)
    spec = spec_from_module(module, x)
    return to_graph({k: v.detach() for k, v in module.state_dict().items()}, spec, edge_dim=9), spec


def test_equivariance_check_fails_on_a_positional_encoder():
    graph, spec = _graph()
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_perm_equivariant(_NodeReadout(positional=True).double(), graph, spec)
    # the same read-out without the positional term is equivariant (exactly: it is per node)
    assert assert_perm_equivariant(_NodeReadout(positional=False).double(), graph, spec) == 0.0


def test_equivariance_check_refuses_an_output_that_is_not_per_node():
    graph, spec = _graph()
    with pytest.raises(AssertionError, match="one row per node"):
        assert_perm_equivariant(lambda g: g.x.sum(0), graph, spec)


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_equivariance_check_passes_on_the_aligner_encoder(name):
    graph, spec = _graph(name)
    torch.manual_seed(0)
    enc = NetEncoder(hidden=16, num_layers=2, edge_dim=9, probes=8).double().eval()
    assert assert_perm_equivariant(enc, graph, spec) < 1e-12
