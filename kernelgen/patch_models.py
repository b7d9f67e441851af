"""`kernelgen.patch(model)`: a Hugging Face decoder model's hot spots served by fused library ops, reversibly.

A stock Llama, Mistral, Qwen2/Qwen3 or Gemma forward never reaches most of the library through ATen: its
RMSNorm is written by hand (pow, mean, rsqrt, mul: seven kernels), the gated MLP multiplies act(gate) by
up, RoPE is rotate_half arithmetic and the loss upcasts the logits to float32 before a log-softmax. patch()
replaces, on this model's own module instances:

| what | library op |
|---|---|
| every RMSNorm module (Llama style `w * x.to(dtype)`, Gemma style `x * (1 + w)`) | rms_norm |
| `residual + attention output` then `post_attention_layernorm` in a decoder layer | fused_add_rms_norm |
| `down_proj(act(gate_proj(x)) * up_proj(x))` with SiLU / exact or tanh GELU | silu_and_mul / gelu_and_mul |
| `apply_rotary_pos_emb(q, k, cos, sin)` inside the model's attention modules | rotary_embedding |
| the causal-LM loss (`model.loss_function`) | cross_entropy |
| one new token's attention over the KV cache (sdpa models; prefill, masks stay sdpa); opt-in | decode_attention |
| a decode step's DynamicCache append (`torch.cat`) and its attention, fused (sdpa models, RoPE patched) | \
  decode_attention_append |

Each replacement checks its call first and runs the original code for anything it does not cover: a tensor
on another device than the backend's, a call that needs gradients (the kernels are forward-only), another
weight dtype, an unexpected argument. Structural patches are made only when the module's source is the
known one (a decoder layer whose forward is exactly the pre-norm residual block), so a model that differs is
left as it is rather than computed differently. Only ops verified on the backend (a fresh passing
`verified/<backend>.json`) are used, unless policy="all" (development, the interpreter).

RoPE is a module-level function in transformers: patch() swaps it in the model's modeling module for one
that uses our kernel only while an attention module of a patched model is running (other models in the
process keep the original), and puts it back when the last patched model of that family is unpatched.
Decode attention goes through transformers' AttentionInterface: the model's attention implementation is
switched from "sdpa" to a registered name whose function serves one-token, unmasked calls and hands every
other call to sdpa (kernelgen/patch_attention.py).

unpatch(model) restores every instance attribute, and the attention implementation, exactly as they were.
"""

from __future__ import annotations

import inspect
import sys
import types
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kernelgen.custom_ops import compile_aware, register
from kernelgen.patch_attention import append_scope, enable_append, record_rope
from kernelgen.patch_attention import restore as restore_attention
from kernelgen.patch_attention import route as route_attention

POLICIES = ("verified", "all")
LIBRARY_OPS = ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "gelu_and_mul", "rotary_embedding",
               "cross_entropy", "decode_attention", "decode_attention_append")
# Patched only when named in `include`: decode_attention measured 63.2 us against cuDNN SDPA's 60.9 us for
# the benchmark's decode shape on an H100 (batch 16, 32/8 heads, 2048 positions; logs/sweep_decode_attention_h100.json).
OPT_IN = ("decode_attention",)
_LAYER_STEPS = ("residual = hidden_states", "hidden_states = self.input_layernorm(hidden_states)",
                "hidden_states = residual + hidden_states", "residual = hidden_states",
                "hidden_states = self.post_attention_layernorm(hidden_states)",
                "hidden_states = self.mlp(hidden_states)", "hidden_states = residual + hidden_states",
                "return hidden_states")


@dataclass
class _Patch:
    backend: object
    saved: list = field(default_factory=list)  # (module, attribute, had its own, its own value)
    rope_modules: list = field(default_factory=list)
    loss: tuple | None = None  # (had its own _loss_function, that value)
    attention: list = field(default_factory=list)  # (configs' attention implementations, routed modules)
    patched: Counter = field(default_factory=Counter)
    skipped: dict = field(default_factory=dict)


