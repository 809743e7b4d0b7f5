"""User-facing errors: one line on stderr, exit code 1, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, unknown id).

    The message is one line naming what is wrong, where, and how to fix it.
    """

    exit_code = 1


class UsageError(UserError):
    """Wrong command-line usage (exit code 2, like Typer/Click usage errors)."""

    exit_code = 2
