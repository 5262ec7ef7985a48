"""Attention for :func:`gnn_align.spec_from_module`: heads and within-head groups (issue 21).

Tokens are ``(batch, tokens, features)`` tensors (``batch_first=False``: ``(tokens, batch, features)``)
whose *last* axis holds the neurons. The symmetry of multi-head attention with ``H`` heads of ``d``
dimensions, derived here:

- a **head group** ``<attn>.heads`` (``H``) moves whole heads: blocks of ``d`` rows of the q, k and v
  projections and the matching ``d`` input columns of the output projection;
- per head slot ``i``, a group ``<attn>.h{i}.qk`` (``d``) shared by the query and key dimensions of
  that head (``q_i . k_i`` is unchanged) and one ``<attn>.h{i}.v`` shared by its value dimensions
  and the output projection's input columns.

In the spec these are :class:`~gnn_align.spec.Piece` s (the head group first, then the groups
of each slot; :mod:`gnn_align.permute` states the composition) and ``spec.heads``. Supported:
``nn.MultiheadAttention`` (self-attention, no masks, no ``bias_k``/``add_zero_attn``),
``nn.TransformerEncoderLayer`` (``norm_first`` both ways, ReLU/GELU), ``nn.TransformerEncoder``,
and hand-written attention traced by ``torch.fx`` (q/k/v Linears, heads split by
``view``/``reshape``/``unflatten``, ``transpose``/``permute``, ``q @ k.transpose(-2, -1)``, scaling,
``softmax(-1)``, dropout, ``@ v`` or ``F.scaled_dot_product_attention``, merged back by
``transpose`` and ``reshape``/``flatten``); a learned positional embedding (a parameter added to the
tokens) is permuted by the group of the stream. Anything else raises ``UnsupportedLayerError``.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import UnsupportedLayerError
from .flat import build_view
from .spec import Axis, PermutationSpec, Piece

LEAVES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)
_ACTIVATIONS = (F.relu, F.gelu, torch.relu)


class Heads:
    """A traced ``(.., H, d)`` view of node set ``ns``; ``order`` names its axes (B, T, H, D)."""

    __slots__ = ("d", "h", "ns", "order")

    def __init__(self, ns: int, h: int, d: int, order: str):
        self.ns, self.h, self.d, self.order = ns, h, d, order


class Scores:
    """Attention scores ``(B, H, T, T)`` of the attention named ``attn`` with ``h`` heads."""

    __slots__ = ("attn", "h")

    def __init__(self, attn: str, h: int):
        self.attn, self.h = attn, h


class Param:
    """A parameter or buffer read by ``get_attr``: usable only as an addend of the tokens."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key


class MHAOut:
    """The ``(output, weights)`` pair of ``nn.MultiheadAttention``; ``feat`` is the output."""

    __slots__ = ("feat",)

    def __init__(self, feat):
        self.feat = feat


def _mark(tr, ns: int, attn: str, family: str, h: int, d: int, where: str) -> None:
    old = tr.headed.setdefault(ns, (attn, family, h, d))
    if old != (attn, family, h, d):
        raise UnsupportedLayerError(where, "attention", f"neurons of '{tr.sets[ns]['name']}' used as {family} of "
                                    f"'{attn}' and as {old[1]} of '{old[0]}'")


def _union(tr, a: int, b: int) -> None:
    ra, rb = tr.find(a), tr.find(b)
    if ra != rb:
        tr.parent[max(ra, rb)] = min(ra, rb)


def linear(tr, path: str, m: nn.Linear, v) -> object:
    """A Linear applied to tokens: a new node set, its weight a layer (used inside leaf modules)."""
    from .spec import Layer

    if m.in_features != tr.sets[v.ns]["size"]:
        raise UnsupportedLayerError(path, "Linear", "input size does not match the neurons it reads")
    dst = tr.new_set(path, m.out_features, tr.sets[v.ns]["depth"] + 1)
    tr.layers.append(Layer(tr.key(path, "weight"), v.ns, dst, tuple(m.weight.shape)))
    if m.bias is not None:
        tr.sets[dst]["features"][0] = tr.key(path, "bias")
    return type(v)(dst, 0, True)


