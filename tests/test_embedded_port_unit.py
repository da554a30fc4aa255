"""The embedded PostgreSQL keeps its port across runs: the one saved in the state directory while it is
free, a new one (saved, and said) when another process holds it."""

from __future__ import annotations

import socket
from pathlib import Path

from wacrm.core.embedded import remembered_port


def test_first_run_saves_a_port_and_the_next_run_reuses_it(tmp_path: Path) -> None:
    saved = tmp_path / "pg" / "port"
    first, note = remembered_port(saved)
    assert note is None and saved.read_text().strip() == str(first)
    again, note = remembered_port(saved)
    assert (again, note) == (first, None)


def test_a_taken_port_is_replaced_saved_and_said(tmp_path: Path) -> None:
    saved = tmp_path / "port"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        saved.write_text(f"{taken}\n")
        port, note = remembered_port(saved)
    assert port != taken and saved.read_text().strip() == str(port)
    assert note == f"port {taken} is taken now; using {port} from here on"
