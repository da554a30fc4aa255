"""Templates as the Cloud API knows them (pure): what a send must fill, the components Meta
expects, the text the customer sees, when a template may not go; and the business webhooks
(template status, quality, category, marketing preferences, account events) parsed from pywa's
fixtures and ours."""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from wacrm.agents import template_send
from wacrm.agents.ingest import split
from wacrm.core.embedded import free_port
from wacrm.storage.templates import SendContext
from wacrm.topics.records import RawRef, SendIntent
from wacrm.whatsapp import fake_meta, template_list, updates
from wacrm.whatsapp import templates as wt
from wacrm.whatsapp.fake_meta import DEFAULT_TEMPLATES, load_templates

PYWA = FIXTURES / "pywa"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLES = orjson.loads((PYWA / "template_buttons_examples.json").read_bytes())


def of(item: dict[str, Any], **changes: Any) -> wt.Template:
    return wt.template_of({"status": "APPROVED", **item, **changes})


# --- what a send must fill ------------------------------------------------------------------------

def test_a_positional_template_asks_for_its_header_body_parameters_with_metas_examples() -> None:
    spec = of(EXAMPLES["seasonal_promotion"]).parameters
    assert spec["format"] == "positional"
    assert spec["header"] == {"kind": "text", "params": [{"name": "1", "example": "Summer Sale"}]}
    assert spec["body"] == [{"name": "1", "example": "the end of August"}, {"name": "2", "example": "25OFF"},
                            {"name": "3", "example": "25%"}]
    assert spec["buttons"] == []  # quick replies take no value


def test_a_media_header_and_static_buttons() -> None:
    spec = of(EXAMPLES["order_confirmation"]).parameters
    assert spec["header"] == {"kind": "document", "example": "4::YX..."}
    assert [p["name"] for p in spec["body"]] == ["1", "2"] and spec["buttons"] == []


def test_named_parameters_and_a_dynamic_url_button_and_a_copy_code() -> None:
    catalogue = {(t["name"], t["language"]): t for t in load_templates()}
    named = of(catalogue["delivery_window", "en"]).parameters
    assert named["format"] == "named"
    assert named["body"] == [{"name": "first_name", "example": "Jess"}, {"name": "start", "example": "9:00"},
                             {"name": "end", "example": "11:00"}]
    url = of(catalogue["order_update", "en_US"]).parameters["buttons"]
    assert url == [{"index": 0, "type": "url", "text": "Track it", "name": "1",
                    "example": "https://shop.example.com/track/566701"}]
    code = of(catalogue["coupon_offer", "en"]).parameters["buttons"]
    assert code[0]["type"] == "copy_code" and code[0]["example"] == "SPRING15"


def test_every_missing_and_unknown_parameter_is_named() -> None:
    spec = of(EXAMPLES["seasonal_promotion"]).parameters
    assert wt.problems(spec, {"header": ["Summer Sale"], "body": ["August", "25OFF", "25%"]}) == []
    problems = wt.problems(spec, {"body": ["August", ""], "footer": "x"})
    assert "missing parameter header {{1}}" in problems
    assert "missing parameter body {{2}}" in problems and "missing parameter body {{3}}" in problems
    assert any("unknown part 'footer'" in p for p in problems)
    assert wt.problems(spec, {"header": "S", "body": ["a", "b", "c", "d"]}) == [
        "unknown parameter body {{4}} (the template has 3)"]
    media = of(EXAMPLES["order_confirmation"]).parameters
    assert wt.problems(media, {"body": ["Pablo", "86"]}) == ["missing parameter header document (a link or a media id)"]
    named = of(next(t for t in load_templates() if t["name"] == "delivery_window")).parameters
    assert wt.problems(named, {"body": {"first_name": "Jess", "start": "9", "colour": "red"}}) == [
        "unknown parameter body {{colour}}", "missing parameter body {{end}}"]


