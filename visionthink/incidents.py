"""Unexpected failures, told to people without internals: a short reference that points to the full story in the log.

A visitor never sees an exception's text (it can hold SQL, hosts, ports or internal URLs); they see what happened
in plain words and a reference such as ``e3b0c442``, and the operator finds that reference in the log next to the
traceback.
"""

from __future__ import annotations

import logging
import secrets


def new_reference() -> str:
    """A short random reference for one incident."""
    return secrets.token_hex(4)


def log_incident(logger: logging.Logger, what: str, exc: BaseException | None = None) -> str:
    """Log ``what`` (and the traceback of ``exc``) under a new reference; returns the reference."""
    reference = new_reference()
    logger.error("%s [reference %s]", what, reference, exc_info=exc)
    return reference
