"""A local stand-in for the Graph API send endpoint (``wacrm fake-meta``).

Answers ``POST /{version}/{phone_number_id}/messages`` as Meta does (success bodies shaped
like the Cloud API's, error envelopes with Meta's codes) and records every request.

- ``GET /__sent``: every recorded request, oldest first (JSON list).
- ``DELETE /__sent``: forget them.
- ``POST /__fail``: ``{"count": N, "code": 130429, "http_status": 400}`` makes the next N sends
  fail with that Meta error (still recorded), for tests of retries and error handling.
- ``POST /__script``: ``[{"id": "wamid.X", "delay_ms": 1500}, {"code": 131000, "http_status": 500}]``
  decides the next sends' answers in order: a success with that message id after that delay, or
  an error; a step with ``"to": "+1555…"`` applies only to sends to that recipient.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

_ERROR_TITLES = {
    1: "Invalid request or possible server error", 2: "Service temporarily unavailable",
    100: "Invalid parameter", 130429: "Rate limit hit", 131000: "Something went wrong",
    131026: "Message undeliverable", 131047: "Re-engagement message", 131056: "(Business Account, Consumer Account) pair rate limit hit",
    190: "Error validating access token",
}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(code: int, http_status: int, details: str | None = None) -> web.Response:
    title = _ERROR_TITLES.get(code, "Error")
    body = {"error": {"message": f"(#{code}) {title}", "type": "OAuthException", "code": code,
                      "error_data": {"messaging_product": "whatsapp", "details": details or title},
                      "fbtrace_id": "AFAKEfbtrace"}}
    return _json(body, http_status)


class FakeMeta:
    """The recorded state of one fake Graph API."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._script: list[dict[str, Any]] = []

    async def send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        record: dict[str, Any] = {
            "version": request.match_info["version"],
            "phone_number_id": request.match_info["phone_number_id"],
            "authorization": request.headers.get("Authorization"),
            "received_at": time.time(),
            "body": None,
        }
        try:
            record["body"] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.sent.append(record)
            return _error(100, 400, "Request body is not JSON")
        self.sent.append(record)
        body = record["body"]
        auth = record["authorization"] or ""
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return _error(190, 401, "Missing or malformed access token")
        step = self._next_step(body)
        if step.get("delay_ms"):
            await asyncio.sleep(step["delay_ms"] / 1000)
        if "code" in step:
            record["answered"] = {"error": step["code"]}
            return _error(step["code"], step.get("http_status", 400))
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return _error(100, 400, "messaging_product must be whatsapp")
        if body.get("status") == "read":
            return _json({"success": True})
        recipient = body.get("to") or body.get("recipient")
        if not isinstance(recipient, str) or body.get("type") not in {"text", "template", "interactive", "image",
                                                                     "document", "audio", "video", "reaction",
                                                                     "location", "contacts", "sticker"}:
            return _error(100, 400, "to/recipient and a supported type are required")
        wamid = step.get("id") or f"wamid.FAKE_OUT_{next(self._ids):08d}"
        record["answered"] = {"id": wamid}
        answer: dict[str, Any] = {"messaging_product": "whatsapp", "messages": [{"id": wamid}]}
        if "to" in body:
            answer["contacts"] = [{"input": recipient, "wa_id": recipient.lstrip("+").replace(" ", "")}]
        else:
            answer["contacts"] = [{"input": recipient, "user_id": recipient}]
        return _json(answer)

    def _next_step(self, body: Any) -> dict[str, Any]:
        """The first scripted step for this recipient (a step with "to" applies to that recipient only)."""
        to = body.get("to") or body.get("recipient") if isinstance(body, dict) else None
        for i, step in enumerate(self._script):
            if step.get("to") in (None, to):
                return self._script.pop(i)
        return {}

    async def list_sent(self, request: web.Request) -> web.Response:
        return _json(self.sent)

    async def clear_sent(self, request: web.Request) -> web.Response:
        self.sent.clear()
        return _json({"cleared": True})

    async def fail(self, request: web.Request) -> web.Response:
        try:
            spec = orjson.loads(await request.read())
            count, code = int(spec["count"]), int(spec["code"])
            status = int(spec.get("http_status", 400))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _json({"error": 'expected {"count": N, "code": C, "http_status": S}'}, 400)
        self._script.extend([{"code": code, "http_status": status}] * count)
        return _json({"scripted": len(self._script)})

    async def script(self, request: web.Request) -> web.Response:
        try:
            steps = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            steps = None
        if not isinstance(steps, list) or not all(
                isinstance(x, dict) and (isinstance(x.get("id", ""), str) and isinstance(x.get("code", 0), int)
                                         and isinstance(x.get("delay_ms", 0), (int, float))
                                         and isinstance(x.get("to", ""), str)) for x in steps):
            return _json({"error": 'expected a list of {"id"?: str, "delay_ms"?: n, "code"?: int, '
                                   '"http_status"?: int}'}, 400)
        self._script.extend(steps)
        return _json({"scripted": len(self._script)})


def make_app() -> web.Application:
    fake = FakeMeta()
    app = web.Application()
    app.router.add_post("/{version}/{phone_number_id}/messages", fake.send)
    app.router.add_get("/__sent", fake.list_sent)
    app.router.add_delete("/__sent", fake.clear_sent)
    app.router.add_post("/__fail", fake.fail)
    app.router.add_post("/__script", fake.script)
    return app


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Run until cancelled."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
