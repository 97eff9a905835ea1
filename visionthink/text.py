"""Text that people and models send, made safe to process and to store on any database, and bounded in length.

PostgreSQL refuses NUL characters in text, and no database (nor a tokenizer) can encode a lone UTF-16 surrogate, which
a browser may still send. :func:`clean_text` removes the one and replaces the other, so the same text is kept on
SQLite and PostgreSQL and reaches the model unchanged otherwise.
"""

from __future__ import annotations

import re

#: C0 control characters other than tab, newline and carriage return, and DEL: never meaningful in a question,
#: an answer or a comment, and NUL cannot be stored in PostgreSQL text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
#: Default length limits (characters): a question, and any other text a person types (a reference answer, a
#: correction, a comment). ``Settings`` makes both configurable.
MAX_QUESTION_CHARS = 2_000
MAX_TEXT_CHARS = 10_000


class TextError(ValueError):
    """A text that is too long; the message says how long it is and what the limit is, for a person to read."""


def clean_text(value: str | None) -> str:
    """``value`` without control characters (tab, newline and carriage return kept) and with every lone surrogate
    replaced by U+FFFD; ``None`` is the empty string."""
    if not value:
        return ""
    value = _CONTROL.sub("", value)
    return _SURROGATE.sub(REPLACEMENT, value)


def bounded_text(value: str | None, *, limit: int, what: str) -> str:
    """:func:`clean_text` of ``value``, or ``TextError`` when it is longer than ``limit`` characters."""
    value = clean_text(value)
    if len(value) > limit:
        raise TextError(
            f"The {what} is {len(value):,} characters long; the limit is {limit:,}. Shorten it and try again."
        )
    return value