_patches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_rope_installs: dict[str, list] = {}  # modeling module name -> [original function, patched models using it]


class _RopeScope:
    depth = 0  # > 0 while an attention module of a patched model runs


def _ops(backend, policy: str, wanted: set[str]) -> tuple[dict, dict]:
    """name -> (compile-aware call, plain launcher) for the library ops the policy allows on the backend."""
    from kernelgen.library import get_op, op_status

    found, skipped = {}, {}
    for name in sorted(wanted):
        try:
            op = get_op(name)
        except Exception as exc:  # noqa: BLE001 - a missing or broken op only means no patch for it
            skipped[name] = str(exc)
            continue
        if op.broken:
            skipped[name] = op.error
            continue
        if policy != "all":
            st = op_status(op, backend.name)["status"]
            if st != "verified":
                skipped[name] = f"{st} on {backend.name}"
                continue
        launcher = op.launcher(backend.name)
        found[name] = (compile_aware(launcher, register(op.spec, launcher)), launcher)
    return found, skipped


def _forward_source(cls) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _norm_style(module) -> str | None:
    """'llama' (weight * x_normed.to(dtype)), 'gemma' (x_normed * (1 + weight) in float32), or None."""
    if not type(module).__name__.endswith("RMSNorm") or not isinstance(getattr(module, "weight", None), torch.Tensor):
        return None
    if module.weight.dim() != 1:
        return None
    src = _forward_source(type(module))
    if "self.weight * hidden_states.to(input_dtype)" in src and hasattr(module, "variance_epsilon"):
        return "llama"
    if "1.0 + self.weight.float()" in src and hasattr(module, "eps"):
        return "gemma"
    return None


def _act_kind(act) -> tuple | None:
    name = type(act).__name__
    if isinstance(act, torch.nn.SiLU) or name == "SiLUActivation":
        return ("silu_and_mul",)
    if isinstance(act, torch.nn.GELU):
        return ("gelu_and_mul", act.approximate)
    if name == "GELUActivation" and getattr(act, "act", None) is F.gelu:
        return ("gelu_and_mul", "none")
    if name in ("GELUTanh", "PytorchGELUTanh"):
        return ("gelu_and_mul", "tanh")
    return None


def _layer_is_standard(layer) -> bool:
    """The decoder layer's forward is exactly the pre-norm residual block (Llama, Mistral, Qwen2/3, Gemma)."""
    lines = [ln.strip() for ln in _forward_source(type(layer)).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    steps = [ln for ln in lines if ln.startswith(("hidden_states =", "residual =", "return"))]
    calls_attn = any(ln.startswith("hidden_states, ") and "self.self_attn(" in ln for ln in lines)
    return calls_attn and tuple(steps) == _LAYER_STEPS


class _Servable:
    """Whether a call may go to a library kernel: on the backend's device, no gradients needed."""

    def __init__(self, device_type: str):
        self.device_type = device_type

    def __call__(self, *tensors) -> bool:
        grad = torch.is_grad_enabled()
        for t in tensors:
            if t.device.type != self.device_type or (grad and t.requires_grad):
                return False
        return True


def _gemma_weight(module):
    """1 + weight in float32, computed again only when the weight changes (cached on the module)."""
    w = module.weight
    key = (w.data_ptr(), w._version, w.dtype)
    cached = module.__dict__.get("_kernelgen_w1")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, 1.0 + w.detach().float())
        module.__dict__["_kernelgen_w1"] = cached
    return cached[1]


def _norm_weight_and_eps(module, style):
    if style == "gemma":
        return _gemma_weight(module), module.eps
    return module.weight, module.variance_epsilon


def _set_attr(rec: _Patch, module, name: str, value) -> None:
    rec.saved.append((module, name, name in module.__dict__, module.__dict__.get(name)))
    setattr(module, name, value)


