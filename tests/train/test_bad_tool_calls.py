"""Training answers a model turn as serving does: one rule from ``visionthink.protocol`` decides whether the full
image, the trained error turn or nothing follows, and TRL's real tool loop (tiny Qwen2.5-VL, forced turns) injects
token for token what the engine renders."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image
from trl import GRPOConfig, ModelConfig

from tests.train.conftest import FULL, record_batches
from tests.support.forcing import ANSWER_TURN, BAD_TOOL_TURN, TOOL_TURN, force_training_episodes
from train.environment import ResizeEnvironment, tool_calls_after
from train.episodes import read_episode
from train.grpo import VisionThinkArguments, build_trainer
from visionthink import protocol
from visionthink.engine import continue_conversation
from visionthink.images import downsample

QUESTION = "What is the value of Beta in Q3?"
CALL = protocol.tool_call_text()

#: First turns, one per rollout of the run below (row i writes FIRST_TURNS[i]), with what the engine does next.
FIRST_TURNS = {
    "bad_json": ('<think>Zoom.</think>\n<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}\n'
                 "</tool_call>", "error"),
    "unknown_tool": (BAD_TOOL_TURN, "error"),
    "wrong_action": ('<think>Zoom.</think>\n<tool_call>\n{"name": "resize_image", "arguments": {"action": "zoom"}}\n'
                     "</tool_call>", "error"),
    "second_call": (f"<think>Zoom twice.</think>\n{CALL}\n{CALL}", "error"),
    # A valid call without its reasoning: TRL's parser alone read the call and sent the full image.
    "no_reasoning": (CALL, "error"),
    "valid_call": (TOOL_TURN, "full_image"),
    "answer": (ANSWER_TURN, "end"),
    "no_call": ("<think>Hmm.</think>", "end"),
}


def served(text: str) -> tuple[str, protocol.Conversation]:
    """What the engine appends after the model turn ``text`` in auto mode: its step and the conversation."""
    conversation = protocol.Conversation.start(QUESTION)
    conversation.add_model_turn(text)
    return continue_conversation(conversation, protocol.parse_turn(text), "auto"), conversation


def served_injection(text: str) -> str:
    """The text the engine renders between the model turn's ``<|im_end|>`` and the next model turn."""
    _, conversation = served(text)
    rendered = conversation.render()
    return rendered[rendered.index(text + protocol.IM_END) + len(text + protocol.IM_END):]


@pytest.fixture(scope="module")
def model_dir(train_model_dir):
    return train_model_dir


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from visionthink.hf import load_processor

    return load_processor(str(model_dir)).tokenizer


# --- the rule, without a trainer ---------------------------------------------------------------------------------

INVALID_CALLS = [
    *(text for text, step in FIRST_TURNS.values() if step == "error"),
    f"<think>t</think>{CALL} and more",  # text after the call
    f"<think>t</think><answer>4</answer>{CALL}",  # an answer and a call
    '<think>t</think><tool_call>{"name": "resize_image", "name": "x", "arguments": {"action": "resize"}}</tool_call>',
    "<think>t</think><tool_call>" + "[" * 3000 + "</tool_call>",  # nested too deeply for json
    "<think>t</think><tool_call>\n[1, 2]\n</tool_call>",
    "<think>t</think>\n</tool_call>",  # a close tag alone
    "<think>t</think>\n<tool_call>\n{}",  # never closed
]


@pytest.mark.parametrize("text", INVALID_CALLS)
def test_an_invalid_call_gets_the_error_turn_the_engine_sends(text):
    step, _ = served(text)
    assert step == "error"
    error = protocol.call_error(protocol.parse_turn(text))
    assert error and not error.endswith(".")  # the template adds the full stop
    assert served_injection(text) == protocol.error_turn(error)


def test_valid_calls_and_turns_without_a_call_get_no_error():
    assert protocol.call_error(protocol.parse_turn(TOOL_TURN)) is None
    assert protocol.call_error(protocol.parse_turn(ANSWER_TURN)) is None
    assert protocol.call_error(protocol.parse_turn("<think>Hmm.</think>")) is None


def _ids(tokenizer, text: str, finished: bool = True) -> list[int]:
    return tokenizer.encode(text + (protocol.IM_END if finished else ""), add_special_tokens=False)


def test_the_environment_answers_what_the_protocol_decided(tokenizer):
    environment = ResizeEnvironment()
    environment.reset(full_image=Image.new("RGB", FULL, "red"))
    for name, (text, step) in FIRST_TURNS.items():
        calls = tool_calls_after(environment, _ids(tokenizer, text), tokenizer)
        if step == "end":
            assert calls is None, name
            continue
        assert calls == [{"type": "function", "function": {"name": "resize_image", "arguments": {"action": "resize"}}}]
        environment.served_full_image = False
        result = environment.resize_image(**calls[0]["function"]["arguments"])
        if step == "error":
            assert result == protocol.call_error(protocol.parse_turn(text)), name
        else:
            assert [part["type"] for part in result] == ["text", "image", "text"]
            assert result[1]["image"] is environment.full_image


