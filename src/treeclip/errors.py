"""Errors that reach the user as one clear line, and the documented exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
"""The run finished, but some inputs failed (each got an error row or line)."""
EXIT_USAGE = 2
"""Bad usage or unusable input: nothing was done (click uses 2 for usage errors too)."""


class TreeclipError(Exception):
    """A failure whose message is fit to print as it is: one line, naming the file and
    the reason. The CLI prints it without a traceback and exits with EXIT_USAGE."""


class InputError(TreeclipError):
    """One input (file, row, image) could not be used; runs count these and go on."""
