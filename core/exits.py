"""How a ``wacrm`` process stops on a failure: one message on stderr and an exit code, never a traceback.

Exit codes: 0 ok, 1 failure (a service unreachable, a request refused), 2 bad configuration
or usage, 3 the database schema is behind (run ``wacrm migrate``). A failure that lower layers
raise for a command to report (``storage.migrate``, ``topics.admin``) subclasses
:class:`CommandError` with its code, so the command reports it as it is.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_SCHEMA = 0, 1, 2, 3


class CommandError(Exception):
    """A failure to report on stderr with an exit code (:attr:`code`, the class's unless given)."""

    code: int = EXIT_FAIL

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
