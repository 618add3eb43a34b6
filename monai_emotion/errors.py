"""The package's exception vocabulary.

Every user-facing error says *what* is wrong, *where* (file, and line or volume
when known) and *how to fix it*. The command line prints ``str(error)`` without a
traceback for these types (``--debug`` shows it).

Bundle runs (``python -m monai.bundle run ...``) do not go through our command line, and
MONAI wraps every exception raised while building a component or evaluating a ``$``
expression in ``RuntimeError("Failed to instantiate ...")``. The first ``initialize`` step of
every bundle config (:func:`monai_emotion.runtime.install_clean_errors`) and the command line
therefore install :func:`excepthook` (importing the package installs nothing): when an uncaught
exception's chain holds one of these errors, only its one or two lines are printed (exit
status 1, Python's for any uncaught exception). Engine handlers (MONAI's ``StatsHandler``)
also log an exception with its traceback before re-raising it; for our errors the log keeps
the message and drops the traceback. ``MONAI_EMOTION_DEBUG=1`` restores every traceback;
any other exception keeps it always.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Sequence
from types import TracebackType
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
    "DEBUG_ENV",
    "find_user_error",
    "format_user_error",
    "config_files_from_argv",
    "write_error",
    "excepthook",
    "install_excepthook",
]

#: environment variable that makes user errors show their traceback (also set by ``--debug``)
DEBUG_ENV = "MONAI_EMOTION_DEBUG"


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


def find_user_error(exc: BaseException | None) -> MonaiEmotionError | None:
    """The first :class:`MonaiEmotionError` in ``exc``'s chain (``__cause__``, then ``__context__``).

    MONAI's config machinery and DataLoader workers re-raise our errors wrapped in
    ``RuntimeError``; the wrapped error is the one that says what to fix.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MonaiEmotionError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def config_files_from_argv(argv: Sequence[str] | None = None) -> list[str]:
    """The ``--config_file`` value(s) of a ``monai.bundle`` command line (``[]`` if none)."""
    args = list(sys.argv if argv is None else argv)
    for k, arg in enumerate(args):
        value = None
        if arg == "--config_file" and k + 1 < len(args):
            value = args[k + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            parts = value.strip().strip("[]").split(",")
            return [p.strip().strip("'\"") for p in parts if p.strip().strip("'\"")]
    return []


def format_user_error(exc: BaseException, config_files: Sequence[str] = ()) -> str | None:
    """The one or two lines to show for ``exc``, or ``None`` when it is not a user error.

    An error that names no file (a bad value in a bundle config, e.g. an unknown network)
    is located in ``config_files``: in a bundle run the config is the file to fix.
    """
    error = find_user_error(exc)
    if error is None:
        return None
    if error.path is None and config_files:
        error = _rebuild(type(error), error.what, " + ".join(config_files), error.line,
                         error.where, error.fix)
    return f"error: {error}"


def write_error(
    exc: BaseException, path: str | os.PathLike, cls: type[MonaiEmotionError] = MonaiEmotionError
) -> MonaiEmotionError | None:
    """A clear error for a write that failed because the disk (or a quota/size limit) is full.

    The ``OSError`` may sit anywhere in ``exc``'s chain (``torch.save``'s zip writer turns it
    into a ``RuntimeError``). Returns ``None`` for any other failure, which the caller
    re-raises unchanged.
    """
    code = _full_disk_errno(exc)
    if code is None:
        return None
    return cls(
        f"cannot write: {os.strerror(code).lower()} (nothing partial was kept under this name)",
        path,
        fix="free disk space (or raise the quota / file-size limit), or write to another folder, "
        "then run the command again",
    )


def _full_disk_errno(exc: BaseException) -> int | None:
    full = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in full:
            return cause.errno
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook`` that prints user errors as one or two lines (see the module docstring)."""
    message = None
    if os.environ.get(DEBUG_ENV, "") in ("", "0"):
        message = format_user_error(exc, config_files_from_argv())
    if message is None:
        _previous_hook(exc_type, exc, tb)
        return
    print(message, file=sys.stderr, flush=True)


_previous_hook = sys.excepthook
_previous_factory = logging.getLogRecordFactory()
_factory_installed = False


def _log_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Log records of user errors without their traceback (see the module docstring)."""
    record = _previous_factory(*args, **kwargs)
    if (
        record.exc_info
        and os.environ.get(DEBUG_ENV, "") in ("", "0")
        and find_user_error(record.exc_info[1]) is not None
    ):
        record.exc_info = None
    return record


def install_excepthook() -> None:
    """Install :func:`excepthook` and the log-record factory once, chaining to what they replace."""
    global _previous_hook, _previous_factory, _factory_installed
    if sys.excepthook is not excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = excepthook
    # once only: a library that wrapped ours since (Ray does) keeps it in its chain, and
    # re-wrapping that wrapper would make the two factories call each other forever
    if not _factory_installed:
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_log_record)
        _factory_installed = True
