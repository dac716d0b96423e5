"""The torch.compile route to the fused op: a graph pass that needs no knowledge of module classes.

    model = torch.compile(model, backend="gencore")       # or gencore.optimize(model), which uses it
    with torch.no_grad():
        y = model(x, t)

The "gencore" backend (registered with torch.compile through the package's torch_dynamo_backends entry point) takes
the graph TorchDynamo captured, rewrites every

    silu(group_norm(x))                                  -> group_norm_silu(x)
    silu(group_norm(x + t))                              -> group_norm_silu(x, temb=t)     t of shape (N, C, 1, ..)
    silu(group_norm(x) * (1 + scale) + shift)            -> group_norm_silu(x, scale_shift=cat(scale, shift))

into gencore's fused op (gencore::group_norm_silu_fwd, served by the cpu and cuda backends), whatever modules or
functions wrote them (diffusers' ResnetBlock2D and UNets' conv_norm_out + conv_act, a seed-style UNet's
Sequential(GroupNorm, SiLU, Conv) with h + temb before it, F.group_norm and F.silu called directly), and hands the
graph to Inductor. Intermediates that another node still reads are left alone (the pattern is then not rewritten).

When the pass leaves the graph as it is (and Inductor fuses GroupNorm + SiLU itself):
  * training graphs (grad enabled and an input that requires grad): on a 2-core CPU VM, Inductor's own fusion of the
    forward and backward was 3-7% faster than the opaque fused op over a whole diffusers UNet step.
  * groups smaller than MIN_GROUP_ELEMENTS elements (tiny feature maps), where Inductor's generated kernel, fused
    with its neighbours, wins over a separate call (bench/test_bench_diffusers.py shows both).
  * no C++ extension, or tensors of different dtypes or devices in one pattern.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from . import _extension

# Below this many elements per (sample, group) the pattern is left to Inductor (measured: see the module doc).
MIN_GROUP_ELEMENTS = 4096

_GROUP_NORM = (F.group_norm, torch.group_norm)
_SILU = (F.silu,)
# Out-of-place only: rewriting an in-place `h += t` would drop a mutation another alias of h may read.
_ADD = (operator.add, torch.add)
_MUL = (operator.mul, torch.mul)


def _value(node):
    """The example (fake) tensor TorchDynamo recorded for a node, or None (constants, non-tensor values)."""
    if not isinstance(node, torch.fx.Node):
        return None
    v = node.meta.get("example_value", node.meta.get("val"))
    return v if isinstance(v, torch.Tensor) else None


def _single_user(node) -> bool:
    return isinstance(node, torch.fx.Node) and len(node.users) == 1


def _per_channel(node, like: torch.Tensor) -> bool:
    """node holds an (N, C, 1, ..., 1) tensor broadcast against like (N, C, *spatial), same dtype and device."""
    v = _value(node)
    return (v is not None and v.dim() == like.dim() and tuple(v.shape[:2]) == tuple(like.shape[:2])
            and all(s == 1 for s in v.shape[2:]) and v.dtype == like.dtype and v.device == like.device)


def _group_norm_args(node):
    """(input, num_groups, weight, bias, eps) of a group_norm call node."""
    names = ("input", "num_groups", "weight", "bias", "eps")
    defaults = {"weight": None, "bias": None, "eps": 1e-5}
    values = dict(zip(names, node.args))
    for k in names:
        if k in node.kwargs:
            values[k] = node.kwargs[k]
    return tuple(values.get(k, defaults.get(k)) for k in names)


def _split_add(node):
    """If node is `a + b` with one side an (N, C, 1, ...) per-channel tensor: (the other side, that side)."""
    if node.op != "call_function" or node.target not in _ADD or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    va, vb = _value(a), _value(b)
    out = _value(node)
    if out is None:
        return None
    for big, small, vbig in ((a, b, va), (b, a, vb)):
        if vbig is not None and tuple(vbig.shape) == tuple(out.shape) and _per_channel(small, out):
            return big, small
    return None


def _worth_fusing(x: torch.Tensor, num_groups: int) -> bool:
    return x.numel() // max(1, x.shape[0] * num_groups) >= MIN_GROUP_ELEMENTS


def _match(silu):
    """The fused op's arguments if `silu` closes a pattern of the module doc: (x, G, w, b, eps, temb, scale, shift,
    nodes to erase), else None."""
    if silu.op != "call_function" or silu.target not in _SILU or not silu.args:
        return None
    inner = silu.args[0]
    scale = shift = None
    erase = []
    if isinstance(inner, torch.fx.Node) and inner.op == "call_function" and inner.target in _ADD \
            and _single_user(inner):
        # group_norm(x) * (1 + scale) + shift
        split = _split_add(inner)
        if split is not None:
            product, shift_node = split
            if (isinstance(product, torch.fx.Node) and product.op == "call_function" and product.target in _MUL
                    and _single_user(product) and len(product.args) == 2):
                p, q = product.args
                for gn_node, k_node in ((p, q), (q, p)):
                    if not (isinstance(gn_node, torch.fx.Node) and gn_node.target in _GROUP_NORM):
                        continue
                    # k = 1 + scale (either order)
                    if (isinstance(k_node, torch.fx.Node) and k_node.target in _ADD and len(k_node.args) == 2
                            and _single_user(k_node)):
                        one, s = k_node.args
                        if s == 1 or s == 1.0:
                            one, s = s, one
                        if (one == 1 or one == 1.0) and _per_channel(s, _value(gn_node)):
                            scale, shift = s, shift_node
                            erase = [inner, product, k_node]
                            inner = gn_node
                            break
    gn = inner
    if not (isinstance(gn, torch.fx.Node) and gn.op == "call_function" and gn.target in _GROUP_NORM
            and _single_user(gn)):
        return None
    x, num_groups, weight, bias, eps = _group_norm_args(gn)
    vx = _value(x)
    if vx is None or vx.dim() < 3 or not isinstance(num_groups, int) or not isinstance(eps, float):
        return None
    if shift is not None and not _per_channel(shift, vx):
        return None
    for p in (weight, bias):
        vp = _value(p) if p is not None else None
        if p is not None and (vp is None or vp.dtype != vx.dtype or vp.device != vx.device):
            return None
    temb = None
    if isinstance(x, torch.fx.Node) and _single_user(x):
        split = _split_add(x)
        if split is not None:
            erase.append(x)
            x, temb = split
            vx = _value(x)
    if not _worth_fusing(vx, num_groups):
        return None
    return x, num_groups, weight, bias, eps, temb, scale, shift, [gn] + erase


def fuse_group_norm_silu(gm: torch.fx.GraphModule) -> int:
    """Rewrite every pattern of the module doc in a TorchDynamo graph into gencore::group_norm_silu_fwd, in place.
    Returns how many were rewritten."""
    if not _extension.loaded():
        return 0
    op = torch.ops.gencore.group_norm_silu_fwd.default
    graph = gm.graph
    # Reads nothing uses (TorchDynamo records the size gate's x.is_cpu as a dead getattr) would count as users of x.
    pruned = graph.eliminate_dead_code()
    count = 0
    for silu in list(graph.nodes):
        found = _match(silu)
        if found is None:
            continue
        x, num_groups, weight, bias, eps, temb, scale, shift, erase = found
        with graph.inserting_before(silu):
            temb_2d = None if temb is None else graph.call_method("flatten", (temb, 1))
            scale_shift = None
            if scale is not None:
                parts = [graph.call_method("flatten", (scale, 1)), graph.call_method("flatten", (shift, 1))]
                scale_shift = graph.call_function(torch.cat, (parts, 1))
            fused = graph.call_function(op, (x, weight, bias, temb_2d, scale_shift, num_groups, eps, "silu"))
            y = graph.call_function(operator.getitem, (fused, 0))
        y.meta.update(silu.meta)
        silu.replace_all_uses_with(y)
        graph.erase_node(silu)
        dead = set(erase)
        while True:  # the replaced chain, each node once its last user is gone
            ready = [node for node in dead if not node.users]
            if not ready:
                break
            for node in ready:
                graph.erase_node(node)
                dead.discard(node)
        count += 1
    count += _fold_temb_into_fused(graph, op)
    if count or pruned:
        graph.lint()
        gm.recompile()
    return count


def _fold_temb_into_fused(graph: torch.fx.Graph, op) -> int:
    """group_norm_silu_fwd(x + t) with t (N, C, 1, ...) and no temb yet -> group_norm_silu_fwd(x, temb=t): the add
    before a module that already runs the fused op (gencore.nn.GroupNormSiLU, a converted model)."""
    count = 0
    for node in list(graph.nodes):
        if (node.op != "call_function" or node.target not in (op, torch.ops.gencore.group_norm_silu_fwd)
                or len(node.args) != 8 or node.kwargs):
            continue
        x, weight, bias, temb, scale_shift, num_groups, eps, activation = node.args
        if temb is not None or scale_shift is not None or not _single_user(x):
            continue
        split = _split_add(x)
        vx = None if split is None else _value(split[0])
        if vx is None or not _worth_fusing(vx, num_groups):
            continue
        add = x
        x, t = split
        with graph.inserting_before(node):
            temb_2d = graph.call_method("flatten", (t, 1))
        node.args = (x, weight, bias, temb_2d, scale_shift, num_groups, eps, activation)
        graph.erase_node(add)
        count += 1
    return count


def _is_training(example_inputs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)


def backend(gm: torch.fx.GraphModule, example_inputs):
    """torch.compile backend "gencore": the fusion pass above (inference graphs), then Inductor."""
    from torch._inductor.compile_fx import compile_fx  # here, not at the top: Inductor takes ~2 s to import

    if not _is_training(example_inputs):
        fuse_group_norm_silu(gm)
    return compile_fx(gm, example_inputs)