def layer_norm(tr, path: str, m: nn.LayerNorm, v) -> object:
    """LayerNorm over the features of tokens: its weight and bias are permuted with them."""
    if tuple(m.normalized_shape) != (tr.sets[v.ns]["size"],):
        raise UnsupportedLayerError(path, "LayerNorm", "only LayerNorm over the feature axis is supported")
    for name in ("weight", "bias"):
        if getattr(m, name, None) is not None:
            tr.raw[tr.key(path, name)] = ([(v.ns, 0)],)
            tr.roles[tr.key(path, name)] = f"norm_{name}"
    return v


def mha(tr, path: str, m: nn.MultiheadAttention, v) -> object:
    """Self-attention by ``nn.MultiheadAttention`` on the tokens ``v``: the output's node set."""
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise UnsupportedLayerError(path, "MultiheadAttention", "kdim/vdim, add_bias_kv or add_zero_attn")
    e, h, d = m.embed_dim, m.num_heads, m.head_dim
    if tr.sets[v.ns]["size"] != e:
        raise UnsupportedLayerError(path, "MultiheadAttention", "input size does not match the neurons it reads")
    depth = tr.sets[v.ns]["depth"] + 1
    q, k, val = (tr.new_set(f"{path}.{r}", e, depth) for r in "qkv")
    _union(tr, q, k)
    for ns, fam in ((q, "qk"), (k, "qk"), (val, "v")):
        _mark(tr, ns, path, fam, h, d, path)
    rows = [(q, 0), (k, e), (val, 2 * e)]
    tr.raw[tr.key(path, "in_proj_weight")] = (rows, [(v.ns, 0)])
    tr.roles[tr.key(path, "in_proj_weight")] = "packed"
    if m.in_proj_bias is not None:
        tr.raw[tr.key(path, "in_proj_bias")] = (rows,)
        tr.roles[tr.key(path, "in_proj_bias")] = "packed"
    return linear(tr, f"{path}.out_proj", m.out_proj, type(v)(val, 0, True))


def call_leaf(tr, node: fx.Node, path: str, m: nn.Module):
    """``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` or ``nn.TransformerEncoder``."""
    name = type(m).__name__
    v = tr.feat(node, node.args[0], name)
    if not v.tok:
        raise UnsupportedLayerError(path, name, "only (batch, tokens, features) inputs are supported")
    ignored = ("need_weights", "average_attn_weights")
    args = list(node.args[1:]) + [a for k, a in node.kwargs.items() if k not in ignored]
    if isinstance(m, nn.MultiheadAttention):
        if any(a is not node.args[0] for a in args[:2]) or any(a is not None for a in args[2:]):
            raise UnsupportedLayerError(path, name, "only self-attention (query = key = value) without masks")
        return MHAOut(mha(tr, path, m, v))
    if any(a is not None for a in args):
        raise UnsupportedLayerError(path, name, "masks are not supported")
    if isinstance(m, nn.TransformerEncoderLayer):
        return encoder_layer(tr, path, m, v)
    for i, layer in enumerate(m.layers):
        v = encoder_layer(tr, f"{path}.layers.{i}", layer, v)
    return v if m.norm is None else layer_norm(tr, f"{path}.norm", m.norm, v)


def encoder_layer(tr, path: str, m: nn.TransformerEncoderLayer, x):
    """One ``nn.TransformerEncoderLayer`` (pre-LN or post-LN): the residual stream stays one group."""
    act = m.activation
    if not (act in _ACTIVATIONS or isinstance(act, (nn.ReLU, nn.GELU))):
        raise UnsupportedLayerError(f"{path}.activation", getattr(act, "__name__", type(act).__name__),
                                    "only relu and gelu are supported")

    def block(y, sub):
        if sub == "sa":
            return mha(tr, f"{path}.self_attn", m.self_attn, y)
        return linear(tr, f"{path}.linear2", m.linear2, linear(tr, f"{path}.linear1", m.linear1, y))

    for sub, norm in (("sa", "norm1"), ("ff", "norm2")):
        ln = getattr(m, norm)
        if m.norm_first:
            x = tr.residual_sets(path, x, block(layer_norm(tr, f"{path}.{norm}", ln, x), sub))
        else:
            x = layer_norm(tr, f"{path}.{norm}", ln, tr.residual_sets(path, x, block(x, sub)))
    return x


def _where(tr, node: fx.Node) -> str:
    w = tr.where(node)
    return "attn" if w.endswith(".forward") else w


