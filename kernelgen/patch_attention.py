"""Decode attention of a patched Hugging Face model served by the library's decode_attention op.

transformers (>= 4.48) looks the attention function up by name, `config._attn_implementation`, in its
AttentionInterface on every attention call. patch() registers one more name, ATTN_NAME, whose function
serves exactly the calls it covers (one new query token, no mask, no dropout, no softcap, sinks or position
bias, one dtype, head dim <= 256, on the backend's device, no gradients) with the kernel, and gives every
other call, prefill included, to the implementation the model had. Only models that used "sdpa" are
routed: the mask a model builds depends on the implementation's name (transformers builds none at all for
a name it has no mask function for), so ATTN_NAME is registered with sdpa's mask function too. Our
function then sees exactly the masks sdpa would: None for a decode step of an unpadded batch with a
DynamicCache, a tensor for a padded batch or a static cache. A tensor is never inspected (that would sync
the host): the call goes to sdpa.

The attention modules carry the fallback and the op (an attribute each, removed by unpatch), so models
patched for different backends, or not at all, share the one registered name safely.

Fused cache append (decode_attention_append). A decode step with a DynamicCache concatenates each layer's
cache with the new token (`DynamicLayer.update`: torch.cat, the whole cache read and written) and then
attends over the result (read again). With the append op the three steps of the model's own attention
forward stay the model's; three hooks pass one decode call's tensors along, each checked by identity:
- the attention module's forward (patch_models wraps it) opens a scope when it is called with
  attention_mask=None, the mask sdpa gets for an unpadded decode step;
- RoPE (patch_models' apply_rotary_pos_emb) records the rotated query and key of a one-token call;
- `DynamicLayer.update`, while the class is patched (from the first model patched with the op to the last
  unpatched), sees that key arrive: it runs the fused op, which attends with the recorded query and writes the
  concatenated cache, stores the new keys and values as the original update would, and returns them;
- our attention function, called with that query and those keys and values, no mask and the scale the op
  used, returns the attention output already computed. Any other call computes as before: a result that
  is not taken costs time, never correctness, and the cache holds the same tensors either way.
"""

from __future__ import annotations

import threading
import weakref

import torch

ATTN_NAME = "kernelgen_decode"
ROUTED_FROM = "sdpa"
MAX_HEAD_DIM = 256
_ATTR = "_kernelgen_decode_attention"  # on each attention module: (fallback function, op or None, servable check)
_APPEND_ATTR = "_kernelgen_append"  # on each attention module of a model patched with the append op: (op, servable)


class _Pending(threading.local):
    """One decode call's tensors on their way from RoPE through the cache update to the attention function."""
    module = None  # the attention module whose forward runs (append enabled, no mask)
    query = key = None  # RoPE's outputs in that forward (one new position)
    result = None  # (query, keys, values, scale, out) from the fused update


_pending = _Pending()
_compiling = torch.compiler.is_compiling
_update_install: dict = {}  # "original": DynamicLayer.update before us, "models": patched models using ours
# Keyword arguments that change what attention computes; a call with any of them set goes to the fallback.
_CHANGES_RESULT = ("softcap", "sliding_window", "s_aux", "sinks", "position_bias", "head_mask")


def _fallback(name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def decode_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                             is_causal=None, **kwargs):
    """An AttentionInterface function: attn_output [B, Sq, Hq, D] and no weights, like sdpa's."""
    entry = module.__dict__.get(_ATTR)
    if entry is None:  # a module of a model that was not patched (or was unpatched) but uses our name
        return _fallback(ROUTED_FROM)(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    fallback, op, servable = entry
    done = None if _compiling() else _pending.result
    if done is not None:
        _pending.result = None
        q_done, k_done, v_done, scale_done, out = done
        if (q_done is query and k_done is key and v_done is value and attention_mask is None and dropout == 0.0
                and scaling == scale_done and not kwargs.get("output_attentions")
                and all(kwargs.get(k) is None for k in _CHANGES_RESULT)):
            return out.transpose(1, 2), None  # computed by the fused cache update
    if (op is None or attention_mask is not None or dropout != 0.0 or query.dim() != 4 or query.shape[2] != 1
            or key.dim() != 4 or value.shape != key.shape or query.shape[0] != key.shape[0]
            or query.shape[-1] != key.shape[-1] or query.shape[-1] > MAX_HEAD_DIM
            or key.shape[1] == 0 or query.shape[1] % key.shape[1] or key.shape[2] == 0
            or not query.dtype == key.dtype == value.dtype or kwargs.get("output_attentions")
            or any(kwargs.get(k) is not None for k in _CHANGES_RESULT) or not servable(query, key, value)):
        return fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                        is_causal=is_causal, **kwargs)
    out = op(query, key, value, scaling)
    # [B, Hq, 1, D] -> [B, 1, Hq, D]: a view, contiguous because the moved dim has size 1
    return out.transpose(1, 2), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, decode_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS[ROUTED_FROM])


