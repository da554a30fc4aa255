"""The SQL behind templates, consent and account state: the catalogue of each WhatsApp Business
Account (WABA) and its syncs, the template webhooks, the contacts' marketing opt-out, and the
account events and restrictions Meta sends.

Like :mod:`storage.repo`, functions run inside the caller's transaction (or connection).
:func:`accounts` is the one place that says which WABAs there are, with their tokens and numbers (from the
business numbers, :mod:`storage.numbers`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from wacrm.core.settings import Settings
from wacrm.storage import numbers
from wacrm.storage.ledger import WAITING, sql_in
from wacrm.whatsapp import templates as wt
from wacrm.whatsapp.updates import AccountEvent, Preference, TemplateChange

FOREVER = datetime.max.replace(tzinfo=UTC)  # a restriction Meta gave no end


# --- which accounts ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Account:
    """A WABA, the access token its Graph calls carry (``None``: none of its numbers has a usable one),
    and its business numbers."""

    waba_id: str
    token: str | None = field(repr=False)
    phone_number_ids: tuple[str, ...] = ()


async def accounts(conn: asyncpg.Connection, settings: Settings) -> list[Account]:
    """Every WABA of the business numbers (:mod:`storage.numbers`) that are not disabled, with the token of
    the first of its numbers that has one (a stored token, or the environment number's
    ``WHATSAPP_ACCESS_TOKEN``); and ``WHATSAPP_BUSINESS_ACCOUNT_ID`` with the environment's number when no
    row names it yet (a one-number setup before its first start)."""
    rows = await conn.fetch("SELECT phone_number_id, waba_id, token_ciphertext FROM business_numbers "
                            "WHERE waba_id IS NOT NULL AND state <> 'disabled' ORDER BY created_at, phone_number_id")
    cipher = numbers.TokenCipher(settings.token_encryption_key)
    found: dict[str, tuple[list[str], list[str]]] = {}
    for r in rows:
        ids, tokens = found.setdefault(r["waba_id"], ([], []))
        ids.append(r["phone_number_id"])
        if r["token_ciphertext"] is None:
            if r["phone_number_id"] == settings.whatsapp_phone_number_id and settings.whatsapp_access_token:
                tokens.append(settings.whatsapp_access_token)
            continue
        try:
            tokens.append(cipher.decrypt(r["token_ciphertext"], r["phone_number_id"]))
        except numbers.TokenKeyError:
            continue  # the worker and the inbox name it at start; another number of the account may serve
    out = [Account(waba, tokens[0] if tokens else None, tuple(ids)) for waba, (ids, tokens) in found.items()]
    env = settings.whatsapp_business_account_id
    if env and env not in found:
        out.append(Account(env, settings.whatsapp_access_token or None, (settings.whatsapp_phone_number_id,)))
    return out


async def account_of(conn: asyncpg.Connection, settings: Settings, phone_number_id: str) -> Account | None:
    """The WABA a business number belongs to, without its token (``None``: the number names none)."""
    waba = await conn.fetchval("SELECT waba_id FROM business_numbers WHERE phone_number_id = $1", phone_number_id)
    if waba is None and phone_number_id == settings.whatsapp_phone_number_id:
        waba = settings.whatsapp_business_account_id  # the environment's number before its row exists
    return Account(waba, None, (phone_number_id,)) if waba else None


# --- the catalogue ----------------------------------------------------------------------------

_COLUMNS = "name, language, meta_id, category, status, quality, parameter_format, components, reason"


def template_of_row(row: asyncpg.Record) -> wt.Template:
    return wt.Template(name=row["name"], language=row["language"], category=row["category"], status=row["status"],
                       quality=row["quality"], parameter_format=row["parameter_format"],
                       components=list(row["components"] or []), meta_id=row["meta_id"], reason=row["reason"])


def template_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"waba_id": row["waba_id"], "name": row["name"], "language": row["language"],
            "category": row["category"], "status": row["status"], "quality": row["quality"],
            "parameter_format": row["parameter_format"], "components": row["components"],
            "parameters": row["parameters"], "reason": row["reason"],
            "synced_at": row["synced_at"].isoformat() if row["synced_at"] else None}


async def claim_sync(conn: asyncpg.Connection, waba_id: str, min_age_s: float) -> datetime | None:
    """Start a sync of ``waba_id`` unless one started less than ``min_age_s`` ago (and none was asked
    for since): its start time, or ``None``. Several processes may ask; one gets it."""
    return await conn.fetchval(
        """INSERT INTO template_syncs AS s (waba_id, started_at) VALUES ($1, now())
           ON CONFLICT (waba_id) DO UPDATE SET started_at = now()
           WHERE s.started_at IS NULL OR s.started_at < now() - make_interval(secs => $2)
              OR (s.requested_at > s.started_at AND s.started_at < now() - interval '5 seconds')
           RETURNING started_at""", waba_id, min_age_s)


_UPSERT = """
    INSERT INTO templates AS t (waba_id, name, language, meta_id, category, status, quality, parameter_format,
                                components, parameters, reason, changed_at, synced_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now())
    ON CONFLICT (waba_id, name, language) DO UPDATE SET
        meta_id = EXCLUDED.meta_id, parameter_format = EXCLUDED.parameter_format,
        components = EXCLUDED.components, parameters = EXCLUDED.parameters, synced_at = now(),
        -- a webhook newer than the sync's start wins over the list Meta gave before it
        category = CASE WHEN t.changed_at <= EXCLUDED.changed_at THEN EXCLUDED.category ELSE t.category END,
        status = CASE WHEN t.changed_at <= EXCLUDED.changed_at THEN EXCLUDED.status ELSE t.status END,
        quality = CASE WHEN t.changed_at <= EXCLUDED.changed_at THEN EXCLUDED.quality ELSE t.quality END,
        reason = CASE WHEN t.changed_at <= EXCLUDED.changed_at THEN EXCLUDED.reason ELSE t.reason END,
        changed_at = GREATEST(t.changed_at, EXCLUDED.changed_at)"""


async def replace_catalogue(conn: asyncpg.Connection, waba_id: str, found: list[wt.Template], started_at: datetime,
                            pages: int) -> None:
    """A full sync's result: every template Meta listed, stored; those it no longer lists (and no
    webhook created since the sync began) removed; the sync recorded as good."""
    await conn.executemany(_UPSERT, [
        (waba_id, t.name, t.language, t.meta_id, t.category, t.status, t.quality, t.parameter_format, t.components,
         t.parameters, t.reason, started_at) for t in found])
    await conn.execute("DELETE FROM templates WHERE waba_id = $1 AND (synced_at IS NULL OR synced_at < $2) "
                       "AND changed_at < $2", waba_id, started_at)
    await conn.execute(
        """UPDATE template_syncs SET finished_at = now(), ok = true, error = NULL, pages = $2, templates = $3,
               last_good_at = now() WHERE waba_id = $1""", waba_id, pages, len(found))


async def sync_failed(conn: asyncpg.Connection, waba_id: str, error: str, pages: int) -> None:
    """The sync failed: the catalogue stays as the last good sync left it; the reason is kept."""
    await conn.execute("UPDATE template_syncs SET finished_at = now(), ok = false, error = $2, pages = $3 "
                       "WHERE waba_id = $1", waba_id, error, pages)


async def set_window_problem(conn: asyncpg.Connection, waba_id: str, problem: str | None) -> bool:
    """Record what is wrong with the rules file's window template in this WABA; True when that changed
    (a new problem is notified once, not at every sync)."""
    changed = await conn.fetchval(
        """UPDATE template_syncs SET window_problem = $2 WHERE waba_id = $1
           AND window_problem IS DISTINCT FROM $2 RETURNING true""", waba_id, problem)
    return bool(changed)


async def sync_states(conn: asyncpg.Connection, waba_ids: list[str]) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM template_syncs WHERE waba_id = ANY($1::text[]) ORDER BY waba_id", waba_ids)
    at = lambda v: v.isoformat() if v else None  # noqa: E731
    return [{"waba_id": r["waba_id"], "ok": r["ok"], "error": r["error"], "pages": r["pages"],
             "templates": r["templates"], "started_at": at(r["started_at"]), "finished_at": at(r["finished_at"]),
             "last_good_at": at(r["last_good_at"]), "window_problem": r["window_problem"]} for r in rows]


async def catalogue(conn: asyncpg.Connection, waba_ids: list[str], status: str | None = None) -> list[dict[str, Any]]:
    """The templates of these WABAs (``status``: only those), by name and language."""
    rows = await conn.fetch(
        f"""SELECT waba_id, {_COLUMNS}, parameters, synced_at FROM templates
            WHERE waba_id = ANY($1::text[]) AND ($2::text IS NULL OR status = $2) ORDER BY name, language""",
        waba_ids, status)
    return [template_json(r) for r in rows]


async def find(conn: asyncpg.Connection, waba_id: str, name: str, language: str) -> wt.Template | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM templates WHERE waba_id = $1 AND name = $2 AND language = $3",
                              waba_id, name, language)
    return template_of_row(row) if row else None


# --- the template webhooks --------------------------------------------------------------------

#: Meta's status events that put a template back to sendable.
_BACK = {"REINSTATED": wt.APPROVED, "UNARCHIVED": wt.APPROVED}


async def notify_admins(conn: asyncpg.Connection, kind: str, body: str) -> None:
    await conn.execute("""INSERT INTO notifications (user_id, kind, body)
                          SELECT u.id, $1, $2 FROM users u WHERE u.role = 'admin' AND u.disabled_at IS NULL""",
                       kind, body)


async def apply_template_change(conn: asyncpg.Connection, change: TemplateChange) -> str:
    """Apply a template webhook at once; ``applied``, ``stale`` (older than what the catalogue knows)
    or ``created`` (a template the catalogue lacked: kept, and a sync asked for). A template Meta
    stops (paused, disabled, rejected …) is notified to the admins."""
    at = datetime.fromtimestamp(change.at, UTC) if change.at else datetime.now(UTC)
    row = await conn.fetchrow("SELECT id, status, changed_at FROM templates WHERE waba_id = $1 AND name = $2 "
                              "AND language = $3 FOR UPDATE", change.waba_id, change.name, change.language)
    status = change.status
    if status == "FLAGGED":  # at risk, still sendable: only the reason says so
        status = None
    status = _BACK.get(status or "", status)
    if row is None:
        await conn.execute(
            """INSERT INTO templates (waba_id, name, language, meta_id, category, status, quality, reason, changed_at,
                                     parameters)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING""",
            change.waba_id, change.name, change.language, change.meta_id, change.category or "UNKNOWN",
            status or "UNKNOWN", change.quality, change.reason, at, wt.spec_of([]))
        await conn.execute("""INSERT INTO template_syncs (waba_id, requested_at) VALUES ($1, now())
                              ON CONFLICT (waba_id) DO UPDATE SET requested_at = now()""", change.waba_id)
        outcome = "created"
    elif row["changed_at"] > at:
        return "stale"
    else:
        await conn.execute(
            """UPDATE templates SET status = COALESCE($2, status), quality = COALESCE($3, quality),
                   category = COALESCE($4, category), reason = CASE WHEN $5::text IS NOT NULL OR $2::text IS NOT NULL
                   THEN $5 ELSE reason END, meta_id = COALESCE(meta_id, $6), changed_at = $7 WHERE id = $1""",
            row["id"], status, change.quality, change.category, change.reason, change.meta_id, at)
        outcome = "applied"
    if status in wt.STOPPED and (row is None or row["status"] != status):
        why = f": {change.reason}" if change.reason else ""
        await notify_admins(conn, "template_stopped",
                            f"Meta set template {change.name} ({change.language}) to {status}{why}. "
                            "It cannot be sent until Meta approves it again.")
    return outcome


# --- consent ----------------------------------------------------------------------------------

async def apply_preference(conn: asyncpg.Connection, p: Preference) -> str:
    """A customer's marketing preference (``stop`` sets the contact's marketing opt-out, ``resume``
    clears it): ``applied``, ``stale`` (an older preference than the one kept), ``ignored`` (another
    value or category) or ``no_contact`` (nobody of that number has written yet)."""
    if p.category != "marketing_messages" or p.value not in ("stop", "resume"):
        return "ignored"
    at = datetime.fromtimestamp(p.at, UTC)
    done = await conn.fetchval(
        """UPDATE contacts SET marketing_opt_out = $3, marketing_changed_at = $4, updated_at = now()
           WHERE phone_number_id = $1 AND wa_id = $2
             AND (marketing_changed_at IS NULL OR marketing_changed_at <= $4) RETURNING true""",
        p.phone_number_id, p.wa_id, p.value == "stop", at)
    if done:
        return "applied"
    exists = await conn.fetchval("SELECT true FROM contacts WHERE phone_number_id = $1 AND wa_id = $2",
                                 p.phone_number_id, p.wa_id)
    return "stale" if exists else "no_contact"


async def marketing_stopped(conn: asyncpg.Connection, conversation_id: int) -> None:
    """Meta refused a send with 131050: the customer stopped marketing messages."""
    await conn.execute(
        """UPDATE contacts k SET marketing_opt_out = true, marketing_changed_at = now(), updated_at = now()
           FROM conversations c WHERE c.id = $1 AND k.id = c.contact_id""", conversation_id)


# --- account state ----------------------------------------------------------------------------

async def record_account_event(conn: asyncpg.Connection, event: AccountEvent) -> bool:
    """Store an ``account_update`` once (False: seen before) and tell the admins in Meta's words; an
    ACCOUNT_RESTRICTION replaces the account's restrictions in force."""
    key = f"{event.waba_id}:{event.event}:{event.at}:" + hashlib.sha256(
        orjson.dumps(event.value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    at = datetime.fromtimestamp(event.at, UTC) if event.at else datetime.now(UTC)
    words = event.words()
    event_id = await conn.fetchval(
        """INSERT INTO account_events (waba_id, event, occurred_at, value, words, dedupe_key)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id""",
        event.waba_id, event.event, at, event.value, words, key)
    if event_id is None:
        return False
    if event.event == "ACCOUNT_RESTRICTION":
        newest = await conn.fetchval("SELECT max(occurred_at) FROM account_events WHERE waba_id = $1 "
                                     "AND event = 'ACCOUNT_RESTRICTION'", event.waba_id)
        if newest is None or newest <= at:
            await conn.execute("DELETE FROM account_restrictions WHERE waba_id = $1", event.waba_id)
            await conn.executemany(
                "INSERT INTO account_restrictions (waba_id, restriction_type, until, event_id) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (waba_id, restriction_type) DO UPDATE SET until = EXCLUDED.until, "
                "event_id = EXCLUDED.event_id",
                [(event.waba_id, kind, datetime.fromtimestamp(exp, UTC) if exp else None, event_id)
                 for kind, exp in event.restrictions()])
    await notify_admins(conn, "account_update", f"WhatsApp Business Account {event.waba_id}: {words}")
    return True


async def restricted_until(conn: asyncpg.Connection, waba_id: str) -> datetime | None:
    """Until when business-initiated messages (templates) from this WABA are blocked, or ``None``."""
    row = await conn.fetchrow(
        """SELECT until FROM account_restrictions WHERE waba_id = $1 AND restriction_type = $2
             AND (until IS NULL OR until > now())""", waba_id, wt.BIZ_INITIATED)
    if row is None:
        return None
    return row["until"] or FOREVER


async def account_state(conn: asyncpg.Connection, waba_id: str, *, events: int = 0) -> dict[str, Any]:
    """``{"waba_id", "restricted_until", "restrictions": [...], "events": [...]}`` (the last ``events``)."""
    until = await restricted_until(conn, waba_id)
    rows = await conn.fetch("SELECT restriction_type, until FROM account_restrictions WHERE waba_id = $1 "
                            "AND (until IS NULL OR until > now()) ORDER BY restriction_type", waba_id)
    recent = await conn.fetch("SELECT id, event, occurred_at, words FROM account_events WHERE waba_id = $1 "
                              "ORDER BY occurred_at DESC, id DESC LIMIT $2", waba_id, events) if events else []
    return {"waba_id": waba_id,
            "restricted_until": None if until is None else "forever" if until == FOREVER else until.isoformat(),
            "restrictions": [{"type": r["restriction_type"], "until": r["until"].isoformat() if r["until"] else None}
                             for r in rows],
            "events": [{"id": r["id"], "event": r["event"], "occurred_at": r["occurred_at"].isoformat(),
                        "words": r["words"]} for r in recent]}


# --- what a template send checks -------------------------------------------------------------

_COMPLETE_INTENT = f"UPDATE outbound_log SET intent = $2 WHERE id = $1 AND state IN {sql_in(WAITING)}"


async def complete_intent(conn: asyncpg.Connection, outbound_log_id: int, intent: Any) -> None:
    """Store a template intent completed from the catalogue (components, the text the customer sees) in its
    ledger row while the row still waits to be sent."""
    await conn.execute(_COMPLETE_INTENT, outbound_log_id, intent)


@dataclass(frozen=True, slots=True)
class SendContext:
    template: wt.Template | None  # None: the catalogue does not know it
    marketing_opt_out: bool
    restricted_until: datetime | None


async def send_context(conn: asyncpg.Connection, waba_id: str | None, name: str, language: str,
                       conversation_id: int) -> SendContext:
    """What deciding a template send needs: the catalogue's template, the contact's marketing
    opt-out, and the account's restriction."""
    opted = await conn.fetchval("SELECT k.marketing_opt_out FROM conversations c JOIN contacts k ON k.id = "
                                "c.contact_id WHERE c.id = $1", conversation_id)
    if waba_id is None:
        return SendContext(None, bool(opted), None)
    return SendContext(await find(conn, waba_id, name, language), bool(opted), await restricted_until(conn, waba_id))
