"""The HTTP ceiling: a bare aiohttp handler that reads the body and answers 200.

Same server stack as ``wacrm serve`` (aiohttp on the same event loop, one process, no access log) minus the
signature check, the JSON parse and the durable publish, so the webhook's figure can be
read as a fraction of what aiohttp itself does on this machine.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from wacrm.core import eventloop


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200, body=b'{"status":"accepted"}', content_type="application/json")


def main(argv: list[str] | None = None) -> int:
    eventloop.install()
    p = argparse.ArgumentParser(prog="python -m bench.bare")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/webhooks/whatsapp", receive)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, shutdown_timeout=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
