"""The continuation attention (visionthink/attention.py) equals SDPA with Transformers' explicit mask, takes the
split path exactly where it is exact, and is what turn 2 runs through in the local backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.support.forcing import TOOL_TURN, ForceText
from visionthink import attention, protocol
from visionthink.backends import TransformersBackend
from visionthink.engine import Engine, GenerationSettings
from visionthink.hf import load_model, load_processor



class Layer(torch.nn.Module):
    """What the attention function reads from its module: the query heads per key/value head."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def qkv(q_length: int, kv_length: int, heads: int = 6, kv_heads: int = 2, dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, heads, q_length, dim, generator=generator)
    key = torch.randn(1, kv_heads, kv_length, dim, generator=generator)
    value = torch.randn(1, kv_heads, kv_length, dim, generator=generator)
    return query, key, value


def continuation_mask(q_length: int, kv_length: int) -> torch.Tensor:
    """Transformers' SDPA mask for a prefill of ``q_length`` tokens after ``kv_length - q_length`` cached ones."""
    rows = torch.arange(kv_length - q_length, kv_length)[:, None]
    return (rows >= torch.arange(kv_length)[None, :])[None, None]


def reference(query, key, value, mask, scale):
    groups = query.shape[1] // key.shape[1]
    out = F.scaled_dot_product_attention(query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1),
                                         attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("q_length, kv_length", [(2, 3), (5, 300), (257, 300), (700, 1100), (64, 65)])
def test_split_equals_sdpa_with_the_explicit_mask(q_length, kv_length, monkeypatch):
    calls = []
    real = attention._is_plain_continuation
    monkeypatch.setattr(attention, "_is_plain_continuation", lambda *a: calls.append(real(*a)) or calls[-1])
    query, key, value = qkv(q_length, kv_length, seed=q_length)
    mask = continuation_mask(q_length, kv_length)
    got, weights = attention.continuation_attention(Layer(3), query, key, value, mask, scaling=0.25)
    assert calls == [True] and weights is None
    assert got.shape == (1, q_length, 6, 16)
    assert torch.allclose(got, reference(query, key, value, mask, 0.25), atol=1e-5)


@pytest.mark.parametrize("case", ["padding", "not causal", "no cache", "one token", "no mask", "batch of two"])
def test_anything_else_goes_to_transformers_sdpa_unchanged(case):
    q_length, kv_length = (300, 300) if case == "no cache" else (1, 300) if case == "one token" else (40, 300)
    query, key, value = qkv(q_length, kv_length)
    mask = continuation_mask(q_length, kv_length).clone()
    if case == "padding":
        mask[..., :3] = False  # a left-padded sequence: the cached part is not all visible
    elif case == "not causal":
        mask[..., -1] = True
    elif case == "no mask":
        mask = None
    elif case == "batch of two":
        query, key, value = (torch.cat([t, t.flip(2)]) for t in (query, key, value))
        mask = mask.expand(2, -1, -1, -1)
    if case in ("padding", "not causal", "batch of two"):
        assert not attention._is_plain_continuation(mask, q_length, kv_length)
    got, _ = attention.continuation_attention(Layer(3), query, key, value, mask, scaling=0.25)
    expected, _ = sdpa_attention_forward(Layer(3), query, key, value, mask, scaling=0.25)
    assert torch.equal(got, expected)


def test_only_a_cpu_sdpa_language_model_is_switched(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu")
    assert attention.use_continuation_attention(model)
    assert model.config.get_text_config()._attn_implementation == attention.NAME
    assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower has no cache to continue
    eager = load_model(str(tiny_model_dir), device="cpu")
    eager.set_attn_implementation("eager")
    assert not attention.use_continuation_attention(eager)
    assert eager.config.get_text_config()._attn_implementation == "eager"


def test_turn_two_runs_through_the_split_in_every_layer(tiny_model_dir, monkeypatch):
    model, processor = load_model(str(tiny_model_dir), device="cpu"), load_processor(str(tiny_model_dir))
    split = []
    real = attention._is_plain_continuation
    monkeypatch.setattr(attention, "_is_plain_continuation",
                        lambda mask, q, kv: split.append((q, kv)) if real(mask, q, kv) else False)
    tool = processor.tokenizer.encode(TOOL_TURN, add_special_tokens=False)
    end = processor.tokenizer.convert_tokens_to_ids(protocol.IM_END)
    backend = TransformersBackend(model, processor, "tiny",
                                  logits_processor_factory=lambda turn: [ForceText(tool, end)] if turn == 0 else [])
    engine = Engine(backend, settings=GenerationSettings(max_new_tokens=len(tool) + 1))
    image = Image.fromarray(torch.randint(0, 255, (336, 448, 3), dtype=torch.uint8).numpy())
    list(engine.stream(image, "What does the small print say?", "auto"))
    layers = model.config.get_text_config().num_hidden_layers
    # once per layer for the forward that checks turn 1's tool call (its draft, fed over turn 1's cache), once per
    # layer for turn 2's prefill; the first prefill and one-token steps need no split
    assert len(split) == 2 * layers
    assert split[:layers] == [split[0]] * layers and split[0][0] == 1 + len(backend._tool_call_draft)
    q_length, kv_length = split[layers]
    assert split[layers:] == [split[layers]] * layers and 1 < q_length < kv_length and kv_length > split[0][1]
