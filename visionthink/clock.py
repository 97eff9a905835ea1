"""Time as the project keeps it: aware datetimes in UTC, and days given on a command line or a page."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC: a naive datetime (SQLite hands them back; a typed-in ``since``) is taken as UTC already,
    an aware one is converted. ``None`` stays ``None``."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def parse_day(text: str) -> datetime:
    """The start (00:00 UTC) of the day written ``YYYY-MM-DD``; ``ValueError`` with a message for a person
    otherwise."""
    text = text.strip()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"must be a date as YYYY-MM-DD, not {text!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
