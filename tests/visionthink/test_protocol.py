"""Tests for visionthink.protocol: the trained strings, conversation rendering and strict turn parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionthink import protocol
from visionthink.protocol import (
    ERROR_FOLLOWUP,
    FOLLOWUP,
    GENERAL_SYSTEM_PROMPT,
    IMAGE_PLACEHOLDER,
    SYSTEM_PROMPT,
    TOOL_RESPONSE_TEXT,
    USER_TEMPLATE,
    Conversation,
    ImageSlot,
    error_turn,
    last_boxed,
    parse_turn,
    problem_text,
    strip_stop,
    tool_call_text,
    tool_response_turn,
    user_message,
)

OFFICIAL = json.loads((Path(__file__).parents[1] / "fixtures" / "official_prompts.json").read_text(encoding="utf-8"))

# The released rollout code's injected turns (docs/protocol.md §5-6), copied verbatim as JSON string literals
# (interface data).
SPEC_TOOL_RESPONSE_TURN = r'''"<|im_start|>user\n<tool_response>\nThe resized image is shown below:\n<|vision_start|><|image_pad|><|vision_end|>\n</tool_response>\nPlease carefully analyze the content returned from the image resize tool in combination with the original question and image from the user, continue your reasoning process inside <think> and </think> and then write your final answer inside <answer> and </answer>.<|im_end|>\n<|im_start|>assistant\n"'''
SPEC_ERROR_TURN = r'''"<|im_start|>user\n<tool_response>\nERROR occurs during the function tool call. Error Information: {error}.\n</tool_response>\nPlease analyze the error information obtained from the function tool and adjust your response. Countinue your reasoning process inside <think> and </think>.<|im_end|>\n<|im_start|>assistant\n"'''
# The general system prompt (docs/protocol.md §1; the line break is real).
SPEC_GENERAL_SYSTEM_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put within "
    "<answer> </answer> tags. For mathematical or multiple-choice problem, wrap the answer value or choice with "
    "\\boxed{}."
)
# The one well-formed call (docs/protocol.md §3).
SPEC_TOOL_CALL = '<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n</tool_call>'

QUESTION = "What is written on the sign?"


# --- strings ---------------------------------------------------------------------------------------------------


def test_official_fixture_has_the_expected_keys():
    assert set(OFFICIAL) >= {
        "SYSTEM_PROMPT",
        "USER_TEMPLATE_format_string",
        "USER_TEMPLATE_rendered_example",
        "FOLLOWUP",
        "ERROR_FOLLOWUP",
        "TOOL_RESPONSE_TEXT",
    }


@pytest.mark.parametrize("name", ["SYSTEM_PROMPT", "FOLLOWUP", "ERROR_FOLLOWUP", "TOOL_RESPONSE_TEXT"])
def test_constant_matches_official_byte_for_byte(name):
    ours = getattr(protocol, name)
    assert ours == OFFICIAL[name]
    assert ours.encode("utf-8") == OFFICIAL[name].encode("utf-8")


def test_user_template_matches_official_format_string():
    assert USER_TEMPLATE == OFFICIAL["USER_TEMPLATE_format_string"].format(Question="{Question}")
    assert "\\boxed{}" in USER_TEMPLATE and "\\\\boxed" not in USER_TEMPLATE  # one backslash
    assert USER_TEMPLATE.endswith("Here is the image and question:\n{Question}")


def test_rendered_user_message_matches_official_example():
    assert user_message(QUESTION) == OFFICIAL["USER_TEMPLATE_rendered_example"]
    assert user_message("<image>\n" + QUESTION) == OFFICIAL["USER_TEMPLATE_rendered_example"]


def test_problem_text_marker_handling():
    assert problem_text("Q?") == "<image>\nQ?"
    assert problem_text("Look: <image> Q?") == "Look: <image> Q?"
    with pytest.raises(ValueError, match="2 <image> markers"):
        problem_text("<image><image> Q?")


def test_user_message_keeps_braces_in_the_question():
    question = "Is {Question} or {0} or \\boxed{x} shown?"
    assert user_message(question).endswith("<image>\n" + question)


def test_tool_response_turn_matches_spec_literal():
    assert tool_response_turn() == json.loads(SPEC_TOOL_RESPONSE_TURN)
    assert tool_response_turn().count(IMAGE_PLACEHOLDER) == 1
    assert not tool_response_turn().startswith("\n")  # nothing between the model's <|im_end|> and this turn


@pytest.mark.parametrize(
    "error",
    [
        "Unknown Tool Type: zoom. Available function tools are: `resize`",
        "You should only call function `resize` once per function call.",
        "Expecting value: line 1 column 1 (char 0)",
        'braces {} and {error} and {"a": 1} stay literal',
    ],
)
def test_error_turn_matches_spec_literal(error):
    assert error_turn(error) == json.loads(SPEC_ERROR_TURN).replace("{error}", error)
    assert "Countinue your reasoning" in error_turn(error)


def test_system_prompt_quirks():
    assert not SYSTEM_PROMPT.startswith(("\n", " ")) and not SYSTEM_PROMPT.endswith(("\n", " "))
    assert SYSTEM_PROMPT.endswith("</tool_call>")
    payload = SYSTEM_PROMPT.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert payload.count("\n") == 1  # exactly one real newline in the payload line
    assert "The available actions are:\n* `resize`" in payload
    assert "\\n" not in SYSTEM_PROMPT  # a real newline, not an escape
    with pytest.raises(json.JSONDecodeError):
        json.loads(payload)  # the raw control character makes it strictly invalid JSON, as trained
    tool = json.loads(payload, strict=False)
    assert tool["function"]["name"] == "resize_image"
    assert tool["function"]["parameters"]["properties"]["action"]["enum"] == ["resize"]


def test_countinue_typo_kept():
    assert "Countinue" in ERROR_FOLLOWUP
    assert "Continue" not in ERROR_FOLLOWUP


def test_general_system_prompt_matches_spec():
    assert GENERAL_SYSTEM_PROMPT == SPEC_GENERAL_SYSTEM_PROMPT
    assert GENERAL_SYSTEM_PROMPT.count("\n") == 1


def test_canonical_tool_call_text():
    assert tool_call_text() == SPEC_TOOL_CALL
    turn = parse_turn("<think>Too small to read.</think>\n" + tool_call_text())
    assert turn.kind == "tool_call"


# --- conversations ---------------------------------------------------------------------------------------------


def spec_prompt(question_line: str = QUESTION) -> str:
    """The first prompt's rendered layout (docs/protocol.md §2), built from the official strings."""
    user = OFFICIAL["USER_TEMPLATE_rendered_example"].replace("<image>", IMAGE_PLACEHOLDER)
    user = user.replace(QUESTION, question_line)
    return (
        f"<|im_start|>system\n{OFFICIAL['SYSTEM_PROMPT']}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


TOOL_TURN = "<think>The sign is too small to read.</think>\n" + tool_call_text()
ANSWER_TURN = "<think>Now it is legible.</think>\n<answer>STOP</answer>"


def test_start_renders_spec_layout():
    conversation = Conversation.start(QUESTION)
    assert conversation.render() == spec_prompt()
    assert conversation.image_count == 1
    assert conversation.render().count(IMAGE_PLACEHOLDER) == 1
    assert (
        "Here is the image and question:\n<|vision_start|><|image_pad|><|vision_end|>\nWhat is written on the sign?"
        "<|im_end|>\n<|im_start|>assistant\n"
    ) in conversation.render()


def test_start_with_marker_already_in_question():
    assert Conversation.start("<image>\n" + QUESTION).render() == spec_prompt()


def test_after_tool_call_and_response():
    conversation = Conversation.start(QUESTION)
    prompt = conversation.render()
    conversation.add_model_turn(TOOL_TURN)
    assert conversation.add_tool_response() == 1
    assert conversation.image_count == 2
    rendered = conversation.render()
    assert rendered == prompt + TOOL_TURN + "<|im_end|>" + tool_response_turn()
    assert "<|im_end|><|im_start|>user" in rendered  # no newline after the model turn
    assert rendered.count(IMAGE_PLACEHOLDER) == 2
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_after_invalid_call_and_error():
    conversation = Conversation.start(QUESTION)
    prompt = conversation.render()
    bad = '<think>hm</think><tool_call>{"name": "annotate_image", "arguments": {"action": "resize"}}</tool_call>'
    error = parse_turn(bad).reason
    conversation.add_model_turn(bad)
    conversation.add_error(error)
    assert conversation.image_count == 1
    assert conversation.render() == prompt + bad + "<|im_end|>" + error_turn(error)


def _joined(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(IMAGE_PLACEHOLDER if part["type"] == "image_url" else part["text"] for part in content)


def test_to_openai_after_tool_response():
    conversation = Conversation.start(QUESTION)
    conversation.add_model_turn(TOOL_TURN)
    conversation.add_tool_response()
    urls = ["data:image/png;base64,LOW", "data:image/png;base64,FULL"]
    messages = conversation.to_openai(urls)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert messages[2]["content"] == TOOL_TURN

    first, second = messages[1]["content"], messages[3]["content"]
    assert [p["type"] for p in first] == ["text", "image_url", "text"]
    assert first[1] == {"type": "image_url", "image_url": {"url": urls[0]}}
    assert first[0]["text"].endswith("Here is the image and question:\n")
    assert first[2]["text"] == "\n" + QUESTION
    assert [p["type"] for p in second] == ["text", "image_url", "text"]
    assert second[1] == {"type": "image_url", "image_url": {"url": urls[1]}}
    assert second[0]["text"] == TOOL_RESPONSE_TEXT
    assert second[2]["text"] == "\n</tool_response>\n" + FOLLOWUP

    # The parts join back to exactly what render() holds for each message.
    rebuilt = (
        f"<|im_start|>system\n{_joined(messages[0]['content'])}<|im_end|>\n"
        f"<|im_start|>user\n{_joined(first)}<|im_end|>\n<|im_start|>assistant\n"
        f"{_joined(messages[2]['content'])}<|im_end|>"
        f"<|im_start|>user\n{_joined(second)}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rebuilt == conversation.render()
    for message, original in zip(messages, conversation.messages, strict=True):
        assert _joined(message["content"]) == original.text


def test_to_openai_image_at_start_of_question_has_no_empty_text_part():
    conversation = Conversation.start(QUESTION)
    # The marker ends the template, so the question is one text part after the image; no part is empty.
    for message in conversation.to_openai(["u"]):
        if isinstance(message["content"], list):
            assert all(part.get("text", "x") for part in message["content"])


def test_to_openai_error_turn_is_text_only():
    conversation = Conversation.start(QUESTION)
    conversation.add_model_turn("<think>x</think><tool_call>[]</tool_call>")
    conversation.add_error("bad call")
    last = conversation.to_openai(["u"])[-1]
    assert last["role"] == "user"
    assert [part["type"] for part in last["content"]] == ["text"]
    assert error_turn("bad call") == f"<|im_start|>user\n{last['content'][0]['text']}<|im_end|>\n<|im_start|>assistant\n"


def test_two_model_turns_in_a_row_refused():
    conversation = Conversation.start(QUESTION)
    conversation.add_model_turn(TOOL_TURN)
    with pytest.raises(ValueError, match="Two model turns in a row"):
        conversation.add_model_turn(ANSWER_TURN)


def test_tool_response_without_model_turn_refused():
    conversation = Conversation.start(QUESTION)
    with pytest.raises(ValueError, match="must follow a model turn"):
        conversation.add_tool_response()
    with pytest.raises(ValueError, match="must follow a model turn"):
        conversation.add_error("x")
    conversation.add_model_turn(TOOL_TURN)
    conversation.add_tool_response()
    with pytest.raises(ValueError, match="must follow a model turn"):
        conversation.add_tool_response()


def test_render_after_model_turn_refused():
    conversation = Conversation.start(QUESTION)
    conversation.add_model_turn(ANSWER_TURN)
    with pytest.raises(ValueError, match="nothing to generate"):
        conversation.render()


def test_too_few_urls_refused():
    conversation = Conversation.start(QUESTION)
    with pytest.raises(ValueError, match="1 images but 0 URLs"):
        conversation.to_openai([])
    conversation.add_model_turn(TOOL_TURN)
    conversation.add_tool_response()
    with pytest.raises(ValueError, match="2 images but 1 URLs"):
        conversation.to_openai(["only-one"])
    assert len(conversation.to_openai(["a", "b", "c"])) == 4  # extra URLs are harmless


def test_image_parts_hold_indices():
    conversation = Conversation.start(QUESTION)
    conversation.add_model_turn(TOOL_TURN)
    conversation.add_tool_response()
    images = [p for m in conversation.messages for p in m.parts if isinstance(p, ImageSlot)]
    assert images == [ImageSlot(0), ImageSlot(1)]


# --- parsing ---------------------------------------------------------------------------------------------------

CALL = '{"name": "resize_image", "arguments": {"action": "resize"}}'


def call(body: str) -> str:
    return f"<think>Need more detail.</think>\n<tool_call>\n{body}\n</tool_call>"


# (id, text, expected answer)
ANSWERS = [
    ("tight", "<think>t</think><answer>A</answer>", "A"),
    ("blank-lines", "<think>t</think>\n\n<answer>A</answer>", "A"),
    ("newlines-inside", "<think>\nline one\nline two\n</think>\n<answer>\n A \n</answer>\n", "A"),
    ("im-end", "<think>t</think><answer>A</answer><|im_end|>", "A"),
    ("im-end-then-junk", "<think>t</think><answer>A</answer><|im_end|>\n<|im_start|>user\nmore", "A"),
    ("endoftext", "<think>t</think> <answer>A</answer>  <|endoftext|>", "A"),
    ("leading-whitespace", "\n  <think>t</think><answer>A</answer>", "A"),
    ("text-between", "<think>t</think>\nSo the answer is:\n<answer>STOP</answer>", "STOP"),
    ("multi-line-answer", "<think>t</think><answer>line 1\nline 2</answer>", "line 1\nline 2"),
    ("empty-think", "<think></think><answer>A</answer>", "A"),
]

# (id, text, expected boxed)
BOXED = [
    ("plain", "<think>t</think><answer>\\boxed{42}</answer>", "42"),
    ("nested", "<think>t</think><answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
    ("deep-nested", "<think>t</think><answer>\\boxed{\\sqrt{\\frac{a}{b^{2}}}}</answer>", "\\sqrt{\\frac{a}{b^{2}}}"),
    ("several-last-wins", "<think>t</think><answer>\\boxed{1} or rather \\boxed{B}</answer>", "B"),
    ("with-text", "<think>t</think><answer>The choice is \\boxed{ C }.</answer>", "C"),
    ("none", "<think>t</think><answer>42</answer>", None),
    ("unbalanced-last", "<think>t</think><answer>\\boxed{A} then \\boxed{B</answer>", "A"),
]

# (id, text)
TOOL_CALLS = [
    ("canonical", "<think>t</think>" + tool_call_text()),
    ("canonical-newline", "<think>t</think>\n" + tool_call_text()),
    ("keys-swapped", call('{"arguments": {"action": "resize"}, "name": "resize_image"}')),
    ("compact", '<think>t</think><tool_call>{"name":"resize_image","arguments":{"action":"resize"}}</tool_call>'),
    ("spaced-braces", call('{ "name" : "resize_image" , "arguments" : { "action" : "resize" } }')),
    ("pretty-printed", call(json.dumps({"name": "resize_image", "arguments": {"action": "resize"}}, indent=2))),
    ("trailing-im-end", call(CALL) + "\n<|im_end|>"),
    ("text-between", "<think>t</think>\nLet me zoom in.\n" + tool_call_text()),
    ("trailing-whitespace", call(CALL) + "  \n\t"),
]

# (id, text, fragment of the reason)
INVALID = [
    ("empty", "", "no <think>"),
    ("whitespace-only", " \n ", "no <think>"),
    ("im-end-only", "<|im_end|>", "no <think>"),
    ("no-think", "<answer>A</answer>", "no <think>"),
    ("no-think-call", tool_call_text(), "no <think>"),
    ("think-only", "<think>t</think>", "neither an <answer> nor a <tool_call>"),
    ("think-then-prose", "<think>t</think> The answer is A.", "neither an <answer> nor a <tool_call>"),
    ("unclosed-think", "<think>t <answer>A</answer>", "<think> tag is never closed"),
    ("unclosed-answer", "<think>t</think><answer>A", "<answer> tag is never closed"),
    ("unclosed-tool-call", "<think>t</think><tool_call>\n" + CALL, "<tool_call> tag is never closed"),
    ("unopened-tool-call", "<think>t</think>\n" + CALL + "\n</tool_call>", "never opened"),
    ("unopened-answer", "<think>t</think>A</answer>", "never opened"),
    ("repeated-think", "<think>a</think><think>b</think><answer>A</answer>", "repeats the <think>"),
    ("repeated-answer", "<think>t</think><answer>A</answer><answer>B</answer>", "repeats the <answer>"),
    ("repeated-close-answer", "<think>t</think><answer>A</answer></answer>", "repeats the <answer>"),
    ("two-calls", "<think>t</think>" + tool_call_text() + "\n" + tool_call_text(), "once per function call"),
    ("answer-beside-call", "<think>t</think><answer>A</answer>" + tool_call_text(), "both an <answer> and a <tool_call>"),
    ("call-then-answer", "<think>t</think>" + tool_call_text() + "<answer>A</answer>", "both an <answer> and a <tool_call>"),
    ("wrong-tool-name", call('{"name": "annotate_image", "arguments": {"action": "resize"}}'), "annotate_image"),
    ("duplicate-key", call('{"name": "annotate_image", "name": "resize_image", "arguments": {"action": "resize"}}'),
     "repeats the key 'name'"),
    ("missing-name", call('{"arguments": {"action": "resize"}}'), 'exactly the keys "name" and "arguments"'),
    ("extra-top-key", call('{"name": "resize_image", "arguments": {"action": "resize"}, "id": 1}'), "exactly the keys"),
    ("extra-argument", call('{"name": "resize_image", "arguments": {"action": "resize", "scale": 2}}'), '{"action": "resize"}'),
    ("arguments-string", call('{"name": "resize_image", "arguments": "resize"}'), '{"action": "resize"}'),
    ("empty-arguments", call('{"name": "resize_image", "arguments": {}}'), '{"action": "resize"}'),
    ("action-zoom", call('{"name": "resize_image", "arguments": {"action": "zoom"}}'), "Unknown Tool Type: zoom"),
    ("action-case", call('{"name": "resize_image", "arguments": {"action": "Resize"}}'), "Unknown Tool Type: Resize"),
    ("invalid-json", call("{name: resize_image, arguments: {action: resize}}"), "not valid JSON"),
    ("extra-brace", call(CALL + "}"), "not valid JSON"),
    ("two-objects", call(CALL + "\n" + CALL), "not valid JSON"),
    ("empty-call-body", "<think>t</think><tool_call></tool_call>", "not valid JSON"),
    ("json-array", call("[" + CALL + "]"), "must be a JSON object"),
    ("json-string", call('"resize"'), "must be a JSON object"),
    ("text-after-answer", "<think>t</think><answer>A</answer> Hope that helps!", "Text follows </answer>"),
    ("text-after-call", call(CALL) + "\nWaiting for the image.", "Text follows </tool_call>"),
    ("text-before-think", "Sure! <think>t</think><answer>A</answer>", "Text comes before <think>"),
    ("answer-before-think", "<answer>A</answer><think>t</think>", "before <think>"),
    ("close-before-open", "</think>t<think><answer>A</answer>", "</think> comes before <think>"),
    ("answer-inside-think", "<think>t <answer>A</answer></think>", "<answer> starts inside or before the <think>"),
    ("call-inside-think", "<think>t " + tool_call_text() + "</think>", "<tool_call> starts inside or before"),
]


@pytest.mark.parametrize(("text", "expected"), [row[1:] for row in ANSWERS], ids=[row[0] for row in ANSWERS])
def test_parse_direct_answers(text, expected):
    turn = parse_turn(text)
    assert turn.kind == "answer", turn.reason
    assert turn.answer == expected
    assert turn.think is not None
    assert turn.reason is None
    assert turn.attempted_tool_call is False
    assert turn.text == strip_stop(text)
    assert "<|im_end|>" not in turn.text and "<|endoftext|>" not in turn.text


@pytest.mark.parametrize(("text", "expected"), [row[1:] for row in BOXED], ids=[row[0] for row in BOXED])
def test_parse_boxed(text, expected):
    turn = parse_turn(text)
    assert turn.kind == "answer"
    assert turn.boxed == expected


@pytest.mark.parametrize("text", [row[1] for row in TOOL_CALLS], ids=[row[0] for row in TOOL_CALLS])
def test_parse_valid_tool_calls(text):
    turn = parse_turn(text)
    assert turn.kind == "tool_call", turn.reason
    assert turn.attempted_tool_call is True
    assert turn.reason is None
    assert turn.answer is None and turn.boxed is None
    assert turn.think


@pytest.mark.parametrize(("text", "fragment"), [row[1:] for row in INVALID], ids=[row[0] for row in INVALID])
def test_parse_invalid_turns(text, fragment):
    turn = parse_turn(text)
    assert turn.kind == "invalid"
    assert turn.reason and turn.reason.strip()
    assert fragment in turn.reason
    assert len(turn.reason) > 15  # a sentence a person can read, not a code
    assert turn.answer is None
    body = strip_stop(text)
    assert turn.attempted_tool_call is ("<tool_call>" in body or "</tool_call>" in body)


def test_corpus_is_large_enough():
    assert len(ANSWERS) + len(BOXED) + len(TOOL_CALLS) + len(INVALID) >= 30
    assert len(INVALID) >= 30


def test_attempted_tool_call_flags():
    assert parse_turn(call('{"name": "annotate_image", "arguments": {"action": "resize"}}')).attempted_tool_call
    assert parse_turn("<think>t</think><tool_call>").attempted_tool_call
    assert parse_turn("<think>t</think></tool_call>").attempted_tool_call
    assert not parse_turn("<think>t</think>").attempted_tool_call
    assert not parse_turn("<think>t</think><answer>tool_call</answer>").attempted_tool_call


def test_reasons_of_the_original_error_texts():
    # The two error texts the model saw in training keep their wording.
    two = parse_turn("<think>t</think>" + tool_call_text() + tool_call_text())
    assert two.reason == "You should only call function `resize` once per function call."
    zoom = parse_turn(call('{"name": "resize_image", "arguments": {"action": "zoom"}}'))
    assert zoom.reason == "Unknown Tool Type: zoom. Available function tools are: `resize`"


def test_invalid_turn_keeps_think_when_present():
    turn = parse_turn(call('{"name": "annotate_image", "arguments": {"action": "resize"}}'))
    assert turn.think == "Need more detail."


def test_parse_keeps_think_text():
    turn = parse_turn("<think>\n  Reasoning here.  \n</think><answer>A</answer>")
    assert turn.think == "Reasoning here."


def test_strip_stop():
    assert strip_stop("abc<|im_end|>def") == "abc"
    assert strip_stop("abc<|endoftext|>") == "abc"
    assert strip_stop("abc<|endoftext|>x<|im_end|>") == "abc"
    assert strip_stop("abc") == "abc"


def test_last_boxed_direct():
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{}") == ""
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("\\boxed{1} \\boxed{2} \\boxed{3}") == "3"


def test_judge_prompts_equal_the_released_code():
    judge = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "judge_prompts.json").read_text())
    assert protocol.JUDGE_SYSTEM_PROMPT == judge["JUDGE_SYSTEM_PROMPT"]
    assert protocol.JUDGE_USER_TEMPLATE == judge["JUDGE_USER_TEMPLATE"]
    assert protocol.JUDGE_USER_TEMPLATE.endswith('The format should be "Score: 0 or 1"')
    filled = protocol.JUDGE_USER_TEMPLATE.format(question="Q", ground_truth="G", prediction="P")
    assert "**Question Related to the Image**: Q\n2. **Ground Truth Answer**: G\n3. **Model Predicted Answer**: P\n" in filled


def test_answer_turn_text_is_a_valid_answer_turn():
    turn = parse_turn(protocol.answer_turn_text("Read the label.", "\\boxed{44.6}"))
    assert (turn.kind, turn.think, turn.answer, turn.boxed) == ("answer", "Read the label.", "\\boxed{44.6}", "44.6")