def _configs(model) -> list:
    """Every distinct config object of the model's modules (a CausalLM and its inner model share one)."""
    seen: dict[int, object] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def route(model, attn_modules: list, op, servable) -> tuple[int, str, list]:
    """Route the model's decode attention to `op`. Returns (attention modules routed, why not when 0,
    undo state for restore())."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous != ROUTED_FROM:
        return 0, f"attention implementation {previous!r}: only {ROUTED_FROM!r} is routed", []
    if not hasattr(model, "set_attn_implementation"):
        return 0, "the model cannot switch its attention implementation", []
    try:
        _register()
    except ImportError as exc:
        return 0, f"transformers has no attention interface here ({exc})", []
    # The exact values, to put back: set_attn_implementation also rewrites sub-model configs.
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in _configs(model)]
    model.set_attn_implementation(ATTN_NAME)
    if config._attn_implementation != ATTN_NAME:
        restore(saved, [])
        return 0, "the model did not take the attention implementation", []
    fallback = _fallback(previous)  # resolved once: no lookup (or import) on the decode path
    for attn in attn_modules:
        attn.__dict__[_ATTR] = (fallback, op, servable)
    return len(attn_modules), "", [saved, list(attn_modules)]


def restore(saved: list, attn_modules: list, model=None) -> None:
    for cfg, value in saved:
        cfg._attn_implementation_internal = value
    for attn in attn_modules:
        attn.__dict__.pop(_ATTR, None)
        attn.__dict__.pop(_APPEND_ATTR, None)
    models = _update_install.get("models")
    if model is not None and models is not None:
        models.discard(model)
        if not len(models):
            from transformers.cache_utils import DynamicLayer

            DynamicLayer.update = _update_install.pop("original")
            _update_install.clear()


def enable_append(model, attn_modules: list, op, servable) -> str:
    """Serve the decode steps of these (routed) attention modules with the fused append op; "" or why not."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError as exc:
        return f"transformers has no DynamicLayer here ({exc})"
    if not callable(getattr(DynamicLayer, "update", None)):
        return "DynamicLayer has no update method"
    if not _update_install:
        _update_install["original"] = DynamicLayer.update
        _update_install["models"] = weakref.WeakSet()
        DynamicLayer.update = _fused_update
    _update_install["models"].add(model)
    for attn in attn_modules:
        attn.__dict__[_APPEND_ATTR] = (op, servable)
    return ""


class append_scope:
    """Around an attention module's forward: the decode call may be fused when the module is patched with the
    append op and the call's mask is None (an unpadded decode step)."""

    __slots__ = ("module", "compiling", "saved")

    def __init__(self, module, kwargs: dict):
        # Not while torch.compile traces: the hand-over goes through thread-local state, which Dynamo does not
        # trace; a compiled forward keeps the model's update and attention.
        self.compiling = _compiling()
        on = _APPEND_ATTR in module.__dict__ and "attention_mask" in kwargs and kwargs["attention_mask"] is None
        self.module = module if on and not self.compiling else None

    def __enter__(self):
        if self.compiling:
            return
        p = _pending
        self.saved = (p.module, p.query, p.key, p.result)
        p.module, p.query, p.key, p.result = self.module, None, None, None

    def __exit__(self, *exc):
        if not self.compiling:
            p = _pending
            p.module, p.query, p.key, p.result = self.saved
        return False


def record_rope(q, k) -> None:
    """RoPE's outputs of a one-position call inside an append scope: the query the fused update attends with."""
    if _compiling():
        return
    p = _pending
    if p.module is not None and q.dim() == 4 and q.shape[2] == 1:
        p.query, p.key = q, k


def _fused_update(self, key_states, value_states, *args, **kwargs):
    """DynamicLayer.update while a model is patched with the append op (see the module docstring)."""
    from transformers.cache_utils import DynamicLayer

    if _compiling():
        return _update_install["original"](self, key_states, value_states, *args, **kwargs)
    p = _pending
    module, query = p.module, p.query
    if (module is not None and query is not None and p.key is key_states and type(self) is DynamicLayer
            and getattr(self, "is_initialized", False)):
        op, servable = module.__dict__[_APPEND_ATTR]
        keys, values = getattr(self, "keys", None), getattr(self, "values", None)
        if (isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor) and keys.dim() == 4
                and keys.shape == values.shape and keys.shape[2] > 0 and value_states.shape == key_states.shape
                and key_states.shape[:2] == keys.shape[:2] and key_states.shape[3] == keys.shape[3]
                and query.shape[0] == keys.shape[0] and query.shape[3] == keys.shape[3]
                and keys.shape[3] <= MAX_HEAD_DIM and query.shape[1] % keys.shape[1] == 0
                and query.dtype == keys.dtype == values.dtype == key_states.dtype == value_states.dtype
                and servable(query, keys, values, key_states, value_states)):
            scale = getattr(module, "scaling", None)
            try:
                out, k_all, v_all = op(query, keys, values, key_states, value_states, scale)
            except (TypeError, ValueError):  # a call the op refuses (it checks before writing anything)
                return _update_install["original"](self, key_states, value_states, *args, **kwargs)
            self.keys, self.values = k_all, v_all
            p.query = p.key = None
            p.result = (query, k_all, v_all, scale, out)
            return k_all, v_all
    return _update_install["original"](self, key_states, value_states, *args, **kwargs)
