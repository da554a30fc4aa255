"""Templates, consent and account state on the session's system (real PostgreSQL, broker, serve and
worker; fake-meta for Meta, serving its shipped catalogue of two dozen templates, ten a page).

The catalogue: synced at start, every page; on demand (API and CLI); a failed sync keeps the last
good one. The template webhooks change it at once. Sends are checked against it and go with the
components Meta expects; the stored body is the text the customer sees. Consent and account state
refuse what must not go, before any Graph API call.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from conftest import FIXTURES, WABA_ID, Stack, eventually
from inbox_client import Api, customer_says, make_user, phone, sign_in
from test_openapi import _conforms, contract
from test_replies import sends_to

from wacrm.core import procs
from wacrm.whatsapp.fake_meta import load_templates

CATALOGUE = load_templates()
PAGES = -(-len(CATALOGUE) // 10)  # fake-meta's pages hold ten


@pytest.fixture
async def agent(stack: Stack, db: asyncpg.Connection) -> Api:
    return await sign_in(stack.base, (await make_user(db, "agent")).email)


@pytest.fixture
async def admin(stack: Stack, db: asyncpg.Connection) -> Api:
    return await sign_in(stack.base, (await make_user(db, "admin")).email)


@pytest.fixture
async def synced(stack: Stack, admin: Api) -> dict[str, Any]:
    """fake-meta's shipped catalogue, synced now (a test before may have changed either)."""
    await fake(stack, "POST", "__templates", {"templates": CATALOGUE})
    return await admin.post("templates/sync")


async def fake(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as s, s.request(method, f"{stack.fake_meta}/{path}", json=body) as r:
        return await r.json()


def body_of(name: str, *, at: int | None = None, **replace: Any) -> bytes:
    """A fixture body (tests/fixtures/whatsapp/webhooks) timed now, with values of its change replaced."""
    data = orjson.loads((FIXTURES / "webhooks" / name).read_bytes())
    now = at or int(time.time()) + 1  # after the sync that just ran: a webhook older than it is stale
    entry = data["entry"][0]
    entry["time"] = now
    value = entry["changes"][0]["value"]
    value.update(replace)
    for pref in value.get("user_preferences", []):
        pref["timestamp"] = now
        if "wa_id" in replace:
            pref["wa_id"] = replace["wa_id"]
    return orjson.dumps(data)


async def closed_window(stack: Stack, db: asyncpg.Connection, agent: Api) -> tuple[str, int]:
    """A conversation whose customer last wrote 25 hours ago, owned by the agent (the bot stays quiet)."""
    wa_id = phone()
    await customer_says(stack, wa_id, "hello there", "Dana")
    cid = int(await eventually(lambda: db.fetchval("SELECT c.id FROM conversations c JOIN contacts k ON "
                                                   "k.id = c.contact_id WHERE k.wa_id = $1", wa_id), what="stored"))
    await agent.post(f"conversations/{cid}/assign")
    await db.execute("UPDATE conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = $1", cid)
    return wa_id, cid


async def send(api: Api, cid: int, name: str, language: str, parameters: Any) -> tuple[int, Any]:
    return await api.call("POST", f"conversations/{cid}/messages", {
        "template": {"name": name, "language": language, "parameters": parameters},
        "idempotency_key": str(uuid.uuid4())})


async def templates_at_meta(stack: Stack, wa_id: str) -> list[dict[str, Any]]:
    return [x["body"] for x in await sends_to(stack, wa_id) if x["body"].get("type") == "template"]


async def catalogue_entry(api: Api, name: str, language: str) -> dict[str, Any] | None:
    found = (await api.get("templates"))["templates"]
    return next((t for t in found if (t["name"], t["language"]) == (name, language)), None)


# --- the catalogue ------------------------------------------------------------------------------

async def test_the_catalogue_is_synced_at_start_from_every_page(stack: Stack, agent: Api) -> None:
    async def listed() -> dict[str, Any] | None:
        answer = await agent.get("templates")
        return answer if len(answer["templates"]) == len(CATALOGUE) else None

    answer = await eventually(listed, 60, "the catalogue synced by the inbox at start")
    (sync,) = answer["syncs"]
    assert sync["waba_id"] == WABA_ID and sync["ok"] and sync["pages"] == PAGES >= 3
    promo = next(t for t in answer["templates"] if t["name"] == "seasonal_promotion")
    assert (promo["category"], promo["status"], promo["quality"]) == ("MARKETING", "APPROVED", "YELLOW")
    assert promo["parameters"]["header"] == {"kind": "text", "params": [{"name": "1", "example": "Summer Sale"}]}
    assert [p["example"] for p in promo["parameters"]["body"]] == ["the end of August", "25OFF", "25%"]
    approved = (await agent.get(f"templates?status=APPROVED&number={stack_number()}"))["templates"]
    assert approved and all(t["status"] == "APPROVED" for t in approved)
    assert {"back_in_stock", "abandoned_cart"} & {t["name"] for t in approved} == set()
    status, err = await agent.call("GET", "templates?status=not-a-status")
    assert (status, err["code"]) == (422, "INVALID")


def stack_number() -> str:
    return "200000000000001"


async def test_an_admin_syncs_on_demand_and_a_failed_sync_keeps_the_last_good_catalogue(
        stack: Stack, admin: Api, agent: Api) -> None:
    status, err = await agent.call("POST", "templates/sync")
    assert (status, err["code"]) == (403, "FORBIDDEN")
    fewer = [t for t in CATALOGUE if t["name"] != "store_hours"]
    await fake(stack, "POST", "__templates", {"templates": fewer})
    (done,) = (await admin.post("templates/sync"))["syncs"]
    assert done["ok"] and done["templates"] == len(fewer) and done["pages"] == PAGES
    assert await catalogue_entry(agent, "store_hours", "en") is None  # gone at Meta, gone here

    await fake(stack, "POST", "__templates", {"templates": CATALOGUE})
    await fake(stack, "POST", "__templates", {"fail": {"count": 1, "code": 190, "http_status": 401}})
    status, err = await admin.call("POST", "templates/sync")
    assert (status, err["code"]) == (502, "SYNC_FAILED")
    assert "last good catalogue is kept" in err["error"] and "code 190" in err["error"]
    answer = await agent.get("templates")
    assert len(answer["templates"]) == len(fewer)  # the last good one
    (sync,) = answer["syncs"]
    assert sync["ok"] is False and "code 190" in sync["error"] and sync["last_good_at"]
    (done,) = (await admin.post("templates/sync"))["syncs"]
    assert done["ok"] and done["templates"] == len(CATALOGUE)


def _cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**stack.env(), **env}
    return subprocess.run(procs.python_cmd("templates", *args), env=full, capture_output=True, text=True,
                          timeout=120, check=False)