def _order_after(node: fx.Node, order: str, fn: str) -> str | None:
    args, rank = node.args[1:], len(order)
    if fn == "transpose" and len(args) == 2:
        i, j = (int(a) % rank for a in args)
        o = list(order)
        o[i], o[j] = o[j], o[i]
        return "".join(o)
    if fn == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return "".join(order[int(a) % rank] for a in dims)
    return None


def call_op(tr, node: fx.Node, fn, is_method: bool, vals: list):
    """An op reading a :class:`Heads`, :class:`Scores`, :class:`Param` or :class:`MHAOut` value."""
    op = fn if is_method else getattr(fn, "__name__", str(fn))
    where = tr.where(node)
    x = vals[0]
    if fn is operator.getitem and isinstance(x, MHAOut):
        if node.args[1] != 0:
            return tr.UNUSABLE  # the attention weights: not a feature tensor
        return x.feat
    if is_method and fn in ("contiguous",) or fn in (F.dropout, torch.dropout) or is_method and fn == "dropout":
        return x if isinstance(x, (Heads, Scores)) else _fail(where, op)
    if isinstance(x, Heads) and (is_method and fn in ("transpose", "permute")):
        order = _order_after(node, x.order, fn)
        return Heads(x.ns, x.h, x.d, order)
    if isinstance(x, Heads) and (is_method and fn in ("view", "reshape", "flatten") or fn in (torch.flatten,
                                                                                               torch.reshape)):
        shape = tr.shape(node)
        if x.order[:2] in ("BT", "TB") and x.order[2:] == "HD" and len(shape) == 3 and shape[-1] == x.h * x.d:
            return tr.Feat(x.ns, 0, True)
        return _fail(where, op, f"merging heads from layout {x.order} into {tuple(shape)}")
    if fn in (operator.matmul, torch.matmul) and len(vals) == 2:
        a, b = vals
        if isinstance(a, Heads) and isinstance(b, Heads) and a.order == "BHTD" and b.order == "BHDT" \
                and (a.h, a.d) == (b.h, b.d):
            attn = _where(tr, node)
            _union(tr, a.ns, b.ns)
            _mark(tr, a.ns, attn, "qk", a.h, a.d, where)
            _mark(tr, b.ns, attn, "qk", a.h, a.d, where)
            return Scores(attn, a.h)
        if isinstance(a, Scores) and isinstance(b, Heads) and b.order == "BHTD" and a.h == b.h:
            _mark(tr, b.ns, a.attn, "v", b.h, b.d, where)
            return Heads(b.ns, b.h, b.d, "BHTD")
        return _fail(where, op, "only q @ k.transpose(-2, -1) and softmax(scores) @ v of split heads")
    if fn is F.scaled_dot_product_attention:
        q, k, v = (vals + [None] * 3)[:3]
        extra = [a for a in node.args[3:]] + [a for n, a in node.kwargs.items() if n not in ("dropout_p", "is_causal")]
        if all(isinstance(t, Heads) and t.order == "BHTD" for t in (q, k, v)) and (q.h, q.d) == (k.h, k.d) \
                and q.h == v.h and all(a is None for a in extra):
            attn = _where(tr, node)
            _union(tr, q.ns, k.ns)
            for t, fam in ((q, "qk"), (k, "qk"), (v, "v")):
                _mark(tr, t.ns, attn, fam, t.h, t.d, where)
            return Heads(v.ns, v.h, v.d, "BHTD")
        return _fail(where, op, "only q, k, v of split heads (B, H, T, d), no mask or scale")
    if isinstance(x, Scores) and len(vals) == 1:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if (is_method and fn == "softmax" or fn in (F.softmax, torch.softmax)) and dim in (-1, 3):
            return x
        if fn in (operator.mul, operator.truediv, torch.mul, torch.div) or is_method and fn in ("mul", "div"):
            return x  # scaling by a constant
    if any(isinstance(v, Param) for v in vals):
        return _param_add(tr, node, fn, vals, op)
    return _fail(where, op, "in attention" if any(isinstance(v, (Heads, Scores)) for v in vals) else "")


