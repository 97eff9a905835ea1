"""The VisionThink conversation protocol: the prompts the checkpoints were trained on, how a conversation is
rendered for a model, and how a model turn is parsed.

This module is the only place where these strings and rules live. The engine, the training environment, the
rewards and the evaluation import them from here. The strings are byte-identical to the released training code
(docs/protocol.md §1), quirks included: the real newline inside the tool description, the
"Countinue" typo in the error turn, and no newline between a model turn's ``<|im_end|>`` and the injected turn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

# --- Chat-format tokens (Qwen2.5) -----------------------------------------------------------------------------

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_PAD = "<|vision_pad|>"
#: What one image becomes in rendered text; the processor expands the pad to the image's visual-token count.
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
#: The marker a dataset ``problem`` uses for the image.
IMAGE_MARKER = "<image>"
#: Tokens that end a model turn.
STOP_STRINGS = (IM_END, END_OF_TEXT)
#: Tokens a model turn must never contain: they would be read as image slots when the turn is fed back.
VISION_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, VISION_PAD)

TOOL_NAME = "resize_image"
TOOL_ACTION = "resize"
#: The tag a tool call opens with.
TOOL_CALL_OPEN = "<tool_call>"

# --- Prompts (Efficient model) ---------------------------------------------------------------------------------

#: The system prompt with the ``resize_image`` tool, exactly as trained. The newline after "The available actions
#: are:" is a real newline inside the JSON-looking payload; never rebuild this from a schema.
SYSTEM_PROMPT = (
    "You are a helpful assistant.\n\n# Tools\n\nYou may call the function tool shown below to assist with the user "
    "query.\n\nYou are provided with the function signature within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name_for_human": "resize_image", "name": "resize_image", "description": '
    '"Resize the image resolution.", "parameters": {"properties": {"action": {"description": "The action to '
    "perform. The available actions are:\n* `resize`: Double the resolution of the current image. You should only "
    "use this tool if you are unable to obtain the critical information needed to answer the question from the "
    'current resolution.", "enum": ["resize"], "type": "string"}}, "required": ["action"], "type": "object"}, '
    '"args_format": "Format the arguments as a JSON object."}}\n</tools>\nFor each function call, return a json '
    "object with the function name and the corresponding argument within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

#: The user message. ``{Question}`` is replaced (not ``str.format``-ed) by the question, which holds ``<image>``.
USER_TEMPLATE = (
    "Answer the question based on the image provided. You must conduct reasoning within <think> and </think> first "
    "in each of your reasoning steps. You may call ONE function tool per step to help you better solve the problem. "
    "Place the function tool within <tool_call> and </tool_call> at the end of each step to perform a function call. "
    "You should continue your reasoning process based on the content returned by the function tool. Once you "
    "confirm your final answer, place the final answer inside <answer> and </answer>. For mathematical or "
    "multiple-choice problem, wrap the answer value or choice with \\boxed{}. Here is the image and question:\n"
    "{Question}"
)

#: Opening of the tool response that carries the full-resolution image.
TOOL_RESPONSE_TEXT = "<tool_response>\nThe resized image is shown below:\n"
#: The instruction after a successful resize.
FOLLOWUP = (
    "Please carefully analyze the content returned from the image resize tool in combination with the original "
    "question and image from the user, continue your reasoning process inside <think> and </think> and then write "
    "your final answer inside <answer> and </answer>."
)
#: The instruction after a failed tool call ("Countinue" is the trained spelling).
ERROR_FOLLOWUP = (
    "Please analyze the error information obtained from the function tool and adjust your response. "
    "Countinue your reasoning process inside <think> and </think>."
)
ERROR_RESPONSE_TEMPLATE = (
    "<tool_response>\nERROR occurs during the function tool call. Error Information: {error}.\n</tool_response>\n"
)

#: The VisionThink-General system prompt (no tool, one turn).
GENERAL_SYSTEM_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put within "
    "<answer> </answer> tags. For mathematical or multiple-choice problem, wrap the answer value or choice with "
    "\\boxed{}."
)


# --- The LLM judge (accuracy reward), as the checkpoints were trained with -----------------------------------

#: The judge's system prompt (``general_qa_tool.SYSTEM_PROMPT`` in the released code).
JUDGE_SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs.\n"
    "Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:\n"
    "------\n"
    "##INSTRUCTIONS:\n"
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)

#: The judge's user prompt; ``{question}`` is the whole first user message (instructions and ``<image>`` marker
#: included), ``{ground_truth}`` the reference answer and ``{prediction}`` the model's ``<answer>`` text.
JUDGE_USER_TEMPLATE = (
    "I will give you a question related to an image and the following text as inputs:\n"
    "\n"
    "1. **Question Related to the Image**: {question}\n"
    "2. **Ground Truth Answer**: {ground_truth}\n"
    "3. **Model Predicted Answer**: {prediction}\n"
    "\n"
    "Your task is to evaluate the model's predicted answer against the ground truth answer, based on the "
    "context provided by the question related to the image. Consider the following criteria for "
    "evaluation:\n"
    "- **Relevance**: Does the predicted answer directly address the question posed, considering the "
    "information provided by the given question?\n"
    "- **Accuracy**: Compare the predicted answer to the ground truth answer. You need to evaluate from "
    "the following two perspectives:\n"
    "(1) If the ground truth answer is open-ended, consider whether the prediction accurately reflects "
    "the information given in the ground truth without introducing factual inaccuracies. If it does, the "
    "prediction should be considered correct.\n"
    "(2) If the ground truth answer is a definitive answer, strictly compare the model's prediction to "
    "the actual answer. Pay attention to unit conversions such as length and angle, etc. As long as the "
    "results are consistent, the model's prediction should be deemed correct.\n"
    "**Output Format**:\n"
    "Your response should include an integer score indicating the correctness of the prediction: 1 for "
    "correct and 0 for incorrect. Note that 1 means the model's prediction strictly aligns with the "
    "ground truth, while 0 means it does not.\n"
    "The format should be \"Score: 0 or 1\""
)


def tool_response_parts() -> tuple[str, str]:
    """The text before and after the full-resolution image in the tool-response user turn."""
    return TOOL_RESPONSE_TEXT, "\n</tool_response>\n" + FOLLOWUP


def tool_response_message() -> str:
    """User-turn content that hands the model the full-resolution image (one image placeholder)."""
    before, after = tool_response_parts()
    return before + IMAGE_PLACEHOLDER + after


def error_response_message(error: str) -> str:
    """User-turn content that reports a failed tool call; ``error`` is a one-line explanation."""
    return ERROR_RESPONSE_TEMPLATE.format(error=error) + ERROR_FOLLOWUP


def tool_response_turn() -> str:
    """The injected text appended right after a model turn's ``<|im_end|>`` when it asked for the full image."""
    return f"{IM_START}user\n{tool_response_message()}{IM_END}\n{IM_START}assistant\n"


