"""The HTTP front: Meta's webhook (handshake, signature, durable publish), health, metrics.

``POST /webhooks/whatsapp`` answers 200 only after the broker acknowledged the raw body
(``acks=all``); 503 when it cannot within ``PUBLISH_TIMEOUT_SECONDS`` so Meta retries.
Errors are JSON: ``{"error": "<code>", "message": "<what is wrong>"}``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from storage.db import create_pool
from topics import RAW, catalogue
from wacrm import metrics
from wacrm.settings import Settings
from webhook.publisher import PublishError, RawPublisher
from whatsapp import signature, webhook

log = logging.getLogger("wacrm.webhook")

SETTINGS = web.AppKey("settings", Settings)
PUBLISHER = web.AppKey("publisher", RawPublisher)
POOL = web.AppKey("pool", asyncpg.Pool)

SIGNATURE_HEADER = "X-Hub-Signature-256"


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


async def receive(request: web.Request) -> web.Response:
    started = time.perf_counter()
    response = await _receive(request)
    outcome = response.headers.get("X-Wacrm-Outcome", "unknown")
    metrics.WEBHOOK_REQUESTS.labels(outcome).inc()
    metrics.WEBHOOK_DURATION.labels(outcome).observe(time.perf_counter() - started)
    return response


def _tagged(response: web.Response, outcome: str) -> web.Response:
    response.headers["X-Wacrm-Outcome"] = outcome
    return response


async def _receive(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    limit = settings.webhook_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _tagged(_error(413, "too_large", f"body is larger than {limit} bytes"), "too_large")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _tagged(_error(413, "too_large", f"body is larger than {limit} bytes"), "too_large")
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        return _tagged(_error(401, "missing_signature", f"{SIGNATURE_HEADER} header is required"),
                       "missing_signature")
    if not signature.verify(settings.whatsapp_app_secret, body, header):
        return _tagged(_error(403, "bad_signature", f"{SIGNATURE_HEADER} does not match the body"),
                       "bad_signature")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _tagged(_error(400, "bad_json", f"body is not JSON: {exc}"), "bad_json")
    key = webhook.routing_key(data) if isinstance(data, dict) else None
    try:
        await request.app[PUBLISHER].publish(RAW, body, key.encode() if key else None)
    except PublishError as exc:
        return _tagged(_error(503, "broker_unavailable", f"{exc}; retry later"), "broker_unavailable")
    return _tagged(web.Response(status=200, body=b'{"status":"accepted"}', content_type="application/json"),
                   "accepted")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and the broker has every topic (tansu loses them on restart)."""
    problems: dict[str, str] = {}
    try:
        async with request.app[POOL].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
    except Exception as exc:  # any failure means not ready; the message says which
        problems["database"] = f"{type(exc).__name__}: {exc}"
    try:
        missing = {t.name for t in catalogue(len(request.app[SETTINGS].retry_delays()))} - \
            await request.app[PUBLISHER].topics()
        if missing:
            problems["broker"] = f"topics missing: {', '.join(sorted(missing))} (run: wacrm topics)"
    except Exception as exc:
        problems["broker"] = f"{type(exc).__name__}: {exc}"
    if problems:
        return web.Response(status=503, body=orjson.dumps({"status": "not_ready", "problems": problems}),
                            content_type="application/json")
    return web.json_response({"status": "ready"})


async def metrics_view(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: Settings) -> web.Application:
    """The aiohttp application; resources are opened and closed in ``cleanup_ctx``."""
    app = web.Application(client_max_size=settings.webhook_max_body_bytes)
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        assert settings.database_url and settings.kafka_bootstrap_servers
        app[POOL] = await create_pool(settings.database_url, timeout=settings.db_timeout_s, min_size=1, max_size=4)
        app[PUBLISHER] = RawPublisher(settings.kafka_bootstrap_servers, timeout=settings.publish_timeout_s)
        yield
        await app[PUBLISHER].stop()
        await app[POOL].close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/webhooks/whatsapp", handshake)
    app.router.add_post("/webhooks/whatsapp", receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
