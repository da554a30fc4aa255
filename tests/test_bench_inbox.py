"""The inbox phase of the benchmark end to end on a tiny seed, so that it cannot rot:
``python -m bench --only inbox`` seeds its own database, serves the inbox, runs 50 people and
writes the report's Inbox section."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg

from bench.inbox import ROUTE_NAMES
from wacrm.inbox import listing
from wacrm.storage.migrate import run_migrations

CHECKOUT = Path(__file__).resolve().parents[1]


def test_inbox_phase_on_a_tiny_seed(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    done = subprocess.run([sys.executable, "-m", "bench", "--only", "inbox", "--quick", "--seed", "200",
                           "--out", str(out)], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = out.read_text()
    assert "## Inbox" in report
    assert "seeded with 200 conversations and 2,000 messages" in report
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in ROUTE_NAMES}
    assert set(rows) == set(ROUTE_NAMES)
    for name, (p50, p99, _max, requests, errors) in rows.items():
        assert int(requests.replace(",", "")) > 0, name
        assert errors == "0", f"{name}: {report}"
        assert float(p50) <= float(p99), name
    assert "0 not seen within 5 s" in report  # every stored message's event arrived
    assert "## Webhook ingest" not in report  # the inbox phase alone


def test_seed_must_be_large_enough() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--only", "inbox", "--seed", "5"], cwd=CHECKOUT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--seed needs at least 100 conversations" in done.stderr
    assert "Traceback" not in done.stderr


async def test_list_counts_equal_a_count_over_every_row(make_database: Callable[[], str]) -> None:
    """The list's counts (grouped per status and owner since migration 0012) are the same numbers
    as counting every conversation, on the benchmark's mix of statuses, owners and deletions."""
    from bench.inbox import Seed, create_agents, seed
    from wacrm.storage import waiting

    url = make_database()
    await run_migrations(url, 10.0, out=lambda m: None)
    conn = await asyncpg.connect(url)  # as the benchmark seeds: COPY with asyncpg's own jsonb codec
    try:
        users, _ = await create_agents(conn, 5)
        await seed(conn, Seed(600, 1200, agents=5, batch=250), users, lambda m: None)
        for deleted in (False, True):
            for me in users[:3]:
                query = listing.ListQuery("all", "all", None, 1, deleted)
                _, counts = await listing.list_conversations(conn, query, me)
                expected = await conn.fetchrow(
                    """SELECT count(*) FILTER (WHERE inbox_status = 'open') open,
                              count(*) FILTER (WHERE inbox_status = 'pending') pending,
                              count(*) FILTER (WHERE inbox_status = 'resolved') resolved,
                              count(*) FILTER (WHERE inbox_status = 'snoozed') snoozed,
                              count(*) "all", count(*) FILTER (WHERE assigned_user_id = $1) mine,
                              count(*) FILTER (WHERE assigned_user_id IS NULL) unassigned,
                              count(*) FILTER (WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.conversation_id = c.id
                                                             AND t.status = 'open' AND t.kind = ANY($3))) waiting
                       FROM conversations c WHERE (deleted_at IS NOT NULL) = $2""", me, deleted, list(waiting.KINDS))
                assert counts == dict(expected)
                assert counts["all"] > 0
                if not deleted:
                    assert counts["mine"] > 0 and counts["unassigned"] > 0
    finally:
        await conn.close()