def error_turn(error: str) -> str:
    """The injected text appended right after a model turn's ``<|im_end|>`` when its tool call failed."""
    return f"{IM_START}user\n{error_response_message(error)}{IM_END}\n{IM_START}assistant\n"


def problem_text(question: str) -> str:
    """The dataset-style ``problem``: the question with the ``<image>`` marker, prepended when it is missing."""
    if question.count(IMAGE_MARKER) > 1:
        raise ValueError(f"The question holds {question.count(IMAGE_MARKER)} {IMAGE_MARKER} markers; use at most one.")
    return question if IMAGE_MARKER in question else f"{IMAGE_MARKER}\n{question}"


def user_message(question: str) -> str:
    """The first user message with the ``<image>`` marker still in place (what the judge sees as the question)."""
    return USER_TEMPLATE.replace("{Question}", problem_text(question))


# --- Conversations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSlot:
    """An image slot in a message; ``index`` is its position in the list of images sent with the conversation."""

    index: int


Part = str | ImageSlot


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        """The message as text, with each image as the placeholder the processor expands."""
        return "".join(IMAGE_PLACEHOLDER if isinstance(p, ImageSlot) else p for p in self.parts)


@dataclass
class Conversation:
    """A VisionThink episode as messages: system, user (image 0), then model turns and injected user turns.

    Image 0 is what the model sees first (the 1/4-resolution image in "auto" mode); a successful resize adds the
    next image. Model turns are stored without their closing ``<|im_end|>``.
    """

    question: str
    messages: list[Message] = field(default_factory=list)

    @classmethod
    def start(cls, question: str) -> Conversation:
        before, after = user_message(question).split(IMAGE_MARKER, 1)
        return cls(
            question=question,
            messages=[
                Message("system", (SYSTEM_PROMPT,)),
                Message("user", (before, ImageSlot(0), after)),
            ],
        )

    @property
    def image_count(self) -> int:
        return sum(isinstance(p, ImageSlot) for m in self.messages for p in m.parts)

    def add_model_turn(self, text: str) -> None:
        if self.messages[-1].role == "assistant":
            raise ValueError("Two model turns in a row: inject a tool response or an error turn in between.")
        self.messages.append(Message("assistant", (text,)))

    def add_tool_response(self) -> int:
        """Hand the model the next image (the full-resolution one); returns its image index."""
        index = self.image_count
        before, after = tool_response_parts()
        self._add_user((before, ImageSlot(index), after))
        return index

    def add_error(self, error: str) -> None:
        self._add_user((error_response_message(error),))

    def _add_user(self, parts: tuple[Part, ...]) -> None:
        if self.messages[-1].role != "assistant":
            raise ValueError("A tool response must follow a model turn.")
        self.messages.append(Message("user", parts))

    def render(self) -> str:
        """The exact text the checkpoints were trained on, ending with the generation prompt.

        The first two messages follow Qwen2.5-VL's chat template; after a model turn the injected user turn
        follows its ``<|im_end|>`` with no newline, as in the released rollout code.
        """
        if self.messages[-1].role == "assistant":
            raise ValueError("The conversation ends with a model turn; there is nothing to generate.")
        out: list[str] = []
        for i, message in enumerate(self.messages):
            if message.role == "assistant":
                out.append(message.text + IM_END)
            elif i >= 2 and self.messages[i - 1].role == "assistant":
                out.append(f"{IM_START}user\n{message.text}{IM_END}\n{IM_START}assistant\n")
            else:
                out.append(f"{IM_START}{message.role}\n{message.text}{IM_END}\n")
                if message.role == "user":
                    # The generation prompt opens the first model turn, whether or not that turn exists yet.
                    out.append(f"{IM_START}assistant\n")
        return "".join(out)

    def to_openai(self, image_urls: list[str]) -> list[dict]:
        """The conversation as OpenAI chat-completions messages, ``image_urls[i]`` filling image slot ``i``.

        A server renders these with the model's chat template, which puts a newline after each ``<|im_end|>``;
        that newline is the only difference from :meth:`render`.
        """
        if len(image_urls) < self.image_count:
            raise ValueError(f"The conversation has {self.image_count} images but {len(image_urls)} URLs were given.")
        messages = []
        for message in self.messages:
            if message.role in ("system", "assistant"):
                messages.append({"role": message.role, "content": message.text})
                continue
            content = []
            for part in message.parts:
                if isinstance(part, ImageSlot):
                    content.append({"type": "image_url", "image_url": {"url": image_urls[part.index]}})
                elif part:
                    content.append({"type": "text", "text": part})
            messages.append({"role": "user", "content": content})
        return messages

    def to_trl(self) -> list[dict]:
        """The conversation in TRL's structured form for rows with images: each message's content is a list of
        ``{"type": "text", "text": …}`` parts and ``{"type": "image", "text": None}`` slots, which TRL fills from
        the row's ``images`` column in order. Empty text parts are left out."""
        return [
            {"role": m.role,
             "content": [{"type": "image", "text": None} if isinstance(p, ImageSlot) else {"type": "text", "text": p}
                         for p in m.parts if p != ""]}
            for m in self.messages
        ]


