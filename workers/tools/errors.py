"""The tools' own error: a command called with arguments or data it cannot use. It is not a
request error (no worker and no wire code is involved); the command line prints its message
in one line and exits 1."""

from __future__ import annotations


class UsageError(Exception):
    """A tool cannot work with what it was given: the message says what to change (an
    option, a data folder, a split)."""