def test_components_in_the_shape_meta_expects() -> None:
    catalogue = {(t["name"], t["language"]): t for t in load_templates()}
    promo = of(EXAMPLES["seasonal_promotion"])
    assert wt.send_components(promo.parameters, {"header": "Summer Sale", "body": ["Aug", "25OFF", "25%"]}) == [
        {"type": "header", "parameters": [{"type": "text", "text": "Summer Sale"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Aug"}, {"type": "text", "text": "25OFF"},
                                        {"type": "text", "text": "25%"}]}]
    receipt = of(EXAMPLES["order_confirmation"])
    assert wt.send_components(receipt.parameters, {"header": {"link": "https://x.example/r.pdf"},
                                                   "body": ["Pablo", "1"]})[0] == {
        "type": "header", "parameters": [{"type": "document", "document": {"link": "https://x.example/r.pdf"}}]}
    named = of(catalogue["delivery_window", "en"])
    assert wt.send_components(named.parameters, {"body": {"end": "11", "first_name": "Jess", "start": "9"}}) == [
        {"type": "body", "parameters": [{"type": "text", "text": "Jess", "parameter_name": "first_name"},
                                        {"type": "text", "text": "9", "parameter_name": "start"},
                                        {"type": "text", "text": "11", "parameter_name": "end"}]}]
    track = of(catalogue["order_update", "en_US"])
    assert wt.send_components(track.parameters, {"body": ["Mark", "5"], "buttons": ["566701"]})[-1] == {
        "type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "566701"}]}
    coupon = of(catalogue["coupon_offer", "en"])
    assert wt.send_components(coupon.parameters, {"body": ["15%"], "buttons": {"0": "SPRING15"}})[-1] == {
        "type": "button", "sub_type": "copy_code", "index": "0",
        "parameters": [{"type": "coupon_code", "coupon_code": "SPRING15"}]}
    with pytest.raises(ValueError, match=r"missing parameter body \{\{2\}\}"):
        wt.send_components(promo.parameters, {"header": "S", "body": ["Aug"]})


def test_the_stored_body_is_the_text_the_customer_sees() -> None:
    promo = of(EXAMPLES["seasonal_promotion"])
    assert wt.render(promo, {"header": "Winter Sale", "body": ["Friday", "COLD", "30%"]}) == (
        "Our Winter Sale is on!\nShop now through Friday and use code COLD to get 30% off of all merchandise.\n"
        "Use the buttons below to manage your MARKETING subscriptions\n"
        "[Unsubscribe from Promos] [Unsubscribe from All]")
    receipt = of(EXAMPLES["order_confirmation"])
    assert wt.render(receipt, {"header": "https://x/r.pdf", "body": ["Pablo", "42"]}).startswith(
        "[document]\nThank you for your order, Pablo! Your order number is 42.")


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
    lambda s: s.strip() != "" and "{{" not in s and "}}" not in s)


@given(st.lists(texts, min_size=1, max_size=6), st.booleans())
def test_any_template_filled_completely_goes_and_shows_every_value(values: list[str], named: bool) -> None:
    names = [f"p{i}" for i in range(len(values))] if named else [str(i + 1) for i in range(len(values))]
    body = "Dear " + ", ".join("{{" + n + "}}" for n in names) + "."
    example = ({"body_text_named_params": [{"param_name": n, "example": "x"} for n in names]} if named
               else {"body_text": [["x"] * len(names)]})
    t = wt.template_of({"name": "t", "language": "en", "status": "APPROVED", "category": "UTILITY",
                        "parameter_format": "NAMED" if named else "POSITIONAL",
                        "components": [{"type": "BODY", "text": body, "example": example}]})
    given_ = {"body": dict(zip(names, values, strict=True)) if named else values}
    assert wt.problems(t.parameters, given_) == []
    (component,) = wt.send_components(t.parameters, given_)
    assert [p["text"] for p in component["parameters"]] == values
    assert all(("parameter_name" in p) == named for p in component["parameters"])
    assert wt.render(t, given_) == "Dear " + ", ".join(values) + "."
    if len(values) > 1:  # one left out is named, whichever it is
        short = {"body": dict(list(zip(names, values, strict=True))[1:]) if named else ["", *values[1:]]}
        assert wt.problems(t.parameters, short) == [f"missing parameter body {{{{{names[0]}}}}}"]


# --- when a template may not go -----------------------------------------------------------------

def test_only_an_approved_template_goes_and_marketing_never_to_an_opted_out_customer() -> None:
    utility = of(EXAMPLES["order_confirmation"])
    marketing = of(EXAMPLES["seasonal_promotion"])
    assert wt.refusal(utility, marketing_opt_out=True, restricted_until=None, now=NOW) is None
    assert wt.refusal(marketing, marketing_opt_out=False, restricted_until=None, now=NOW) is None
    refused = wt.refusal(marketing, marketing_opt_out=True, restricted_until=None, now=NOW)
    assert refused is not None and refused.code == "MARKETING_OPTED_OUT"
    paused = of(EXAMPLES["order_confirmation"], status="PAUSED")
    refused = wt.refusal(paused, marketing_opt_out=False, restricted_until=None, now=NOW)
    assert refused is not None and refused.code == "TEMPLATE_NOT_APPROVED" and "PAUSED" in refused.error
    later = NOW + timedelta(days=2)
    refused = wt.refusal(utility, marketing_opt_out=False, restricted_until=later, now=NOW)
    assert refused is not None and refused.code == "ACCOUNT_RESTRICTED"
    assert wt.refusal(utility, marketing_opt_out=False, restricted_until=NOW - timedelta(seconds=1), now=NOW) is None


def _intent(template: dict[str, Any]) -> SendIntent:
    return SendIntent(dedupe_key="template:auto:x", conversation_key="1:2", conversation_id=1, phone_number_id="1",
                      to="15550002222", text="[template follow_up (en)] friend", kind="template", template=template)


def test_the_bots_window_template_is_completed_from_the_catalogue_or_refused() -> None:
    follow = wt.template_of(next(t for t in load_templates() if t["name"] == "follow_up"))
    intent = _intent({"name": "follow_up", "language": "en", "parameters": ["friend"]})
    sent, refused = template_send.decide(intent, SendContext(follow, False, None), NOW)
    assert refused is None and sent.text.startswith("Hi friend, we have not heard from you in a while.")
    assert sent.template and sent.template["components"] == [
        {"type": "body", "parameters": [{"type": "text", "text": "friend"}]}]
    # unknown to the catalogue: as stored (Meta decides)
    assert template_send.decide(intent, SendContext(None, False, None), NOW) == (intent, None)
    _, refused = template_send.decide(intent, SendContext(None, False, NOW + timedelta(hours=1)), NOW)
    assert refused is not None and refused.kind == "account_restricted" and not refused.dead_letter
    paused = wt.template_of({**next(t for t in load_templates() if t["name"] == "follow_up"), "status": "PAUSED"})
    _, refused = template_send.decide(intent, SendContext(paused, False, None), NOW)
    assert refused is not None and refused.error["code"] == "TEMPLATE_NOT_APPROVED"
    _, refused = template_send.decide(_intent({"name": "follow_up", "language": "en", "parameters": []}),
                                      SendContext(follow, False, None), NOW)
    assert refused is not None and "missing parameter body {{1}}" in refused.error["error"]


# --- the business webhooks ----------------------------------------------------------------------

def _examples(name: str) -> list[tuple[str, dict[str, Any]]]:
    return list(orjson.loads((PYWA / f"{name}.json").read_bytes()).items())


PYWA_BODIES = [(f"{f}:{k}", body) for f in ("template_status_update", "template_quality_update",
                                             "template_category_update", "user_marketing_preferences",
                                             "account_update") for k, body in _examples(f)]


@pytest.mark.parametrize(("name", "body"), PYWA_BODIES, ids=[n for n, _ in PYWA_BODIES])
def test_every_pywa_fixture_parses(name: str, body: dict[str, Any]) -> None:
    found = updates.parse(body)
    assert found.problems == [] and found, name
    assert len(found.templates) + len(found.preferences) + len(found.accounts) == 1


def test_template_updates_carry_what_changed_and_why() -> None:
    (rejected,) = updates.parse(dict(_examples("template_status_update"))["rejected"]).templates
    assert (rejected.waba_id, rejected.name, rejected.language, rejected.status, rejected.category) == (
        "102290129340398", "abandoned_cart", "en", "REJECTED", "MARKETING")
    assert rejected.reason and rejected.reason.startswith("Your template has parameters placed next to each other")
    (quality,) = updates.parse(dict(_examples("template_quality_update"))["yellow"]).templates
    assert (quality.quality, quality.status, quality.category) == ("YELLOW", None, None)
    (category,) = updates.parse(dict(_examples("template_category_update"))["marketing"]).templates
    assert (category.category, category.status) == ("MARKETING", None)
    (paused,) = updates.parse(orjson.loads((FIXTURES / "webhooks" / "62_template_status_paused.json").read_bytes())
                              ).templates
    assert paused.status == "PAUSED" and paused.reason and "paused for 3 hours" in paused.reason


def test_preferences_and_account_events() -> None:
    (resume,) = updates.parse(dict(_examples("user_marketing_preferences"))["resume"]).preferences
    assert (resume.phone_number_id, resume.wa_id, resume.value, resume.category) == (
        "106540352242922", "16505551234", "resume", "marketing_messages")
    accounts = dict(_examples("account_update"))
    (restriction,) = updates.parse(accounts["account_restriction"]).accounts
    assert restriction.restrictions() == [("RESTRICTED_BIZ_INITIATED_MESSAGING", 1641330498),
                                          ("RESTRICTED_ADD_PHONE_NUMBER_ACTION", 1641330498)]
    (violation,) = updates.parse(accounts["account_violation"]).accounts
    assert violation.words() == "Meta: account account violation (violation_type: ADULT)"
    (disabled,) = updates.parse(accounts["account_disabled"]).accounts
    assert "waba_ban_state: REINSTATE" in disabled.words() and disabled.event == "DISABLED_UPDATE"


def test_a_broken_update_is_a_problem_and_the_rest_of_the_body_goes_on() -> None:
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "time": 5, "changes": [
        {"field": "message_template_status_update", "value": {"event": "PAUSED"}},
        {"field": "account_update", "value": {"event": "ACCOUNT_OFFBOARDED"}}]}]}
    found = updates.parse(body)
    assert len(found.accounts) == 1 and len(found.problems) == 1
    assert "message_template_name" in found.problems[0]


