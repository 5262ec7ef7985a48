"""The shipped test helpers catch what they are meant to catch."""

import pytest
import torch
import torch.nn as nn

from gnn_align import PermutationSpec, random_permutation
from gnn_align.testing import assert_function_preserved, one_sided_spec, output_change


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
