"""A credential kept out of reprs, ``str()`` and logs.

:class:`Secret` wraps a value (an API key): a settings object, a config dataclass or a log line that
formats one shows ``Secret('********')``. The value is read with :meth:`Secret.reveal`, only where it
is sent (an ``Authorization`` header).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """An immutable secret string; equal to another Secret of the same value."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def reveal(secret: Secret | None) -> str | None:
    """The value of an optional secret (None stays None)."""
    return secret.reveal() if secret is not None else None
