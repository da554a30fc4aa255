"""What the sender does with a template intent, given the catalogue: a pure function, no I/O.

A template the catalogue knows goes with the components Meta expects and, as the stored body, the
text the customer sees (the bot's window template from the rules file gets both here; a person's
got them when the inbox checked the send). It does not go when it is not APPROVED any more (Meta
paused or disabled it since), when it is MARKETING and the contact stopped marketing messages, or
while the account is restricted from business-initiated messages: a failed row and a task for a
person, no dead letter (nothing is wrong with the event). A template the catalogue does not know
goes as stored (Meta decides), unless the account is restricted.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from wacrm.agents.sending import Fail
from wacrm.storage.templates import SendContext
from wacrm.topics.records import SendIntent
from wacrm.whatsapp import templates as wt


def _fail(code: str, error: str, title: str) -> Fail:
    return Fail(code.lower(), {"error": error, "code": code}, title, dead_letter=False)


def decide(intent: SendIntent, ctx: SendContext, now: datetime) -> tuple[SendIntent, Fail | None]:
    """The intent to send (completed from the catalogue), or why it must not go."""
    t = intent.template or {}
    name = f"{t.get('name')} ({t.get('language')})"
    if ctx.template is None:
        if ctx.restricted_until is not None and ctx.restricted_until > now:
            return intent, _fail("ACCOUNT_RESTRICTED", "Meta restricted business-initiated messages from this "
                                 "account", f"Template {name} not sent: the account is restricted by Meta")
        return intent, None
    refused = wt.refusal(ctx.template, marketing_opt_out=ctx.marketing_opt_out,
                         restricted_until=ctx.restricted_until, now=now)
    if refused is not None:
        return intent, _fail(refused.code, refused.error, f"Template {name} not sent: {refused.error}")
    if "components" in t:  # a person's send, checked and built when it was queued
        return intent, None
    spec = ctx.template.parameters
    given = t.get("parameters") or []
    problems = wt.problems(spec, given)
    if problems:
        error = f"the parameters do not fit template {name}: " + "; ".join(problems)
        return intent, _fail("TEMPLATE_PARAMETERS", error, f"Template {name} not sent: {error}")
    template = {**t, "category": ctx.template.category, "components": wt.send_components(spec, given)}
    return dataclasses.replace(intent, template=template, text=wt.render(ctx.template, given)), None
