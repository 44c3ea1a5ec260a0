"""User-facing error types.

Every problem a user can cause (bad file, bad argument, mismatched checkpoint) is raised as a :class:`ResfuMedError`
whose message names the file or argument and the problem. The command line prints that message as one line and exits
non-zero; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

__all__ = ["ResfuMedError", "InputError", "CheckpointError"]


class ResfuMedError(Exception):
    """Base class of errors that are the user's to fix; the CLI prints ``str(err)`` without a traceback."""


class InputError(ResfuMedError, ValueError):
    """A data file, folder or argument is missing, unreadable or inconsistent (also a ``ValueError``)."""


class CheckpointError(ResfuMedError, ValueError):
    """A checkpoint is corrupt or belongs to another architecture or class count."""