# --- Parsing a model turn --------------------------------------------------------------------------------------

TurnKind = Literal["answer", "tool_call", "invalid"]

_TAGS = ("think", "answer", "tool_call")


@dataclass(frozen=True)
class Turn:
    """One parsed model turn.

    ``kind`` is "answer" (think, then answer), "tool_call" (think, then one valid ``resize_image`` call) or
    "invalid" with ``reason`` saying what is wrong. ``attempted_tool_call`` is true when the text holds a
    ``<tool_call>`` tag at all, valid or not; the engine answers such an invalid turn with an error turn.
    """

    kind: TurnKind
    text: str  # the turn as generated, without its end-of-turn token
    think: str | None = None
    answer: str | None = None
    boxed: str | None = None
    reason: str | None = None
    attempted_tool_call: bool = False


def strip_stop(text: str) -> str:
    """Remove a trailing end-of-turn token (and what follows it) from a generated turn."""
    for stop in STOP_STRINGS:
        index = text.find(stop)
        if index != -1:
            text = text[:index]
    return text


def parse_turn(text: str) -> Turn:
    """Parse one model turn strictly.

    Valid turns are ``<think>…</think>`` followed by either ``<answer>…</answer>`` or exactly one
    ``<tool_call>`` block whose body is the JSON object ``{"name": "resize_image", "arguments": {"action":
    "resize"}}`` (any key order or spacing). Only whitespace may follow the answer or the call; text between
    ``</think>`` and the answer or call is allowed, as in training. Unclosed, repeated or misordered tags, a call
    beside an answer, another tool name, other arguments, invalid JSON or several calls make the turn invalid.
    """
    text = strip_stop(text)
    attempted = TOOL_CALL_OPEN in text or "</tool_call>" in text

    def invalid(reason: str, think: str | None = None) -> Turn:
        return Turn("invalid", text, think=think, reason=reason, attempted_tool_call=attempted)

    spans: dict[str, tuple[int, int, int, int]] = {}  # tag -> (open start, content start, content end, close end)
    for tag in _TAGS:
        opens = [m.start() for m in re.finditer(f"<{tag}>", text)]
        closes = [m.start() for m in re.finditer(f"</{tag}>", text)]
        if len(opens) > 1 or len(closes) > 1:
            if tag == "tool_call":
                return invalid(ONE_CALL_ERROR)
            return invalid(f"The turn repeats the <{tag}> tag; it must appear exactly once.")
        if opens and not closes:
            return invalid(f"The <{tag}> tag is never closed with </{tag}>.")
        if closes and not opens:
            return invalid(f"The </{tag}> tag closes a <{tag}> that was never opened.")
        if opens:
            if closes[0] < opens[0]:
                return invalid(f"</{tag}> comes before <{tag}>.")
            spans[tag] = (opens[0], opens[0] + len(tag) + 2, closes[0], closes[0] + len(tag) + 3)

    if "think" not in spans:
        return invalid("The turn has no <think>…</think> reasoning block.")
    think_open, think_start, think_end, think_close = spans["think"]
    think = text[think_start:think_end].strip()
    if text[:think_open].strip():
        return invalid("Text comes before <think>; the turn must start with its reasoning.", think)
    for tag in ("answer", "tool_call"):
        if tag in spans and spans[tag][0] < think_close:
            return invalid(f"<{tag}> starts inside or before the <think> block.", think)

    if "answer" in spans and "tool_call" in spans:
        return invalid("The turn holds both an <answer> and a <tool_call>; it must do one or the other.", think)

    if "answer" in spans:
        _, start, end, close = spans["answer"]
        if text[close:].strip():
            return invalid("Text follows </answer>; the answer must end the turn.", think)
        answer = text[start:end].strip()
        return Turn("answer", text, think=think, answer=answer, boxed=last_boxed(answer))

    if "tool_call" in spans:
        _, start, end, close = spans["tool_call"]
        if text[close:].strip():
            return invalid("Text follows </tool_call>; the call must end the turn.", think)
        error = check_tool_call(text[start:end])
        if error:
            return invalid(error, think)
        return Turn("tool_call", text, think=think, attempted_tool_call=True)

    return invalid("After </think> the turn has neither an <answer> nor a <tool_call>.", think)