def _set_forward(rec: _Patch, module, fn) -> None:
    _set_attr(rec, module, "forward", types.MethodType(fn, module))


def _hooked(*modules) -> bool:
    """Whether a forward hook (of these modules, or a global one) must see the modules' calls."""
    from torch.nn.modules import module as nn_module

    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


def _patch_norm(rec, module, style, rms_norm, ok):
    original = module.forward

    def forward(self, hidden_states):
        w = self.weight
        if style == "llama" and w.dtype != hidden_states.dtype or not ok(hidden_states, w):
            return original(hidden_states)
        weight, eps = _norm_weight_and_eps(self, style)
        return rms_norm(hidden_states, weight, eps)

    _set_forward(rec, module, forward)


def _patch_mlp(rec, module, kind, act_and_mul, ok):
    original = module.forward
    extra = kind[1:]

    def forward(self, x):
        if not ok(x):
            return original(x)
        return self.down_proj(act_and_mul(self.gate_proj(x), self.up_proj(x), *extra))

    def add_into(x, residual):
        """residual + mlp(x) with the addition done by the down projection's GEMM (cuBLAS adds into its
        output: residual.addmm_), so the decoder layer launches no separate add; None when the MLP's own
        forward must run (hooks, another device, a Linear with a bias or of another kind or dtype)."""
        down = module.down_proj
        if (type(down) is not torch.nn.Linear or down.bias is not None or down.weight.dtype != residual.dtype
                or not ok(x, residual) or _hooked(module, module.gate_proj, module.up_proj, down)):
            return None
        h = act_and_mul(module.gate_proj(x), module.up_proj(x), *extra)
        shape = residual.shape
        return residual.view(-1, shape[-1]).addmm_(h.view(-1, h.shape[-1]), down.weight.t()).view(shape)

    _set_forward(rec, module, forward)
    _set_attr(rec, module, "_kernelgen_add_into", add_into)


def _patch_layer(rec, layer, style, fused, ok):
    original = layer.forward
    post = layer.post_attention_layernorm

    def forward(self, hidden_states, *args, **kwargs):
        other_dtype = style == "llama" and post.weight.dtype != hidden_states.dtype
        if args or other_dtype or not ok(hidden_states, post.weight):
            return original(hidden_states, *args, **kwargs)
        residual = hidden_states
        attn = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        attn_out = attn[0] if isinstance(attn, tuple) else attn
        weight, eps = _norm_weight_and_eps(post, style)
        normed, hidden_states = fused(attn_out, residual, weight, eps)
        # hidden_states is the fused kernel's fresh output, ours to add into in place
        add_into = self.mlp.__dict__.get("_kernelgen_add_into")
        out = add_into(normed, hidden_states) if add_into is not None else None
        return hidden_states + self.mlp(normed) if out is None else out

    _set_forward(rec, layer, forward)


def _rope_function(original, rotary, ok):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        plain_call = not args and set(kwargs) <= {"unsqueeze_dim"} and kwargs.get("unsqueeze_dim", 1) == 1
        if (_RopeScope.depth <= 0 or not plain_call or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3
                or cos.shape != sin.shape or cos.shape[-1] != q.shape[-1] or not ok(q, k, cos, sin)):
            return original(q, k, cos, sin, *args, **kwargs)
        B, H, S, D = q.shape
        Hk, R = k.shape[1], D // 2
        if cos.shape[0] not in (1, B) or cos.shape[1] != S or k.shape[0] != B or k.shape[2] != S:
            return original(q, k, cos, sin)
        # HF's tables hold each frequency twice (cat(freqs, freqs)); the kernel takes one half, per token.
        c, s = cos[..., :R].expand(B, S, R).reshape(B * S, R), sin[..., :R].expand(B, S, R).reshape(B * S, R)
        q_out, k_out = rotary(q.transpose(1, 2).reshape(B * S, H, D), k.transpose(1, 2).reshape(B * S, Hk, D), c, s)
        q_out, k_out = q_out.view(B, S, H, D).transpose(1, 2), k_out.view(B, S, Hk, D).transpose(1, 2)
        record_rope(q_out, k_out)  # a decode step's query, for a fused cache append (patch_attention)
        return q_out, k_out

    apply_rotary_pos_emb._kernelgen_original = original
    return apply_rotary_pos_emb


