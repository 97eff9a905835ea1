"""Supervised fine-tuning on whole episodes (train.sft): the tokens are the engine's and TRL's, the loss covers
exactly the model's own tokens, and a few steps learn."""

from __future__ import annotations

import random

import pytest
import torch

from train import sft
from train.chat_template import TRAINING_CHAT_TEMPLATE
from visionthink import hf, protocol
from visionthink.images import downsample
from visionthink.miniature import model as miniature_model
from visionthink.miniature import task, turns


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return miniature_model.build_untrained(tmp_path_factory.mktemp("miniature-init"), seed=0)


@pytest.fixture(scope="module")
def processor(folder):
    return hf.load_processor(str(folder))


@pytest.fixture(scope="module")
def item():
    return task.draw_item(random.Random(4), "pattern")


def example(item, path, seed=0) -> sft.Example:
    transcript = turns.transcript(item, path, random.Random(seed))
    return sft.Example(item.question, item.image, transcript.mode, transcript.turns)


def test_an_episode_is_tokenised_as_the_engine_feeds_it_turn_by_turn(processor, item):
    """The engine tokenises the rendered conversation before each turn; the turn's own tokens follow. SFT's ids are
    those prompts and turns laid end to end, images expanded the same way."""
    episode = example(item, "request")
    batch = sft.encode([episode], processor)
    ids = batch["input_ids"][0].tolist()

    conversation = protocol.Conversation.start(item.question)
    low = downsample(item.image)
    first_prompt = processor(text=[conversation.render()], images=[low])["input_ids"][0]
    conversation.add_model_turn(episode.turns[0])
    conversation.add_tool_response()
    second_prompt = processor(text=[conversation.render()], images=[low, item.image])["input_ids"][0]
    tokenizer = processor.tokenizer
    end = tokenizer.encode(protocol.IM_END, add_special_tokens=False)
    first_turn = tokenizer.encode(episode.turns[0], add_special_tokens=False) + end
    second_turn = tokenizer.encode(episode.turns[1], add_special_tokens=False) + end

    assert ids[:len(first_prompt)] == list(first_prompt)
    assert ids[len(first_prompt):len(first_prompt) + len(first_turn)] == first_turn
    assert ids[:len(second_prompt)] == list(second_prompt)
    assert ids[len(second_prompt):] == second_turn
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 16, 16]]
    assert "mm_token_type_ids" in batch

    # The loss covers the two turns (with their <|im_end|>) and nothing else.
    labelled = [i for i, label in enumerate(batch["labels"][0].tolist()) if label != sft.IGNORE]
    expected = list(range(len(first_prompt), len(first_prompt) + len(first_turn))) + \
        list(range(len(second_prompt), len(ids)))
    assert labelled == expected


def test_the_training_chat_template_renders_the_same_episode(processor, item):
    """What GRPO's template renders for the same messages is SFT's text, byte for byte."""
    episode = example(item, "request")
    text, images = sft.episode_text(episode)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": protocol.SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "text", "text": protocol.user_message(item.question).split(
            protocol.IMAGE_MARKER)[0]}, {"type": "image"}, {"type": "text", "text": "\n" + item.question}]},
        {"role": "assistant", "content": episode.turns[0]},
        {"role": "tool", "content": [{"type": "text", "text": protocol.tool_response_parts()[0]}, {"type": "image"},
                                     {"type": "text", "text": protocol.tool_response_parts()[1]}]},
        {"role": "assistant", "content": episode.turns[1]},
    ]
    from jinja2 import Template

    rendered = Template(TRAINING_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=False)
    assert rendered == text
    assert [im.size for im in images] == [(112, 112), (224, 224)]


def test_refused_and_high_episodes_follow_the_engines_rule(processor, item):
    refused_text, refused_images = sft.episode_text(example(item, "refused"))
    assert protocol.error_turn("The full-resolution image is not available in this mode. Answer from the current "
                               "image") in refused_text
    assert len(refused_images) == 1 and refused_images[0].size == (112, 112)
    high_text, high_images = sft.episode_text(example(item, "high"))
    assert high_images[0].size == (224, 224) and high_text.count(protocol.IMAGE_PLACEHOLDER) == 1
    with pytest.raises(ValueError, match="cannot follow"):
        sft.episode_text(sft.Example(item.question, item.image, "auto", (turns.answer_turn("pattern", "vertical"),
                                                                        turns.answer_turn("pattern", "vertical"))))


def test_a_few_steps_lower_the_loss_and_leave_the_vision_tower_nearly_still(folder, processor):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    vision_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".visual." in f".{n}"}
    text_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".visual." not in f".{n}"}
    rng = random.Random(0)
    pool = task.sample(12, 3)
    fixed = [example(item, rng.choice(["direct", "request"]), seed=i) for i, item in enumerate(pool)]
    log = sft.train(model, processor, lambda step: fixed[:6], sft.SFTConfig(steps=30, warmup_steps=2, log_every=10))
    assert log.losses[-1] < log.losses[0] / 3
    assert log.model_tokens > 0 and log.steps == [10, 20, 30]
    moved = {n: float((p.detach() - text_before[n]).abs().max()) for n, p in model.named_parameters()
             if n in text_before}
    moved_vision = {n: float((p.detach() - vision_before[n]).abs().max()) for n, p in model.named_parameters()
                    if n in vision_before}
    assert all(v > 0 for v in moved.values()) and all(v > 0 for v in moved_vision.values())
    # Adam moves each weight by about its learning rate per step: the vision tower's is 10x lower.
    assert max(moved_vision.values()) < max(moved.values()) / 3
