"""Errors a user can fix (a bad config, datalist, file or command-line value), kept apart from bugs.

The ``mri-anomaly`` command prints a :class:`UserInputError` as one line (exit status 2) and lets every other
exception through with its traceback, so an internal ``ValueError`` or ``KeyError`` is never disguised as a
user mistake. All of them subclass ``ValueError`` (and the file ones ``FileNotFoundError`` /
``FileExistsError``), so ``except ValueError`` callers keep working.

* :class:`UserInputError`: the base; its message names the file (or option) and the problem.
* :class:`MissingInputError`: a file or folder the user named does not exist.
* :class:`OutputExistsError`: an output the command would overwrite already exists.

The data and config modules subclass the base: ``InputFileError`` (a bad image file), ``DatalistError``,
``ConfigError``.
"""

from __future__ import annotations

__all__ = ["UserInputError", "MissingInputError", "OutputExistsError"]


class UserInputError(ValueError):
    """A problem with what the user gave (config, datalist, file, option); the message says what to fix."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder the user named is missing."""


class OutputExistsError(UserInputError, FileExistsError):
    """An output the command would overwrite already exists."""