def _param_add(tr, node, fn, vals, op):
    p = next(v for v in vals if isinstance(v, Param))
    feats = [v for v in vals if isinstance(v, tr.Feat)]
    if fn in (operator.add, operator.iadd, torch.add) and len(vals) == 2 and len(feats) == 1 and feats[0].tok:
        t, v = tr.state_keys[p.key], feats[0]
        if t.dim() <= len(tr.shape(node)) and t.shape[-1] == tr.sets[v.ns]["size"]:
            tr.used_keys.add(p.key)
            tr.raw[p.key] = (None,) * (t.dim() - 1) + ([(v.ns, 0)],)
            tr.roles[p.key] = "pos"
            return v
    raise UnsupportedLayerError(p.key, "get_attr", "a parameter or buffer used outside a supported layer "
                                f"(only added to tokens, as a positional embedding; here: {op})")


def split_heads(tr, node: fx.Node, v, op: str):
    """``(B, T, H*d) -> (B, T, H, d)`` of tokens (view, reshape, unflatten): a :class:`Heads`."""
    src, dst = tr.shape(node.args[0]), tr.shape(node)
    if len(src) == 3 and len(dst) == 4 and dst[:2] == src[:2] and dst[2] * dst[3] == src[2]:
        return Heads(v.ns, dst[2], dst[3], "BTHD")
    raise UnsupportedLayerError(tr.where(node), op, f"reshape of tokens {src} -> {dst} is not a split into heads")


def _fail(where: str, op, reason: str = ""):
    raise UnsupportedLayerError(where, str(op), reason)


def build_spec(tr) -> PermutationSpec:
    """The spec of a traced network with attention or token tensors (no graph structure)."""
    roots = [tr.find(i) for i in range(len(tr.sets))]
    fixed = {roots[i] for i, s in enumerate(tr.sets) if s["kind"] != "hidden"}
    info = {}
    for ns, hd in tr.headed.items():
        if info.setdefault(roots[ns], hd) != hd or roots[ns] in fixed:
            raise UnsupportedLayerError(hd[0], "attention", f"the {hd[1]} neurons of '{hd[0]}' are shared with "
                                        "other neurons or are fixed")
    names, sizes, heads = {}, {}, {}
    for i, r in enumerate(roots):
        names.setdefault(r, tr.sets[i]["name"])
        if r in fixed:
            continue
        if r not in info:
            sizes.setdefault(names[r], tr.sets[i]["size"])
            continue
        attn, fam, h, d = info[r]
        sizes.setdefault(f"{attn}.heads", h)
        for j in range(h):
            sizes.setdefault(f"{attn}.h{j}.{fam}", d)
        heads.setdefault(f"{attn}.heads", {})[fam] = tuple(f"{attn}.h{j}.{fam}" for j in range(h))

    def entry(segs):
        pieces = []
        for ns, start, *block in segs:
            r = roots[ns]
            if r in fixed:
                continue
            if r not in info:
                pieces.append(Piece(names[r], block[0] if block else 1, start))
                continue
            attn, fam, h, d = info[r]
            pieces += [Piece(f"{attn}.heads", d, start)] + [Piece(f"{attn}.h{j}.{fam}", 1, start + j * d)
                                                          for j in range(h)]
        if not pieces:
            return None
        if len(pieces) == 1 and pieces[0].start == 0 and len(segs) == 1:
            return Axis(pieces[0].group, pieces[0].block)
        return tuple(pieces)

    axes = {}
    for ly in tr.layers:
        axes[ly.weight] = (entry([(ly.dst, 0)]), entry([(ly.src, 0, ly.block)])) + (None,) * (len(ly.shape) - 2)
    for i, s in enumerate(tr.sets):
        for key in s["features"]:
            if key is not None:
                axes[key] = (entry([(i, 0)]),)
    for key, spec in tr.raw.items():
        axes[key] = tuple(None if segs is None else entry(segs) for segs in spec)
    for key, t in tr.state_keys.items():
        if key not in axes:
            axes[key] = (None,) * t.dim()
    order = {k: i for i, k in enumerate(tr.state_keys)}
    axes = dict(sorted(axes.items(), key=lambda kv: order.get(kv[0], len(order))))
    fams = {h: tuple(f[k] for k in ("qk", "v") if k in f) for h, f in heads.items()}

    def group_of(i: int) -> str | None:
        r = roots[i]
        return None if r in fixed else names[r] if r not in info else f"{info[r][0]}.{info[r][1]}"

    attns = {h[:-len(".heads")]: (h, f, sizes[f[0][0]]) for h, f in fams.items() if len(f) == 2}
    view = build_view(tr, group_of, attns) if len(attns) == len(fams) else None
    return PermutationSpec(sizes, axes, None, fams, view)
