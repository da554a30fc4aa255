"""The sender's decisions without a broker: decide, route, the window path; the Graph client's
ambiguity over real loopback HTTP; fake-meta's status webhooks as our own parser reads them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from wacrm.agents import sending
from wacrm.core.embedded import free_port
from wacrm.orchestrator.rules import Template
from wacrm.storage.ledger import Earlier
from wacrm.topics.records import SendIntent
from wacrm.whatsapp import fake_meta, limits, signature, webhook
from wacrm.whatsapp.graph import (
    AmbiguousGraphError,
    GraphClient,
    InvalidRecipient,
    PausingGraphError,
    PermanentGraphError,
    RetryableGraphError,
    classify,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TEMPLATE = Template("follow_up", "en", ("friend",))
STATES = ["queued", "retry_wait", "sending", "sent", "failed", "ambiguous", "unconfirmed", "dropped"]


def intent(**kw: object) -> SendIntent:
    base = dict(dedupe_key="auto:wamid.X", conversation_key="200:1555", conversation_id=7, phone_number_id="200",
                to="15550001111", text="hi", ownership_version=1)
    base.update(kw)
    return SendIntent(**base)  # type: ignore[arg-type]


def checks(**kw: object) -> sending.Checks:
    base = dict(ownership_version=1, human_owned=False, opted_out=False, last_inbound_at=NOW - timedelta(hours=1),
                paused_until=None, earlier=None)
    base.update(kw)
    return sending.Checks(**base)  # type: ignore[arg-type]


intents = st.builds(
    intent, kind=st.sampled_from(["text", "template", "notice"]), automatic=st.booleans(),
    ownership_version=st.integers(0, 3), text=st.text(max_size=5000) | st.just("x" * 4097),
    template=st.just({"name": "t", "language": "en", "parameters": []}))
earliers = st.none() | st.builds(
    Earlier, id=st.integers(1, 10), state=st.sampled_from(["queued", "retry_wait", "sending"]),
    next_attempt_at=st.none() | st.integers(-100, 100).map(lambda s: NOW + timedelta(seconds=s)))
all_checks = st.builds(
    checks, ownership_version=st.integers(0, 3), human_owned=st.booleans(), opted_out=st.booleans(),
    last_inbound_at=st.none() | st.integers(0, 48 * 3600).map(lambda s: NOW - timedelta(seconds=s)),
    paused_until=st.none() | st.integers(-60, 600).map(lambda s: NOW + timedelta(seconds=s)), earlier=earliers)


@settings(max_examples=400)
@given(i=intents, c=all_checks, state=st.sampled_from(STATES), attempts=st.integers(0, 3), attempt=st.integers(0, 3),
       template=st.none() | st.just(TEMPLATE), pair=st.sampled_from([0.0, 0.0, 2.5]))
def test_decide_sends_only_when_every_check_passes(i: SendIntent, c: sending.Checks, state: str, attempts: int,
                                                   attempt: int, template: Template | None, pair: float) -> None:
    row = sending.Row(1, state, attempts, i)
    d = sending.decide(row, c, NOW, attempt=attempt, template=template, pair_wait_s=pair)
    window_open = c.last_inbound_at is not None and NOW - c.last_inbound_at <= limits.SERVICE_WINDOW
    if state not in ("queued", "retry_wait"):
        assert isinstance(d, sending.Skip)
        assert d.outcome == {"sending": "in_flight", "ambiguous": "ambiguous",
                             "unconfirmed": "ambiguous"}.get(state, "duplicate")
        return
    if attempts != attempt:
        assert d == sending.Skip("superseded")
        return
    stale = i.automatic and (c.ownership_version > i.ownership_version or (c.human_owned and i.kind != "notice"))
    if stale:
        assert isinstance(d, sending.Drop) and d.outcome == "stale"
        return
    if i.automatic and c.opted_out and i.kind != "notice":
        assert isinstance(d, sending.Drop) and d.outcome == "opted_out"
        return
    if isinstance(d, sending.Send):
        assert (c.paused_until is None or c.paused_until <= NOW) and c.earlier is None and pair == 0
        assert window_open or i.kind == "template"
        assert i.kind == "template" or len(i.text) <= limits.TEXT_MAX_CHARS
    if c.paused_until is not None and c.paused_until > NOW:
        assert d == sending.Park(min(c.paused_until, NOW + sending.PARK_RECHECK), "number paused", "parked")
    elif c.earlier is not None:  # waits behind an earlier reply: never before it is due again
        assert isinstance(d, sending.Park) and d.outcome == "behind" and d.until > NOW
        if c.earlier.state == "retry_wait" and c.earlier.next_attempt_at and c.earlier.next_attempt_at > NOW:
            assert d.until == min(c.earlier.next_attempt_at, NOW + sending.PARK_RECHECK)
    elif not window_open and i.kind != "template":
        assert d == sending.window_path(i, template)
    elif i.kind != "template" and len(i.text) > limits.TEXT_MAX_CHARS:
        assert isinstance(d, sending.Fail) and d.kind == "text_too_long" and d.dead_letter
    elif pair:
        assert d == sending.Pace(NOW + timedelta(seconds=pair))
    else:
        assert d == sending.Send()


@given(i=intents, template=st.none() | st.just(TEMPLATE))
def test_the_window_path_sends_the_template_once_or_asks_a_person(i: SendIntent, template: Template | None) -> None:
    d = sending.window_path(i, template)
    if template is None or i.kind == "template":
        assert isinstance(d, sending.Fail) and d.kind == "window_closed" and d.error["code"] == 131047
        assert not d.dead_letter
        return
    assert isinstance(d, sending.UseTemplate)
    r = d.replacement
    assert r.kind == "template" and r.dedupe_key == f"template:{i.dedupe_key}" and r.attempt == 0
    assert r.template == {"name": "follow_up", "language": "en", "parameters": ["friend"]}
    assert r.text == "[template follow_up (en)] friend"  # the stored body: what the customer got, not i.text
    assert (r.to, r.conversation_id, r.phone_number_id, r.ownership_version) == \
        (i.to, i.conversation_id, i.phone_number_id, i.ownership_version)
    assert isinstance(sending.window_path(r, template), sending.Fail)  # a template is never replaced again


graph_errors = st.one_of(
    st.builds(RetryableGraphError, st.just("throttled"), code=st.sampled_from([130429, 131000, None])),
    st.builds(AmbiguousGraphError, st.just("no answer")),
    st.builds(PermanentGraphError, st.just("bad"), code=st.sampled_from([100, 131026, 131047])),
    st.builds(PausingGraphError, st.just("token"), code=st.sampled_from([190, 131048])),
    st.builds(InvalidRecipient, st.just("not a number")),
)


@given(error=graph_errors, attempts=st.integers(1, 6), max_attempts=st.integers(1, 6), jitter=st.floats(0, 0.999))
def test_route_follows_what_the_error_says(error: Exception, attempts: int, max_attempts: int, jitter: float) -> None:
    delays = [0.4 * 2 ** n for n in range(max_attempts - 1)]
    r = sending.route(error, attempts, max_attempts, delays, jitter)
    if isinstance(error, PausingGraphError):
        assert r == sending.Pause()
    elif getattr(error, "code", None) == 131047:
        assert r == sending.Window()
    elif isinstance(error, AmbiguousGraphError):
        assert r == sending.MaybeSent()  # never retried, whatever the attempts left
    elif isinstance(error, RetryableGraphError):
        if attempts < max_attempts:
            assert isinstance(r, sending.Retry) and r.topic == attempts
            assert 0.8 * delays[attempts - 1] <= r.delay_s <= 1.2 * delays[attempts - 1]
        else:
            assert r == sending.GiveUp("retries_exhausted")
    elif isinstance(error, InvalidRecipient) or getattr(error, "code", None) == 131026:
        assert r == sending.GiveUp("invalid_recipient")  # a person fixes the phone and retries
    else:
        assert r == sending.GiveUp("send_failed")


def test_meta_error_bodies_classify_by_code() -> None:
    assert classify(500, None).retryable and not classify(500, None).ambiguous
    assert classify(400, {"error": {"code": 131047}}).code == 131047
    assert classify(401, {"error": {"code": 190}}).pausing


@given(n=st.integers(1, 10 ** 15))
def test_callback_data_names_the_ledger_row(n: int) -> None:
    assert sending.ledger_id(sending.callback_data(n)) == n


@pytest.mark.parametrize("junk", [None, "", "ol:", "ol:x1", "other:5", "ol:-3", "ol:" + "9" * 30])
def test_callback_data_of_others_names_no_row(junk: str | None) -> None:
    assert sending.ledger_id(junk) is None


# --- the Graph client over real loopback HTTP -------------------------------------------------------

async def _server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{version}/{pid}/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v25.0"


async def _send(base: str, timeout: float = 0.5) -> None:
    async with aiohttp.ClientSession() as session:
        client = GraphClient(session, base, timeout=timeout)
        await client.send("200", client.text_payload("15550001111", "hi"), "token")


async def test_a_timeout_after_the_request_was_written_is_ambiguous() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({"messages": [{"id": "wamid.late"}]})

    runner, base = await _server(slow)
    try:
        with pytest.raises(AmbiguousGraphError) as err:
            await _send(base)
        assert err.value.ambiguous and not err.value.retryable
    finally:
        await runner.cleanup()


async def test_a_connection_dropped_after_the_request_is_ambiguous() -> None:
    async def drop(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response()

    runner, base = await _server(drop)
    try:
        with pytest.raises(AmbiguousGraphError):
            await _send(base, timeout=5)
    finally:
        await runner.cleanup()


async def test_a_refused_connection_is_retryable() -> None:
    with pytest.raises(RetryableGraphError) as err:
        await _send(f"http://127.0.0.1:{free_port()}/v25.0")
    assert not err.value.ambiguous


# --- fake-meta's statuses ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["sent", "delivered", "read"])
def test_fake_meta_status_webhooks_are_read_as_meta_statuses(status: str) -> None:
    sent = {"messaging_product": "whatsapp", "to": "+15550001111", "type": "text", "text": {"body": "hi"},
            "biz_opaque_callback_data": "ol:42"}
    body = fake_meta.status_webhook(sent, "200000000000001", "wamid.FAKE_OUT_1", status, 1767225630)
    (st_,) = webhook.parse(body).statuses
    assert (st_.id, st_.status, st_.biz_opaque_callback_data, st_.recipient.wa_id) == \
        ("wamid.FAKE_OUT_1", status, "ol:42", "15550001111")
    assert (st_.conversation is not None) == (status == "sent") and (st_.pricing is not None) == (status != "read")


def test_fake_meta_ids_differ_between_runs() -> None:
    a, b = fake_meta.FakeMeta(), fake_meta.FakeMeta()
    assert a._run != b._run


async def test_fake_meta_posts_signed_statuses_after_a_late_answer_unless_switched_off() -> None:
    received: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get("X-Hub-Signature-256", "")))
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/webhooks/whatsapp", hook)
    hook_runner = web.AppRunner(hook_app)
    await hook_runner.setup()
    hook_port, meta_port = free_port(), free_port()
    await web.TCPSite(hook_runner, "127.0.0.1", hook_port).start()
    meta_runner = web.AppRunner(fake_meta.make_app(f"http://127.0.0.1:{hook_port}/webhooks/whatsapp", "s3cret"))
    await meta_runner.setup()
    await web.TCPSite(meta_runner, "127.0.0.1", meta_port).start()
    base = f"http://127.0.0.1:{meta_port}"
    try:
        async with aiohttp.ClientSession() as s:
            await s.post(f"{base}/__script", json=[{"delay_ms": 800}])
            client = GraphClient(s, f"{base}/v25.0", timeout=0.3)
            with pytest.raises(AmbiguousGraphError):  # the client gave up; Meta had taken it
                await client.send("200", client.text_payload("15550001111", "hi", callback_data="ol:7"), "token")
            for _ in range(100):
                if len(received) == 3:
                    break
                await asyncio.sleep(0.05)
            statuses = [webhook.parse(webhook.loads(raw)).statuses[0] for raw, _ in received]
            assert [x.status for x in statuses] == ["sent", "delivered", "read"]
            assert {x.biz_opaque_callback_data for x in statuses} == {"ol:7"}
            assert all(signature.verify("s3cret", raw, sig) for raw, sig in received)

            async with s.post(f"{base}/__statuses", json={"enabled": False}) as r:
                assert r.status == 200
            patient = GraphClient(s, f"{base}/v25.0", timeout=5)
            quiet = await patient.send("200", client.text_payload("15550001111", "quiet", callback_data="ol:8"),
                                       "token")
            async with s.post(f"{base}/__statuses", json={"enabled": True}) as r:
                assert r.status == 200
            loud = await patient.send("200", client.text_payload("15550001111", "loud", callback_data="ol:9"), "token")
            for _ in range(100):  # the quiet send's statuses, had there been any, would come before these
                if len(received) == 6:
                    break
                await asyncio.sleep(0.05)
            ids = [webhook.parse(webhook.loads(raw)).statuses[0].id for raw, _ in received]
            assert ids.count(loud.message_id) == 3 and quiet.message_id not in ids
    finally:
        await meta_runner.cleanup()
        await hook_runner.cleanup()