def _patch_attention_scope(rec, attn):
    original = attn.forward

    def forward(self, *args, **kwargs):
        _RopeScope.depth += 1
        try:
            with append_scope(self, kwargs):
                return original(*args, **kwargs)
        finally:
            _RopeScope.depth -= 1

    _set_forward(rec, attn, forward)


def _install_rope(model, rec, attn_modules, rotary, ok) -> int:
    by_module: dict[str, list] = {}
    for attn in attn_modules:
        mod = sys.modules.get(type(attn).__module__)
        if mod is not None and callable(getattr(mod, "apply_rotary_pos_emb", None)):
            by_module.setdefault(mod.__name__, []).append(attn)
    for name, attns in by_module.items():
        mod = sys.modules[name]
        if name not in _rope_installs:
            original = mod.apply_rotary_pos_emb
            original = getattr(original, "_kernelgen_original", original)
            _rope_installs[name] = [original, weakref.WeakSet()]
            mod.apply_rotary_pos_emb = _rope_function(original, rotary, ok)
        _rope_installs[name][1].add(model)
        rec.rope_modules.append(name)
        for attn in attns:
            _patch_attention_scope(rec, attn)
    return sum(len(a) for a in by_module.values())


def _patch_loss(model, rec, cross_entropy, launcher, ok) -> bool:
    prop = getattr(type(model), "loss_function", None)
    if not isinstance(prop, property) or prop.fset is None:
        return False
    original = model.loss_function

    def causal_lm_loss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100,
                       shift_labels=None, **kwargs):
        if num_items_in_batch is not None or ignore_index != -100 or not ok(logits):
            return original(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch,
                            ignore_index=ignore_index, shift_labels=shift_labels, **kwargs)
        if shift_labels is None:
            shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        rows, targets = logits.reshape(-1, vocab_size), shift_labels.reshape(-1).to(logits.device)
        if torch.compiler.is_compiling():
            return cross_entropy(rows, targets, ignore_index).float()
        return launcher(rows, targets, ignore_index, float32_loss=True)  # float32 like HF's upcast loss

    rec.loss = ("_loss_function" in model.__dict__, model.__dict__.get("_loss_function"))
    model.loss_function = causal_lm_loss
    return True