async def test_the_command_syncs_with_a_progress_line_and_lists_the_catalogue(stack: Stack, db: asyncpg.Connection,
                                                                               tmp_path: Path) -> None:
    await fake(stack, "POST", "__templates", {"templates": CATALOGUE})
    synced = _cli(stack, "sync")
    assert synced.returncode == 0, synced.stderr
    assert f"page {PAGES} read, {len(CATALOGUE)} templates so far" in synced.stderr
    approved = sum(t["status"] == "APPROVED" for t in CATALOGUE)
    assert f"WABA {WABA_ID}: {len(CATALOGUE)} templates ({approved} approved) from {PAGES} page(s)" in synced.stdout
    listed = _cli(stack, "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"seasonal_promotion\s+en_US\s+MARKETING\s+APPROVED\s+YELLOW\s+header:\{\{1\}\} "
                     r"body:\{\{1\}\},\{\{2\}\},\{\{3\}\}", listed.stdout)
    assert f"{len(CATALOGUE)} template(s)" in listed.stdout

    # the rules file's window template is checked at sync: a warning and a notification, not a crash
    rules = orjson.loads((Path(__file__).parents[1] / "orchestrator" / "default_rules.json").read_bytes())
    rules["window_template"] = {"name": "back_in_stock", "language": "en", "parameters": ["Fig"]}
    path = tmp_path / "rules.json"
    path.write_bytes(orjson.dumps(rules))
    admin = await make_user(db, "admin")
    warned = _cli(stack, "sync", RULES_FILE=str(path))
    assert warned.returncode == 0, warned.stderr
    assert "warning: the rules file's window_template back_in_stock (en) is PAUSED at Meta" in warned.stdout
    body = await db.fetchval("SELECT body FROM notifications WHERE user_id = $1 AND kind = 'window_template'",
                             admin.id)
    assert body and "back_in_stock" in body
    rules["window_template"] = {"name": "nowhere", "language": "en", "parameters": []}
    path.write_bytes(orjson.dumps(rules))
    missing = _cli(stack, "sync", RULES_FILE=str(path))
    assert "window_template nowhere (en) is not in the account's catalogue" in missing.stdout
    assert _cli(stack, "sync").returncode == 0  # the shipped rules name none: the warning is cleared

    await fake(stack, "POST", "__templates", {"fail": {"count": 1, "code": 2, "http_status": 503}})
    failed = _cli(stack, "sync")
    assert failed.returncode == 1 and "sync failed, the last good catalogue is kept" in failed.stdout
    assert _cli(stack, "list").stdout.count("\n") > len(CATALOGUE)


