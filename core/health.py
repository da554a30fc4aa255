"""What every HTTP server of wacrm answers about itself: ``/healthz``, ``/metrics`` and the
shape of ``/readyz``.

``/healthz`` is 200 while the process serves. ``/readyz`` is 200 with ``{"status": "ready"}``,
or 503 with ``{"status": "not_ready", "problems": {part: fixed hint}}``; each server decides its
own problems (the webhook asks the broker, the inbox its database) and never puts exception text
in them: that goes to the log.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from wacrm.core import metrics


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics_view(request: web.Request) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def readiness(problems: dict[str, str]) -> dict[str, Any]:
    """One server's (or one half's) readiness as ``/readyz`` tells it."""
    return {"status": "not_ready", "problems": problems} if problems else {"status": "ready"}


def readiness_response(report: dict[str, Any], ready: bool) -> web.Response:
    """``report`` as JSON, 200 when ``ready``, else 503."""
    return web.Response(status=200 if ready else 503, body=orjson.dumps(report), content_type="application/json")
