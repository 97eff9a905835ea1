"""One guard around every event handler of a page: an exception that no handler expected reaches the person as a
short message with a reference (``gr.Error``), and the traceback reaches the log under that reference.

Handlers still answer the errors they expect (a bad image, a store refusal) in their own words on the page; this is
the net under them, applied to every event of every page by ``guard_events`` when the page is built, so that no
exception text (SQL, hosts, ports, internal URLs) is ever shown to a visitor.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import gradio as gr

from visionthink.incidents import log_incident

log = logging.getLogger(__name__)

UNEXPECTED = ("Something went wrong on our side (reference {reference}). Try again; if it keeps happening, give "
              "the operator this reference.")


def unexpected(exc: BaseException, what: str = "A page handler failed") -> gr.Error:
    """The ``gr.Error`` a person sees for ``exc``; the traceback is logged under its reference."""
    return gr.Error(UNEXPECTED.format(reference=log_incident(log, what, exc)), print_exception=False)


def guarded(fn: Callable) -> Callable:
    """``fn`` (plain, generator, coroutine or async generator) with unexpected exceptions turned into ``gr.Error``.

    ``functools.wraps`` keeps the signature, so Gradio still injects ``gr.Request``, ``gr.OAuthProfile`` and
    ``gr.Progress`` as before.
    """
    what = f"The handler {getattr(fn, '__qualname__', fn)!s} failed"
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                async for value in fn(*args, **kwargs):
                    yield value
            except gr.Error:
                raise
            except Exception as exc:
                raise unexpected(exc, what) from None
    elif inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise unexpected(exc, what) from None
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise unexpected(exc, what) from None
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise unexpected(exc, what) from None
    wrapper.__visionthink_guarded__ = True
    return wrapper


def guard_events(blocks: gr.Blocks) -> gr.Blocks:
    """Put every event handler of ``blocks`` under :func:`guarded` (once); returns ``blocks``."""
    for event in blocks.fns.values():
        if event.fn is not None and not getattr(event.fn, "__visionthink_guarded__", False):
            event.fn = guarded(event.fn)
    return blocks