MANIFEST = [r for r in csv.DictReader((FIXTURES / "webhooks" / "manifest.csv").open())
            if re.match(r"(6\d|70)_", r["file"])]


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_our_business_fixtures_are_split_as_updates_not_ignored(row: dict[str, str]) -> None:
    out = split((FIXTURES / "webhooks" / row["file"]).read_bytes(), RawRef("wa.webhook.raw", 0, 0), 0.0)
    assert out.messages == [] and out.statuses == [] and out.parsed.problems == []
    assert out.parsed.ignored_fields == [] and out.business


def test_fake_metas_shipped_catalogue_reads_as_templates() -> None:
    items = load_templates(Path(DEFAULT_TEMPLATES))
    assert len(items) > 20
    found = [wt.template_of(t) for t in items]
    assert {t.status for t in found} >= {"APPROVED", "PAUSED", "REJECTED"}
    assert {("follow_up", "en"), ("follow_up", "en_US")} <= {(t.name, t.language) for t in found}


async def test_every_page_is_read_by_following_paging_next(tmp_path: Path) -> None:
    """whatsapp.template_list against fake-meta over loopback, with a catalogue given as --templates gives it."""
    items = [{"name": f"t{i:02d}", "language": "en", "status": "APPROVED", "category": "UTILITY",
              "components": [{"type": "BODY", "text": "Hi {{1}}"}]} for i in range(23)]
    path = tmp_path / "catalogue.json"
    path.write_bytes(orjson.dumps(items))
    runner = web.AppRunner(fake_meta.make_app(templates=fake_meta.load_templates(path)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    pages: list[tuple[int, int]] = []
    try:
        async with aiohttp.ClientSession() as s:
            found, n = await template_list.fetch_all(s, f"http://127.0.0.1:{port}", "v25.0", "100000000000001", "tok",
                                                     timeout=10, on_page=lambda p, c: pages.append((p, c)))
            assert [t.name for t in found] == [t["name"] for t in items] and n == 3
            assert pages == [(1, 10), (2, 20), (3, 23)]
            with pytest.raises(template_list.ListError, match=r"HTTP 401, code 190"):
                await template_list.fetch_all(s, f"http://127.0.0.1:{port}", "v25.0", "1", "", timeout=10)
    finally:
        await runner.cleanup()
    (tmp_path / "bad.json").write_text('{"nope": 1}')
    with pytest.raises(ValueError, match="expected a JSON list of templates"):
        fake_meta.load_templates(tmp_path / "bad.json")
