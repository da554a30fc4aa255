"""A scriptable stand-in for an OpenAI-compatible ``POST /v1/chat/completions`` endpoint.

Runs in its owner's event loop (a test's, the fault suite's) on 127.0.0.1 and a free port;
answers with bodies shaped like real ``chat.completion`` objects and records every request.
Each request takes the next scripted step, oldest first; when none is left it gets a plain
reply with ``default_reply`` after ``default_delay`` seconds (a slow model).

Steps (keys combine; ``delay`` applies before any answer)::

    {"reply": "text"}                       a normal answer
    {"handover": "reason", "reply": "..."}  a handover_to_human tool call, with optional content
    {"handover": "r", "arguments": "{oops"} the tool call's ``arguments`` string sent verbatim
    {"empty": True}                         content "" and no tool call
    {"delay": 1.5, ...}                     sleep that many seconds first
    {"status": 500}                         an OpenAI-style error envelope with that HTTP status
    {"raw": "<html>", "status": 200}        that text verbatim (not JSON), default status 200
    {"json": {...}, "status": 200}          that JSON body verbatim, default status 200

If ``api_key`` is set, requests without ``Authorization: Bearer <api_key>`` get a 401, as
from OpenAI; a body that is not JSON or lacks ``model``/``messages`` gets a 400.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

_STEP_KEYS = frozenset({"reply", "handover", "arguments", "empty", "delay", "status", "raw", "json"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> web.Response:
    return _json({"error": {"message": message, "type": type_, "param": None, "code": code}}, status)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeLlm:
    """One fake endpoint: ``await start()`` gives its base URL, ``await stop()`` closes it."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.base_url = ""  # set by start(), e.g. "http://127.0.0.1:41234/v1"
        self.default_reply = "default reply"
        self.default_delay = 0.0  # seconds before an unscripted answer
        # One record per request: {"path", "authorization", "content_type", "received_at", "body"};
        # body is the decoded JSON, or None when the request body was not JSON.
        self.requests: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    def script(self, *steps: dict[str, Any]) -> None:
        """Queue answers for the next requests, in order. Unknown step keys raise ``ValueError``."""
        for step in steps:
            unknown = set(step) - _STEP_KEYS
            if unknown:
                raise ValueError(f"unknown fake LLM step keys {sorted(unknown)}; known: {sorted(_STEP_KEYS)}")
        self._steps.extend(steps)

    @property
    def pending(self) -> int:
        """How many scripted steps no request has taken yet."""
        return len(self._steps)

    @property
    def bodies(self) -> list[Any]:
        return [r["body"] for r in self.requests]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        # handler_cancellation: a client that gave up (a timeout test) cancels its delayed answer,
        # so stop() does not wait out the delay.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _completions(self, request: web.Request) -> web.Response:
        raw = await request.read()
        record: dict[str, Any] = {
            "path": request.path,
            "authorization": request.headers.get("Authorization"),
            "content_type": request.headers.get("Content-Type"),
            "received_at": time.time(),
            "body": None,
        }
        self.requests.append(record)
        try:
            record["body"] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if self.api_key is not None and record["authorization"] != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        body = record["body"]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) \
                or not isinstance(body.get("messages"), list):
            return _error(400, "model and messages are required.")

        step: dict[str, Any] = self._steps.pop(0) if self._steps else {"reply": self.default_reply,
                                                                        "delay": self.default_delay}
        if step.get("delay"):
            await asyncio.sleep(step["delay"])
        status = int(step.get("status", 200))
        if "raw" in step:
            return web.Response(text=str(step["raw"]), status=status, content_type="text/plain")
        if "json" in step:
            return _json(step["json"], status)
        if status != 200:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return _error(status, f"Scripted failure (HTTP {status}).", kind)
        return _json(self._completion(body, step))

    def _completion(self, body: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        content: str | None = "" if step.get("empty") else step.get("reply")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish_reason = "stop"
        if "handover" in step:
            arguments = step["arguments"] if "arguments" in step else orjson.dumps(
                {"reason": step["handover"]}).decode()
            message["tool_calls"] = [{
                "id": f"call_fake{next(self._ids):06d}",
                "type": "function",
                "function": {"name": "handover_to_human", "arguments": arguments},
            }]
            finish_reason = "tool_calls"
        elif content is None:
            message["content"] = self.default_reply
        prompt = " ".join(str(m.get("content") or "") for m in body["messages"] if isinstance(m, dict))
        completion_tokens = _tokens(str(message["content"] or ""))
        prompt_tokens = _tokens(prompt)
        return {
            "id": f"chatcmpl-fake{next(self._ids):06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
