"""One base for every error that means "the input is wrong": the CLI prints these, and only these, as messages.

Anything else escaping the library is a bug and keeps its traceback. Subclasses keep their historical
builtin base as a second parent (ValueError, RuntimeError) so existing `except ValueError` callers still work.
"""

from __future__ import annotations


class CompalignError(Exception):
    """Bad input, a damaged or incompatible artifact, a wrong flag; the message names the file, the row and the fix."""


class InputError(CompalignError, ValueError):
    """A flag or option value that cannot work (a batch size of 0, a device that is not there)."""


class NotFoundError(CompalignError, KeyError):
    """An unknown registry name or a key the cache does not hold (a KeyError that prints without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingFileError(CompalignError, FileNotFoundError):
    """A file or folder the command needs is not there; the message says which command makes it."""
