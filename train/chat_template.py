"""A tool-capable, prefix-preserving chat template that renders a VisionThink episode exactly as it was trained.

Qwen2.5-VL's stock template knows no tools, and the Qwen3-VL template TRL offers renders the tool turn its own way
(a generic tools block, a newline before the injected turn, the follow-up inside ``</tool_response>``). This one is
built from ``visionthink.protocol``, so TRL's tool loop appends, after the model's ``<|im_end|>``:

- for a successful ``resize_image`` call (the tool returns content blocks: text, the full image, text), the trained
  tool-response turn, byte for byte (``protocol.tool_response_turn()``);
- for a call the protocol refuses (the tool returns only text: ``protocol.call_error``'s message), the trained
  error turn (``protocol.error_turn(message)``), the same text the engine sends.

Which of the two follows a turn is decided by the protocol (``train.environment.tool_calls_after``), not by the
response parser. The system prompt is the dataset's own (``protocol.SYSTEM_PROMPT`` already carries the tool schema),
so the ``tools`` TRL passes are not rendered again. TRL cannot recognise a custom template, so ``install`` also gives
the tokenizer the Qwen3 response parser, which reads ``<think>`` and Hermes ``<tool_call>`` JSON, the format the
checkpoints write; TRL uses it to read each turn into a message.
"""

from __future__ import annotations

import json

from visionthink import protocol

_ERROR_MARK = "\x00"


def _literal(text: str) -> str:
    """``text`` as a Jinja expression that prints it verbatim."""
    return "{{ " + json.dumps(text) + " }}"


def _parts(var: str) -> str:
    """Print a message's content: a string, or text and image blocks (an image is the vision placeholder)."""
    return (
        f"{{%- if {var} is string -%}}{{{{ {var} }}}}"
        f"{{%- else -%}}{{%- for part in {var} -%}}"
        f"{{%- if part.type == 'image' or 'image' in part -%}}{_literal(protocol.IMAGE_PLACEHOLDER)}"
        f"{{%- elif part.text is not none -%}}{{{{ part.text }}}}"
        f"{{%- endif -%}}{{%- endfor -%}}{{%- endif -%}}"
    )


def build_template() -> str:
    error_before, error_after = protocol.error_response_message(_ERROR_MARK).split(_ERROR_MARK)
    im_start, im_end = protocol.IM_START, protocol.IM_END
    return "".join([
        "{%- for message in messages -%}",
        "{%- if message.role == 'assistant' -%}",
        # A model turn ends at <|im_end|> with no newline: the injected turn follows directly (docs/protocol.md §5).
        _literal(f"{im_start}assistant\n"),
        "{%- if message.reasoning_content -%}", _literal("<think>"), "{{ message.reasoning_content }}",
        _literal("</think>\n"), "{%- endif -%}",
        "{%- if message.content -%}", _parts("message.content"), "{%- endif -%}",
        "{%- for call in message.tool_calls or [] -%}",
        "{%- set call = call.function if call.function is defined else call -%}",
        _literal('<tool_call>\n{"name": "'), "{{ call.name }}", _literal('", "arguments": '),
        "{%- if call.arguments is string -%}{{ call.arguments }}{%- else -%}{{ call.arguments | tojson }}{%- endif -%}",
        _literal("}\n</tool_call>"),
        "{%- endfor -%}",
        _literal(im_end),
        "{%- elif message.role == 'tool' -%}",
        _literal(f"{im_start}user\n"),
        # A result with the image is the tool response; a text-only one (an error) gets the trained error turn.
        "{%- set found = namespace(image=false) -%}",
        "{%- if message.content is not string -%}{%- for part in message.content -%}",
        "{%- if part.type == 'image' or 'image' in part -%}{%- set found.image = true -%}{%- endif -%}",
        "{%- endfor -%}{%- endif -%}",
        "{%- if found.image -%}", _parts("message.content"),
        "{%- else -%}", _literal(error_before), _parts("message.content"), _literal(error_after), "{%- endif -%}",
        _literal(f"{im_end}\n"),
        "{%- else -%}",
        _literal(im_start), "{{ message.role }}", _literal("\n"), _parts("message.content"), _literal(f"{im_end}\n"),
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}", _literal(f"{im_start}assistant\n"), "{%- endif -%}",
    ])


#: The template, built once from the protocol constants.
TRAINING_CHAT_TEMPLATE = build_template()


def install(processor) -> None:
    """Give ``processor`` (and its tokenizer) the training template and TRL's Qwen3 response parser."""
    from trl.chat_template_utils import qwen3_template

    processor.chat_template = TRAINING_CHAT_TEMPLATE
    processor.tokenizer.chat_template = TRAINING_CHAT_TEMPLATE
    processor.tokenizer.response_template = qwen3_template
