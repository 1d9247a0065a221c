"""The one base class of errors in what a user gave relaxbench (a config, a flag, a data file, a results folder).

Every such error subclasses :class:`UserError`; ``relaxbench`` prints its message as one line and exits with
status 2, and the workflow turns it into a one-line ``WorkflowError`` when it reads the config. Anything else
that escapes is a bug in relaxbench (a traceback), never the user's mistake.
"""

from __future__ import annotations

__all__ = ["UserError", "one_line", "shown"]


class UserError(ValueError):
    """Bad input; the message names the key, file or value and, where it can, the choices."""


def one_line(message: object) -> str:
    """``message`` on one line: its lines stripped and joined by spaces (YAML and library errors span lines)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, shortened to about ``limit`` characters: how an error message quotes a user's value
    (escapes keep control characters and newlines out of the message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-12:]} ({len(text)} characters)"
