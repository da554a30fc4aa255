"""The HTTP front: Meta's webhook (handshake, signature, durable publish), health, metrics.

``POST /webhooks/whatsapp`` answers 200 only after the broker acknowledged the raw body
(``acks=all``); 503 when it cannot within ``PUBLISH_TIMEOUT_SECONDS`` so Meta retries.
Errors are JSON: ``{"error": "<code>", "message": "<what is wrong>"}``.

Unauthenticated callers are cheap to turn away and cannot exhaust the process:

- the ``X-Hub-Signature-256`` header is checked for form before the body is read: none is
  401 ``missing_signature``; two of them, another scheme (``sha1=``), not 64 hex digits or
  not ASCII is 401 ``malformed_signature``; a well-formed one that does not match the body
  is 403 ``bad_signature``. Never a 500.
- a body larger than ``WEBHOOK_MAX_BODY_BYTES`` is 413 ``too_large`` (by its
  Content-Length before reading, or while reading);
- a body must arrive within ``WEBHOOK_BODY_TIMEOUT_SECONDS`` (slow senders: 408
  ``body_timeout``, connection closed);
- at most ``WEBHOOK_MAX_UNVERIFIED_BODIES`` bodies are read and verified at once; beyond
  that the webhook answers 503 ``busy`` with ``Retry-After`` at once (Meta retries), so
  memory stays under that many times the body limit.

The JSON is parsed only after the signature matched.

The webhook never needs the database: it publishes, and ``/readyz`` asks only the broker, so a
PostgreSQL outage leaves it in rotation (Meta's calls keep being accepted onto the bus).

Request ids: every POST gets one, the caller's ``X-Request-Id`` when it is a valid one
(:func:`topics.records.valid_request_id`), else a new one; the response carries it in
``X-Request-Id``, the raw record in its ``wacrm-request-id`` header, and the call's log line
(``received webhook call: <outcome>``) in its ``request_id``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from wacrm.core import metrics
from wacrm.core.health import healthz, metrics_view, readiness, readiness_response
from wacrm.core.logs import REQUEST_ID
from wacrm.core.settings import Settings
from wacrm.topics import RAW, catalogue
from wacrm.topics.records import new_request_id, request_headers, valid_request_id
from wacrm.webhook.publisher import PublishError, PublishRejected, RawPublisher
from wacrm.whatsapp import signature, webhook

log = logging.getLogger("wacrm.webhook")

SETTINGS = web.AppKey("settings", Settings)
PUBLISHER = web.AppKey("publisher", RawPublisher)

GATE = web.AppKey("unverified_bodies", asyncio.Semaphore)
SECRET = web.AppKey("app_secret", bytes)  # the app secret, encoded once

SIGNATURE_HEADER = "X-Hub-Signature-256"
REQUEST_ID_HEADER = "X-Request-Id"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": code, "message": message}),
                        content_type="application/json")


async def handshake(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    q = request.query
    token = q.get("hub.verify_token", "")
    if q.get("hub.mode") == "subscribe" and "hub.challenge" in q and \
            hmac.compare_digest(token.encode(), settings.whatsapp_verify_token.encode()):
        metrics.WEBHOOK_REQUESTS.labels("handshake_ok").inc()
        return web.Response(text=q["hub.challenge"], content_type="text/plain")
    metrics.WEBHOOK_REQUESTS.labels("handshake_forbidden").inc()
    return _error(403, "forbidden", "hub.mode must be subscribe and hub.verify_token must match")


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` when it is one we can carry (one header, bounded, printable), else a new id."""
    given = request.headers.getall(REQUEST_ID_HEADER, [])
    return (valid_request_id(given[0]) if len(given) == 1 else None) or new_request_id()


async def receive(request: web.Request) -> web.Response:
    started = time.perf_counter()
    rid = request_id(request)
    scope = REQUEST_ID.set(rid)  # as logs.request_scope, without a generator's cost on every call
    try:
        response, outcome = await _receive(request, rid)
        log.info("received webhook call: %s (%d bytes)", outcome, request.content_length or 0)
    finally:
        REQUEST_ID.reset(scope)
    response.headers[REQUEST_ID_HEADER] = rid
    counted, timed = _outcome_metrics(outcome)
    counted.inc()
    timed.observe(time.perf_counter() - started)
    return response


@functools.lru_cache(maxsize=64)  # a closed set of outcomes; labels() takes a lock and a lookup each call
def _outcome_metrics(outcome: str) -> tuple[Any, Any]:
    return metrics.WEBHOOK_REQUESTS.labels(outcome), metrics.WEBHOOK_DURATION.labels(outcome)


Outcome = tuple[web.Response, str]  # the answer, and the outcome that labels its metrics and log line


def _tagged(response: web.Response, outcome: str) -> Outcome:
    return response, outcome


