"""Backends that generate one VisionThink model turn: local transformers, or any OpenAI-compatible server.

Both take the same ``TurnRequest`` (the conversation from ``visionthink.protocol`` and its images) and stream text
deltas followed by one ``TurnOutput``. The transformers backend feeds the checkpoint the exact trained text; a
server applies its own chat template, which adds one newline before each injected turn (docs/protocol.md §5).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator

from PIL import Image as PILImage

from visionthink import protocol
from visionthink.engine import TurnOutput, TurnRequest
from visionthink.images import MAX_PIXELS, MIN_PIXELS


_KV = "transformers_kv"  # where a turn leaves its KV cache in ``TurnRequest.carry``
_EARLY = "transformers_early"  # where turn 1 leaves the full image it started encoding early


class BackendError(RuntimeError):
    """A backend that cannot be reached or used; the message is for a person."""


def _gpu_wrapper() -> Callable:
    """``spaces.GPU`` on Hugging Face ZeroGPU Spaces (where the package imports), otherwise the identity."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda fn: fn
    return spaces.GPU


class TransformersBackend:
    """Generates turns with a local ``Qwen2_5_VLForConditionalGeneration`` and its processor.

    ``logits_processor_factory(turn_index)`` may return extra logits processors for a turn (constrained decoding,
    and the tests that force a tool call).

    With ``reuse_kv`` (the default) a turn continues from the previous turn's KV cache: it prefills only what the
    conversation added (the end of the model's turn, the tool response and the full image), and the vision tower
    encodes only the new image. The result equals a full re-prefill (tests/visionthink/test_kv_reuse.py); how it
    is done, and the ways it goes silently wrong, are in ``_continuation``. On the CPU the language model's SDPA is
    then switched to ``visionthink.attention`` (the same attention, without computing the masked half of the
    continuation's prefill).

    With ``early_encode`` (and ``reuse_kv``), a turn that may ask for the full image starts encoding it at once, on a
    CUDA side stream, while the turn itself runs (``EarlyImages``); if the model asks, the next turn takes those
    features instead of running the vision tower, and if it does not, they are dropped with the episode. On the
    CPU the encoding competes with the turn for the same cores, so ``early_encode="auto"`` leaves it off there.

    Tokens are chosen by the backend's own loop (``_decode``): a prefill, then one forward per token on the cache,
    yielding each token as it comes, so text streams without a second thread. With ``decode_thread`` the loop runs
    on a thread of its own, ahead of the consumer; ``"auto"`` does so on a GPU only, where the consumer's work then
    overlaps the GPU's, and not on the CPU, where a second thread's OpenMP workers slow every step. With
    ``draft_tool_call`` (the default), greedy decoding checks the rest of a tool call the model starts in one forward
    instead of one per token (``_decode``): the same tokens, fewer steps.
    """

    def __init__(
        self,
        model,
        processor,
        model_id: str,
        *,
        logits_processor_factory: Callable[[int], list] | None = None,
        reuse_kv: bool = True,
        early_encode: bool | str = "auto",
        decode_thread: bool | str = "auto",
        draft_tool_call: bool = True,
    ) -> None:
        from visionthink.hf import processor_pixel_limits

        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.pixel_limits = processor_pixel_limits(processor)
        self.logits_processor_factory = logits_processor_factory
        self.reuse_kv = reuse_kv
        if early_encode not in (True, False, "auto", "on", "off"):
            raise ValueError(f"early_encode must be True, False, 'auto', 'on' or 'off', not {early_encode!r}.")
        self.early_encode = reuse_kv and (early_encode in (True, "on") or
                                          (early_encode == "auto" and model.device.type == "cuda"))
        if decode_thread not in (True, False, "auto"):
            raise ValueError(f"decode_thread must be True, False or 'auto', not {decode_thread!r}.")
        self.decode_thread = decode_thread is True or (decode_thread == "auto" and model.device.type == "cuda")
        if reuse_kv:
            from visionthink.attention import use_continuation_attention

            use_continuation_attention(model)
        # One model, one generation at a time: concurrent requests (two pages, two tabs) queue here.
        self._lock = threading.Lock()
        tokenizer = processor.tokenizer
        self._stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in protocol.STOP_STRINGS]
        # After the model writes "<tool_call>", the protocol's call is checked in one forward instead of token by
        # token (``_decode``); None when off, or when the tokenizer has no single "<tool_call>" token.
        call = tokenizer.encode(protocol.tool_call_text(), add_special_tokens=False)
        self._tool_call_start = call[0]
        opens_call = tokenizer.convert_tokens_to_ids(protocol.TOOL_CALL_OPEN) == call[0]
        self._tool_call_draft = (call[1:] + [tokenizer.convert_tokens_to_ids(protocol.IM_END)]
                                 if draft_tool_call and opens_call else None)
        self._suppress_ids = [tokenizer.convert_tokens_to_ids(t) for t in protocol.VISION_TOKENS]
        # On ZeroGPU the whole turn (decoding thread included) must run inside the GPU-decorated call.
        self.generate = _gpu_wrapper()(self._generate_turn)

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        local_files_only: bool = False,
        model_id: str | None = None,
        early_encode: bool | str = "auto",
    ) -> TransformersBackend:
        """Load a checkpoint (hub id or folder) through ``from_pretrained``."""
        from visionthink.hf import load_model, load_processor

        processor = load_processor(name_or_path, revision=revision, local_files_only=local_files_only)
        model = load_model(name_or_path, revision=revision, device=device, local_files_only=local_files_only)
        return cls(model, processor, model_id or name_or_path, early_encode=early_encode)

    def _generate_turn(self, request: TurnRequest) -> Iterator[str | TurnOutput]:
        with self._lock:
            yield from self._generate_turn_locked(request)

    def _generate_turn_locked(self, request: TurnRequest) -> Iterator[str | TurnOutput]:
        if self.early_encode and request.upcoming:
            request.carry[_EARLY] = EarlyImages(self.model, self.processor, request.upcoming)
        text = request.conversation.render()
        inputs = self.processor(text=[text], images=request.images, return_tensors="pt").to(self.model.device)
        previous = request.carry.pop(_KV, None)
        early = request.carry.pop(_EARLY, None) if not request.upcoming else None
        continuation = self._continuation(inputs, previous, early) if previous is not None else None
        reused = continuation["past_key_values"].get_seq_length() if continuation else 0
        arguments = continuation or {**inputs, "position_ids": self._positions(inputs)}
        decoded: dict = {}
        steps = self._decode(arguments, request, decoded)
        text_out = _TextDeltas(self.processor.tokenizer)
        for delta in text_out.deltas(_ahead(steps) if self.decode_thread else steps):
            for stop in protocol.STOP_STRINGS:
                delta = delta.replace(stop, "")
            if delta:
                yield delta

        if self.reuse_kv:
            request.carry[_KV] = {"ids": decoded["ids"], "cache": decoded["cache"], "images": len(request.images)}
        prompt_length = inputs["input_ids"].shape[1]
        new_ids = decoded["ids"][0, prompt_length:].tolist()
        finish_reason = "stop" if new_ids and new_ids[-1] in self._stop_ids else "length"
        decoded_text = self.processor.tokenizer.decode(new_ids, skip_special_tokens=False)
        merge = self.processor.image_processor.merge_size
        image_tokens = (inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
        yield TurnOutput(
            text=protocol.strip_stop(decoded_text),
            generated_tokens=len(new_ids),
            finish_reason=finish_reason,
            prompt_tokens=prompt_length,
            image_tokens=image_tokens,
            reused_tokens=reused,
        )

    def _positions(self, inputs):
        """M-RoPE positions of every token of ``inputs``, computed over the whole sequence with every image's grid."""
        positions, _ = self.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                       image_grid_thw=inputs.get("image_grid_thw"),
                                                       attention_mask=inputs["attention_mask"])
        return positions

    def _continuation(self, inputs, previous: dict, early: EarlyImages | None = None) -> dict | None:
        """The arguments that continue from the previous turn's KV cache, or None to prefill in full.

        The cache holds every token of the previous turn but its last (sampled, never fed). It is used only when
        this turn's tokens start with exactly those tokens (the conversation is rendered and tokenised anew, so a
        tokenisation that differs from what the model generated falls back to a full prefill) and the cached part
        holds exactly the previous turn's images. Then (transformers 5.23; tests/visionthink/test_kv_reuse.py holds
        the result to a full re-prefill):

        - M-RoPE positions are computed over the *whole* sequence with *every* image's grid and passed explicitly;
          left to the model they would be computed over the uncached tail alone, or from the previous turn's
          ``rope_deltas``, and the new image would get wrong positions without any error;
        - only the new images' pixels and grids are passed, so the vision tower encodes only them (passing every
          image raises, or with chunked prefill silently uses the wrong features); or, when ``early`` encoded
          exactly those pixels already, its features (Transformers' ``mm_encoder_outputs``) and no pixels.
        """
        import torch

        cache, seen = previous["cache"], previous["ids"]
        past = cache.get_seq_length()
        ids = inputs["input_ids"]
        if ids.shape[0] != 1 or ids.shape[1] <= past or not torch.equal(ids[0, :past], seen[0, :past].to(ids.device)):
            return None
        grids = inputs.get("image_grid_thw")
        old = previous["images"]
        merge = self.processor.image_processor.merge_size
        per_image = (grids.prod(-1) // merge**2).tolist() if grids is not None else []
        if int(inputs["mm_token_type_ids"][0, :past].ne(0).sum()) != sum(per_image[:old]):
            return None  # an image straddles the cached part, or the previous turn saw other images
        arguments = {"input_ids": ids, "attention_mask": inputs["attention_mask"],
                     "position_ids": self._positions(inputs), "past_key_values": cache}
        if grids is not None and len(per_image) > old:
            patches = int(grids[:old].prod(-1).sum())
            pixels, grid = inputs["pixel_values"][patches:], grids[old:]
            features = early.take(pixels, grid) if early is not None else None
            if features is not None:
                arguments["mm_encoder_outputs"] = {"image": features}
            else:
                arguments["pixel_values"] = pixels
            arguments["image_grid_thw"] = grid
        return arguments

    def _decode(self, arguments: dict, request: TurnRequest, into: dict) -> Iterator[int]:
        """Prefill what the cache lacks of ``arguments`` (every token and its position; the cache, if any, and the
        images it does not hold), then choose one token per step, yielding each as it is chosen. When it ends (at a
        stop token or ``max_new_tokens``), ``into`` holds "ids" (the prompt and every generated token) and "cache"
        (every token but the last, which was never fed).

        Decoding is exactly the request's settings: the vision tokens suppressed, the backend's extra logits
        processors, then greedy choice at temperature 0, or sampling with temperature and top-p. Nothing comes from
        the checkpoint's ``generation_config.json`` (``generate`` would fill what is unset from it, a repetition
        penalty included). Each step runs on the consumer's thread unless ``decode_thread``: on the CPU, torch's
        OpenMP workers serve one thread well, and a second thread's team of workers made every step 3-7 ms (5-25%)
        slower on the bench model (BENCHMARKS.md, "Engine").

        A tool call is mostly fixed text. When greedy decoding chooses "<tool_call>", the rest of the protocol's call
        (and the end-of-turn token) is fed in the same forward as that token, as a draft: each next choice is then
        made from logits already computed, and as long as it is the draft's next token nothing more is run. At the
        first choice that differs, what was fed beyond it is cut from the cache and decoding goes on one token at a
        time. The choices are the ones one-token steps make (the same logits, up to rounding, and the same logits
        processors, called in the same order); only the number of forwards changes.
        """
        import torch
        from transformers import (LogitsProcessorList, SuppressTokensLogitsProcessor, TemperatureLogitsWarper,
                                  TopPLogitsWarper)

        settings = request.settings
        device = self.model.device
        ids, positions = arguments["input_ids"], arguments["position_ids"]
        cache = arguments.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        processors = LogitsProcessorList([SuppressTokensLogitsProcessor(self._suppress_ids, device=device)])
        if self.logits_processor_factory:
            processors.extend(self.logits_processor_factory(request.turn_index))
        sampling = settings.temperature > 0
        if sampling:
            processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_p < 1:
                processors.append(TopPLogitsWarper(settings.top_p))
        length, limit = ids.shape[1], settings.max_new_tokens
        sequence = torch.empty((1, length + limit), dtype=ids.dtype, device=device)
        sequence[:, :length] = ids
        into["ids"] = sequence[:, :length]
        with torch.inference_mode():
            out = self.model(**{**arguments, "input_ids": ids[:, past:], "position_ids": positions[..., past:]},
                             use_cache=True, logits_to_keep=1)
        cache, position = out.past_key_values, positions[..., -1:]  # position: that of the last token fed
        into["cache"] = cache
        pending = [out.logits[:, -1]]  # logits of the next choices, in order
        drafted: list[int] = []  # tokens fed ahead of the choices, each still to be checked against the choice
        may_draft = self._tool_call_draft is not None and not sampling
        generated = 0
        while True:
            end = length + generated
            with torch.inference_mode():
                scores = processors(sequence[:, :end], pending.pop(0).float())
                token = torch.multinomial(scores.softmax(-1), 1)[:, 0] if sampling else scores.argmax(-1)
                sequence[:, end] = token
            generated += 1
            into["ids"] = sequence[:, :end + 1]
            chosen = int(token)
            yield chosen
            if chosen in self._stop_ids or generated == limit:
                break
            if drafted and chosen == drafted[0]:
                drafted.pop(0)  # already fed: the next logits are pending
                continue
            if drafted:  # the model chose otherwise: forget what was fed ahead
                cache.crop(-len(drafted))
                position = position - len(drafted)
                drafted, pending = [], []
            feed = [chosen]
            if may_draft and chosen == self._tool_call_start:
                may_draft = False
                drafted = self._tool_call_draft[:limit - generated]
                feed += drafted
            steps = torch.arange(1, len(feed) + 1, device=device).view(1, 1, -1)
            with torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([feed], dtype=ids.dtype, device=device),
                                    position_ids=position + steps, past_key_values=cache, use_cache=True).logits
            position = position + len(feed)
            pending = [logits[:, i] for i in range(len(feed))]
        extra = cache.get_seq_length() - (length + generated - 1)
        if extra > 0:  # a turn that ended inside its draft: the cache holds every token but the last
            cache.crop(-extra)


