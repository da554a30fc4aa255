"""The coalescer: calls made in one turn of the event loop are answered by one run, each its own answer."""

from __future__ import annotations

import asyncio

import pytest

from wacrm.agents.coalesce import Coalescer


async def test_calls_of_one_turn_run_together_and_each_gets_its_answer() -> None:
    rounds: list[list[int]] = []

    async def run(args: list[int]) -> list[int]:
        rounds.append(args)
        await asyncio.sleep(0)
        return [a * 10 for a in args]

    square = Coalescer(run)
    assert await asyncio.gather(*(square(n) for n in range(5))) == [0, 10, 20, 30, 40]
    assert await square(7) == 70  # a later call is a round of its own
    assert rounds == [[0, 1, 2, 3, 4], [7]]


async def test_a_failed_run_fails_every_call_of_its_round() -> None:
    async def run(args: list[int]) -> list[int]:
        raise ConnectionResetError("the database went away")

    broken = Coalescer(run)
    results = await asyncio.gather(broken(1), broken(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in results)
    with pytest.raises(ConnectionResetError):
        await broken(3)
