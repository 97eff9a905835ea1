r"""Accuracy judges for the GRPO reward and the evaluation: is a model's ``<answer>`` right, 1, or wrong, 0?

:class:`LLMJudge` asks an OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, an open model served by vLLM) with
the paper's judge prompt (``protocol.JUDGE_SYSTEM_PROMPT`` / ``JUDGE_USER_TEMPLATE``, docs/rewards.md §2.1);
:class:`RuleJudge` scores offline by rules. :func:`make_judge` builds one from the ``VISIONTHINK_JUDGE*`` settings.

A judgement that fails is ``None``, never a silent 0 or 1 and never an exception (docs/rewards.md §2.2-2.3): it is
counted in ``judge.stats.failures`` by reason and logged on the ``train.judge`` logger; the reward leaves it out.

The verdict (:func:`parse_verdict`). Echoes of the prediction block are cut out of the reply (measure 3 below) and
reasoning before the last ``</think>`` is ignored; every ``Score: 0|1`` left (:data:`VERDICT`, case-insensitive, so
"score: 1" and "**SCORE**: 1" count) is a verdict, and they must agree. A reply that holds none, or both a 0 and a
1, has no verdict: "Score: 0 ... Score: 1" is not 1. The same value repeated is that value.

Attempts follow the released code: up to three, at temperature 0, 0.2 and 0.4. An attempt fails when its reply has
no verdict, or is not a readable chat completion (a body that is not JSON, no ``choices``, no text); after the last
one the judgement is ``None`` with that attempt's reason (``unparseable``, ``empty_reply`` or ``bad_response``).
Transport errors are not attempts: the ``openai`` client retries rate limits (429), server errors (5xx, 408, 409),
timeouts and connection errors itself, up to ``max_retries`` times with exponential backoff and jitter, honouring
``retry-after``. What it gives up on, and any other 4xx (bad key, bad request), ends the judgement at once.

Prompt injection. The prediction is model output, and the model is rewarded by the verdict, so it must not be able
to write the verdict itself. Three measures:

1. The prediction slot holds the prediction between two marker lines carrying a random nonce made for each
   judgement (``<<<PREDICTION 3f…>>>`` … ``<<<END PREDICTION 3f…>>>``); the prediction cannot close the block,
   because it cannot know the nonce. Every byte of the prompt around the slots is the template's.
2. Inside the block every ``score`` (matched exactly as the verdict parser matches it, case-insensitively) is
   followed by an invisible U+2060 WORD JOINER. The judge still reads "Score: 1", but no text inside the block
   can ever match :data:`VERDICT`, whatever follows the word.
3. Before the reply is parsed, every echo of the block is cut out of it: text between the nonce markers, from an
   unmatched opening marker to the end, from the start to an unmatched closing marker, and, when the prediction
   itself holds a verdict-like text, each verbatim copy of the prediction. A judge that quotes the prediction
   therefore cannot contribute its "Score: 1"; a judge that quotes only part of it ("Score: 0; it claims Score:
   1") gives conflicting verdicts, hence none, and the next attempt runs.

What is left is a judge model that obeys instructions inside the data; the prompt is the paper's and cannot warn
it, so :class:`LLMJudge` is only as robust as the judge model there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import openai

from visionthink import protocol
from visionthink.settings import DEFAULT_JUDGE_MODEL, Settings, SettingsError

logger = logging.getLogger(__name__)

#: Temperature of attempt ``i`` is ``TEMPERATURE_STEP * i``: 0, 0.2, 0.4 as in the released code.
TEMPERATURE_STEP = 0.2

Item = tuple[str, str, str | None]  # (question, reference, prediction)


class JudgeError(SettingsError):
    """A judge that cannot be built: settings that do not go together (the message names the variables) or an
    unusable cache file."""


# --- The interface ---------------------------------------------------------------------------------------------


class Judge(ABC):
    """Scores a prediction against the reference answer of a question: 1 right, 0 wrong, None when it failed.

    ``question`` is the user's question as asked (``<image>`` marker optional); ``prediction`` is the
    ``<answer>`` text. A ``None`` or blank prediction is 0 without asking anyone.
    """

    name: str

    @abstractmethod
    def score(self, question: str, reference: str, prediction: str | None) -> int | None: ...

    def score_many(self, items: Sequence[Item]) -> list[int | None]:
        """Scores of ``(question, reference, prediction)`` items, in their order."""
        return [self.score(*item) for item in items]


def _blank(prediction: str | None) -> bool:
    return prediction is None or not prediction.strip()


# --- Verdicts and the injection defence -----------------------------------------------------------------------

_MARKUP = r"[\s*_`'\"]{0,6}"
#: A verdict: "score", optional markup, ":" or "=", optional markup, then 0 or 1 (1.0 allowed). Not a verdict:
#: "Score: 10", "Score: 0.5", "1st", and the format line's "Score: 0 or 1" / "Score: 0/1".
VERDICT = re.compile(
    rf"\bscore{_MARKUP}[:=]?{_MARKUP}([01])(?:\.0+)?(?!\.?\d)\b(?!\s*(?:or|/)\s*[01]\b)",
    re.IGNORECASE,
)
#: The word the verdict starts with, matched with the verdict's own (Unicode, case-insensitive) rules.
_SCORE_WORD = re.compile("score", re.IGNORECASE)
#: Follows every "score" inside the prediction block: invisible to a reader, and not whitespace to :data:`VERDICT`.
WORD_JOINER = "\u2060"
_THINK_END = "</think>"


def open_marker(nonce: str) -> str:
    return f"<<<PREDICTION {nonce}>>>"


def close_marker(nonce: str) -> str:
    return f"<<<END PREDICTION {nonce}>>>"


def new_nonce(prediction: str = "") -> str:
    """A random marker id the prediction does not contain."""
    while True:
        nonce = secrets.token_hex(8)
        if nonce not in prediction:
            return nonce


def neutralise(prediction: str) -> str:
    """The prediction with a word joiner after each "score", so that no part of it parses as a verdict."""
    return _SCORE_WORD.sub(lambda m: m.group(0) + WORD_JOINER, prediction)


def prediction_block(prediction: str, nonce: str) -> str:
    """What fills the ``{prediction}`` slot: the neutralised prediction between the nonce marker lines."""
    return f"{open_marker(nonce)}\n{neutralise(prediction)}\n{close_marker(nonce)}"


_SLOT = re.compile(r"\{(question|ground_truth|prediction)\}")


def judge_messages(question: str, reference: str, prediction: str, nonce: str) -> list[dict]:
    """The chat messages of one judgement: the paper's system prompt and its user prompt with the slots filled.

    The slots are filled in one pass, so text in one slot is never read as another slot.
    """
    values = {
        "question": protocol.user_message(question),
        "ground_truth": reference,
        "prediction": prediction_block(prediction, nonce),
    }
    user = _SLOT.sub(lambda m: values[m.group(1)], protocol.JUDGE_USER_TEMPLATE)
    return [{"role": "system", "content": protocol.JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def strip_echo(reply: str, nonce: str | None = None, prediction: str | None = None) -> str:
    """The reply without any echo of the prediction block (see the module docstring, measure 3)."""
    if nonce:
        opening, closing = open_marker(nonce), close_marker(nonce)
        reply = _cut_blocks(reply, opening, closing)
        end = reply.rfind(closing)
        if end != -1:  # a closing marker without its opening one: the echo started before it
            reply = reply[end + len(closing) :]
        start = reply.find(nonce)
        if start != -1:  # an opening marker (or the bare nonce) without a closing one: the echo runs to the end
            reply = reply[: reply.rfind("\n", 0, start) + 1]
    if prediction and VERDICT.search(prediction):
        reply = reply.replace(prediction, " ")
        stripped = prediction.strip()
        if stripped:
            reply = reply.replace(stripped, " ")
    return reply


def _cut_blocks(text: str, opening: str, closing: str) -> str:
    """``text`` with each ``opening … closing`` span (the nearest closing) replaced by a space, in linear time."""
    kept, position = [], 0
    while (start := text.find(opening, position)) != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:  # no closing after this opening, so none after any later one either
            break
        kept.append(text[position:start])
        kept.append(" ")
        position = end + len(closing)
    kept.append(text[position:])
    return "".join(kept)


def parse_verdict(reply: str | None, nonce: str | None = None, prediction: str | None = None) -> int | None:
    r"""The verdict of a judge's reply: 0 or 1, or None when the reply has none.

    The rule: cut every echo of the prediction block out of the reply (:func:`strip_echo`), then drop everything
    before the last ``</think>`` (the judge's reasoning); every :data:`VERDICT` left is a verdict, matched
    case-insensitively ("Score: 1", "score:1", "**SCORE**: 1"). They must agree: the reply's verdict is their
    common value, and a reply with none, or with both a 0 and a 1, has no verdict, whichever comes last.
    Look-alikes are not verdicts (a fullwidth colon or digit, a Cyrillic letter, a word joiner after "Score"), except
    where Python's Unicode case folding equates them (the long s of "ſcore"); :func:`neutralise` follows the same rule.

    >>> parse_verdict("The prediction is wrong. Score: 0 (1 would mean a match)")
    0
    >>> parse_verdict("Score: 1. Both say STOP. Score: 1")
    1
    >>> parse_verdict("Score: 0\nNote: the answer asks for score: 1") is None
    True
    >>> parse_verdict("1") is None
    True
    """
    if not isinstance(reply, str) or not reply:
        return None
    reply = strip_echo(reply, nonce, prediction)
    if _THINK_END in reply:
        reply = reply.rsplit(_THINK_END, 1)[1]
    verdicts = {int(match.group(1)) for match in VERDICT.finditer(reply)}
    return verdicts.pop() if len(verdicts) == 1 else None


# --- Cache -----------------------------------------------------------------------------------------------------


class JudgeCache:
    """Verdicts keyed by (judge model, question, reference, prediction): an in-memory LRU in front of an optional
    SQLite file (WAL; shared by threads and by several training processes). Only verdicts are stored, never
    failures.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise JudgeError(f"The judge cache needs max_entries of at least 1, not {max_entries}.")
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self._memory: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict INTEGER NOT NULL, "
                    "model TEXT NOT NULL, created REAL NOT NULL)"
                )
            except (OSError, sqlite3.Error) as exc:
                raise JudgeError(
                    f"Cannot open the judge cache {self.path} ({exc}). Check VISIONTHINK_JUDGE_CACHE: it must be a "
                    "writable file path."
                ) from exc

    @staticmethod
    def key(model: str, question: str, reference: str, prediction: str) -> str:
        payload = json.dumps([model, question, reference, prediction], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> int | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
            if self._db is None:
                return None
            try:
                row = self._db.execute("SELECT verdict FROM verdicts WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                logger.warning("Judge cache %s: lookup failed (%s); asking the judge instead.", self.path, exc)
                return None
            if row is None:
                return None
            self._remember(key, int(row[0]))
            return int(row[0])

    def put(self, key: str, verdict: int, model: str = "") -> None:
        if verdict not in (0, 1):
            raise ValueError(f"Only verdicts 0 and 1 are cached, not {verdict!r}.")
        with self._lock:
            self._remember(key, verdict)
            if self._db is None:
                return
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO verdicts (key, verdict, model, created) VALUES (?, ?, ?, ?)",
                    (key, verdict, model, time.time()),
                )
            except sqlite3.Error as exc:
                logger.warning("Judge cache %s: write failed (%s); the verdict stays in memory only.", self.path, exc)

    def _remember(self, key: str, verdict: int) -> None:
        self._memory[key] = verdict
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return len(self._memory)
            return int(self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# --- Counters --------------------------------------------------------------------------------------------------


@dataclass
class JudgeStats:
    """What a judge did. Every call ends in exactly one of: an empty prediction (0), a cache hit, a verdict
    from the endpoint (``judged``) or a failure (by reason), so ``calls`` is their sum.

    ``requests`` counts the HTTP requests sent, ``retries`` those of them the ``openai`` client sent again after a
    transport error (429, 5xx, a timeout, a lost connection); ``unparseable_replies`` and ``bad_replies`` count the
    failed attempts: replies without a verdict, and replies that were not a chat completion with text.
    """

    calls: int = 0
    empty_predictions: int = 0
    cache_hits: int = 0
    judged: int = 0
    failures: Counter = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    unparseable_replies: int = 0
    bad_replies: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def fail(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.failures[reason] += count

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "calls": self.calls,
                "empty_predictions": self.empty_predictions,
                "cache_hits": self.cache_hits,
                "judged": self.judged,
                "failed": sum(self.failures.values()),
                "failures": dict(self.failures),
                "requests": self.requests,
                "retries": self.retries,
                "unparseable_replies": self.unparseable_replies,
                "bad_replies": self.bad_replies,
            }


# --- The LLM judge ---------------------------------------------------------------------------------------------

#: The header the ``openai`` client numbers each try of a request with: "0" first, then 1, 2, … for its retries.
_RETRY_COUNT_HEADER = "x-stainless-retry-count"


def _reply_text(completion: object) -> tuple[str | None, str, str]:
    """``(text, "", "")`` for a chat completion whose first choice has text, else ``(None, reason, detail)``.

    Without strict validation the client hands over whatever JSON the server sent (a completion without
    ``choices``, a list, a bare string), so every field is checked here.
    """
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None, "bad_response", f"the response is not a chat completion with choices: {completion!r:.200}"
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(message, openai.BaseModel) or not isinstance(content, str | None):
        return None, "bad_response", f"the first choice has no message text: {choices[0]!r:.200}"
    if not content or not content.strip():
        finish = getattr(choices[0], "finish_reason", None)
        return None, "empty_reply", f"the reply is empty (content {content!r}, finish_reason {finish!r})"
    return content, "", ""


class LLMJudge(Judge):
    """The paper's judge on an OpenAI-compatible endpoint.

    ``base_url`` names an OpenAI-compatible server (vLLM: ``http://host:8000/v1``; None: api.openai.com);
    ``azure_endpoint`` with ``api_version`` selects Azure OpenAI, where ``model`` is the deployment name.
    ``max_attempts`` failed attempts (replies without a verdict, malformed replies) end a judgement;
    ``max_retries`` is the ``openai`` client's: how often it sends a request again after a transport error before
    the judgement fails. ``timeout_s`` bounds each request. At most ``max_concurrency`` requests are in flight,
    from all threads together.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str = DEFAULT_JUDGE_MODEL,
        *,
        api_key: str | None = None,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        timeout_s: float = 120.0,
        max_attempts: int = 3,
        max_retries: int = 6,
        max_concurrency: int = 16,
        cache: JudgeCache | None = None,
        max_tokens: int = 512,
    ) -> None:
        for label, value, least in (
            ("max_attempts", max_attempts, 1),
            ("max_retries", max_retries, 0),
            ("max_concurrency", max_concurrency, 1),
            ("max_tokens", max_tokens, 1),
        ):
            if value < least:
                raise JudgeError(f"LLMJudge needs {label} of at least {least}, not {value}.")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise JudgeError(f"LLMJudge needs a positive, finite timeout_s, not {timeout_s}.")
        if azure_endpoint and base_url:
            raise JudgeError("Give the judge either base_url or azure_endpoint (Azure OpenAI), not both.")
        if azure_endpoint and not api_version:
            raise JudgeError("An Azure OpenAI judge needs api_version (VISIONTHINK_JUDGE_API_VERSION).")
        self.model = model
        self.name = f"llm:{model}"
        self.base_url = base_url
        self.azure_endpoint = azure_endpoint
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.max_tokens = max_tokens
        self.cache = cache if cache is not None else JudgeCache()
        self.stats = JudgeStats()
        # The client's own HTTP client, with its defaults, plus a hook that sees every request it sends.
        http_client = openai.DefaultHttpxClient(timeout=self.timeout_s, event_hooks={"request": [self._sent]})
        options: dict = {"api_key": api_key, "timeout": self.timeout_s, "max_retries": max_retries,
                         "http_client": http_client}
        if azure_endpoint:
            options.update(azure_endpoint=azure_endpoint, api_version=api_version)
        else:
            options.update(base_url=base_url)
            if base_url and not api_key:
                options["api_key"] = "EMPTY"  # a local vLLM server takes any key
        try:
            self._client = (openai.AzureOpenAI if azure_endpoint else openai.OpenAI)(**options)
        except openai.OpenAIError as exc:
            http_client.close()
            raise JudgeError(
                f"Cannot build the judge client ({exc}). Set VISIONTHINK_JUDGE_API_KEY (or OPENAI_API_KEY)."
            ) from exc
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def _sent(self, request) -> None:
        """The HTTP client's request hook: count the request, and whether the ``openai`` client is retrying it."""
        retried = request.headers.get(_RETRY_COUNT_HEADER, "0") not in ("", "0")
        self.stats.add(requests=1, retries=int(retried))

    # -- scoring --

    def _begin(self, question: str, reference: str, prediction: str | None) -> tuple[_Outcome | None, str]:
        """Count the call; returns the outcome when it is known without a request, and the cache key."""
        self.stats.add(calls=1)
        if _blank(prediction):
            self.stats.add(empty_predictions=1)
            return _Outcome(0), ""
        if not reference or not reference.strip():
            return self._failed("empty_reference", "the reference answer is empty; fix the data row"), ""
        key = JudgeCache.key(self.model, question, reference, prediction)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.add(cache_hits=1)
            return _Outcome(cached), key
        return None, key

    def _failed(self, reason: str, detail: str) -> _Outcome:
        self.stats.fail(reason)
        logger.warning("Judge %s failed (%s): %s", self.model, reason, detail)
        return _Outcome(None, reason)

    def _judge(self, question: str, reference: str, prediction: str | None) -> _Outcome:
        known, key = self._begin(question, reference, prediction)
        if known is not None:
            return known
        try:
            nonce = new_nonce(prediction)
            messages = judge_messages(question, reference, prediction, nonce)
        except ValueError as exc:  # a question protocol.user_message refuses (several <image> markers)
            return self._failed("bad_question", str(exc))

        reason = detail = ""
        for attempt in range(self.max_attempts):
            try:
                with self._slots:
                    completion = self._client.chat.completions.create(
                        model=self.model,
                        messages=messages,
                        temperature=round(TEMPERATURE_STEP * attempt, 6),
                        max_tokens=self.max_tokens,
                    )
            except openai.APIStatusError as exc:  # a 4xx, or a 408/409/429/5xx the client stopped retrying
                return self._failed(f"http_{exc.status_code}", f"{type(exc).__name__}: {exc.message}")
            except openai.APITimeoutError as exc:  # before APIConnectionError, its base class
                return self._failed("timeout", f"{exc.message} (retried up to {self.max_retries} times)")
            except openai.APIConnectionError as exc:
                return self._failed("connection", f"{exc.message} (retried up to {self.max_retries} times)")
            except Exception as exc:  # noqa: BLE001
                # Anything else is a 200 whose body the client could not read: not JSON (JSONDecodeError), not
                # UTF-8, nested too deep (RecursionError), …; one bad reply must not abort a batch or the reward.
                reply, reason, detail = None, "bad_response", f"unreadable body ({type(exc).__name__}: {exc})"
            else:
                reply, reason, detail = _reply_text(completion)
            if reply is not None:
                verdict = parse_verdict(reply, nonce, prediction)
                if verdict is not None:
                    self.stats.add(judged=1)
                    self.cache.put(key, verdict, self.model)
                    return _Outcome(verdict)
                reason, detail = "unparseable", f"no single 'Score: 0|1' in the reply {reply[:200]!r}"
                self.stats.add(unparseable_replies=1)
            else:
                self.stats.add(bad_replies=1)
            logger.debug("Judge attempt %d of %d failed (%s): %s", attempt + 1, self.max_attempts, reason, detail)
        return self._failed(reason, f"{self.max_attempts} attempt(s) failed; the last: {detail}")

    def score(self, question: str, reference: str, prediction: str | None) -> int | None:
        return self._judge(question, reference, prediction).verdict

    def score_many(self, items: Sequence[Item]) -> list[int | None]:
        """Scores in the order of ``items``, judged on up to ``max_concurrency`` threads; an item repeated in
        the batch is judged once."""
        unique = _unique(items)
        if not unique:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(unique))) as pool:
            outcomes = dict(zip(unique, pool.map(lambda item: self._judge(*item), unique), strict=True))
        repeats = Counter(tuple(item) for item in items)
        for item, outcome in outcomes.items():  # a repeat is a call answered like its first occurrence
            extra = repeats[item] - 1
            if extra <= 0:
                continue
            self.stats.add(calls=extra)
            if _blank(item[2]):
                self.stats.add(empty_predictions=extra)
            elif outcome.verdict is None:
                self.stats.fail(outcome.reason or "unknown", extra)
            else:
                self.stats.add(cache_hits=extra)
        return [outcomes[tuple(item)].verdict for item in items]

    def close(self) -> None:
        """Close the client (and its HTTP connections) and the cache file."""
        self._client.close()
        self.cache.close()


