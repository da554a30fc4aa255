"""Templates: the catalogue (``GET templates``, admins' ``POST templates/sync``) and the checks a
person's template send passes — approved in the catalogue of the conversation's account, every
parameter given, the account not restricted, the contact not opted out of marketing — with what the
reply box shows beside a thread (:func:`templates_and_consent`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from wacrm.inbox import catalogue
from wacrm.inbox.keys import GRAPH_SESSION, POOL, RULES, SETTINGS, USER
from wacrm.inbox.protocol import ApiError, admin, invalid, ok
from wacrm.storage import templates as tstore
from wacrm.whatsapp import templates as wt


async def _account(request: web.Request, conn: asyncpg.Connection, cid: int) -> tstore.Account | None:
    pnid = await conn.fetchval("SELECT phone_number_id FROM conversations WHERE id = $1", cid)
    return await tstore.account_of(conn, request.app[SETTINGS], pnid) if pnid else None


async def templates_and_consent(request: web.Request, conn: asyncpg.Connection, cid: int) -> dict[str, Any]:
    """What the reply box needs beside the thread: the approved templates of the conversation's number,
    the contact's marketing opt-out, and its account's restriction."""
    account = await _account(request, conn, cid)
    opted = await conn.fetchval("SELECT k.marketing_opt_out FROM conversations c JOIN contacts k "
                                "ON k.id = c.contact_id WHERE c.id = $1", cid)
    return {"templates": await tstore.catalogue(conn, [account.waba_id], wt.APPROVED) if account else [],
            "marketing_opt_out": bool(opted),
            "account": await tstore.account_state(conn, account.waba_id) if account else None}


def template_of(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip() \
            or not isinstance(value.get("language"), str) or not value["language"].strip():
        raise invalid("template needs a name and a language")
    params = value.get("parameters", {})
    if not isinstance(params, (list, dict)):
        raise invalid("template.parameters must be an object with header, body and buttons")
    return {"name": value["name"].strip(), "language": value["language"].strip(), "parameters": params}


async def checked_template(request: web.Request, conn: asyncpg.Connection, cid: int,
                            tpl: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A person's template send checked against the catalogue: the intent's template (with the
    components Meta expects) and the text the customer sees; 422 ``INVALID`` naming each missing or
    unknown parameter, 409 ``ACCOUNT_RESTRICTED``, ``TEMPLATE_NOT_APPROVED`` or ``MARKETING_OPTED_OUT``."""
    account = await _account(request, conn, cid)
    if account is None:
        raise invalid("no WhatsApp Business Account is configured for this number (WHATSAPP_BUSINESS_ACCOUNT_ID), "
                      "so no template can be checked")
    ctx = await tstore.send_context(conn, account.waba_id, tpl["name"], tpl["language"], cid)
    if ctx.template is None:
        raise invalid(f"no template {tpl['name']} ({tpl['language']}) in the catalogue of WABA {account.waba_id}: "
                      "choose one from GET /api/v1/templates, or sync the catalogue (POST /api/v1/templates/sync)")
    refused = wt.refusal(ctx.template, marketing_opt_out=ctx.marketing_opt_out,
                         restricted_until=ctx.restricted_until, now=datetime.now(UTC))
    if refused is not None:
        raise ApiError(409, refused.code, refused.error)
    spec = ctx.template.parameters
    problems = wt.problems(spec, tpl["parameters"])
    if problems:
        raise ApiError(422, "INVALID", f"template {tpl['name']} ({tpl['language']}): " + "; ".join(problems),
                       problems=problems)
    return ({**tpl, "category": ctx.template.category,
             "components": wt.send_components(spec, tpl["parameters"])}, wt.render(ctx.template, tpl["parameters"]))


async def list_templates(request: web.Request) -> web.Response:
    """The catalogue: every template of every account (``number``: of that business number's account;
    ``status``: only those), with each account's last sync and state."""
    status = request.query.get("status")
    if status is not None and not (status.isascii() and status.replace("_", "").isalpha() and len(status) < 40):
        raise invalid("status must be a template status such as APPROVED, PAUSED or REJECTED")
    settings = request.app[SETTINGS]
    async with request.app[POOL].acquire() as conn:
        number = request.query.get("number")
        if number is not None:
            account = await tstore.account_of(conn, settings, number)
            found = [account] if account else []
        else:
            found = await tstore.accounts(conn, settings)
        wabas = [a.waba_id for a in found]
        events = 10 if request[USER].is_admin else 0
        return ok(templates=await tstore.catalogue(conn, wabas, status.upper() if status else None),
                  syncs=await tstore.sync_states(conn, wabas),
                  accounts=[await tstore.account_state(conn, w, events=events) for w in wabas])


async def sync_templates(request: web.Request) -> web.Response:
    """Admins: sync the catalogue with Meta now; 502 ``SYNC_FAILED`` (the last good catalogue kept) says why."""
    admin(request)
    synced = await catalogue.sync(request.app[POOL], request.app[GRAPH_SESSION], request.app[SETTINGS],
                                  request.app[RULES])
    if not synced:
        raise invalid("no WhatsApp Business Account is configured (WHATSAPP_BUSINESS_ACCOUNT_ID): nothing to sync")
    failed = [s for s in synced if not s.ok]
    if failed:
        raise ApiError(502, "SYNC_FAILED", "; ".join(s.line() for s in failed), syncs=[s.as_dict() for s in synced])
    return ok(syncs=[s.as_dict() for s in synced])
