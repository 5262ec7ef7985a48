"""Aligner losses agree with the group action and are differentiable."""

import copy

import torch

from gnn_align import apply_permutation, invert_permutation, random_permutation, spec_from_module
from gnn_align.losses import interpolation_task_loss, weight_distance
from gnn_align.metrics import interpolate

from .conftest import make_family


def test_weight_distance_and_task_loss_with_hard_matrices_match_the_group_action():
    module, x = make_family("resnet2d_bn")
    spec = spec_from_module(module, x)
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    other, _ = make_family("resnet2d_bn", 1)
    b = {k: v.detach().clone() for k, v in other.state_dict().items()}
    pi = random_permutation(spec, torch.Generator().manual_seed(0))
    mats = {g: torch.eye(len(p))[p] for g, p in pi.items()}
    pb = apply_permutation(b, pi, spec)
    expected = sum(((a[k] - pb[k]) ** 2).mean() for k in spec.learnable_keys())
    assert torch.allclose(weight_distance(a, b, mats, spec), expected, atol=1e-12)
    # a planted pair is at distance 0 under the true alignment
    planted = apply_permutation(a, pi, spec)
    inv = invert_permutation(pi)
    assert float(weight_distance(a, planted, {g: torch.eye(len(p))[p] for g, p in inv.items()}, spec)) < 1e-24
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    # BatchNorm normalises with the batch's statistics (the interpolated network's own)
    direct = torch.func.functional_call(copy.deepcopy(module).train(), interpolate(a, pb, 0.3), (x,))
    got = interpolation_task_loss(module, a, b, mats, spec, x, y, 0.3)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(direct, y), atol=1e-12)


def test_losses_are_differentiable_in_the_soft_matrices():
    module, x = make_family("mlp")
    spec = spec_from_module(module, x)
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    logits = {g: torch.randn(n, n, generator=torch.Generator().manual_seed(0), requires_grad=True)
              for g, n in spec.group_sizes.items()}
    mats = {g: torch.softmax(v, -1) for g, v in logits.items()}
    y = torch.zeros(x.shape[0], dtype=torch.long)
    total = weight_distance(a, a, mats, spec) + interpolation_task_loss(module, a, a, mats, spec, x, y, 0.5)
    total.backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
               for v in logits.values())


def test_task_loss_is_differentiable_on_batchnorm_nets():
    """Soft matrices also permute BatchNorm running statistics; they enter as constants (batch_norm
    cannot differentiate them) and the gradient reaches every group through the weights."""
    module, x = make_family("resnet2d_bn")
    spec = spec_from_module(module, x)
    a = {k: v.detach().clone() for k, v in module.state_dict().items()}
    b = {k: v.detach().clone() for k, v in make_family("resnet2d_bn", 1)[0].state_dict().items()}
    logits = {g: torch.randn(n, n, generator=torch.Generator().manual_seed(0), requires_grad=True)
              for g, n in spec.group_sizes.items()}
    mats = {g: torch.softmax(v, -1) for g, v in logits.items()}
    y = torch.zeros(x.shape[0], dtype=torch.long)
    interpolation_task_loss(module, a, b, mats, spec, x, y, 0.5).backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
               for v in logits.values())