async def _receive(request: web.Request, rid: str) -> Outcome:
    settings = request.app[SETTINGS]
    limit = settings.webhook_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _tagged(_error(413, "too_large", f"body is larger than {limit} bytes"), "too_large")
    received = signature.received(request.headers.getall(SIGNATURE_HEADER, []))
    if received is signature.Verdict.MISSING:
        return _tagged(_error(401, "missing_signature", f"{SIGNATURE_HEADER} header is required"),
                       "missing_signature")
    if isinstance(received, signature.Verdict):
        return _tagged(_error(401, "malformed_signature", f"send exactly one {SIGNATURE_HEADER} header of the "
                              "form sha256=<64 hex digits>"), "malformed_signature")
    gate = request.app[GATE]
    if gate.locked():  # every slot for unverified bodies is taken: turn away now, Meta retries
        response = _error(503, "busy", "too many requests are being received at once; retry later")
        response.headers["Retry-After"] = "1"
        return _tagged(response, "busy")
    async with gate:
        try:
            if request.content.is_eof():  # all of it arrived already (a small body, one packet): no wait to bound
                body = await request.read()
            else:
                async with asyncio.timeout(settings.webhook_body_timeout_s):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _tagged(_error(413, "too_large", f"body is larger than {limit} bytes"), "too_large")
        except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body is not in
            return _tagged(_error(400, "bad_body", f"the body cannot be read: {exc.args[0] if exc.args else exc}"),
                           "bad_body")
        except TimeoutError:
            response = _error(408, "body_timeout",
                              f"the body did not arrive within {settings.webhook_body_timeout_s:g}s")
            response.force_close()
            return _tagged(response, "body_timeout")
        ok = signature.matches(request.app[SECRET], body, received)
    if not ok:
        return _tagged(_error(403, "bad_signature", f"{SIGNATURE_HEADER} does not match the body"),
                       "bad_signature")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _tagged(_error(400, "bad_json", f"body is not JSON: {exc}"), "bad_json")
    key = webhook.routing_key(data) if isinstance(data, dict) else None
    try:
        await request.app[PUBLISHER].publish(RAW, body, key.encode() if key else None, request_headers(rid))
    except PublishRejected as exc:  # the bus can never carry it: a retry by Meta would not help
        return _tagged(_error(413 if exc.code == "too_large" else 422, exc.code, str(exc)), exc.code)
    except PublishError as exc:
        return _tagged(_error(503, "broker_unavailable", f"{exc}; retry later"), "broker_unavailable")
    return _tagged(web.Response(status=200, body=b'{"status":"accepted"}', content_type="application/json"),
                   "accepted")


async def broker_problems(app: web.Application) -> dict[str, str]:
    """What keeps the webhook from accepting: the broker unreachable, or topics missing (tansu loses
    them on restart). A fixed hint per problem; the exception itself (host names, credentials) is logged."""
    try:
        missing = {t.name for t in catalogue(len(app[SETTINGS].retry_delays()))} - await app[PUBLISHER].topics()
    except Exception as exc:  # any failure means not ready; the log says why
        log.warning("readyz: the broker is not ready: %r", exc)
        return {"broker": "not reachable (check KAFKA_BOOTSTRAP_SERVERS and the broker; details in the log)"}
    if missing:
        return {"broker": f"topics missing: {', '.join(sorted(missing))} (run: wacrm topics)"}
    return {}


async def readyz(request: web.Request) -> web.Response:
    """200 when the broker has every topic; 503 naming what is not ready. The database is not asked."""
    problems = await broker_problems(request.app)
    return readiness_response(readiness(problems), not problems)


Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _freeze_heap(app: web.Application) -> None:
    """What start-up loaded (modules, settings, the producer) lives as long as the process: moved out of
    the collector's generations, a full collection no longer walks it while requests wait."""
    gc.collect()
    gc.freeze()


def make_app(settings: Settings, *, readyz_handler: Handler = readyz) -> web.Application:
    """The aiohttp application; its producer is opened and closed in ``cleanup_ctx``. ``readyz_handler``
    answers ``/readyz`` (the combined server reports its two halves apart)."""
    app = web.Application(client_max_size=settings.webhook_max_body_bytes)
    app[SETTINGS] = settings
    app[GATE] = asyncio.Semaphore(settings.webhook_max_unverified_bodies)
    app[SECRET] = settings.whatsapp_app_secret.encode()

    async def publisher(app: web.Application) -> AsyncIterator[None]:
        assert settings.kafka_bootstrap_servers
        app[PUBLISHER] = RawPublisher(settings.kafka_bootstrap_servers, timeout=settings.publish_timeout_s,
                                      security=settings.kafka_security_kwargs())
        yield
        await app[PUBLISHER].stop()

    app.cleanup_ctx.append(publisher)
    app.on_startup.append(_freeze_heap)
    app.router.add_get("/webhooks/whatsapp", handshake)
    app.router.add_post("/webhooks/whatsapp", receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz_handler)
    app.router.add_get("/metrics", metrics_view)
    return app
