"""Derive a :class:`PermutationSpec` (with its graph structure) from a module by ``torch.fx`` tracing.

Every traced value that carries neurons along its feature axis (axis 1) is tagged with the node set
it belongs to. Weight layers (Linear, Conv) start new node sets; normalisation layers attach their
parameters to the node set they read; element-wise ops, pooling and flattening keep the node set;
a residual addition merges the two node sets into one permutation group and records an identity
skip. Whatever else appears raises :class:`UnsupportedLayerError` naming the module path and op.
"""

from __future__ import annotations

import contextlib
import io
import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from . import attention
from .errors import GNNAlignError, UnsupportedLayerError
from .spec import NODE_FEATURES, Layer, NetStructure, NodeSet, PermutationSpec

_ELEMENTWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU,
                        nn.Softplus, nn.Mish, nn.ReLU6, nn.Hardtanh, nn.Dropout, nn.Dropout1d,
                        nn.Dropout2d, nn.Identity)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FNS = {torch.relu, F.relu, torch.sin, torch.tanh, torch.sigmoid, F.gelu, F.silu,
                    F.leaky_relu, F.elu, F.softplus, F.mish, F.dropout, torch.dropout, F.relu6,
                    torch.nn.functional.hardtanh, torch.neg, operator.neg}
_ELEMENTWISE_METHODS = {"relu", "sin", "tanh", "sigmoid", "contiguous", "neg"}
_POOL_FNS = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
             F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
             torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d}
_SCALAR_OPS = {operator.mul, operator.truediv, operator.add, operator.sub, torch.mul, torch.add,
               torch.sub, torch.div, operator.iadd, operator.imul}