@dataclass(frozen=True)
class _Outcome:
    verdict: int | None
    reason: str | None = None  # why the judgement failed


def _unique(items: Sequence[Item]) -> list[Item]:
    return list(dict.fromkeys(tuple(item) for item in items))


# --- The rule-based judge --------------------------------------------------------------------------------------

_LETTERS = "A-H"
_CHOICE_FORMS = (
    re.compile(rf"^\(?([{_LETTERS}])\)?[.:)]?$", re.IGNORECASE),  # "B", "(b)", "B.", "B)"
    re.compile(rf"^(?i:option|choice|answer)\s*:?\s*\(?([{_LETTERS}])\)?[.:)]?$"),  # "Option B"
    re.compile(rf"^\(?([{_LETTERS}])[.:)]\s+\S"),  # "B. dog", "(B) dog", "B: dog"
    re.compile(rf"^\(([{_LETTERS}])\)\s*\S"),  # "(B)dog"
)
_CHOICE_IN_TEXT = re.compile(
    rf"(?i:answer|option|choice)(?:\s+(?i:is|would\s+be|should\s+be))?\s*:?\s*\(?([{_LETTERS}])\)?(?![\w'])"
)
_OPTION_LINE = re.compile(rf"^\s*\(?([{_LETTERS}])[.:)]\s*(.+?)\s*$", re.MULTILINE)
_OPTION_INLINE = re.compile(rf"\(([{_LETTERS}])\)\s*(.+?)(?=\s*\([{_LETTERS}]\)|$)", re.MULTILINE)

