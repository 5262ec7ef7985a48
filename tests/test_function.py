"""Permuting neurons by the derived spec preserves the function; permuting one side does not."""

import pytest
import torch

from gnn_align import apply_permutation, random_permutation, spec_from_module
from gnn_align.testing import assert_function_preserved, one_sided_spec, output_change


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_function_preserved_after_random_permutation(family, seed):
    _name, module, x = family
    spec = spec_from_module(module, x)
    perm = random_permutation(spec, torch.Generator().manual_seed(seed))
    delta = assert_function_preserved(module, spec, perm, x, atol=1e-10)
    assert delta <= 1e-10


def test_permuting_one_side_of_each_group_changes_the_output(family):
    name, module, x = family
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for group, n in spec.group_sizes.items():
        perm = {group: torch.roll(torch.arange(n), 1)}  # a permutation with no fixed point
        broken = apply_permutation(state, perm, one_sided_spec(spec, group))
        assert output_change(module, broken, x) > 1e-6, f"{name}: group {group} one-sided change invisible"
        with pytest.raises(AssertionError, match="changed its output"):
            assert_function_preserved(module, one_sided_spec(spec, group), perm, x)
    # and the full action on the same permutations preserves it
    assert_function_preserved(module, spec, random_permutation(spec, gen), x)


def test_batchnorm_statistics_must_be_permuted():
    """The classic user bug: permuting a BatchNorm's affine parameters but not its running stats."""
    from .conftest import make_family

    module, x = make_family("resnet2d_bn")
    spec = spec_from_module(module, x)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    perm = random_permutation(spec, torch.Generator().manual_seed(5))
    good = apply_permutation(state, perm, spec)
    bad = dict(good)
    for k in good:
        if k.endswith(("running_mean", "running_var")):
            bad[k] = state[k]
    assert output_change(module, good, x) <= 1e-10
    assert output_change(module, bad, x) > 1e-6