# --- the template webhooks ----------------------------------------------------------------------

async def test_template_webhooks_change_the_catalogue_at_once_and_a_paused_one_cannot_be_sent(
        stack: Stack, db: asyncpg.Connection, synced: dict[str, Any], admin: Api, agent: Api) -> None:
    assert (await stack.post(body_of("62_template_status_paused.json")))[0] == 200

    async def paused() -> dict[str, Any] | None:
        t = await catalogue_entry(agent, "seasonal_promotion", "en_US")
        return t if t and t["status"] == "PAUSED" else None

    entry = await eventually(paused, 60, "the template paused in the catalogue")
    assert "paused for 3 hours" in entry["reason"]
    notes = (await admin.get("notifications"))["notifications"]
    assert any(n["kind"] == "template_stopped" and "seasonal_promotion (en_US) to PAUSED" in n["body"] for n in notes)
    _, cid = await closed_window(stack, db, agent)
    status, err = await send(agent, cid, "seasonal_promotion", "en_US",
                             {"header": "Sale", "body": ["Friday", "X", "5%"]})
    assert (status, err["code"]) == (409, "TEMPLATE_NOT_APPROVED") and "PAUSED" in err["error"]
    assert not any(t["name"] == "seasonal_promotion" for t in (await agent.get(f"conversations/{cid}"))
                   ["conversation"]["templates"])  # not offered either

    await stack.post(body_of("63_template_quality_yellow.json", new_quality_score="RED"))
    await stack.post(body_of("64_template_category_marketing.json"))
    stale = body_of("60_template_status_approved.json", at=int(time.time()) - 7200,
                    message_template_name="seasonal_promotion")  # older than what the catalogue knows
    await stack.post(stale)
    reinstated = body_of("60_template_status_approved.json", at=int(time.time()) + 2, event="REINSTATED",
                         message_template_name="delivery_window", message_template_language="en")
    await stack.post(reinstated)

    async def applied() -> bool:
        q = await catalogue_entry(agent, "seasonal_promotion", "en_US")
        c = await catalogue_entry(agent, "feedback_request", "en")
        return bool(q and q["quality"] == "RED" and c and c["category"] == "MARKETING")

    await eventually(applied, 60, "the quality and category updates applied")
    assert (await catalogue_entry(agent, "seasonal_promotion", "en_US") or {})["status"] == "PAUSED"  # stale: no
    assert (await catalogue_entry(agent, "delivery_window", "en") or {})["status"] == "APPROVED"


async def test_a_template_meta_approves_that_the_catalogue_lacks_arrives_with_a_sync(
        stack: Stack, synced: dict[str, Any], agent: Api) -> None:
    name = f"brand_new_{uuid.uuid4().hex[:6]}"
    fresh = {"id": "99", "name": name, "language": "en", "category": "UTILITY", "status": "APPROVED",
             "parameter_format": "POSITIONAL", "components": [{"type": "BODY", "text": "Hello {{1}}",
                                                                "example": {"body_text": [["Ana"]]}}]}
    await fake(stack, "POST", "__templates", {"templates": [*CATALOGUE, fresh]})
    await stack.post(body_of("60_template_status_approved.json", message_template_name=name,
                             message_template_language="en"))

    async def complete() -> dict[str, Any] | None:
        t = await catalogue_entry(agent, name, "en")
        return t if t and t["parameters"]["body"] else None

    entry = await eventually(complete, 90, "the new template, its components brought by the sync it asked for")
    assert entry["status"] == "APPROVED" and entry["parameters"]["body"] == [{"name": "1", "example": "Ana"}]


# --- sending ------------------------------------------------------------------------------------

