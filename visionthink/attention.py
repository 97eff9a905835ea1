"""Attention for a prefill that continues from a KV cache, without computing the masked half on the CPU.

When turn 2 continues from turn 1's cache (``TransformersBackend(reuse_kv=True)``), its new tokens attend to every
cached token and causally to each other. Transformers' SDPA path passes that as an explicit mask over the whole
rectangle (new tokens × every token), and the CPU kernel then computes every entry of it, the masked triangle of the
new block included: at 1600×1000 on the bench model a layer's attention took 0.49 s that way against 0.32 s
split in two (bench/engine.py, BENCHMARKS.md "Engine").

``continuation_attention`` computes the same thing as two kernel calls that need no mask: the new tokens over the
cached ones (all visible), and the new tokens over themselves (causal), merged exactly through each part's
log-sum-exp. Anything else (decoding, a first prefill, padding, another device, dropout) goes to Transformers' own
SDPA function unchanged. It is registered with Transformers' ``AttentionInterface`` as ``visionthink_sdpa``, with
SDPA's mask, so ``use_continuation_attention(model)`` switches a loaded model's language model to it.
"""

from __future__ import annotations

NAME = "visionthink_sdpa"


def _is_plain_continuation(mask, q_length: int, kv_length: int) -> bool:
    """True when ``mask`` lets every query see every cached key and the new keys causally: one sequence, no padding
    (the only mask under which the split below is exact)."""
    import torch

    past = kv_length - q_length
    if mask is None or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[0] != 1 or mask.shape[1] != 1:
        return False
    if tuple(mask.shape[-2:]) != (q_length, kv_length):
        return False
    block = mask[0, 0]
    causal = torch.ones(q_length, q_length, dtype=torch.bool, device=mask.device).tril_()
    return bool(block[:, :past].all()) and torch.equal(block[:, past:], causal)


def continuation_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Transformers' attention-function signature: ``query`` (batch, heads, q, dim), ``key``/``value`` (batch,
    kv heads, kv, dim); returns (batch, q, heads, dim) and no weights."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    q_length, kv_length = query.shape[2], key.shape[2]
    past = kv_length - q_length
    if (query.device.type != "cpu" or dropout or q_length < 2 or past < 1 or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or not _is_plain_continuation(attention_mask, q_length, kv_length)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    cached, cached_lse = kernel(query, key[:, :, :past], value[:, :, :past], 0.0, False, scale=scaling)
    new, new_lse = kernel(query, key[:, :, past:], value[:, :, past:], 0.0, True, scale=scaling)
    # softmax over both parts = each part's softmax weighted by its share of the total exp-sum
    top = torch.maximum(cached_lse, new_lse)
    cached_weight = (cached_lse - top).exp_().unsqueeze(-1)
    new_weight = (new_lse - top).exp_().unsqueeze(-1)
    out = (cached * cached_weight + new * new_weight) / (cached_weight + new_weight)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``visionthink_sdpa`` a Transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, continuation_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_continuation_attention(model) -> bool:
    """Switch ``model``'s language model from SDPA to ``visionthink_sdpa`` when it runs on the CPU; the vision tower
    and every other implementation (FlashAttention-2, eager, a GPU) are left alone. True when switched."""
    text = model.config.get_text_config()
    if model.device.type != "cpu" or text._attn_implementation not in ("sdpa", NAME):
        return False
    register()
    model.set_attn_implementation({"text_config": NAME})
    return text._attn_implementation == NAME
