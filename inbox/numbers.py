"""Business numbers, for admins: ``GET numbers`` and ``POST numbers`` (add one, or replace an
existing one's settings and token). A token is stored encrypted (``TOKEN_ENCRYPTION_KEY``, 409
``NO_ENCRYPTION_KEY`` without it) and never shown again; the replies waiting for a new token go.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from wacrm.inbox.keys import POOL, SETTINGS
from wacrm.inbox.protocol import META_ID, ApiError, admin, body_of, invalid, ok
from wacrm.storage import numbers as stored
from wacrm.whatsapp.limits import ACCESS_TOKEN_MAX_CHARS, is_access_token

log = logging.getLogger("wacrm.inbox")

_NUMBER_FIELDS = {"phone_number_id", "waba_id", "label", "access_token", "rate_limit_per_s", "coexistence"}


async def list_numbers(request: web.Request) -> web.Response:
    admin(request)
    async with request.app[POOL].acquire() as conn:
        found = await stored.list_numbers(conn)
    return ok(numbers=[n.as_json() for n in found])


def _new_number(body: dict[str, Any]) -> stored.NewNumber:
    unknown = sorted(set(body) - _NUMBER_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; a number has {', '.join(sorted(_NUMBER_FIELDS))}")
    pid, waba, token = body.get("phone_number_id"), body.get("waba_id"), body.get("access_token")
    if not isinstance(pid, str) or not META_ID.fullmatch(pid):
        raise invalid("phone_number_id is required: Meta's id of the business number")
    if not isinstance(waba, str) or not META_ID.fullmatch(waba):
        raise invalid("waba_id is required: the WhatsApp Business Account's id")
    if not isinstance(token, str) or not is_access_token(token):
        raise invalid(f"access_token is required: 1 to {ACCESS_TOKEN_MAX_CHARS} characters without spaces")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or not label.strip() or len(label) > 100):
        raise invalid("label must be 1 to 100 characters")
    rate = body.get("rate_limit_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1000):
        raise invalid("rate_limit_per_s must be more than 0 and at most 1000 sends per second")
    coexistence = body.get("coexistence", False)
    if not isinstance(coexistence, bool):
        raise invalid("coexistence must be true or false")
    return stored.NewNumber(pid, waba, token, label.strip() if label else None,
                             float(rate) if rate is not None else None, coexistence)


async def add_number(request: web.Request) -> web.Response:
    """Add a number or replace an existing one's settings and token; replies waiting for a new token go."""
    user = admin(request)
    new = _new_number(await body_of(request))
    key = request.app[SETTINGS].token_encryption_key
    if key is None:
        raise ApiError(409, "NO_ENCRYPTION_KEY", "TOKEN_ENCRYPTION_KEY is not set on the server: an access token "
                       "cannot be stored (the environment's number needs none)")
    cipher = stored.TokenCipher(key)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        try:
            await stored.check_tokens(conn, cipher)
        except stored.TokenKeyError as exc:
            raise ApiError(409, "NO_ENCRYPTION_KEY", str(exc)) from None
        number, resumed = await stored.add(conn, new, cipher)
    log.info("user %d added business number %s (%d waiting replies resumed)", user.id, number.phone_number_id,
             resumed)
    return ok(201, number=number.as_json(), resumed=resumed)