class _TextDeltas:
    """Tokens in, text out as it becomes printable (Transformers' ``TextStreamer`` decoding, collected instead of
    printed)."""

    def __init__(self, tokenizer) -> None:
        from transformers import TextStreamer

        pieces: list[str] = []

        class Collect(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                pieces.append(text)

        self._pieces = pieces
        self._streamer = Collect(tokenizer, skip_prompt=False, skip_special_tokens=False)

    def deltas(self, tokens: Iterator[int]) -> Iterator[str]:
        """The text each token makes printable, then the rest when ``tokens`` end."""
        import torch

        for token in tokens:
            self._streamer.put(torch.tensor([token]))
            yield self._take()
        self._streamer.end()
        yield self._take()

    def _take(self) -> str:
        text = "".join(self._pieces)
        self._pieces.clear()
        return text


def _ahead(steps: Iterator[int]) -> Iterator[int]:
    """``steps`` run on a thread of their own, ahead of the consumer: on a GPU, the consumer's work between two
    tokens (the engine, the page) then overlaps the next step's kernels. A consumer that stops (a closed browser
    tab) stops the thread at the next token; an error in ``steps`` is raised to the consumer."""
    import queue

    items: queue.SimpleQueue = queue.SimpleQueue()
    stop, finished = threading.Event(), object()

    def run() -> None:
        try:
            for item in steps:
                items.put(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # raised on the consumer's thread below
            items.put(_Failure(exc))
        finally:
            steps.close()
            items.put(finished)

    thread = threading.Thread(target=run, name="visionthink-decode", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not finished:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class EarlyImages:
    """The vision tower's features of images a turn may ask for, computed while the turn runs.

    A thread runs the image processor and the vision tower; on a CUDA GPU it queues the tower's kernels on a side
    stream, so that they fill the gaps that decoding (bound by memory bandwidth) leaves on the GPU. ``take`` gives the
    features for exactly the pixels and grid the next turn's processor produced, after the main stream has waited for
    them, or None (other pixels, or a failure: the caller then encodes them as usual).
    """

    def __init__(self, model, processor, images: list) -> None:
        self.model, self.processor, self.images = model, processor, list(images)
        self._result: tuple | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._encode, name="visionthink-early-encode", daemon=True)
        self.thread.start()

    def _encode(self) -> None:
        import contextlib

        import torch

        try:
            device = self.model.device
            processed = self.processor.image_processor(images=self.images, return_tensors="pt")
            stream = torch.cuda.Stream(device) if device.type == "cuda" else None
            with torch.inference_mode(), torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                pixels = processed["pixel_values"].to(device, non_blocking=True)
                grid = processed["image_grid_thw"].to(device, non_blocking=True)
                features = self.model.model.get_image_features(pixels, grid, return_dict=True)
                done = None
                if stream is not None:
                    done = torch.cuda.Event()
                    done.record(stream)
            self._result = (pixels, grid, features, done, stream)
        except BaseException as exc:  # reported as "not available": the next turn encodes as usual
            self._error = exc

    def take(self, pixel_values, grid):
        """The features for ``pixel_values``/``grid``, or None when these are not the pixels that were encoded."""
        import torch

        self.thread.join()
        if self._result is None:
            return None
        pixels, early_grid, features, done, stream = self._result
        if done is not None:
            torch.cuda.current_stream(pixels.device).wait_event(done)
            for tensor in (pixels, *features.pooler_output):  # made on the side stream, used on the main one
                tensor.record_stream(torch.cuda.current_stream(pixels.device))
        same = (early_grid.shape == grid.shape and torch.equal(early_grid, grid.to(early_grid.device))
                and pixels.shape == pixel_values.shape and torch.equal(pixels, pixel_values.to(pixels.device)))
        return features if same else None


class OpenAIBackend:
    """Generates turns through an OpenAI-compatible chat-completions server (vLLM, SGLang, …).

    Serve the checkpoint with two images per prompt, e.g.
    ``vllm serve Senqiao/VisionThink-Efficient --limit-mm-per-prompt '{"image":2}'``, and without a tool-call
    parser, so that the ``<tool_call>`` text reaches this client as it was generated.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        pixel_limits: tuple[int, int] = (MIN_PIXELS, MAX_PIXELS),
        max_retries: int = 2,
    ) -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=max_retries
        )
        self.base_url = base_url
        self.pixel_limits = pixel_limits
        self.model_id = model or self.served_models()[0]

    def served_models(self) -> list[str]:
        """The ids of the models the server serves; asking also proves that the server answers at all."""
        import openai

        try:
            models = [m.id for m in self.client.models.list()]
        except openai.APIError as exc:
            raise BackendError(
                f"Could not list the models served at {self.base_url} ({exc}). Start the server, check "
                "VISIONTHINK_BASE_URL, or name the model with VISIONTHINK_MODEL."
            ) from exc
        if not models:
            raise BackendError(f"The server at {self.base_url} serves no models.")
        return models

    def generate(self, request: TurnRequest) -> Iterator[str | TurnOutput]:
        import openai

        settings = request.settings
        messages = request.conversation.to_openai([data_url(image) for image in request.images])
        sampling = settings.temperature > 0
        try:
            stream = self.client.chat.completions.create(
                model=self.model_id,
                messages=messages,
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p if sampling else 1.0,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts: list[str] = []
            finish_reason = "stop"
            usage = None
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    delta = choice.delta.content or ""
                    if delta:
                        parts.append(delta)
                        yield delta
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except openai.APIConnectionError as exc:
            raise BackendError(f"Could not reach the model server at {self.base_url} ({exc}).") from exc
        except openai.APIStatusError as exc:
            raise BackendError(f"The model server at {self.base_url} refused the request: {exc}") from exc
        text = protocol.strip_stop("".join(parts))
        yield TurnOutput(
            text=text,
            generated_tokens=usage.completion_tokens if usage else 0,
            finish_reason="length" if finish_reason == "length" else "stop",
            prompt_tokens=usage.prompt_tokens if usage else None,
        )


def data_url(image: PILImage.Image) -> str:
    """A lossless base64 PNG data URL, so the server sees exactly the pixels the local backend would."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