_SCALAR_METHODS = {"mul", "add", "sub", "div", "__mul__", "__add__"}
_ADD = {operator.add, operator.iadd, torch.add}
_RESHAPE_FNS = {torch.flatten, torch.reshape, torch.squeeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unflatten"}
_REDUCE = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_SOFTMAX_FNS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_NORM_FEATURES = ("weight", "bias", "running_mean", "running_var")
_OTHER = object()  # a traced value that is not a feature tensor (a size, an int)


class _Feat:
    """A traced tensor whose axis 1 holds the neurons of node set ``ns`` (``block`` > 0: flattened);
    ``tok``: tokens ``(batch, tokens, features)``, whose last axis holds them (:mod:`.attention`)."""

    __slots__ = ("block", "ns", "tok")

    def __init__(self, ns: int, block: int = 0, tok: bool = False):
        self.ns, self.block, self.tok = ns, block, tok


class _Tracer:
    def __init__(self, gm: fx.GraphModule, state_keys: dict, root_name: str, bare: bool = False):
        self.gm, self.state_keys, self.root_name = gm, state_keys, root_name
        self.bare = bare  # gm wraps a bare layer as its submodule "0", whose keys have no prefix
        self.sets: list = []  # dicts: name, size, depth, features, kind
        self.parent: list = []
        self.layers: list = []
        self.skips: list = []
        self.used_keys: set = set()
        self.called: set = set()
        self.vals: dict = {}
        self.headed: dict = {}  # node set -> (attention, "qk" or "v", heads, head dim)
        self.raw: dict = {}  # key -> per axis None or [(node set, start)]: tensors that are not layers
        self.roles: dict = {}  # raw key -> "packed", "pos", "norm_weight" or "norm_bias"

    Feat = _Feat
    UNUSABLE = object()  # a traced value no op may read (the weights returned by MultiheadAttention)

    # -- node sets -----------------------------------------------------------------------------
    def new_set(self, name: str, size: int, depth: int, kind: str = "hidden") -> int:
        self.sets.append({"name": name, "size": size, "depth": depth, "kind": kind,
                          "features": [None] * len(NODE_FEATURES)})
        self.parent.append(len(self.parent))
        return len(self.sets) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def key(self, path: str, name: str) -> str:
        k = f"{path}.{name}" if path else name
        self.used_keys.add(k)
        return k

    # -- helpers -------------------------------------------------------------------------------
    def where(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack")
        return next(reversed(stack)) if stack else f"{self.root_name}.forward"

    def feat(self, node: fx.Node, arg, op: str) -> _Feat:
        v = self.vals.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(v, _Feat):
            raise UnsupportedLayerError(self.where(node), op, "expects a feature tensor as input")
        return v

    @staticmethod
    def shape(arg) -> tuple:
        tm = arg.meta.get("tensor_meta") if isinstance(arg, fx.Node) else None
        return tuple(tm.shape) if tm is not None else ()

    def is_scalar(self, a) -> bool:
        return not isinstance(a, fx.Node) or self.vals.get(a) is _OTHER

    def channel(self, node, v: _Feat, op: str) -> _Feat:
        if v.tok:
            raise UnsupportedLayerError(self.where(node), op, "applied to tokens")
        if v.block:
            raise UnsupportedLayerError(self.where(node), op, "applied to a flattened feature map")
        return v

    def reshaped(self, node: fx.Node, v: _Feat, op: str) -> _Feat:
        src, dst = self.shape(node.args[0]), self.shape(node)
        if dst == src:
            return v
        if v.tok:
            return attention.split_heads(self, node, v, op)
        if v.block == 0 and len(src) >= 2 and len(dst) == 2 and dst[0] == src[0] and dst[1] == src[1] * \
                _prod(src[2:]):
            return _Feat(v.ns, _prod(src[2:]))
        raise UnsupportedLayerError(self.where(node), op,
                                    f"reshape {src} -> {dst} is not a flatten of (batch, C, ...)")

    # -- ops -----------------------------------------------------------------------------------
    def weight_layer(self, node, path: str, m: nn.Module, v: _Feat, out: int) -> _Feat:
        src_shape = self.shape(node.args[0])
        block = 1
        if isinstance(m, nn.Linear):
            if len(src_shape) != 2 and not v.tok:
                raise UnsupportedLayerError(path or self.root_name, "Linear", f"input of shape {src_shape}; only "
                                            "(batch, features) inputs are supported")
            block = max(v.block, 1)
        elif v.block:
            raise UnsupportedLayerError(path or self.root_name, type(m).__name__, "applied to a flattened feature map")
        dst = self.new_set(path, out, self.sets[v.ns]["depth"] + 1)
        w = self.key(path, "weight")
        self.layers.append(Layer(w, v.ns, dst, tuple(m.weight.shape), block))
        if m.bias is not None:
            self.sets[dst]["features"][0] = self.key(path, "bias")
        return _Feat(dst, 0, v.tok)

    def norm(self, path: str, m: nn.Module, v: _Feat) -> _Feat:
        feats = self.sets[v.ns]["features"]
        if any(f is not None for f in feats[1:]):
            raise UnsupportedLayerError(path or self.root_name, type(m).__name__, "a second normalisation layer on the "
                                        f"neurons of '{self.sets[v.ns]['name']}'")
        for col, name in enumerate(_NORM_FEATURES, start=1):
            if getattr(m, name, None) is not None:
                feats[col] = self.key(path, name)
        return v

    def call_module(self, node: fx.Node):
        path, m = ("" if self.bare else node.target), self.gm.get_submodule(node.target)
        name = type(m).__name__
        if path in self.called and any(True for _ in m.parameters(recurse=False)):
            raise UnsupportedLayerError(path or self.root_name, name, "module called more than once (tied weights)")
        self.called.add(path)
        if isinstance(m, attention.LEAVES):
            return attention.call_leaf(self, node, path or self.root_name, m)
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
                raise UnsupportedLayerError(path or self.root_name, name,
                                            f"grouped/depthwise convolution (groups={m.groups})")
            v = self.feat(node, node.args[0], name)
            size_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            if size_in != self.sets[v.ns]["size"] * max(v.block, 1):
                raise UnsupportedLayerError(path or self.root_name, name,
                                            "input size does not match the neurons it reads")
            return self.weight_layer(node, path, m, v, m.out_features if isinstance(m, nn.Linear)
                                     else m.out_channels)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            v = self.channel(node, self.feat(node, node.args[0], name), name)
            return self.norm(path, m, v)
        if isinstance(m, nn.LayerNorm):
            v = self.feat(node, node.args[0], name)
            if v.tok:
                return attention.layer_norm(self, path or self.root_name, m, v)
            if v.block or len(self.shape(node.args[0])) != 2 or tuple(m.normalized_shape) != \
                    (self.sets[v.ns]["size"],):
                raise UnsupportedLayerError(path or self.root_name, name, "only LayerNorm over the feature axis of a "
                                            "(batch, features) tensor is supported")
            return self.norm(path, m, v)
        if isinstance(m, _ELEMENTWISE_MODULES):
            return self.feat(node, node.args[0], name)
        if isinstance(m, _POOL_MODULES):
            return self.channel(node, self.feat(node, node.args[0], name), name)
        if isinstance(m, nn.Flatten):
            return self.reshaped(node, self.feat(node, node.args[0], name), name)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)) and m.dim in (1, -1) and \
                len(self.shape(node.args[0])) == 2:
            return self.feat(node, node.args[0], name)
        raise UnsupportedLayerError(path or self.root_name, name)

    def call_function(self, node: fx.Node, fn, is_method: bool):
        args = node.args
        op = fn if is_method else getattr(fn, "__name__", str(fn))
        tensors = [a for a in node.all_input_nodes if self.vals.get(a) is not _OTHER]
        if is_method and fn in ("size", "dim") or fn is getattr or not tensors:
            return _OTHER
        vals = [self.vals.get(a) for a in args if isinstance(a, fx.Node)]
        if any(isinstance(v, (attention.Heads, attention.Scores, attention.Param, attention.MHAOut)) for v in vals):
            return attention.call_op(self, node, fn, is_method, vals)
        x = args[0]
        if fn is operator.getitem and isinstance(self.vals.get(x), _Feat) and self.vals[x].tok:
            return self.token_index(node, self.vals[x])
        if (not is_method and fn in _ADD or is_method and fn in ("add", "__add__")) and len(tensors) == 2:
            if node.kwargs.get("alpha", 1) != 1:
                raise UnsupportedLayerError(self.where(node), op, "add with alpha != 1")
            return self.residual(node, self.feat(node, args[0], op), self.feat(node, args[1], op))
        if is_method and fn in _ELEMENTWISE_METHODS or not is_method and fn in _ELEMENTWISE_FNS:
            return self.feat(node, x, op)
        if (not is_method and fn in _SCALAR_OPS or is_method and fn in _SCALAR_METHODS) and len(tensors) == 1:
            return self.feat(node, tensors[0], op)
        if not is_method and fn in _POOL_FNS:
            return self.channel(node, self.feat(node, x, op), op)
        if not is_method and fn in _RESHAPE_FNS or is_method and fn in _RESHAPE_METHODS:
            return self.reshaped(node, self.feat(node, x, op), op)
        if not is_method and fn in _REDUCE or is_method and fn in _REDUCE_METHODS:
            v = self.feat(node, x, op)
            v = v if v.tok else self.channel(node, v, op)
            rank = len(self.shape(x))
            dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            dims = (dims,) if isinstance(dims, int) else dims
            if dims is None or any(d % rank in ((0, rank - 1) if v.tok else (0, 1)) for d in dims):
                raise UnsupportedLayerError(self.where(node), op, "reduction over the batch or feature axis")
            return _Feat(v.ns, 0, len(self.shape(node)) >= 3) if v.tok else v
        if not is_method and fn in _SOFTMAX_FNS or is_method and fn in ("softmax", "log_softmax"):
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (1, -1) and len(self.shape(x)) == 2:
                return self.feat(node, x, op)
        raise UnsupportedLayerError(self.where(node), op)

    def residual(self, node, a: _Feat, b: _Feat) -> _Feat:
        return self.residual_sets(self.where(node), a, b)

    def residual_sets(self, where: str, a: _Feat, b: _Feat) -> _Feat:
        """``a + b``: their node sets become one group, joined by an identity skip."""
        if a.block != b.block or a.tok != b.tok or self.sets[a.ns]["size"] != self.sets[b.ns]["size"]:
            raise UnsupportedLayerError(where, "add", "summands of different layouts")
        if a.ns == b.ns:
            return a
        lo, hi = sorted((a.ns, b.ns))
        self.parent[self.find(hi)] = self.find(lo)
        self.skips.append((lo, hi))
        self.sets[hi]["depth"] = max(self.sets[hi]["depth"], self.sets[lo]["depth"])
        return _Feat(hi, a.block, a.tok)

    def token_index(self, node, v: _Feat) -> _Feat:
        """``x[:, 0]`` and the like: indexing tokens that keeps the feature axis (a class token)."""
        idx, src, dst = node.args[1], self.shape(node.args[0]), self.shape(node)
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) < len(src) and Ellipsis not in idx and all(isinstance(i, (int, slice)) for i in idx) \
                and dst and dst[-1] == src[-1]:
            return _Feat(v.ns, 0, len(dst) >= 3)
        raise UnsupportedLayerError(self.where(node), "getitem", "indexing the feature axis of tokens")

    def run(self) -> NetStructure:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if any(s["kind"] == "input" for s in self.sets):
                    raise UnsupportedLayerError(node.name, "placeholder", "more than one input")
                size = self.shape(node)
                if len(size) < 2:
                    raise UnsupportedLayerError(node.name, "input", f"shape {size}: need (batch, C, ...)")
                tok = len(size) >= 3 and any(u.op == "call_module" and isinstance(
                    self.gm.get_submodule(u.target), (nn.Linear, nn.LayerNorm) + attention.LEAVES) for u in node.users)
                self.vals[node] = _Feat(self.new_set("input", size[-1] if tok else size[1], 0, "input"), 0, tok)
            elif node.op == "call_module":
                self.vals[node] = self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.vals[node] = self.call_function(node, node.target, node.op == "call_method")
            elif node.op == "get_attr":
                if node.target not in self.state_keys:
                    raise UnsupportedLayerError(str(node.target), "get_attr",
                                                "a parameter or buffer used outside a supported layer")
                self.vals[node] = attention.Param(str(node.target))
            elif node.op == "output":
                out = node.args[0]
                v = self.vals.get(out) if isinstance(out, fx.Node) else None
                if not isinstance(v, _Feat) or v.block or self.sets[v.ns]["kind"] == "input":
                    raise UnsupportedLayerError("output", "output", "the network must return one "
                                                "(batch, features[, ...]) tensor computed by a layer")
                self.sets[v.ns]["kind"] = "output"
        return self.finish()

    def finish(self) -> NetStructure | PermutationSpec:
        if self.headed or self.raw:
            return attention.build_spec(self)
        roots = [self.find(i) for i in range(len(self.sets))]
        fixed = {roots[i] for i, s in enumerate(self.sets) if s["kind"] != "hidden"}
        names = {}
        for i, r in enumerate(roots):
            names.setdefault(r, self.sets[i]["name"])
        nodesets = tuple(NodeSet(s["name"], s["size"], None if roots[i] in fixed else names[roots[i]],
                                 s["kind"], s["depth"], tuple(s["features"]))
                         for i, s in enumerate(self.sets))
        extras = tuple((k, tuple(t.shape), t.dtype) for k, t in self.state_keys.items()
                       if k not in self.used_keys)
        return NetStructure(nodesets, tuple(self.layers), tuple(self.skips), extras)