def check_tool_call(body: str) -> str | None:
    """Check the body of one ``<tool_call>`` block; returns the error text for the model, or None if valid."""
    try:
        call = json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        return f"The tool call is not valid JSON: {exc}"
    except ValueError as exc:
        return str(exc)
    except RecursionError:  # "[[[[…" a thousand deep: the model's text must not crash the parser
        return "The tool call is not valid JSON: it is nested too deeply"
    if not isinstance(call, dict):
        return 'The tool call must be a JSON object with "name" and "arguments"'
    if set(call) != {"name", "arguments"}:
        return f'The tool call must have exactly the keys "name" and "arguments", not {sorted(call)}'
    if call["name"] != TOOL_NAME:
        return f"Unknown function tool: {call['name']!r}. The only available function tool is `{TOOL_NAME}`"
    arguments = call["arguments"]
    if not isinstance(arguments, dict) or set(arguments) != {"action"}:
        return 'The arguments must be the JSON object {"action": "resize"}'
    if arguments["action"] != TOOL_ACTION:
        return unknown_action_error(arguments["action"])
    return None


def call_error(turn: Turn) -> str | None:
    """What the error turn reports after ``turn`` (``error_turn(call_error(turn))``): its reason when it attempted a
    tool call but is invalid (bad JSON, another tool, another action, two calls, no reasoning, text after the
    call, …); None for a valid call (the full image follows) or a turn that attempted none (the episode ends).
    Serving and training both answer a model turn by this rule."""
    if turn.kind == "tool_call" or not turn.attempted_tool_call:
        return None
    # The error turn's template puts its own full stop after the message.
    return (turn.reason or "Invalid tool call").rstrip(".")


