"""A local stand-in for the Graph API send endpoint (``wacrm fake-meta``).

Answers ``POST /{version}/{phone_number_id}/messages`` as Meta does (success bodies shaped
like the Cloud API's, error envelopes with Meta's codes) and records every request. Message
ids are unique across runs, as Meta's are (each run has its own random prefix).

Like Meta, for every send it accepts it posts status webhooks back — ``sent``, then
``delivered``, then ``read``, each a signed ``messages`` webhook (``X-Hub-Signature-256`` with
the app secret) echoing ``biz_opaque_callback_data`` — to ``webhook_url`` when one is set.
Also when its answer was delayed past the client's timeout: the send was taken, so its
statuses come. Posting happens beside the answer (never delays it) and retries a few times.

- ``GET /__sent``: every recorded request, oldest first (JSON list).
- ``DELETE /__sent``: forget them.
- ``POST /__fail``: ``{"count": N, "code": 130429, "http_status": 400}`` makes the next N sends
  fail with that Meta error (still recorded), for tests of retries and error handling.
- ``POST /__script``: ``[{"id": "wamid.X", "delay_ms": 1500}, {"code": 131000, "http_status": 500}]``
  decides the next sends' answers in order: a success with that message id after that delay, or
  an error; a step with ``"to": "+1555…"`` applies only to sends to that recipient, and one with
  ``"statuses": false`` posts no statuses for that send.
- ``POST /__statuses``: ``{"enabled": false}`` stops posting statuses (``true`` resumes);
  ``GET /__statuses`` lists the status posts made (wamid, status, HTTP answer or error).
- Access tokens per number (``--token PHONE_NUMBER_ID=TOKEN``, repeated, or at run time
  ``POST /__tokens`` ``{"phone_number_id": "…", "token": "…"}``; ``"token": null`` forgets it): a
  call for a number with a token must carry it as its bearer, else 401 with code 190, as Meta
  answers a revoked or expired token. A number without one accepts any bearer.
  ``GET /__tokens`` lists which numbers are checked (not the tokens).
- Media: ``POST /__media`` registers a file's bytes, ``GET /{version}/{media_id}`` and its
  bearer-checked, expiring download serve it; ``POST /{version}/{phone_number_id}/media`` takes an
  upload, checked against the number's token, listed at ``GET /__uploads`` (:mod:`whatsapp.fake_media`).
- ``GET /{version}/{waba_id}/message_templates``: the template catalogue, paged as Meta pages it
  (``limit``, at most ``page_size`` a page; ``paging.cursors.after`` and ``paging.next`` while more
  follow), for any WABA, with a bearer token. The catalogue is ``fake_templates.json`` beside this
  module, or the ``--templates FILE`` given (a JSON list of Meta's template objects).
  ``POST /__templates``: ``{"templates": [...]}`` replaces it, ``{"fail": {"count": N, "code": C,
  "http_status": S}}`` makes the next N list requests fail; ``GET /__templates`` shows it.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from wacrm.whatsapp import fake_media, signature

log = logging.getLogger("wacrm.fake_meta")
WABA_ID = "100000000000001"
STATUS_ATTEMPTS = 5
DEFAULT_TEMPLATES = Path(__file__).with_name("fake_templates.json")
PAGE_SIZE = 10  # at most this many templates a page, so a small catalogue still has several pages

_ERROR_TITLES = {
    1: "Invalid request or possible server error", 2: "Service temporarily unavailable",
    100: "Invalid parameter", 130429: "Rate limit hit", 131000: "Something went wrong",
    131026: "Message undeliverable", 131047: "Re-engagement message",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
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

    def __init__(self, webhook_url: str | None = None, app_secret: str | None = None,
                 tokens: dict[str, str] | None = None, templates: list[dict[str, Any]] | None = None,
                 page_size: int = PAGE_SIZE) -> None:
        self.templates: list[dict[str, Any]] = templates if templates is not None else load_templates()
        self.page_size = page_size
        self.template_failures: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = dict(tokens or {})  # phone_number_id → the one bearer it accepts
        self.status_posts: list[dict[str, Any]] = []
        self._run = secrets.token_hex(4).upper()  # ids unique across runs, as Meta's are
        self._ids = itertools.count(1)
        self._script: list[dict[str, Any]] = []
        self._webhook_url = webhook_url
        self._app_secret = app_secret or ""
        self.statuses_enabled = True
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _after_accepting(self, body: dict[str, Any], phone_number_id: str, wamid: str, delay_s: float,
                         step: dict[str, Any]) -> None:
        """Meta took the send: its statuses follow (after the answer's delay), beside the answer."""
        if not self._webhook_url or not self.statuses_enabled or step.get("statuses") is False:
            return
        task = asyncio.get_running_loop().create_task(self._post_statuses(body, phone_number_id, wamid, delay_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_statuses(self, body: dict[str, Any], phone_number_id: str, wamid: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s + 0.05)
        for status in ("sent", "delivered", "read"):
            if not self.statuses_enabled:
                return
            await self._post(status_webhook(body, phone_number_id, wamid, status, int(time.time())), wamid, status)
            await asyncio.sleep(0.05)

    async def _post(self, payload: dict[str, Any], wamid: str, status: str) -> None:
        raw = orjson.dumps(payload)
        headers = {"Content-Type": "application/json",
                   "X-Hub-Signature-256": signature.sign(self._app_secret, raw)}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        delay = 0.2
        for attempt in range(1, STATUS_ATTEMPTS + 1):
            try:
                assert self._webhook_url is not None
                async with self._session.post(self._webhook_url, data=raw, headers=headers) as resp:
                    await resp.read()
                    answer: Any = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                answer = repr(exc)
            self.status_posts.append({"id": wamid, "status": status, "attempt": attempt, "answer": answer,
                                      "at": time.time()})
            if answer == 200:
                return
            await asyncio.sleep(delay)
            delay *= 2
        log.warning("status %s of %s not accepted by %s after %d attempts", status, wamid, self._webhook_url,
                    STATUS_ATTEMPTS)

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
        refused = self.refuse_token(record["phone_number_id"], record["authorization"])
        if refused is not None:
            record["answered"] = {"error": 190}
            return refused
        step = self._next_step(body)
        delay_s = float(step.get("delay_ms") or 0) / 1000
        if "code" in step:
            if delay_s:
                await asyncio.sleep(delay_s)
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
        wamid = step.get("id") or f"wamid.FAKE_OUT_{self._run}_{next(self._ids):08d}"
        record["answered"] = {"id": wamid}
        self._after_accepting(body, request.match_info["phone_number_id"], wamid, delay_s, step)
        if delay_s:  # taken already: a client that gave up waiting still gets the statuses
            await asyncio.sleep(delay_s)
        answer: dict[str, Any] = {"messaging_product": "whatsapp", "messages": [{"id": wamid}]}
        if "to" in body:
            answer["contacts"] = [{"input": recipient, "wa_id": recipient.lstrip("+").replace(" ", "")}]
        else:
            answer["contacts"] = [{"input": recipient, "user_id": recipient}]
        return _json(answer)

    def refuse_token(self, phone_number_id: str, authorization: str | None) -> web.Response | None:
        """Meta's 401 (code 190) when the bearer is missing, or is not the number's token; ``None`` when
        the call may go on. Every endpoint of a number asks this."""
        auth = authorization or ""
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return _error(190, 401, "Missing or malformed access token")
        expected = self.tokens.get(phone_number_id)
        if expected is not None and not hmac.compare_digest(auth[len("Bearer "):].encode(), expected.encode()):
            return _error(190, 401, "Error validating access token: the session is invalid or has expired")
        return None

    async def set_token(self, request: web.Request) -> web.Response:
        try:
            spec = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            spec = None
        if not isinstance(spec, dict) or not isinstance(spec.get("phone_number_id"), str) \
                or not isinstance(spec.get("token", ""), (str, type(None))) or "token" not in spec:
            return _json({"error": 'expected {"phone_number_id": "…", "token": "…" or null}'}, 400)
        if spec["token"] is None:
            self.tokens.pop(spec["phone_number_id"], None)
        else:
            self.tokens[spec["phone_number_id"]] = spec["token"]
        return _json({"checked": sorted(self.tokens)})

    async def list_tokens(self, request: web.Request) -> web.Response:
        return _json({"checked": sorted(self.tokens)})

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
                                         and isinstance(x.get("to", ""), str)
                                         and isinstance(x.get("statuses", True), bool)) for x in steps):
            return _json({"error": 'expected a list of {"id"?: str, "delay_ms"?: n, "code"?: int, '
                                   '"http_status"?: int}'}, 400)
        self._script.extend(steps)
        return _json({"scripted": len(self._script)})


    async def set_statuses(self, request: web.Request) -> web.Response:
        try:
            spec = orjson.loads(await request.read())
            enabled = spec["enabled"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            enabled = None
        if not isinstance(enabled, bool):
            return _json({"error": 'expected {"enabled": true|false}'}, 400)
        self.statuses_enabled = enabled
        return _json({"enabled": enabled, "webhook_url": self._webhook_url})

    async def list_statuses(self, request: web.Request) -> web.Response:
        return _json(self.status_posts)


    # --- the template catalogue ------------------------------------------------------------------

    async def list_templates(self, request: web.Request) -> web.Response:
        """``GET /{version}/{waba_id}/message_templates``: one page, and the link to the next."""
        auth = request.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return _error(190, 401, "Missing or malformed access token")
        if self.template_failures:
            step = self.template_failures.pop(0)
            return _error(int(step.get("code", 1)), int(step.get("http_status", 500)))
        try:
            limit = max(1, min(int(request.query.get("limit", "25")), self.page_size))
            start = int(base64.urlsafe_b64decode(request.query["after"]).decode()) if "after" in request.query else 0
        except (ValueError, UnicodeDecodeError):
            return _error(100, 400, "Invalid parameter: limit or after")
        page = self.templates[start:start + limit]
        cursor = lambda n: base64.urlsafe_b64encode(str(n).encode()).decode()  # noqa: E731
        paging: dict[str, Any] = {"cursors": {"before": cursor(start), "after": cursor(start + len(page))}}
        if start + limit < len(self.templates):
            query = {k: v for k, v in request.query.items() if k != "after"}
            paging["next"] = str(request.url.with_query({**query, "limit": str(limit), "after": cursor(start + limit)}))
        return _json({"data": page, "paging": paging})

    async def set_templates(self, request: web.Request) -> web.Response:
        try:
            spec = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            spec = None
        if isinstance(spec, dict) and isinstance(spec.get("templates"), list):
            self.templates = [t for t in spec["templates"] if isinstance(t, dict)]
        elif isinstance(spec, dict) and isinstance(spec.get("fail"), dict):
            fail = spec["fail"]
            self.template_failures.extend([fail] * int(fail.get("count", 1)))
        else:
            return _json({"error": 'expected {"templates": [...]} or {"fail": {"count", "code", "http_status"}}'}, 400)
        return _json({"templates": len(self.templates), "failures": len(self.template_failures)})

    async def show_templates(self, request: web.Request) -> web.Response:
        return _json({"templates": self.templates, "page_size": self.page_size})


def load_templates(path: Path | None = None) -> list[dict[str, Any]]:
    """A catalogue file: a JSON list of template objects as Meta lists them; ``ValueError`` saying what is wrong."""
    path = path or DEFAULT_TEMPLATES
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # a saved answer of Meta's list
    if not isinstance(data, list) or not all(isinstance(t, dict) and t.get("name") and t.get("language")
                                             for t in data):
        raise ValueError(f"{path}: expected a JSON list of templates, each with a name and a language")
    return data


def status_webhook(sent: dict[str, Any], phone_number_id: str, wamid: str, status: str,
                   timestamp: int) -> dict[str, Any]:
    """The ``messages`` webhook body Meta posts for a status of the message ``sent`` (the request body)."""
    to = sent.get("to")
    item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(timestamp)}
    if isinstance(to, str):
        item["recipient_id"] = to.lstrip("+").replace(" ", "")
    else:
        item["recipient_user_id"] = sent.get("recipient")
    if sent.get("biz_opaque_callback_data"):
        item["biz_opaque_callback_data"] = sent["biz_opaque_callback_data"]
    if status == "sent":
        item["conversation"] = {"id": f"FAKECONV{wamid[-16:]}", "expiration_timestamp": str(timestamp + 86400),
                                "origin": {"type": "service"}}
    if status in ("sent", "delivered"):
        item["pricing"] = {"billable": False, "pricing_model": "PMP", "type": "free_customer_service",
                           "category": "service"}
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
             "statuses": [item]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}]}


