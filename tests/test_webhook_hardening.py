"""The webhook against unauthenticated callers: malformed signatures are 401/403 (never 500),
slow and concurrent unverified bodies are bounded, and /readyz tells no exception text.

Signature checks run against the session's ``wacrm serve`` over raw sockets (so any bytes can
be sent as a header); the bounds and /readyz against the same app run in-process with small
limits, on the session's real database and broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from conftest import APP_SECRET, Stack, eventually
from hypothesis import given, settings
from hypothesis import strategies as st

from wacrm.core.embedded import free_port
from wacrm.core.settings import load
from wacrm.webhook.app import GATE, make_app
from wacrm.whatsapp import signature

EMPTY = b'{"object":"whatsapp_business_account","entry":[]}'  # valid, and nothing for the worker to do


def _head(port: int, headers: list[tuple[bytes, bytes]], length: int) -> bytes:
    lines = [b"POST /webhooks/whatsapp HTTP/1.1", b"Host: 127.0.0.1:%d" % port, b"Content-Type: application/json",
             b"Content-Length: %d" % length, *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _response(reader: asyncio.StreamReader, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(timeout):
        status = int((await reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def raw_post(port: int, headers: list[tuple[bytes, bytes]], body: bytes = EMPTY) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_head(port, headers, len(body)) + body)
        await writer.drain()
        status, _, payload = await _response(reader)
        return status, orjson.loads(payload)
    finally:
        writer.close()


def _sig(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"X-Hub-Signature-256", value)]


async def test_malformed_signatures_are_401_and_mismatches_403(stack: Stack) -> None:
    good = signature.sign(APP_SECRET, EMPTY).encode()
    hexpart = good[len(b"sha256="):]
    malformed = {
        "non-ASCII": b"sha256=" + "é".encode() * 32,
        "non-ASCII latin-1": b"sha256=\xe9\xff" + hexpart[4:],
        "wrong scheme": b"sha1=" + hexpart[:40],
        "no scheme": hexpart,
        "too short": good[:-1],
        "not hex": b"sha256=" + b"zz" * 32,
        "empty digest": b"sha256=",
    }
    for what, value in malformed.items():
        status, err = await raw_post(stack.port, _sig(value))
        assert (status, err["error"]) == (401, "malformed_signature"), what
    status, err = await raw_post(stack.port, _sig(good) + _sig(good))
    assert (status, err["error"]) == (401, "malformed_signature"), "two headers"
    status, err = await raw_post(stack.port, [])
    assert (status, err["error"]) == (401, "missing_signature")
    status, err = await raw_post(stack.port, _sig(signature.sign("another secret", EMPTY).encode()))
    assert (status, err["error"]) == (403, "bad_signature")
    status, err = await raw_post(stack.port, _sig(b"sha256=" + hexpart.upper()))
    assert (status, err) == (200, {"status": "accepted"})  # hex digits in either case, as before


async def test_a_body_not_in_its_declared_content_encoding_is_400(stack: Stack) -> None:
    headers = [*_sig(signature.sign(APP_SECRET, EMPTY).encode()), (b"Content-Encoding", b"gzip")]
    status, err = await raw_post(stack.port, headers)
    assert (status, err["error"]) == (400, "bad_body")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=3), st.binary(max_size=64))
def test_the_signature_check_never_raises(headers: list[str], body: bytes) -> None:
    verdict = signature.check(APP_SECRET, body, headers)
    assert verdict in (signature.Verdict.MISSING, signature.Verdict.MALFORMED, signature.Verdict.MISMATCH)
    assert signature.check(APP_SECRET, body, [signature.sign(APP_SECRET, body)]) is signature.Verdict.OK


@contextlib.asynccontextmanager
async def in_process(database_url: str, bootstrap: str, **env: str) -> AsyncIterator[tuple[web.Application, int]]:
    """The webhook app of ``wacrm serve`` in this process, on a free port (stopped on the way out)."""
    s = load({"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "WHATSAPP_APP_SECRET": APP_SECRET,
              "PUBLISH_TIMEOUT_SECONDS": "2", **env}, "dev")
    app = make_app(s)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield app, port
    finally:
        await runner.cleanup()


async def test_slow_and_concurrent_unverified_bodies_are_bounded(stack: Stack) -> None:
    async with in_process(stack.database_url, stack.bootstrap, WEBHOOK_BODY_TIMEOUT_SECONDS="5",
                          WEBHOOK_MAX_UNVERIFIED_BODIES="2") as (app, port):
        good = _sig(signature.sign(APP_SECRET, EMPTY).encode())
        slow = []
        for _ in range(2):  # slowloris: well-formed headers, a body that never finishes
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_head(port, good, len(EMPTY)) + EMPTY[:10])
            await writer.drain()
            slow.append((reader, writer))
        gate = app[GATE]

        async def both_reading() -> bool:
            return gate.locked()

        await eventually(both_reading, what="both slow bodies to hold the unverified-body slots")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a third, complete request
        writer.write(_head(port, good, len(EMPTY)) + EMPTY)
        status, headers, body = await _response(reader)
        writer.close()
        assert status == 503 and headers["retry-after"] == "1" and orjson.loads(body)["error"] == "busy"
        for reader, writer in slow:  # each slow sender is cut off after the body timeout
            status, headers, body = await _response(reader, 60)
            assert status == 408 and orjson.loads(body)["error"] == "body_timeout"
            assert headers.get("connection", "").lower() == "close"
            writer.close()

        async def free() -> bool:
            return not gate.locked()

        await eventually(free, what="the slots to be free again")
        assert await raw_post(port, good) == (200, {"status": "accepted"})


async def test_readyz_names_what_is_not_ready_without_exception_text(stack: Stack) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    async with in_process(stack.database_url, nowhere) as (_app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        status, _, body = await _response(reader)
        writer.close()
    assert status == 503
    report = orjson.loads(body)
    assert report == {"status": "not_ready", "problems": {  # the webhook never asks the database
        "broker": "not reachable (check KAFKA_BOOTSTRAP_SERVERS and the broker; details in the log)"}}
    assert nowhere.encode() not in body and b"Error" not in body
