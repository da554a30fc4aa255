"""The LLM client against a fake OpenAI-compatible server over real loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from fake_llm import FakeLlm

from wacrm.orchestrator.llm import (
    LlmAnswer,
    LlmBadAnswer,
    LlmClient,
    LlmError,
    LlmTimeout,
    LlmUnavailable,
    Turn,
    truncate,
)

SYSTEM = "You answer for Acme Bakery. Be brief."
HISTORY = [Turn("customer", "Hi, are you open?"), Turn("business", "Yes, until 6pm."),
           Turn("customer", "Do you have rye bread?")]

MakeClient = Callable[..., LlmClient]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLlm]:
    server = FakeLlm()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def make_client(fake: FakeLlm, session: aiohttp.ClientSession) -> MakeClient:
    def make(*, base_url: str | None = None, api_key: str | None = "sk-test", model: str = "test-model",
             timeout: float = 5.0, max_reply_chars: int = 500) -> LlmClient:
        return LlmClient(session, base_url or fake.base_url, api_key, model,
                         timeout=timeout, max_reply_chars=max_reply_chars)
    return make


async def test_reply(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"reply": "  Yes, fresh rye every morning.\n"})
    answer = await make_client().answer(SYSTEM, HISTORY)
    assert answer.reply == "Yes, fresh rye every morning."
    assert answer.handover is False and answer.handover_reason is None
    assert 0 <= answer.latency_s < 5


async def test_unscripted_request_gets_default_reply(fake: FakeLlm, make_client: MakeClient) -> None:
    assert (await make_client().answer(SYSTEM, HISTORY)).reply == "default reply"
    fake.default_reply = "something else"
    assert (await make_client().answer(SYSTEM, HISTORY)).reply == "something else"


async def test_request_carries_system_prompt_history_and_parameters(fake: FakeLlm, make_client: MakeClient) -> None:
    await make_client(model="deepseek-chat", max_reply_chars=300).answer(SYSTEM, HISTORY)
    [record] = fake.requests
    assert record["path"] == "/v1/chat/completions"
    assert record["content_type"] == "application/json"
    body = record["body"]
    assert body["model"] == "deepseek-chat"
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi, are you open?"},
        {"role": "assistant", "content": "Yes, until 6pm."},
        {"role": "user", "content": "Do you have rye bread?"},
    ]
    assert body["max_tokens"] == 300 // 3 + 16
    assert body["temperature"] == 0.3
    assert body["tool_choice"] == "auto"


async def test_handover_tool_is_offered(fake: FakeLlm, make_client: MakeClient) -> None:
    await make_client().answer(SYSTEM, HISTORY)
    [tool] = fake.requests[0]["body"]["tools"]
    assert tool["type"] == "function"
    function = tool["function"]
    assert function["name"] == "handover_to_human"
    assert function["parameters"]["properties"]["reason"]["type"] == "string"
    assert function["parameters"]["required"] == ["reason"]


async def test_bearer_header_when_key_is_set(fake: FakeLlm, make_client: MakeClient) -> None:
    await make_client(api_key="sk-secret").answer(SYSTEM, HISTORY)
    assert fake.requests[0]["authorization"] == "Bearer sk-secret"


async def test_no_authorization_header_without_key(fake: FakeLlm, make_client: MakeClient) -> None:
    await make_client(api_key=None).answer(SYSTEM, HISTORY)
    assert fake.requests[0]["authorization"] is None


async def test_trailing_slash_in_base_url(fake: FakeLlm, make_client: MakeClient) -> None:
    await make_client(base_url=fake.base_url + "/").answer(SYSTEM, HISTORY)
    assert fake.requests[0]["path"] == "/v1/chat/completions"


async def test_handover_without_content(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"handover": "customer asks for a refund"})
    answer = await make_client().answer(SYSTEM, HISTORY)
    assert answer == LlmAnswer(None, True, "customer asks for a refund", answer.latency_s)


async def test_handover_with_content_returns_both(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"handover": "wants a person", "reply": "Let me get a colleague for you."})
    answer = await make_client().answer(SYSTEM, HISTORY)
    assert answer.reply == "Let me get a colleague for you."
    assert answer.handover is True and answer.handover_reason == "wants a person"


async def test_handover_with_unreadable_arguments_has_no_reason(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"handover": "", "arguments": "{reason: not json"},
                {"handover": "", "arguments": '{"why": "wrong key"}'})
    for _ in range(2):
        answer = await make_client().answer(SYSTEM, HISTORY)
        assert answer.handover is True and answer.handover_reason is None and answer.reply is None


async def test_handover_is_never_guessed_from_text(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"reply": "I will hand you over to a human now."})
    answer = await make_client().answer(SYSTEM, HISTORY)
    assert answer.handover is False and answer.reply == "I will hand you over to a human now."


async def test_long_reply_is_cut_at_a_word_boundary(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"reply": "one two three four five six seven"}, {"reply": "exactly twenty chars"})
    client = make_client(max_reply_chars=20)
    assert (await client.answer(SYSTEM, HISTORY)).reply == "one two three four…"
    assert (await client.answer(SYSTEM, HISTORY)).reply == "exactly twenty chars"


def test_truncate() -> None:
    assert truncate("short", 10) == "short"
    assert truncate("hello world, again", 13) == "hello world…"
    assert len(truncate("hello world, again", 13)) <= 13
    # A single very long word is cut inside it rather than emptied.
    assert truncate("https://example.com/a/very/long/path", 12) == "https://exa…"


async def test_timeout(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"delay": 1.0, "reply": "too late"})
    started = time.monotonic()
    with pytest.raises(LlmTimeout) as err:
        await make_client(timeout=0.3).answer(SYSTEM, HISTORY)
    assert time.monotonic() - started < 0.9
    assert err.value.retryable


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_and_throttling_are_unavailable(fake: FakeLlm, make_client: MakeClient,
                                                            status: int) -> None:
    fake.script({"status": status})
    with pytest.raises(LlmUnavailable) as err:
        await make_client().answer(SYSTEM, HISTORY)
    assert err.value.http_status == status and err.value.retryable
    assert "Scripted failure" in str(err.value)


async def test_connection_refused_is_unavailable(session: aiohttp.ClientSession) -> None:
    server = FakeLlm()
    base_url = await server.start()
    await server.stop()
    client = LlmClient(session, base_url, None, "m", timeout=2.0, max_reply_chars=100)
    with pytest.raises(LlmUnavailable):
        await client.answer(SYSTEM, HISTORY)


async def test_bad_request_is_bad_answer(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"status": 400})
    with pytest.raises(LlmBadAnswer) as err:
        await make_client().answer(SYSTEM, HISTORY)
    assert err.value.http_status == 400 and not err.value.retryable


async def test_wrong_key_is_bad_answer(session: aiohttp.ClientSession) -> None:
    server = FakeLlm(api_key="sk-right")
    base_url = await server.start()
    try:
        client = LlmClient(session, base_url, "sk-wrong", "m", timeout=2.0, max_reply_chars=100)
        with pytest.raises(LlmBadAnswer) as err:
            await client.answer(SYSTEM, HISTORY)
        assert err.value.http_status == 401 and "Incorrect API key" in str(err.value)
        right = LlmClient(session, base_url, "sk-right", "m", timeout=2.0, max_reply_chars=100)
        assert (await right.answer(SYSTEM, HISTORY)).reply == "default reply"
    finally:
        await server.stop()


async def test_empty_reply_without_handover_is_bad_answer(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"empty": True}, {"reply": "   \n "})
    for _ in range(2):
        with pytest.raises(LlmBadAnswer):
            await make_client().answer(SYSTEM, HISTORY)


async def test_non_json_body_is_bad_answer(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"raw": "<html>gateway says hi</html>"})
    with pytest.raises(LlmBadAnswer):
        await make_client().answer(SYSTEM, HISTORY)


@pytest.mark.parametrize("body", [{"choices": []}, {"object": "chat.completion"}, [1, 2],
                                  {"choices": [{"message": {"role": "assistant", "content": 42}}]}])
async def test_not_a_chat_completion_is_bad_answer(fake: FakeLlm, make_client: MakeClient, body: object) -> None:
    fake.script({"json": body})
    with pytest.raises(LlmBadAnswer):
        await make_client().answer(SYSTEM, HISTORY)


async def test_every_failure_is_an_llm_error(fake: FakeLlm, make_client: MakeClient) -> None:
    fake.script({"status": 502}, {"status": 404}, {"empty": True})
    for _ in range(3):
        with pytest.raises(LlmError):
            await make_client().answer(SYSTEM, HISTORY)


async def test_fake_answers_look_like_chat_completions(fake: FakeLlm, session: aiohttp.ClientSession) -> None:
    fake.script({"handover": "x", "reply": "hi"})
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    async with session.post(fake.base_url + "/chat/completions",
                            data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as resp:
        data = orjson.loads(await resp.read())
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int) and data["model"] == "m"
    [choice] = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == "hi"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "handover_to_human"
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_unknown_turn_role_is_a_programming_error() -> None:
    client = LlmClient(None, "http://127.0.0.1:1/v1", None, "m",  # type: ignore[arg-type]
                       timeout=1.0, max_reply_chars=100)
    with pytest.raises(ValueError, match="unknown turn role"):
        client.request_body(SYSTEM, [Turn("agent", "hi")])


def test_fake_rejects_misspelled_steps() -> None:
    with pytest.raises(ValueError, match="unknown fake LLM step keys"):
        FakeLlm().script({"replay": "typo"})