#: The trained error for more than one call in a turn.
ONE_CALL_ERROR = "You should only call function `resize` once per function call."


def unknown_action_error(action: object) -> str:
    """The trained error for a ``resize_image`` call with another action."""
    return f"Unknown Tool Type: {action}. Available function tools are: `{TOOL_ACTION}`"


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"The tool call repeats the key {duplicates[0]!r}")
    return dict(pairs)


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{…}`` in ``text`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for i in range(start + len("\\boxed"), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{") : i].strip()
        start = text.rfind("\\boxed{", 0, start)  # unbalanced: try an earlier one
    return None


def answer_turn_text(think: str, answer: str) -> str:
    """A direct-answer model turn in the trained format (without its end-of-turn token)."""
    return f"<think>{think}</think><answer>{answer}</answer>"


def tool_call_text() -> str:
    """The canonical well-formed call, as the model is expected to write it."""
    call = json.dumps({"name": TOOL_NAME, "arguments": {"action": TOOL_ACTION}})
    return f"{TOOL_CALL_OPEN}\n{call}\n</tool_call>"


def tool_call_turn_text(think: str) -> str:
    """A model turn that asks for the full image in the trained format (without its end-of-turn token)."""
    return f"<think>{think}</think>\n{tool_call_text()}"


def fixed_texts() -> tuple[str, ...]:
    """Every text the protocol fixes, cut where the variable parts go (the question, an image, an error message,
    the model's own words): the system prompt, the user message before the question, the tool-response turn's
    text before and after the image, the error turn's text before and after the message, and the think and
    answer tags. A tokenizer that keeps each of these one token keeps every turn boundary a token boundary."""
    before_error, after_error = ERROR_RESPONSE_TEMPLATE.split("{error}")
    return (
        SYSTEM_PROMPT,
        USER_TEMPLATE.split("{Question}")[0],
        *tool_response_parts(),
        before_error,
        after_error + ERROR_FOLLOWUP,
        *(f"<{close}{tag}>" for tag in ("think", "answer") for close in ("", "/")),
    )