async def test_a_template_send_is_checked_and_goes_in_metas_shape_stored_as_the_customer_sees_it(
        stack: Stack, db: asyncpg.Connection, synced: dict[str, Any], agent: Api) -> None:
    wa_id, cid = await closed_window(stack, db, agent)
    offered = (await agent.get(f"conversations/{cid}"))["conversation"]["templates"]
    assert offered and all(t["status"] == "APPROVED" for t in offered)
    status, err = await send(agent, cid, "no_such_template", "en", {})
    assert (status, err["code"]) == (422, "INVALID") and "no template no_such_template (en)" in err["error"]
    status, err = await send(agent, cid, "appointment_reminder", "en", {"body": ["Friday"], "buttons": ["x"]})
    assert (status, err["code"]) == (422, "INVALID")
    assert err["problems"] == ["missing parameter header {{1}}", "missing parameter body {{2}}",
                               "unknown parameter button 1 (the template has 0 that take one)"]
    status, err = await send(agent, cid, "order_confirmation", "en_US", {"body": ["Pablo", "42"]})
    assert (status, err["code"]) == (422, "INVALID") and "missing parameter header document" in err["error"]
    assert await templates_at_meta(stack, wa_id) == []  # nothing refused reached Meta

    status, ok = await send(agent, cid, "appointment_reminder", "en",
                            {"header": ["Dana"], "body": ["Friday 14 March", "10:00"]})
    assert status == 202, ok
    (sent,) = await eventually(lambda: templates_at_meta(stack, wa_id), 60, "the template at fake-meta")
    assert sent["template"] == {"name": "appointment_reminder", "language": {"code": "en"}, "components": [
        {"type": "header", "parameters": [{"type": "text", "text": "Dana"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Friday 14 March"},
                                        {"type": "text", "text": "10:00"}]}]}

    async def stored() -> str | None:
        return await db.fetchval("SELECT body FROM messages WHERE conversation_id = $1 AND type = 'template'", cid)

    body = await eventually(stored, 60, "the template in the thread")
    assert body == ("Reminder for Dana\nYour appointment is on Friday 14 March at 10:00. Reply YES to confirm or call "
                    "us to change it.\nLucky Shrub\n[Yes] [Change it]")

    status, _ = await send(agent, cid, "order_update", "en_US", {"body": ["Dana", "566701"], "buttons": ["566701"]})
    assert status == 202
    status, _ = await send(agent, cid, "delivery_window", "en",
                           {"body": {"first_name": "Dana", "start": "9:00", "end": "11:00"}})
    assert status == 202
    both = await eventually(lambda: _at_least(templates_at_meta(stack, wa_id), 3), 60, "three templates")
    url = next(t for t in both if t["template"]["name"] == "order_update")["template"]["components"][-1]
    assert url == {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text",
                                                                                      "text": "566701"}]}
    named = next(t for t in both if t["template"]["name"] == "delivery_window")["template"]["components"]
    assert named[0]["parameters"][0] == {"type": "text", "text": "Dana", "parameter_name": "first_name"}


async def _at_least(found: Any, n: int) -> Any:
    items = await found
    return items if len(items) >= n else None


# --- consent ------------------------------------------------------------------------------------

async def test_marketing_preferences_set_and_clear_the_opt_out_and_marketing_is_refused_before_meta(
        stack: Stack, db: asyncpg.Connection, synced: dict[str, Any], agent: Api) -> None:
    wa_id, cid = await closed_window(stack, db, agent)
    assert (await agent.get(f"conversations/{cid}"))["conversation"]["marketing_opt_out"] is False
    assert (await stack.post(body_of("65_user_preferences_stop.json", wa_id=wa_id)))[0] == 200

    async def opted() -> bool:
        return (await agent.get(f"conversations/{cid}"))["conversation"]["marketing_opt_out"] is True

    await eventually(opted, 60, "the marketing opt-out on the contact")
    status, err = await send(agent, cid, "welcome", "en", {"body": ["Dana"]})
    assert (status, err["code"]) == (409, "MARKETING_OPTED_OUT")
    status, _ = await send(agent, cid, "payment_received", "en", {"body": ["Dana", "$5"]})  # utility goes
    assert status == 202
    (sent,) = await eventually(lambda: templates_at_meta(stack, wa_id), 60, "the utility template at fake-meta")
    assert sent["template"]["name"] == "payment_received"
    # a reply inside the window goes too
    await db.execute("UPDATE conversations SET last_inbound_at = now() WHERE id = $1", cid)
    status, _ = await agent.call("POST", f"conversations/{cid}/messages", {"text": "Thanks!",
                                                                           "idempotency_key": str(uuid.uuid4())})
    assert status == 202
    await eventually(lambda: _text_sent(stack, wa_id, "Thanks!"), 60, "the reply in the window")

    # an older resume changes nothing; a newer one clears it
    await stack.post(body_of("66_user_preferences_resume.json", wa_id=wa_id, at=int(time.time()) - 3600))
    await stack.post(body_of("66_user_preferences_resume.json", wa_id=wa_id, at=int(time.time()) + 5))

    async def resumed() -> bool:
        return await db.fetchval("SELECT NOT marketing_opt_out FROM contacts WHERE wa_id = $1", wa_id)

    await eventually(resumed, 60, "the opt-out cleared by resume")
    await db.execute("UPDATE conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = $1", cid)
    assert (await send(agent, cid, "welcome", "en", {"body": ["Dana"]}))[0] == 202