def _check_untied(module: nn.Module) -> None:
    """Raise naming the first two state-dict keys that hold one tensor (tied weights, or a module
    registered under two names): a spec would permute that tensor once per key."""
    seen: dict = {}
    for key, t in module.state_dict(keep_vars=True).items():
        if t.numel() == 0:
            continue
        ident = id(t) if t.is_meta else (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride())
        if ident in seen:
            raise UnsupportedLayerError(key.rpartition(".")[0] or type(module).__name__, "tied weights",
                                        f"'{seen[ident]}' and '{key}' are one shared tensor; untie them "
                                        "(e.g. clone one) to align")
        seen[ident] = key


class _ShapeProp(ShapeProp):
    """ShapeProp that names the layer an example input does not fit, with both shapes, in one line."""

    def run_node(self, n: fx.Node):
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback of a failure
                return super().run_node(n)
        except Exception as e:  # noqa: BLE001 - any failure of a layer on the input is reported
            got = [tuple(a.meta["tensor_meta"].shape) for a in n.all_input_nodes if "tensor_meta" in a.meta]
            m = self.module.get_submodule(n.target) if n.op == "call_module" else None
            want = _expected_input(m)
            where = f"layer '{n.target}' ({type(m).__name__})" if m is not None else f"op '{n.name}'"
            cause = e.__cause__ or e
            detail = f"expects {want}, got {got[0] if got else '?'}" if want else str(cause).split("\n")[0]
            raise GNNAlignError(f"example input of shape {self.shape_in} does not fit the model: {where} "
                                f"{detail}") from None

    def propagate(self, x: torch.Tensor):
        self.shape_in, self.extra_traceback = tuple(x.shape), False  # no fx notes appended to the message
        return super().propagate(x)