def make_app(webhook_url: str | None = None, app_secret: str | None = None,
             tokens: dict[str, str] | None = None, templates: list[dict[str, Any]] | None = None) -> web.Application:
    fake = FakeMeta(webhook_url, app_secret, tokens, templates)
    app = web.Application(client_max_size=fake_media.MAX_REGISTER_BYTES)

    async def close(app: web.Application) -> None:
        await fake.close()

    app.on_cleanup.append(close)
    app.router.add_post("/__statuses", fake.set_statuses)
    app.router.add_get("/__statuses", fake.list_statuses)
    app.router.add_post("/{version}/{phone_number_id}/messages", fake.send)
    app.router.add_get("/{version}/{waba_id}/message_templates", fake.list_templates)
    app.router.add_post("/__templates", fake.set_templates)
    app.router.add_get("/__templates", fake.show_templates)
    app.router.add_get("/__sent", fake.list_sent)
    app.router.add_delete("/__sent", fake.clear_sent)
    app.router.add_post("/__fail", fake.fail)
    app.router.add_post("/__script", fake.script)
    app.router.add_post("/__tokens", fake.set_token)
    app.router.add_get("/__tokens", fake.list_tokens)
    fake_media.add_routes(app, fake.refuse_token)  # media: metadata, downloads, uploads (whatsapp/fake_media.py)
    return app


async def serve(host: str, port: int, ready: asyncio.Event | None = None, *, webhook_url: str | None = None,
                app_secret: str | None = None, tokens: dict[str, str] | None = None,
                templates: list[dict[str, Any]] | None = None) -> None:
    """Run until cancelled; statuses go to ``webhook_url`` (none when it is ``None``), signed with ``app_secret``;
    ``tokens``: the access token each of those numbers must be called with; ``templates``: the catalogue served
    (default :data:`DEFAULT_TEMPLATES`)."""
    runner = web.AppRunner(make_app(webhook_url, app_secret, tokens, templates), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
