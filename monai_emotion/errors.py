"""The package's exception vocabulary.

Every user-facing error says *what* is wrong, *where* (file, and line or volume
when known) and *how to fix it*. The command line prints ``str(error)`` without a
traceback for these types (``--debug`` shows it).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "MonaiEmotionError",
    "AnnotationError",
    "DataError",
    "ImageError",
    "LayoutError",
    "CacheError",
    "ConfigError",
    "CheckpointError",
]


class MonaiEmotionError(Exception):
    """Base class of every error this package raises on purpose.

    Parameters
    ----------
    what
        One sentence saying what is wrong.
    path
        The file (or folder) the problem is in.
    line
        1-based line number in a table file, if known.
    where
        Any other locator (``"volume 17"``, ``"column 'start'"``).
    fix
        What the user should do about it.
    """

    def __init__(
        self,
        what: str,
        path: str | os.PathLike | None = None,
        *,
        line: int | None = None,
        where: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.path = os.fspath(path) if path is not None else None
        self.line = line
        self.where = where
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        location = ""
        if self.path is not None:
            location = self.path
            if self.line is not None:
                location += f", line {self.line}"
            if self.where:
                location += f", {self.where}"
            location += ": "
        elif self.where:
            location = f"{self.where}: "
        message = f"{location}{self.what}"
        if self.fix:
            message += f"\n  fix: {self.fix}"
        return message

    def __reduce__(self) -> tuple[Any, ...]:
        # keep errors picklable (DataLoader workers re-raise them in the main process)
        return (
            _rebuild,
            (type(self), self.what, self.path, self.line, self.where, self.fix),
        )


def _rebuild(cls, what, path, line, where, fix):  # noqa: ANN001, ANN202
    return cls(what, path, line=line, where=where, fix=fix)


class AnnotationError(MonaiEmotionError, ValueError):
    """A malformed or unknown entry in an observer or consensus annotation file."""


class DataError(MonaiEmotionError, ValueError):
    """Input data that cannot be used as it is."""


class ImageError(DataError):
    """A NIfTI image with the wrong shape, timing, or contents."""


class LayoutError(DataError):
    """A BIDS tree that lacks, or duplicates, what was asked for."""


class CacheError(DataError):
    """A preprocessing cache that is incomplete, stale, or from another version."""


class ConfigError(MonaiEmotionError, ValueError):
    """A configuration value that cannot work."""


class CheckpointError(MonaiEmotionError, RuntimeError):
    """A checkpoint that cannot be loaded into the configured network."""
