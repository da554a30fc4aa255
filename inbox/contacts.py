"""Contacts: ``PATCH contacts/{id}``, a person corrects a contact's name and/or phone (read as a
phone number in international format, or in ``DEFAULT_PHONE_REGION``, and stored as E.164)."""

from __future__ import annotations

from typing import Any

import phonenumbers
from aiohttp import web

from wacrm.inbox import store
from wacrm.inbox.keys import POOL, SETTINGS
from wacrm.inbox.protocol import body_of, invalid, not_found, ok, path_id
from wacrm.whatsapp.graph import InvalidRecipient, recipient_field


def _phone_of(value: Any, region: str | None) -> str:
    """A phone a person typed, as E.164 (``+`` and digits); 422 naming ``phone`` otherwise."""
    if not isinstance(value, str) or not value.strip() or len(value) > 40:
        raise invalid("phone must be a phone number, e.g. +351912345678")
    try:
        field, e164 = recipient_field(value, region)
    except InvalidRecipient:
        field, e164 = "", ""
    if field != "to" or not phonenumbers.is_valid_number(phonenumbers.parse(e164)):
        where = f" (numbers without a country code are read as {region})" if region else ""
        raise invalid(f"phone {value.strip()!r} is not a valid phone number in international format, "
                      f"e.g. +351912345678{where}")
    return e164


async def update_contact(request: web.Request) -> web.Response:
    """A person corrects a contact's ``name`` and/or ``phone`` (normalised to E.164)."""
    contact_id = path_id(request)
    body = await body_of(request)
    unknown = sorted(set(body) - {"name", "phone"})
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; a contact has name and phone")
    if "name" not in body and "phone" not in body:
        raise invalid("send name and/or phone")
    name = body.get("name")
    if "name" in body and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        raise invalid("name must be 1 to 200 characters")
    e164 = _phone_of(body["phone"], request.app[SETTINGS].default_phone_region) if "phone" in body else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        outcome = await store.update_contact(conn, contact_id, name.strip() if isinstance(name, str) else None,
                                             e164[1:] if e164 else None)
        if outcome == "missing":
            raise not_found("contact")
        if outcome == "taken":
            raise invalid(f"phone {e164} belongs to another contact of this business number")
        row = await store.contact(conn, contact_id)
    assert row is not None
    return ok(contact=store.contact_json(row))
