"""The command lines' parser: Transformers' ``HfArgumentParser`` (arguments declared as dataclass fields with their
help, as ``train.grpo`` declares TRL's), whose errors are one line for a person instead of a usage block."""

from __future__ import annotations

import sys
from typing import NoReturn

from transformers import HfArgumentParser

#: Exit status of a command given arguments it cannot use (argparse's own).
EXIT_BAD_INPUT = 2


class CommandParser(HfArgumentParser):
    """``HfArgumentParser`` for ``python -m …`` commands: a bad argument exits with ``EXIT_BAD_INPUT`` and one line,
    ``PROG: error: MESSAGE (see --help)``; with ``named_errors=False``, ``error: MESSAGE (see --help)`` (a command
    whose own errors are written without its name)."""

    def __init__(self, dataclass_types, *, named_errors: bool = True, **kwargs) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.named_errors = named_errors

    def error(self, message: str) -> NoReturn:
        line = error_line(self.prog if self.named_errors else None, f"{message} (see --help)")
        self.exit(EXIT_BAD_INPUT, line + "\n")

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The dataclasses filled from ``argv`` (default ``sys.argv[1:]``); an argument none of them declares is
        an error like any other (``HfArgumentParser`` raises ``ValueError`` for it)."""
        *values, remaining = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        return tuple(values)


def error_line(prog: str | None, message: str) -> str:
    """``PROG: error: MESSAGE``, or ``error: MESSAGE`` without a ``prog``."""
    return f"{prog}: error: {message}" if prog else f"error: {message}"


def fail(prog: str | None, message: str, status: int = EXIT_BAD_INPUT) -> int:
    """Print ``error_line(prog, message)`` to stderr and return ``status``, for a command's ``main`` to return."""
    print(error_line(prog, message), file=sys.stderr)
    return status
