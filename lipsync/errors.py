"""Exceptions that the CLI and the batch jobs turn into one-line reports.

`InputError` (and subclasses) mean the user's input is wrong: the CLI prints the message on one
line and exits with code 2. Anything else is a bug or an environment failure (exit 1).
"""

from __future__ import annotations

from typing import Any


def _restore(cls: type, args: tuple, state: dict[str, Any]) -> BaseException:
    """Unpickle an error without calling its constructor (whose arguments are not `args`)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class LipsyncError(Exception):
    """Base class of the errors this package raises on purpose.

    Picklable whatever a subclass's constructor takes (Ray sends a task's exception to the
    driver pickled; the default `cls(*args)` would call `InputError(message)` and fail, and Ray
    would then report "UnserializableException" instead of the one-line reason).
    """

    def __reduce__(self):
        return _restore, (type(self), self.args, dict(self.__dict__))


class InputError(LipsyncError):
    """Bad user input (file missing, unreadable, wrong content, bad option). Exit code 2."""

    def __init__(self, path: object, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        text = f"{self.path}: {problem}" if self.path else problem
        super().__init__(" ".join(text.split()))  # one line, always


class MediaError(InputError):
    """ffmpeg could not read or write a file; carries ffmpeg's last stderr lines."""

    def __init__(self, path: object, problem: str, stderr_tail: str = ""):
        self.stderr_tail = stderr_tail
        detail = f" (ffmpeg: {stderr_tail.strip().splitlines()[-1]})" if stderr_tail.strip() else ""
        super().__init__(path, problem + detail)


class OutputExistsError(InputError):
    """The output path exists and --overwrite was not given."""

    def __init__(self, path: object):
        super().__init__(path, "output already exists (pass --overwrite to replace it)")