def _expected_input(m: nn.Module | None) -> str | None:
    if isinstance(m, nn.Linear):
        return f"(batch, {m.in_features})"
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return f"(batch, {m.in_channels}, {'L' if isinstance(m, nn.Conv1d) else 'H, W'})"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"(batch, {m.num_features}, ...)"
    if isinstance(m, nn.LayerNorm):
        return f"(..., {', '.join(map(str, m.normalized_shape))})"
    return None


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


def spec_from_module(module: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """Derive the permutation symmetry of ``module`` by tracing it with ``torch.fx``.

    Args:
        module: the network. Supported: Linear, Conv1d/2d (groups=1), BatchNorm1d/2d, LayerNorm
            over the feature axis, element-wise activations and dropout, pooling, global average
            pooling, flatten into a Linear layer, and residual additions (identity or projection
            shortcut). Custom modules are traced through.
        example_input: a batch of inputs, used once to read tensor shapes (the module's parameters
            and buffers are not changed; it runs in eval mode under ``no_grad``).

    Returns:
        A :class:`PermutationSpec` with its :class:`NetStructure` (group names are the module path
        of the first layer of each group).

    Raises:
        UnsupportedLayerError: naming the module path and op of anything else (attention, grouped
            conv, concatenation, tied weights, code the tracer cannot see through).
        GNNAlignError: an example input that does not fit the module (naming the layer and both shapes).
    """
    _check_untied(module)
    bare = isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))  # a single layer: no hidden neurons
    try:
        gm = fx.symbolic_trace(nn.Sequential(module) if bare else module)
    except Exception as e:
        raise UnsupportedLayerError(type(module).__name__, "torch.fx trace", str(e).split("\n")[0]) from e
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ShapeProp(gm).propagate(example_input)
    finally:
        for m, t in modes.items():
            m.train(t)
    out = _Tracer(gm, module.state_dict(), type(module).__name__, bare).run()
    return out if isinstance(out, PermutationSpec) else PermutationSpec.from_structure(out)