async def _text_sent(stack: Stack, wa_id: str, text: str) -> bool:
    return any((x["body"].get("text") or {}).get("body") == text for x in await sends_to(stack, wa_id))


async def test_a_send_refused_with_131050_sets_the_opt_out_and_is_not_retried(
        stack: Stack, db: asyncpg.Connection, synced: dict[str, Any], agent: Api) -> None:
    wa_id, cid = await closed_window(stack, db, agent)
    await fake(stack, "POST", "__script", [{"to": f"+{wa_id}", "code": 131050, "http_status": 400}])
    assert (await send(agent, cid, "welcome", "en", {"body": ["Dana"]}))[0] == 202

    async def failed() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT state, attempts, error FROM outbound_log WHERE conversation_id = $1 "
                                 "AND state = 'failed'", cid)

    row = await eventually(failed, 60, "the send failed")
    assert row["attempts"] == 1 and row["error"]["code"] == 131050
    assert await db.fetchval("SELECT marketing_opt_out FROM contacts WHERE wa_id = $1", wa_id) is True
    assert len(await templates_at_meta(stack, wa_id)) == 1  # one attempt, no retry
    task = await db.fetchval("SELECT kind FROM tasks WHERE conversation_id = $1 ORDER BY id DESC LIMIT 1", cid)
    assert task == "marketing_opted_out"
    status, err = await send(agent, cid, "welcome", "en", {"body": ["Dana"]})
    assert (status, err["code"]) == (409, "MARKETING_OPTED_OUT")


# --- account state ------------------------------------------------------------------------------