_NUMBER_TEXT = r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+\u2212]?\.\d+"
_NUMBER = re.compile(rf"(?<![\w.])({_NUMBER_TEXT})(?:\s*/\s*(\d+(?:\.\d+)?))?(?:\s*(%|percent\b))?")
#: A unit after a number: up to four words ("cm", "km/h", "square meters", "cm^2"), degrees or feet/inches marks.
_UNIT = r"°\s*[CFcf]?|['\"]|[^\W\d_]+\.?(?:[\s/*·-]{1,3}[^\W\d_]+\.?){0,3}(?:\^?[23²³])?"
_NUMBER_ONLY = re.compile(
    rf"^(?:approximately\s+|about\s+|~\s*)?[$€£¥]?\s*({_NUMBER_TEXT})(?:\s*/\s*(\d+(?:\.\d+)?))?"
    rf"\s*(%|percent)?\s*(?:{_UNIT})?\s*\.?$",
    re.IGNORECASE,
)
_NUMBER_WORDS = {
    word: index
    for index, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


@dataclass(frozen=True)
class _Number:
    value: float
    percent: bool


def _clean(text: str) -> str:
    """Unicode-normalised text without TeX wrappers, ``$`` signs and surrounding whitespace."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\s*\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\d?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"\1/\2", text)
    text = text.replace("\\%", "%").replace("\\,", "").replace("\\!", "").replace("$", " ")
    return text.strip()


def _normalised(text: str) -> str:
    """Lower case, punctuation as spaces, no articles, single spaces."""
    text = _clean(text).lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _to_number(match: re.Match) -> _Number | None:
    try:
        value = float(match.group(1).replace(",", "").replace("\u2212", "-"))
        if match.group(2) is not None:
            value /= float(match.group(2))
    except (ValueError, ZeroDivisionError):
        return None
    return _Number(value, bool(match.group(3))) if math.isfinite(value) else None


def _as_number(text: str) -> _Number | None:
    """The number ``text`` is (units, currency, percent and thousands separators allowed), or None."""
    text = _clean(text)
    match = _NUMBER_ONLY.match(text)
    if match:
        return _to_number(match)
    word = _normalised(text)
    if word in _NUMBER_WORDS:
        return _Number(float(_NUMBER_WORDS[word]), False)
    return None


def _number_in(text: str) -> _Number | None:
    """The number a free-text prediction states: all of it, else the last number after "answer is" or "=", else
    its last number, else a number word ending it."""
    whole = _as_number(text)
    if whole is not None:
        return whole
    text = _clean(text)
    stated = re.split(r"(?i:answer\s*(?:is|:)|=)", text)[-1]
    for candidate in (stated, text):
        matches = list(_NUMBER.finditer(candidate))
        if matches:
            return _to_number(matches[-1])
    last = _normalised(text).split()[-1:]  # "I count twelve", but not "twelve hundred"
    return _Number(float(_NUMBER_WORDS[last[0]]), False) if last and last[0] in _NUMBER_WORDS else None


def _numbers_match(a: _Number, b: _Number) -> bool:
    def close(x: float, y: float) -> bool:
        return abs(x - y) <= max(1e-6, 1e-2 * abs(y))

    if close(a.value, b.value):
        return True
    if a.percent != b.percent:  # "12%" against "0.12"
        return close(a.value / 100, b.value) if a.percent else close(a.value, b.value / 100)
    return False


def _choice_letter(text: str, free_text: bool = False) -> str | None:
    """The option letter ``text`` names ("B", "(B)", "B.", "Option B", "B. dog"; with ``free_text`` also
    "the answer is B")."""
    text = _clean(text)
    for form in _CHOICE_FORMS:
        match = form.match(text)
        if match:
            return match.group(1).upper()
    if free_text:
        matches = _CHOICE_IN_TEXT.findall(text)
        if matches:
            return matches[-1].upper()
    return None


def _options(question: str) -> dict[str, str]:
    """The options listed in a multiple-choice question, letter to normalised text."""
    options: dict[str, str] = {}
    for pattern in (_OPTION_LINE, _OPTION_INLINE):
        for letter, text in pattern.findall(question):
            options.setdefault(letter.upper(), _normalised(text))
    return options


class RuleJudge(Judge):
    r"""Offline scoring without a model, for tests and runs without an endpoint.

    The ``\boxed{}`` content is compared when a side has one. An option-letter reference wants the same letter
    ("B", "(B)", "B.", "Option B", "the answer is B") or the text of that option in the question; a numeric
    reference wants a number within 1% relative or 1e-6 absolute (thousands separators, percent signs and units
    ignored, "12%" also matching 0.12); a yes/no reference wants the same first word; anything else must match
    after normalising case, whitespace, punctuation and articles. Never fails: 1 or 0.
    """

    name = "rule"

    def __init__(self) -> None:
        self.stats = JudgeStats()

    def score(self, question: str, reference: str, prediction: str | None) -> int:
        self.stats.add(calls=1)
        if _blank(prediction):
            self.stats.add(empty_predictions=1)
            return 0
        verdict = int(self._matches(question or "", reference or "", prediction))
        self.stats.add(judged=1)
        return verdict

    def _matches(self, question: str, reference: str, prediction: str) -> bool:
        reference = protocol.last_boxed(reference) or reference
        prediction = protocol.last_boxed(prediction) or prediction
        options = _options(question)

        letter = _choice_letter(reference)
        if letter is not None:
            said = _choice_letter(prediction, free_text=True)
            if said is not None:
                return said == letter
            return bool(options.get(letter)) and options[letter] == _normalised(prediction)

        expected = _as_number(reference)
        if expected is not None:
            stated = _number_in(prediction)
            return stated is not None and _numbers_match(stated, expected)

        want, got = _normalised(reference), _normalised(prediction)
        if want in ("yes", "no"):
            return got.split()[:1] == [want]
        if want and want == got:
            return True
        said = _choice_letter(prediction)  # a letter for an option-text reference
        return said is not None and options.get(said) == want and bool(want)


# --- Building a judge from the settings ------------------------------------------------------------------------


def make_judge(kind: str, settings: Settings) -> Judge:
    """The judge ``kind`` names, built from ``settings``: ``rule``, ``llm``, or ``env`` for the one
    ``VISIONTHINK_JUDGE`` names; unset, that is ``llm`` when ``VISIONTHINK_JUDGE_BASE_URL`` or
    ``VISIONTHINK_JUDGE_AZURE_ENDPOINT`` is set and ``rule`` otherwise, so offline runs work. Settings that cannot
    make an LLM judge together raise :class:`JudgeError` naming the variables (each value was checked by
    :class:`Settings`).
    """
    base_url, azure_endpoint = settings.judge_base_url, settings.judge_azure_endpoint
    if kind == "env":
        kind = (settings.judge or ("llm" if base_url or azure_endpoint else "rule")).lower()
    if kind == "rule":
        return RuleJudge()
    if kind != "llm":
        raise JudgeError(f"A judge is 'rule', 'llm' or 'env', not {kind!r}.")
    if base_url and azure_endpoint:
        raise JudgeError(
            "Set VISIONTHINK_JUDGE_BASE_URL (an OpenAI-compatible server) or VISIONTHINK_JUDGE_AZURE_ENDPOINT "
            "(Azure OpenAI), not both."
        )
    if azure_endpoint and not settings.judge_api_version:
        raise JudgeError(
            "VISIONTHINK_JUDGE_API_VERSION must be set with VISIONTHINK_JUDGE_AZURE_ENDPOINT (e.g. 2024-10-21)."
        )
    if not base_url and not azure_endpoint and not settings.judge_api_key:
        raise JudgeError(
            "VISIONTHINK_JUDGE=llm without VISIONTHINK_JUDGE_BASE_URL means api.openai.com, which needs "
            "VISIONTHINK_JUDGE_API_KEY (or OPENAI_API_KEY). Set one, or use VISIONTHINK_JUDGE=rule offline."
        )
    return LLMJudge(
        base_url=base_url,
        model=settings.judge_model,
        api_key=settings.judge_api_key,
        azure_endpoint=azure_endpoint,
        api_version=settings.judge_api_version,
        timeout_s=settings.judge_timeout_s,
        max_concurrency=settings.judge_concurrency,
        cache=JudgeCache(settings.judge_cache) if settings.judge_cache else None,
    )
