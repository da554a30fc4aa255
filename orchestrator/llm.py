"""A reply from any OpenAI-compatible chat-completions endpoint (OpenAI, DeepSeek, a local server).

The model answers in one of two ways: a text reply, or a call to the ``handover_to_human``
tool (possibly with some text too). A handover is only ever read from that structured tool
call, never guessed from the wording of the reply.

Exception tree (catch at the level you need)::

    LlmError                no usable answer came back
    ├── LlmTimeout          no complete answer within ``timeout`` seconds; retryable
    ├── LlmUnavailable      connection failed, or HTTP 5xx / 429 / 408; retryable
    └── LlmBadAnswer        HTTP 4xx (other than 429 / 408), a body that is not a chat
                            completion, or an empty reply without a handover; asking the
                            same thing again will not help

``retryable`` on each class says whether sending the same request later may succeed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

HANDOVER_TOOL = "handover_to_human"

_HANDOVER_TOOL_SPEC: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": HANDOVER_TOOL,
        "description": ("Hand the conversation over to a human agent. Call this when the customer asks "
                        "for a person, when you cannot help, or when the request needs a human decision."),
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why a human is needed, in one short sentence."},
            },
            "required": ["reason"],
        },
    },
}

_ROLES = {"customer": "user", "business": "assistant"}

# How much of an error body goes into an exception message.
_DETAIL_CHARS = 300


class LlmError(Exception):
    retryable = False

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class LlmTimeout(LlmError):
    retryable = True


class LlmUnavailable(LlmError):
    retryable = True


class LlmBadAnswer(LlmError):
    pass


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "customer" | "business"
    text: str


@dataclass(frozen=True, slots=True)
class LlmAnswer:
    reply: str | None  # None only when handover is True
    handover: bool
    handover_reason: str | None
    latency_s: float


def truncate(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else cut at a word boundary and ended with "…".

    The result, ellipsis included, is never longer than ``limit``.
    """
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    head = text[:limit - 1]
    if not text[limit - 1].isspace():  # the cut falls inside a word: drop that word's start
        boundary = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
        # One very long "word" (a URL) is cut mid-word rather than emptied.
        if boundary > limit // 2:
            head = head[:boundary]
    return head.rstrip(" \t\n,;:-–—") + "…"


def _error_detail(raw: bytes) -> str:
    """The provider's error message when the body is an OpenAI error envelope, else the body's start."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:_DETAIL_CHARS].decode("utf-8", "replace")
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"][:_DETAIL_CHARS]
    if isinstance(err, str):
        return err[:_DETAIL_CHARS]
    return raw[:_DETAIL_CHARS].decode("utf-8", "replace")


def _handover_reason(arguments: Any) -> str | None:
    """The ``reason`` argument of a tool call; ``None`` when the arguments cannot be read."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return None
    if isinstance(arguments, dict) and isinstance(arguments.get("reason"), str):
        return arguments["reason"].strip() or None
    return None


def _content_text(content: Any) -> str | None:
    """``message.content`` as text (null, a string, or some servers' list of text parts); else ``None``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return None


class LlmClient:
    """Asks ``{base_url}/chat/completions`` for the business's next message in a conversation.

    Owns no session: the caller passes one in and closes it. Every call, body included, is
    bounded by ``timeout`` seconds. Replies longer than ``max_reply_chars`` are cut at a word
    boundary; ``max_tokens`` is derived from the same limit so the model is asked to stay short.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str | None, model: str, *,
                 timeout: float, max_reply_chars: int) -> None:
        if max_reply_chars < 1:
            raise ValueError("max_reply_chars must be at least 1")
        self._session = session
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._model = model
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_reply_chars = max_reply_chars
        # Roughly 3 characters a token in the languages we serve, plus room for a short tool call.
        self._max_tokens = max_reply_chars // 3 + 16

    def request_body(self, system_prompt: str, history: list[Turn]) -> dict[str, Any]:
        """The JSON body sent for this conversation. Raises ``ValueError`` for an unknown turn role."""
        messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}]
        for turn in history:
            role = _ROLES.get(turn.role)
            if role is None:
                raise ValueError(f"unknown turn role {turn.role!r}; expected one of {sorted(_ROLES)}")
            messages.append({"role": role, "content": turn.text})
        return {
            "model": self._model,
            "messages": messages,
            "max_tokens": self._max_tokens,
            "temperature": 0.3,
            "tools": [_HANDOVER_TOOL_SPEC],
            "tool_choice": "auto",
        }

    async def answer(self, system_prompt: str, history: list[Turn]) -> LlmAnswer:
        """The model's reply to ``history``, or its request for a human. Raises :class:`LlmError`."""
        body = orjson.dumps(self.request_body(system_prompt, history))
        started = time.monotonic()
        try:
            async with self._session.post(self._url, data=body, headers=self._headers,
                                          timeout=self._timeout) as resp:
                raw = await resp.read()
                status = resp.status
        # aiohttp's timeout errors are also ClientErrors: this clause must come first.
        except TimeoutError:
            raise LlmTimeout(f"LLM did not answer within {self._timeout.total}s") from None
        except aiohttp.ClientError as exc:
            raise LlmUnavailable(f"LLM unreachable: {exc}") from None
        latency = time.monotonic() - started
        if not 200 <= status < 300:
            detail = _error_detail(raw)
            # 408 is a proxy or server giving up on us: as transient as a 429.
            if status >= 500 or status in (408, 429):
                raise LlmUnavailable(f"LLM answered HTTP {status}: {detail}", http_status=status)
            raise LlmBadAnswer(f"LLM answered HTTP {status}: {detail}", http_status=status)
        return self._parse(raw, status, latency)

    def _parse(self, raw: bytes, status: int, latency: float) -> LlmAnswer:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise LlmBadAnswer(f"LLM answered HTTP {status} with a body that is not JSON",
                               http_status=status) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get("message"), dict):
            raise LlmBadAnswer("LLM answer has no choices[0].message", http_status=status)
        message = choices[0]["message"]

        handover, reason = False, None
        tool_calls = message.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and function.get("name") == HANDOVER_TOOL:
                handover = True
                reason = reason or _handover_reason(function.get("arguments"))

        text = _content_text(message.get("content"))
        if text is None:
            raise LlmBadAnswer("LLM answer content is not text", http_status=status)
        text = text.strip()
        if not text:
            if not handover:
                raise LlmBadAnswer("LLM answered with an empty reply and no handover", http_status=status)
            return LlmAnswer(None, True, reason, latency)
        return LlmAnswer(truncate(text, self._max_reply_chars), handover, reason, latency)
