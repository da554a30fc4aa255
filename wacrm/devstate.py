"""What a running ``wacrm dev`` publishes about itself (``STATE_DIR/dev.json``), and the one rule by
which every other command uses it: when ``DATABASE_URL`` or ``KAFKA_BOOTSTRAP_SERVERS`` is unset and a
``wacrm dev`` runs on the state dir (``.wacrm`` in the current directory unless told), its
database and broker are used (with the key its numbers' tokens are encrypted with), and the
command says so on stderr.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STATE_FILE = "dev.json"
DEFAULT_STATE_DIR = Path(".wacrm")
#: The variables a running ``wacrm dev`` fills in, and the key of ``dev.json`` that holds each.
FROM_DEV = {"DATABASE_URL": "database_url", "KAFKA_BOOTSTRAP_SERVERS": "kafka"}
#: Taken from the dev's ``secrets.json`` too when its database is used (``wacrm numbers add`` beside it).
KEY_VARIABLE = "TOKEN_ENCRYPTION_KEY"
SECRETS_FILE = "secrets.json"


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """What a ``wacrm dev`` published about itself (URLs, secrets), or None."""
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _secret(state_dir: Path, name: str) -> str | None:
    try:
        value = json.loads((state_dir / SECRETS_FILE).read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def running_state(state_dir: Path) -> dict[str, Any] | None:
    """The state of the ``wacrm dev`` running on ``state_dir`` (None: none runs there; a file left
    by one that was killed does not count)."""
    state = read_state(state_dir)
    return state if state is not None and _alive(state.get("pid")) else None


def with_running_dev(env: Mapping[str, str], state_dir: Path = DEFAULT_STATE_DIR) -> tuple[dict[str, str], str | None]:
    """``env`` with the running dev system's ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` where
    those are unset, and a line saying which dev system was used (None when none was)."""
    out = dict(env)
    missing = [name for name in FROM_DEV if not (env.get(name) or "").strip()]
    state = running_state(state_dir) if missing else None
    if state is None:
        return out, None
    filled = [name for name in missing if isinstance(state.get(FROM_DEV[name]), str) and state[FROM_DEV[name]]]
    if not filled:
        return out, None
    out.update({name: state[FROM_DEV[name]] for name in filled})
    if "DATABASE_URL" in filled and not (env.get(KEY_VARIABLE) or "").strip():
        key = _secret(state_dir, KEY_VARIABLE)  # its database's tokens are encrypted with its key
        if key:
            out[KEY_VARIABLE] = key
    return out, (f"{' and '.join(filled)} unset: using the running `wacrm dev` (pid {state['pid']}, "
                 f"{state_dir / STATE_FILE})")