async def test_a_restriction_blocks_template_sends_until_lifted_and_admins_read_metas_words(
        stack: Stack, db: asyncpg.Connection, synced: dict[str, Any], admin: Api, agent: Api) -> None:
    wa_id, cid = await closed_window(stack, db, agent)
    until = int(time.time()) + 7 * 86400
    restriction = [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": until},
                   {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": until}]
    body = body_of("67_account_restriction.json", restriction_info=restriction)
    assert (await stack.post(body))[0] == 200
    assert (await stack.post(body))[0] == 200  # Meta delivers twice: stored once
    try:
        async def restricted() -> dict[str, Any] | None:
            account = (await agent.get(f"conversations/{cid}"))["conversation"]["account"]
            return account if account["restricted_until"] else None

        account = await eventually(restricted, 60, "the restriction in force")
        assert account["waba_id"] == WABA_ID and account["restricted_until"].startswith(
            time.strftime("%Y-%m-%d", time.gmtime(until)))
        status, err = await send(agent, cid, "payment_received", "en", {"body": ["Dana", "$5"]})
        assert (status, err["code"]) == (409, "ACCOUNT_RESTRICTED")
        assert await templates_at_meta(stack, wa_id) == []
        assert await db.fetchval("SELECT count(*) FROM account_events WHERE dedupe_key LIKE $1",
                                 f"{WABA_ID}:ACCOUNT_RESTRICTION:{body_of_time(body)}:%") == 1
    finally:  # a newer restriction without business-initiated messaging lifts it
        await stack.post(body_of("67_account_restriction.json", at=int(time.time()) + 2,
                                 restriction_info=restriction[1:]))

    async def lifted() -> bool:
        return (await agent.get(f"conversations/{cid}"))["conversation"]["account"]["restricted_until"] is None

    await eventually(lifted, 60, "the restriction lifted")
    assert (await send(agent, cid, "payment_received", "en", {"body": ["Dana", "$5"]}))[0] == 202

    for name in ("68_account_violation.json", "69_account_disabled.json", "70_account_offboarded.json"):
        await stack.post(body_of(name))

    async def shown() -> list[dict[str, Any]] | None:
        (acc,) = (await admin.get("templates"))["accounts"]
        return acc["events"] if any(e["event"] == "ACCOUNT_OFFBOARDED" for e in acc["events"]) else None

    events = await eventually(shown, 60, "the account events shown to admins")
    words = {e["event"]: e["words"] for e in events}
    assert words["ACCOUNT_VIOLATION"] == "Meta: account account violation (violation_type: ADULT)"
    assert "waba_ban_state: DISABLE" in words["DISABLED_UPDATE"]
    notes = [n["body"] for n in (await admin.get("notifications"))["notifications"]]
    assert any("violation_type: ADULT" in n for n in notes)
    assert (await agent.get("templates"))["accounts"][0]["events"] == []  # admins only


def body_of_time(body: bytes) -> int:
    return orjson.loads(body)["entry"][0]["time"]


async def test_every_pywa_fixture_is_applied(stack: Stack, db: asyncpg.Connection) -> None:
    """pywa's bodies (their own WABA and numbers) go through the webhook and the worker without a dead letter."""
    before = await db.fetchval("SELECT count(*) FROM account_events")
    posted = 0
    pywa = FIXTURES / "pywa"
    for path in [*sorted(pywa.glob("*_update*.json")), pywa / "user_marketing_preferences.json"]:
        for example in orjson.loads(path.read_bytes()).values():
            assert (await stack.post(orjson.dumps(example)))[0] == 200
            posted += 1
    assert posted > 15
    accounts = len(orjson.loads((FIXTURES / "pywa" / "account_update.json").read_bytes()))

    async def stored() -> asyncpg.Record | None:
        if await db.fetchval("SELECT count(*) FROM account_events") - before < accounts:
            return None
        return await db.fetchrow("SELECT status, category, reason FROM templates WHERE waba_id = '102290129340398' "
                                 "AND name = 'abandoned_cart'")

    rejected = await eventually(stored, 60, "every account event and template update stored")
    assert rejected["status"] == "REJECTED" and rejected["reason"].startswith("Your template has parameters")



async def test_the_answers_are_the_contracts_shapes(stack: Stack, db: asyncpg.Connection, synced: dict[str, Any],
                                                   admin: Api, agent: Api) -> None:
    doc = contract()
    await _conforms(doc, agent, "GET", "/templates", "templates?status=APPROVED")
    await _conforms(doc, admin, "GET", "/templates")
    await _conforms(doc, agent, "POST", "/templates/sync", "templates/sync")  # 403
    await _conforms(doc, admin, "POST", "/templates/sync", "templates/sync")
    await fake(stack, "POST", "__templates", {"fail": {"count": 1, "code": 131000, "http_status": 500}})
    await _conforms(doc, admin, "POST", "/templates/sync", "templates/sync")  # 502 SYNC_FAILED
    _, cid = await closed_window(stack, db, agent)
    path = "/conversations/{id}/messages"
    await _conforms(doc, agent, "GET", "/conversations/{id}", f"conversations/{cid}")
    await _conforms(doc, agent, "POST", path, f"conversations/{cid}/messages",
                    {"text": "late", "idempotency_key": "k1"})  # 409 WINDOW_CLOSED
    await _conforms(doc, agent, "POST", path, f"conversations/{cid}/messages",
                    {"template": {"name": "welcome", "language": "en", "parameters": {}}, "idempotency_key": "k2"})
    await _conforms(doc, agent, "POST", path, f"conversations/{cid}/messages",
                    {"template": {"name": "back_in_stock", "language": "en", "parameters": ["Fig"]},
                     "idempotency_key": "k3"})  # 409 TEMPLATE_NOT_APPROVED
    await _conforms(doc, agent, "POST", path, f"conversations/{cid}/messages",
                    {"template": {"name": "welcome", "language": "en", "parameters": {"body": ["Dana"]}},
                     "idempotency_key": "k4"})  # 202
