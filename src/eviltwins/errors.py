"""Project errors.

Every error a user can cause derives from :class:`EviltwinsError`; the CLI prints it as one line
(``eviltwins: error: <message>``) and exits with code 2. Bugs in eviltwins itself stay ordinary
Python exceptions and keep their tracebacks.
"""

from __future__ import annotations


class EviltwinsError(Exception):
    """A mistake the user can fix: the message says what is wrong and what to do."""


class ParamError(EviltwinsError, ValueError):
    """A parameter is out of range, of the wrong type, or unknown."""


class DataError(EviltwinsError):
    """A dataset is missing, unreadable, or images have the wrong shape or range."""


class UnknownNameError(EviltwinsError, KeyError):
    """A registry lookup failed (unknown dataset, model, attack or detector)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotFittedError(EviltwinsError):
    """A verb that needs calibration was called before ``fit``."""


class UnsafeFileError(EviltwinsError):
    """A file would need arbitrary unpickling (code execution) to load; it was refused."""


class OptimisationError(EviltwinsError):
    """An optimisation diverged (NaN or inf); lower the learning rate or check the inputs."""