def test_a_turn_cut_off_at_its_limit_ends_the_episode_unless_its_call_is_valid(tokenizer):
    """As the engine stops on an invalid turn that ran out of tokens (stop reason "truncated")."""
    environment = ResizeEnvironment()
    environment.reset(full_image=Image.new("RGB", FULL))
    bad_json = FIRST_TURNS["bad_json"][0]
    assert tool_calls_after(environment, _ids(tokenizer, bad_json, finished=False), tokenizer) is None
    assert tool_calls_after(environment, _ids(tokenizer, bad_json[:30], finished=False), tokenizer) is None
    assert tool_calls_after(environment, _ids(tokenizer, TOOL_TURN, finished=False), tokenizer)
    assert environment.refusal is None


def test_a_refusal_does_not_outlive_its_rollout(tokenizer):
    environment = ResizeEnvironment()
    environment.reset(full_image=Image.new("RGB", FULL))
    tool_calls_after(environment, _ids(tokenizer, BAD_TOOL_TURN), tokenizer)
    assert environment.refusal
    environment.reset(full_image=Image.new("RGB", FULL))  # the pool hands the instance to the next rollout
    assert isinstance(environment.resize_image("resize"), list)


# --- through TRL's tool loop ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    """One GRPO step whose 8 rollouts of one prompt write FIRST_TURNS in order; the batch TRL scored."""
    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("bad-calls-data") / "grpo"
    image = Image.fromarray(rng.integers(0, 255, (*FULL, 3), dtype=np.uint8))
    datasets.Dataset.from_dict({
        "problem": [f"<image>\n{QUESTION}"], "images": [[image]], "original_answer": ["44.6"], "solution": ["44.6"],
    }).save_to_disk(str(data))
    out = tmp_path_factory.mktemp("bad-calls-run")
    training = GRPOConfig(output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False,
                          num_generations=len(FIRST_TURNS), per_device_train_batch_size=len(FIRST_TURNS), max_steps=1,
                          learning_rate=1e-3, logging_steps=1, report_to="none", beta=0.0, save_strategy="no", seed=0)
    trainer = build_trainer(VisionThinkArguments(dataset=str(data), judge="rule", max_turn_tokens=128), training,
                            ModelConfig(model_name_or_path=str(model_dir), dtype="float32"))
    force_training_episodes(trainer.model, trainer.processing_class.tokenizer,
                            [text for text, _ in FIRST_TURNS.values()])
    batches = record_batches(trainer)
    trainer.train()
    return trainer, batches[0], image


def _row(batch, i):
    keep = batch["completion_mask"][i].bool()
    return batch["completion_ids"][i][keep].tolist(), batch["tool_mask"][i][keep].tolist()


@pytest.mark.parametrize("name", list(FIRST_TURNS))
def test_training_injects_exactly_what_serving_sends(run, name):
    trainer, batch, image = run
    processor = trainer.processing_class
    tokenizer = processor.tokenizer
    text, step = FIRST_TURNS[name]
    assert served(text)[0] == step
    ids, mask = _row(batch, list(FIRST_TURNS).index(name))
    if step == "end":
        assert all(mask) and tokenizer.decode(ids) == text + protocol.IM_END
        return
    start, end = mask.index(0), len(mask) - mask[::-1].index(0)
    assert tokenizer.decode(ids[:start]) == text + protocol.IM_END  # the model's own turn, trained
    assert all(m == 0 for m in mask[start:end])
    # The engine's conversation, rendered and tokenized as serving does; the injected turn is what follows the
    # model turn's <|im_end|> (the third in the conversation: system, user, model).
    _, conversation = served(text)
    images = [downsample(image)] + ([image] if step == "full_image" else [])
    served_ids = list(processor(text=[conversation.render()], images=images)["input_ids"][0])
    im_end = tokenizer.convert_tokens_to_ids(protocol.IM_END)
    third = [i for i, t in enumerate(served_ids) if t == im_end][2]
    assert ids[start:end] == served_ids[third + 1:]
    if step == "error":
        assert tokenizer.decode(ids[start:end]) == served_injection(text)
    # Then the model's second turn, trained, which ends the episode.
    assert end < len(mask) and all(mask[end:]) and ids[-1] == im_end


def test_such_episodes_read_as_an_invalid_call_then_a_second_turn_with_no_format_reward(run):
    trainer, batch, _ = run
    tokenizer = trainer.processing_class.tokenizer
    format_reward = next(f for f in trainer.reward_funcs if f.__name__ == "format_reward")
    rows = [_row(batch, i)[0] for i in range(len(FIRST_TURNS))]
    n = len(rows)
    rewards = format_reward(prompts=[None] * n, completions=[None] * n, completion_ids=rows,
                            problem=[f"<image>\n{QUESTION}"] * n, solution=["44.6"] * n, original_answer=["44.6"] * n)
    for (name, (_, step)), ids, reward in zip(FIRST_TURNS.items(), rows, rewards, strict=True):
        episode = read_episode(ids, tokenizer)
        if step == "error":
            assert episode.injected == ["error"] and len(episode.turns) == 2, name
            assert episode.turns[0].kind == "invalid" and episode.turns[0].attempted_tool_call, name
            assert not episode.requested_high_res and reward == 0.0, name
        elif step == "full_image":
            assert episode.injected == ["tool_response"] and episode.requested_high_res and reward == 0.5
        else:
            assert episode.injected == [] and len(episode.turns) == 1
    history = next(h for h in trainer.state.log_history if "tools/call_frequency" in h)
    assert history["tools/call_frequency"] == 6 / 8  # every attempted call, valid or not, is answered
    assert history["tools/failure_frequency"] == 0.0  # and none falls through to TRL's own error
