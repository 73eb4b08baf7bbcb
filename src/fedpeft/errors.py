"""Exceptions fedpeft raises for bad input. Each names what is wrong and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class FedPeftError(Exception):
    """Base class of every error fedpeft raises on purpose."""


class ConfigError(FedPeftError, ValueError):
    """A configuration field has a bad value.

    The message names the field, the value given and, when the set is finite, the allowed values.
    """

    def __init__(self, field: str, value: object, allowed: Iterable[object] | str | None = None) -> None:
        self.field = field
        self.value = value
        if allowed is None:
            detail = ""
        elif isinstance(allowed, str):
            detail = f"; expected {allowed}"
        else:
            detail = "; allowed: " + ", ".join(repr(a) for a in allowed)
        self.detail = detail
        super().__init__(f"{field}={value!r} is invalid{detail}")

    def prefixed(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` in front of the field (a nested config reporting its full path)."""
        return self.renamed(f"{prefix}.{self.field}")

    def renamed(self, field: str) -> ConfigError:
        """The same error reported under another field name (e.g. the recipe's name for a library argument)."""
        err = ConfigError(field, self.value)
        err.detail = self.detail
        err.args = (f"{err.field}={self.value!r} is invalid{self.detail}",)
        return err


class DataFormatError(FedPeftError, ValueError):
    """An input data file is malformed. The message names the file, the line (or record) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path + (f", line {line}" if line is not None else "")
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {problem}")


class UnsupportedModelError(FedPeftError, ValueError):
    """A method cannot apply to the given model architecture (e.g. BitFit on a model without biases)."""
