"""The fault suite's short forms (``wacrm faults --quick``): each scenario of :mod:`faults.scenarios`
on real processes, a short load at a low rate with one or two faults, judged as the full run is.

One embedded PostgreSQL for the module (the scenarios stop and kill it); each scenario brings
its own database, broker and processes and stops them. The outcome is counted after a bounded
drain (every posted message stored and answered and nothing in flight), never after a sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.harness import Harness
from faults.scenarios import SCENARIOS, Scenario, run_scenario


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(Path(tmp_path_factory.mktemp("faults")))
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_short_form(harness: Harness, scenario: Scenario) -> None:
    row = await run_scenario(harness, scenario, quick=True)
    assert row.tally is not None, f"{scenario.name}: {row.verdict} (logs under {harness.work})"
    t = row.tally
    assert t.posted > 0
    assert t.lost == 0, f"{scenario.name}: {t.lost} of {t.posted} posted messages never stored; {row.notes}"
    assert t.answered_twice == 0, f"{scenario.name}: {t.answered_twice} answered twice; {row.notes}"
    assert row.verdict.ok, f"{scenario.name}: {row.verdict}; {row.notes}"
