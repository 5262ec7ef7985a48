"""Train and evaluate many networks of one architecture at once (``torch.func.vmap``).

The parameters of M networks are stacked along a leading axis and the forward pass is vmapped over
``torch.func.functional_call`` of one architecture, so M small networks cost about as much as one
wide one. The loss is the sum of the M per-network losses, whose gradient with respect to the
stacked parameters is each network's own gradient; Adam's update is element-wise, so the M networks
train exactly as if they were trained one by one (with their own initialisation and data order).
BatchNorm statistics are tracked per network.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from ..archs import build_arch, reset_parameters
from ..tasks import task_loss


def stable_seed(*parts) -> int:
    """A 31-bit seed derived from ``parts`` by CRC32 of their text (stable across runs, unlike hash())."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def stack_states(states: Sequence[dict]) -> dict:
    """Stack state dicts of one architecture: key -> tensor of shape (M, *shape)."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def unstack_state(stacked: dict, i: int) -> dict:
    """The state dict of network ``i`` of a stack (views of the stacked tensors)."""
    return {k: v[i] for k, v in stacked.items()}


def init_states(arch: dict, seeds: Sequence[int]) -> dict:
    """Stacked initial states of ``arch``, network m initialised from ``Generator().manual_seed(seeds[m])``."""
    module = build_arch(arch)
    states = []
    for s in seeds:
        reset_parameters(module, torch.Generator().manual_seed(int(s)))
        states.append({k: v.detach().clone() for k, v in module.state_dict().items()})
    return stack_states(states)


class StackedForward:
    """Vmapped forward of M networks of one architecture.

    Args:
        arch: architecture config (see :func:`gnn_align.archs.build_arch`).

    Shapes:
        ``__call__(params, buffers, x)``: params/buffers (M, ...) per key, x (M, B, *input) ->
        (M, B, outputs).
    """

    def __init__(self, arch: dict):
        self.module = build_arch(arch).to("meta")
        self.param_keys = [k for k, _ in self.module.named_parameters()]
        # "different": dropout (the only random op of an arch) draws its own mask for every network
        self._fn = vmap(lambda p, b, x: functional_call(self.module, (p, b), (x,)), randomness="different")

    def split(self, stacked: dict) -> tuple:
        params = {k: v for k, v in stacked.items() if k in self.param_keys}
        return params, {k: v for k, v in stacked.items() if k not in self.param_keys}

    def __call__(self, params: dict, buffers: dict, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        self.module.train(train)
        return self._fn(params, buffers, x)


def _targets(y: torch.Tensor, idx: torch.Tensor, per_network: bool) -> torch.Tensor:
    return y[torch.arange(idx.shape[0])[:, None], idx] if per_network else y[idx]


@torch.no_grad()
def evaluate(fwd: StackedForward, stacked: dict, x: torch.Tensor, y: torch.Tensor, loss: str,
             per_network_targets: bool = False, chunk: int = 512) -> dict:
    """Per-network loss (and accuracy for ``loss="ce"``) on a dataset, in eval mode.

    Returns:
        ``{"loss": (M,), "acc": (M,)}`` (``acc`` only for classification).
    """
    params, buffers = fwd.split(stacked)
    m = next(iter(stacked.values())).shape[0]
    tot_loss, correct, n = torch.zeros(m), torch.zeros(m), x.shape[0]
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(s + chunk, n)).expand(m, -1)
        out = fwd(params, buffers, x[idx], train=False)
        yb = _targets(y, idx, per_network_targets)
        tot_loss += task_loss(out, yb, loss) * idx.shape[1]
        if loss == "ce":
            correct += (out.argmax(-1) == yb).float().sum(1)
    res = {"loss": tot_loss / n}
    if loss == "ce":
        res["acc"] = correct / n
    return res


#: the training recipe's choices (see :func:`train_networks`)
OPTIMIZERS, SCHEDULES = ("adamw", "adam", "sgd"), ("cosine", "constant", "step")


def _optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), Adam or SGD with momentum (both with L2 weight decay). Every one
    updates element-wise, so the networks of a stack still train independently."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}")


def lr_factor(schedule: str, t: int, total: int, warm: int) -> float:
    """Learning-rate multiplier at step ``t`` of ``total``: linear warmup over ``warm`` steps, then
    ``cosine`` (to 0 at the last step), ``constant``, or ``step`` (x0.1 at 50% and again at 75%)."""
    if schedule == "cosine":
        # in float32, as zoos built before the other schedules existed were
        after = (0.5 * (1 + torch.cos(torch.tensor(math.pi * min(t, total) / total)))).item()
    elif schedule == "constant":
        after = 1.0
    elif schedule == "step":
        after = 0.1 ** ((t >= total // 2) + (t >= 3 * total // 4))
    else:
        raise ValueError(f"unknown schedule '{schedule}'; choose from {', '.join(SCHEDULES)}")
    return min((t + 1) / warm, after)


def train_networks(arch: dict, x_train: torch.Tensor, y_train: torch.Tensor, seeds: Sequence[int], *,
                   loss: str = "ce", epochs: int = 20, batch_size: int = 64, lr: float = 1e-2,
                   weight_decay: float = 0.0, warmup_epochs: float = 1.0, optimizer: str = "adamw",
                   momentum: float = 0.9, schedule: str = "cosine", label_smoothing: float = 0.0,
                   init_scale: float = 1.0, input_noise: float = 0.0, per_network_targets: bool = False,
                   progress: bool = True, desc: str = "training") -> tuple:
    """Train ``len(seeds)`` networks of ``arch`` at once, by one training recipe.

    Network m is initialised from ``seeds[m]`` (in the dtype of ``x_train``) and sees the training
    set in its own order (drawn from ``stable_seed(seeds[m], "data")``). Input noise and dropout
    masks are drawn for the whole stack from generators seeded by all of ``seeds`` (so a network's
    draws depend on its stack-mates), which keeps a build deterministic. The
    default recipe is AdamW with a one-epoch warmup and a cosine schedule to zero.

    Args:
        arch: architecture config (``dropout`` in an MLP's config is the recipe's dropout).
        x_train: (N, *input) inputs shared by all networks.
        y_train: (N,) labels / (N, C) targets, or (M, N, ...) when ``per_network_targets``.
        seeds: one seed per network.
        optimizer: ``adamw``, ``adam`` or ``sgd`` (with ``momentum``).
        schedule: ``cosine``, ``constant`` or ``step`` (see :func:`lr_factor`), after the warmup.
        label_smoothing: cross-entropy label smoothing.
        init_scale: multiplies every initial weight matrix/kernel (biases and norms unchanged).
        input_noise: augmentation: Gaussian noise of this many input standard deviations is
            added to every training batch.

    Returns:
        ``(stacked_state, history)``: trained states (M, ...) per key, and the mean training loss of
        every epoch (list of floats).
    """
    n = x_train.shape[0]
    if n < batch_size:
        raise ValueError(f"training set of {n} samples is smaller than batch_size={batch_size}")
    fwd = StackedForward(arch)
    init = {k: v.to(x_train.dtype) if v.is_floating_point() else v for k, v in init_states(arch, seeds).items()}
    if init_scale != 1.0:
        init = {k: v * init_scale if k.endswith("weight") and v.dim() > 2 else v for k, v in init.items()}
    params, buffers = fwd.split(init)
    params = {k: v.requires_grad_() for k, v in params.items()}
    opt = _optimizer(optimizer, params.values(), lr, weight_decay, momentum)
    steps_per_epoch = n // batch_size
    total, warm = epochs * steps_per_epoch, max(1, int(warmup_epochs * steps_per_epoch))
    lr_factor(schedule, 0, total, warm)  # an unknown schedule fails before training
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_factor(schedule, t, total, warm))
    data_gens = [torch.Generator().manual_seed(stable_seed(s, "data")) for s in seeds]
    noise_gen = torch.Generator().manual_seed(stable_seed(*seeds, "noise"))
    x_std = float(x_train.std()) if input_noise else 0.0
    history = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seed it, restore it after
        torch.manual_seed(stable_seed(*seeds, "dropout"))
        for _ in bar:
            order = torch.stack([torch.randperm(n, generator=g) for g in data_gens])
            running = 0.0
            for step in range(steps_per_epoch):
                idx = order[:, step * batch_size:(step + 1) * batch_size]
                xb = x_train[idx]
                if input_noise:
                    xb = xb + input_noise * x_std * torch.randn(xb.shape, generator=noise_gen, dtype=xb.dtype)
                out = fwd(params, buffers, xb, train=True)
                losses = task_loss(out, _targets(y_train, idx, per_network_targets), loss, label_smoothing)
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                sched.step()
                running += float(losses.detach().mean())
            history.append(running / steps_per_epoch)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    state = {k: v.detach() for k, v in {**params, **buffers}.items()}
    order = list(build_arch(arch).state_dict())
    return {k: state[k].contiguous() for k in order}, history
