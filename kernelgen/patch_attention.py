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
"""

from __future__ import annotations

ATTN_NAME = "kernelgen_decode"
ROUTED_FROM = "sdpa"
MAX_HEAD_DIM = 256
_ATTR = "_kernelgen_decode_attention"  # on each attention module: (fallback function, op call, servable check)
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
    if (attention_mask is not None or dropout != 0.0 or query.dim() != 4 or query.shape[2] != 1
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


def restore(saved: list, attn_modules: list) -> None:
    for cfg, value in saved:
        cfg._attn_implementation_internal = value
    for attn in attn_modules:
        attn.__dict__.pop(_ATTR, None)
