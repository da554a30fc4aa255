"""The load generator: signed webhook bodies at a fixed offered rate, open loop.

Run as its own process (``python -m bench.loadgen …``); writes one JSON result (and,
optionally, the accepted inbound message ids with the moment each was due to be sent).

Open loop: request *i* is due at ``t0 + i / rate`` whatever happened to the earlier ones.
Latency is measured from that due time, not from when a connection was free, so a slow
server shows up as latency instead of hiding behind a slower send rate (no coordinated
omission). Requests go out over ``connections`` keep-alive HTTP/1.1 connections, one in
flight each, written as pre-built bytes by a minimal asyncio protocol: the generator has
to cost much less CPU than the server it measures, on the same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import resource
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench import stats
from bench.bodies import BodyFactory, Mix, http_request
from wacrm.core import eventloop

PREBUILD_LIMIT = 150_000
MIN_SLEEP_S = 0.001


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.item: tuple[int, float] | None = None  # (request index, due time)
        self.started = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, index: int, due: float, data: bytes) -> None:
        assert self.transport is not None
        self.item = (index, due)
        self.started = time.monotonic()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.item is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            status = int(head[9:12])
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop > 0 else len(head)].strip())
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[:end + 4 + length]
            item, self.item = self.item, None
            keep = b"connection: close" not in head
            self.gen.done(self, item[0], item[1], status)
            if not keep:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.item is not None:
            item, self.item = self.item, None
            self.gen.done(self, item[0], item[1], -1)
        self.gen.lost(self)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class LoadGen:
    def __init__(self, host: str, port: int, rate: float, duration: float, connections: int,
                 source: Callable[[int], tuple[bytes, tuple[str, ...]]], timeout: float) -> None:
        self.host, self.port = host, port
        self.rate, self.duration, self.connections = rate, duration, connections
        self.total = max(1, int(rate * duration))
        self.source = source
        self.timeout = timeout
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.queue: collections.deque[tuple[int, float]] = collections.deque()
        self.latency = array("d")
        self.codes: collections.Counter[int] = collections.Counter()
        self.ids: dict[int, tuple[str, ...]] = {}
        self.accepted: list[tuple[int, float]] = []
        self.behind = 0.0  # worst lateness of a write behind its due time (generator saturation)
        self.finished = 0
        self.last_done = 0.0
        self._wall0 = 0.0
        self._reconnect = 0

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        self.idle.append(conn)

    def done(self, conn: _Conn, index: int, due: float, status: int) -> None:
        now = time.monotonic()
        self.busy.discard(conn)
        self.codes[status] += 1
        self.finished += 1
        self.last_done = now
        if status == 200:
            self.latency.append(now - due)
            ids = self.ids.pop(index, ())
            if ids:
                self.accepted.append((index, self._wall0 + due))
        else:
            self.ids.pop(index, None)
        if not conn.closed:
            self.idle.append(conn)
        self._dispatch()

    def lost(self, conn: _Conn) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._reconnect += 1

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            index, due = self.queue.popleft()
            conn = self.idle.pop()
            data, ids = self.source(index)
            if ids:
                self.ids[index] = ids
            self.busy.add(conn)
            late = time.monotonic() - due
            if late > self.behind:
                self.behind = late
            conn.send(index, due, data)

    async def run(self) -> dict[str, Any]:
        await asyncio.gather(*(self._open() for _ in range(self.connections)))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic() + 0.05
        self._wall0 = time.time() - time.monotonic()
        interval = 1.0 / self.rate
        i = 0
        last_check = t0
        while i < self.total:
            now = time.monotonic()
            due_count = min(self.total, int((now - t0) * self.rate) + 1) if now >= t0 else 0
            while i < due_count:
                self.queue.append((i, t0 + i * interval))
                i += 1
            self._dispatch()
            if now - last_check > 0.2:
                last_check = now
                self._expire(now)
                await self._refill()
            # Sleep until the next request is due, but at least a millisecond (the loop's timer
            # resolution): a shorter sleep is a busy loop that takes the CPU the server is measured
            # with. A request written up to a millisecond late counts that as latency.
            await asyncio.sleep(max(t0 + i * interval - time.monotonic(), MIN_SLEEP_S))
        drain_until = time.monotonic() + self.timeout
        while (self.queue or self.busy) and time.monotonic() < drain_until:
            self._expire(time.monotonic())
            await self._refill()
            self._dispatch()
            await asyncio.sleep(0.005)
        unanswered = len(self.queue) + len(self.busy)
        for conn in list(self.busy) + self.idle:
            conn.item = None
            conn.close()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = max(self.last_done - t0, 1e-9)
        ok = self.codes.get(200, 0)
        summary = stats.summarize(self.latency)
        return {
            "offered_rate": self.rate, "duration_s": self.duration, "requests": self.total,
            "ok": ok, "codes": {str(k): v for k, v in sorted(self.codes.items())}, "unanswered": unanswered,
            "errors": self.total - ok, "achieved_rps": ok / elapsed, "elapsed_s": elapsed,
            "latency_s": {"p50": summary.p50, "p95": summary.p95, "p99": summary.p99, "max": summary.max,
                          "mean": summary.mean},
            "generator_behind_s": self.behind, "generator_cpu_s": (cpu1.ru_utime + cpu1.ru_stime)
            - (cpu0.ru_utime + cpu0.ru_stime), "reconnects": self._reconnect,
        }

    def _expire(self, now: float) -> None:
        for conn in list(self.busy):
            if now - conn.started > self.timeout:
                conn.close()  # connection_lost reports it as failed (-1)

    async def _refill(self) -> None:
        missing = self.connections - len(self.idle) - len(self.busy)
        for _ in range(max(0, missing)):
            try:
                await self._open()
            except OSError:
                break


def make_source(secret: str, host: str, tag: str, mix: Mix, seed: int,
                total: int) -> Callable[[int], tuple[bytes, tuple[str, ...]]]:
    """Request bytes by index: built up front for short runs, on the fly for long ones."""
    factory = BodyFactory(tag, mix, seed)
    if total <= PREBUILD_LIMIT:
        built = []
        for _ in range(total):
            body = factory.next()
            built.append((http_request(body.raw, secret, host), body.message_ids))
        return built.__getitem__

    def on_the_fly(index: int) -> tuple[bytes, tuple[str, ...]]:
        body = factory.next()
        return http_request(body.raw, secret, host), body.message_ids

    return on_the_fly


def main(argv: list[str] | None = None) -> int:
    eventloop.install()
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path (loopback only)")
    p.add_argument("--secret", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--tag", default="x")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--status-share", type=float, default=0.10)
    p.add_argument("--batch-share", type=float, default=0.10)
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--ids-out", default=None, help="accepted inbound ids with their due wall time (TSV)")
    args = p.parse_args(argv)
    url = urlsplit(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        print("bench.loadgen sends to loopback only", file=sys.stderr)
        return 2
    host, port = url.hostname, url.port or 80
    total = max(1, int(args.rate * args.duration))
    mix = Mix(customers=args.customers, status_share=args.status_share, batch_share=args.batch_share)
    built = make_source(args.secret, f"{host}:{port}", args.tag, mix, args.seed, total)
    gen = LoadGen(host, port, args.rate, args.duration, args.connections, built, args.timeout)
    id_of: dict[int, tuple[str, ...]] = {}  # request index -> its inbound message ids
    original = gen.source

    def source(index: int) -> tuple[bytes, tuple[str, ...]]:
        data, mids = original(index)
        if mids:
            id_of[index] = mids
        return data, mids

    gen.source = source
    gc.collect()
    gc.freeze()  # the pre-built requests are long-lived: keep the collector off them during the run
    result = asyncio.run(gen.run())
    if args.ids_out:
        with open(args.ids_out, "w") as f:
            for index, due_wall in gen.accepted:
                for mid in id_of.get(index, ()):
                    f.write(f"{mid}\t{due_wall:.6f}\n")
    result["accepted_messages"] = sum(len(id_of.get(i, ())) for i, _ in gen.accepted)
    Path(args.out).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
