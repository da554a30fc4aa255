"""The web inbox's pages over plain HTTP (no browser): the sign-in page, the redirect of a signed-out
visit, the signed-in shell with its selectors, the assets served, and a missing asset refused at start."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import Stack
from inbox_client import make_user, sign_in

from wacrm.inbox import web as pages


async def _get(base: str, path: str, cookie: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {"Cookie": cookie} if cookie else {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s, \
            s.get(base + path, headers=headers, allow_redirects=False) as r:
        return r.status, dict(r.headers), await r.text()


async def test_a_signed_out_visit_goes_to_the_sign_in_form(stack: Stack) -> None:
    status, headers, _ = await _get(stack.base, "/")
    assert status == 302 and headers["Location"] == "/login"
    status, _, html = await _get(stack.base, "/login")
    assert status == 200
    assert 'name="email"' in html and 'name="password"' in html and 'type="submit"' in html


async def test_the_signed_in_page_has_the_three_panes_and_its_own_assets(stack: Stack, db: asyncpg.Connection) -> None:
    user = await make_user(db, "agent")
    api = await sign_in(stack.base, user.email)
    status, headers, html = await _get(stack.base, "/", api.cookie)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    for pane in ('id="list-pane"', 'id="thread-pane"', 'id="info-pane"', 'textarea name="text"'):
        assert pane in html
    assert f'<meta name="csrf-token" content="{api.csrf}">' in html
    assert 'id="deleted-btn"' not in html  # the admin view is for admins
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert {a.split("?")[0] for a in assets} == {"/static/inbox.css", "/static/inbox.js"}
    for asset in assets:
        status, _, body = await _get(stack.base, asset)
        assert status == 200 and body
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', html))  # nothing from elsewhere


def test_a_missing_asset_stops_the_start_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages.check_assets()  # the installed ones are all there
    gone = tmp_path / "inbox.js"
    monkeypatch.setattr(pages, "ASSETS", (*pages.ASSETS, gone))
    with pytest.raises(pages.MissingAsset, match=re.escape(str(gone))):
        pages.check_assets()
