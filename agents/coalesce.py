"""Calls made at the same moment by concurrent tasks, carried out together.

The sender handles a batch's conversations side by side, and each of them claims its ledger row
right before its Graph API call. Those claims arrive in the same turn of the event loop; one
:class:`Coalescer` gathers them and runs them as one pipelined round trip (one pool connection,
one write to the socket) instead of one round trip and one acquire/release each. Each caller
still gets its own answer, at the same moment it would have: right before its own call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Coalescer(Generic[A, R]):
    """``await coalescer(arg)``: ``arg`` joins the calls made in this turn of the event loop, and
    ``run(args)`` answers all of them at once (one result per argument, in order). When ``run``
    raises, every call of that round raises the same error."""

    def __init__(self, run: Callable[[list[A]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._rounds: set[asyncio.Future[None]] = set()  # rounds under way (kept from the garbage collector)

    async def __call__(self, arg: A) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)  # after every task ready in this turn has had its say
        self._waiting.append((arg, future))
        return await future

    def _flush(self) -> None:
        taken, self._waiting = self._waiting, []
        round_ = asyncio.ensure_future(self._answer(taken))
        self._rounds.add(round_)
        round_.add_done_callback(self._rounds.discard)

    async def _answer(self, taken: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([arg for arg, _ in taken])
        except BaseException as exc:  # each caller sees the failure as its own call's
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():  # a caller cancelled meanwhile (a stop): its row is claimed, as if just before
                future.set_result(result)
