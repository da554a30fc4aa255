"""The webhook's HTTP contract against the running ``wacrm serve`` (real broker behind it)."""

from __future__ import annotations

import aiohttp
import orjson
from conftest import FIXTURES, VERIFY_TOKEN, Stack

from wacrm.whatsapp import simulate


async def _get(url: str, **params: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_handshake(stack: Stack) -> None:
    status, ctype, text = await _get(stack.webhook, **{"hub.mode": "subscribe", "hub.challenge": "1158201444",
                                                       "hub.verify_token": VERIFY_TOKEN})
    assert (status, text) == (200, "1158201444") and ctype.startswith("text/plain")
    status, _, _ = await _get(stack.webhook, **{"hub.mode": "subscribe", "hub.challenge": "1",
                                                "hub.verify_token": "wrong"})
    assert status == 403
    status, _, _ = await _get(stack.webhook, **{"hub.mode": "unsubscribe", "hub.challenge": "1",
                                                "hub.verify_token": VERIFY_TOKEN})
    assert status == 403


async def test_signature_checks(stack: Stack) -> None:
    body = (FIXTURES / "webhooks" / "01_text.json").read_bytes()
    status, err = await stack.post(body, sign_with=None)
    assert status == 401 and err["error"] == "missing_signature"
    status, err = await stack.post(body, sign_with="not the app secret")
    assert status == 403 and err["error"] == "bad_signature"
    status, err = await stack.post(body + b" ", headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}, sign_with=None)
    assert status == 403


async def test_non_json_and_oversized_bodies(stack: Stack) -> None:
    status, err = await stack.post(b"{not json")
    assert status == 400 and err["error"] == "bad_json"
    huge = simulate.dumps(simulate.text_body(text="x" * (300 * 1024)))  # the test stack's limit is 256 KiB
    status, err = await stack.post(huge)
    assert status == 413 and err["error"] == "too_large"


async def test_health_readiness_and_metrics(stack: Stack) -> None:
    status, _, text = await _get(f"{stack.base}/healthz")
    assert status == 200
    status, _, text = await _get(f"{stack.base}/readyz")
    assert status == 200 and orjson.loads(text)["status"] == "ready"
    status, _, text = await _get(f"{stack.base}/metrics")
    assert status == 200 and "wacrm_webhook_requests_total" in text