def patch(model, backend=None, policy="verified", include=None, exclude=None) -> dict:
    """Patch `model` in place (see the module docstring). Returns {"patched": {what: count}, "skipped":
    {op or part: why}}. A model patched before is unpatched first."""
    from kernelgen.backends import default_backend, get_backend

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    unknown = sorted((set(include or []) | set(exclude or [])) - set(LIBRARY_OPS))
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; patch() uses {list(LIBRARY_OPS)}")
    be = get_backend(backend) if backend else default_backend()
    if be is None:
        warnings.warn("kernelgen.patch(): no accelerator found; nothing patched "
                      "(pass backend='interpreter' to run kernels on the CPU)", stacklevel=2)
        return {"patched": {}, "skipped": {"all": "no accelerator"}}
    be.prepare()
    from kernelgen import lean_replay

    lean_replay.prefetch(be.device)
    unpatch(model)
    wanted = {n for n in LIBRARY_OPS if (n in include if include is not None else n not in OPT_IN)
              and n not in (exclude or [])}
    ops, skipped = _ops(be, policy, wanted)
    rec = _Patch(backend=be, skipped=skipped)
    ok = _Servable(be.device)
    modules = list(model.modules())
    if "fused_add_rms_norm" in ops:
        for layer in modules:
            post = getattr(layer, "post_attention_layernorm", None)
            if post is None or not hasattr(layer, "self_attn") or not hasattr(layer, "mlp"):
                continue
            style = _norm_style(post)
            if style and _layer_is_standard(layer):
                _patch_layer(rec, layer, style, ops["fused_add_rms_norm"][0], ok)
                rec.patched["fused_add_rms_norm"] += 1
            else:
                rec.skipped["fused_add_rms_norm"] = f"{type(layer).__name__}: not the standard pre-norm block"
    if "rms_norm" in ops:
        for m in modules:
            style = _norm_style(m)
            if style:
                _patch_norm(rec, m, style, ops["rms_norm"][0], ok)
                rec.patched["rms_norm"] += 1
    for m in modules:
        if all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            kind = _act_kind(m.act_fn)
            if kind is None:
                rec.skipped["mlp"] = f"{type(m).__name__}: activation {type(m.act_fn).__name__} has no library op"
            elif kind[0] in ops:
                _patch_mlp(rec, m, kind, ops[kind[0]][0], ok)
                rec.patched[kind[0]] += 1
    attns = [m for m in modules if type(m).__name__.endswith("Attention") and hasattr(m, "q_proj")]
    if "rotary_embedding" in ops:
        n = _install_rope(model, rec, attns, ops["rotary_embedding"][0], ok)
        if n:
            rec.patched["rotary_embedding"] += n
    if "cross_entropy" in ops:
        call, launcher = ops["cross_entropy"]
        if _patch_loss(model, rec, call, launcher, ok):
            rec.patched["cross_entropy"] += 1
        else:
            rec.skipped["cross_entropy"] = "the model has no settable loss_function"
    attention_ops = [n for n in ("decode_attention", "decode_attention_append") if n in ops]
    if attention_ops:
        decode = ops["decode_attention"][0] if "decode_attention" in ops else None
        n, why, rec.attention = route_attention(model, attns, decode, ok)
        if n and "decode_attention_append" in ops:
            if not rec.patched["rotary_embedding"]:
                why = "the fused append takes its query from the RoPE patch (rotary_embedding), not patched"
            else:
                why = enable_append(model, attns, ops["decode_attention_append"][0], ok)
            if why:
                rec.skipped["decode_attention_append"] = why
                attention_ops.remove("decode_attention_append")
                if not attention_ops:  # nothing left to route: the model keeps its implementation
                    restore_attention(*rec.attention, model)
                    rec.attention = []
        for name in attention_ops:
            if n:
                rec.patched[name] += n
            else:
                rec.skipped[name] = why
    _patches[model] = rec
    return {"patched": dict(rec.patched), "skipped": dict(rec.skipped)}


def unpatch(model) -> None:
    """Undo patch(model): every forward and the loss function as they were; RoPE back once no patched model
    of that family is left. A model that was not patched is left alone."""
    rec = _patches.pop(model, None)
    if rec is None:
        return
    for module, name, had_own, own in reversed(rec.saved):
        if had_own:
            setattr(module, name, own)
        else:
            delattr(module, name)
    for m in model.modules():
        m.__dict__.pop("_kernelgen_w1", None)
    if rec.attention:
        restore_attention(*rec.attention, model)
    if rec.loss is not None:
        had_own, own = rec.loss
        if had_own:
            model.__dict__["_loss_function"] = own
        else:
            model.__dict__.pop("_loss_function", None)
    for name in set(rec.rope_modules):
        entry = _rope_installs.get(name)
        if entry is None:
            continue
        entry[1].discard(model)
        if not len(entry[1]):
            sys.modules[name].apply_rotary_pos_emb = entry[0]
            del _rope_installs[name]


def patched(model) -> dict:
    """What patch() changed in this model ({} when it is not patched)."""
    rec = _patches.get(model)
    return {} if rec is None else {"patched": dict(rec.patched), "skipped": dict(rec.skipped)}
