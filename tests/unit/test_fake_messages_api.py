"""The fake Messages API, driven by the real anthropic SDK.

Every test talks HTTP to a FakeMessagesAPI on 127.0.0.1 through
`anthropic.Anthropic` (or `AsyncAnthropic`), so what the fake returns is
known to parse in the SDK, and the SDK's retry and timeout behaviour is the
real one. Token numbers are checked against `estimate_tokens`, the estimate
the module documents.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import pytest
from agentfs.client.fake_messages_api import (
    CloseConnection,
    Delay,
    ErrorReply,
    FakeMessagesAPI,
    ManualClock,
    PromptCache,
    Reply,
    Script,
    ScriptExhausted,
    by_system,
    close_connection,
    count_prompt_tokens,
    delay,
    error,
    estimate_tokens,
    last_user_text,
    min_cacheable_tokens,
    reply,
    spec_from_json,
    text,
    tool_results,
    tool_use,
    tool_use_block,
)

MODEL = "claude-sonnet-4-6"
EPHEMERAL = {"type": "ephemeral"}


@contextmanager
def serve(
    responder: Any = None, **kwargs: Any
) -> Iterator[tuple[FakeMessagesAPI, anthropic.Anthropic]]:
    """A server and an SDK client on it (no retries unless a test asks)."""
    with (
        FakeMessagesAPI(responder, **kwargs) as api,
        anthropic.Anthropic(base_url=api.base_url, api_key="test", max_retries=0) as client,
    ):
        yield api, client


def ask(client: anthropic.Anthropic, messages: list[Any], **kwargs: Any) -> anthropic.types.Message:
    return client.messages.create(model=MODEL, max_tokens=256, messages=messages, **kwargs)


def words(tag: str, n: int) -> str:
    """A text of about n characters (n/4 tokens)."""
    return " ".join([tag] * (n // (len(tag) + 1)))


def block(s: str, cache: Any = None) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "text", "text": s}
    if cache:
        b["cache_control"] = cache
    return b


def tokens(*blocks: Any) -> int:
    return sum(estimate_tokens(b) for b in blocks)


def first_text(message: Any) -> str:
    """The text of a reply's first content block."""
    return str(message.content[0].text)


def usage_tuple(u: Any) -> tuple[int, int, int]:
    """(cache_read, cache_creation, input) of an SDK or recorded usage."""
    return (u.cache_read_input_tokens, u.cache_creation_input_tokens, u.input_tokens)


# --------------------------------------------------------------------------
# Replies


def test_text_reply_parses_in_the_sdk_and_is_recorded() -> None:
    with serve(Script([text("Hello there.")])) as (api, client):
        msg = ask(client, [{"role": "user", "content": "Hi"}], system="You are terse.")
    assert msg.id == "msg_fake_0001"
    assert msg._request_id == "req_fake_0001"
    assert [b.type for b in msg.content] == ["text"]
    assert first_text(msg) == "Hello there."
    assert msg.stop_reason == "end_turn" and msg.role == "assistant" and msg.model == MODEL
    (r,) = api.requests
    assert r.status == 200 and r.path == "/v1/messages" and not r.stream
    assert r.body["messages"] == [{"role": "user", "content": "Hi"}]
    # The SDK authenticates with x-api-key or a bearer token, depending on its version.
    assert "test" in (
        r.headers.get("x-api-key"),
        r.headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert "anthropic-version" in r.headers
    assert r.usage is not None
    # The prompt is the system text block and the user text block.
    assert r.usage.input_tokens == tokens(block("You are terse."), block("Hi"))
    assert r.usage.output_tokens == tokens(block("Hello there."))
    assert msg.usage.input_tokens == r.usage.input_tokens
    assert msg.usage.output_tokens == r.usage.output_tokens
    assert msg.usage.cache_read_input_tokens == 0 and msg.usage.cache_creation_input_tokens == 0


def test_tool_use_then_tool_result() -> None:
    script = Script(
        [tool_use("read_file", {"path": "a.txt"}, text="Let me read it."), text("It says hi.")]
    )
    with serve(script) as (api, client):
        first = ask(client, [{"role": "user", "content": "What is in a.txt?"}])
        assert first.stop_reason == "tool_use"
        lead, call = first.content
        assert lead.type == "text" and lead.text == "Let me read it."
        assert call.type == "tool_use"
        assert (call.id, call.name, call.input) == (
            "toolu_fake_0001",
            "read_file",
            {"path": "a.txt"},
        )
        messages: list[Any] = [
            {"role": "user", "content": "What is in a.txt?"},
            first.to_param(),
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "hi"}],
            },
        ]
        second = ask(client, messages)
    assert first_text(second) == "It says hi."
    assert tool_results(api.requests[1].body) == [
        {"type": "tool_result", "tool_use_id": "toolu_fake_0001", "content": "hi"}
    ]
    assert script.remaining == 0


def test_several_tool_calls_and_stop_reasons() -> None:
    script = Script(
        [
            reply(
                "Two things.",
                tool_use_block("a", {}),
                tool_use_block("b", {"n": 1}, id="toolu_mine"),
            ),
            text("cut sho", stop_reason="max_tokens"),
            text("up to", stop_reason="stop_sequence", stop_sequence="END"),
        ]
    )
    with serve(script) as (_, client):
        calls = ask(client, [{"role": "user", "content": "go"}])
        cut = ask(client, [{"role": "user", "content": "go"}])
        stopped = ask(client, [{"role": "user", "content": "go"}])
    assert calls.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "id", None)) for b in calls.content] == [
        ("text", None),
        ("tool_use", "toolu_fake_0001"),
        ("tool_use", "toolu_mine"),
    ]
    assert cut.stop_reason == "max_tokens"
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "END")


def test_streaming_gives_the_same_message_as_non_streaming() -> None:
    content = reply(
        "A reply long enough to arrive in several text deltas, with unicode: é ✓.",
        tool_use_block(
            "write", {"path": "x", "data": "y" * 50, "opts": {"n": [1, 2, 3]}}, id="toolu_x"
        ),
    )
    with serve(Script([content, content, content])) as (api, client):
        plain = ask(client, [{"role": "user", "content": "go"}])
        with client.messages.stream(
            model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            streamed = stream.get_final_message()
        raw = client.messages.create(
            model=MODEL, max_tokens=256, stream=True, messages=[{"role": "user", "content": "go"}]
        )
        events = [e.type for e in raw]

    def shape(m: Any) -> list[Any]:
        return [
            (
                b.type,
                getattr(b, "text", None),
                getattr(b, "id", None),
                getattr(b, "name", None),
                getattr(b, "input", None),
            )
            for b in m.content
        ]

    assert shape(streamed) == shape(plain)
    assert streamed.stop_reason == plain.stop_reason == "tool_use"
    assert usage_tuple(streamed.usage) == usage_tuple(plain.usage)
    assert streamed.usage.output_tokens == plain.usage.output_tokens
    assert api.requests[1].stream and api.requests[1].status == 200
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert events.count("content_block_start") == events.count("content_block_stop") == 2
    assert events.count("content_block_delta") > 4  # text and JSON both came in pieces


def test_async_client_create_and_stream() -> None:
    async def run(base_url: str) -> tuple[str, str]:
        async with anthropic.AsyncAnthropic(base_url=base_url, api_key="test") as client:
            made = await client.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "a"}]
            )
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "b"}]
            ) as stream:
                final = await stream.get_final_message()
        return first_text(made), first_text(final)

    with FakeMessagesAPI(lambda body: text("echo " + last_user_text(body))) as api:
        assert asyncio.run(run(api.base_url)) == ("echo a", "echo b")


def test_by_system_scripts_each_agent() -> None:
    responder = by_system(
        {
            "planner": Script(["plan 1", "plan 2"]),
            "coder": Script([tool_use("edit", {"f": 1}), "coded"]),
        }
    )
    with serve(responder) as (_, client):

        def turn(agent: str) -> str:
            m = ask(client, [{"role": "user", "content": "next"}], system=f"You are the {agent}.")
            return m.content[0].type if m.stop_reason == "tool_use" else first_text(m)

        assert [turn("planner"), turn("coder"), turn("planner"), turn("coder")] == [
            "plan 1",
            "tool_use",
            "plan 2",
            "coded",
        ]
        with pytest.raises(anthropic.InternalServerError, match="no responder"):
            turn("reviewer")


def test_concurrent_requests_are_all_recorded() -> None:
    with serve() as (api, client):

        def worker() -> None:
            for _ in range(5):
                ask(client, [{"role": "user", "content": "x"}])

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        records = api.requests
    assert len(records) == 40 and all(r.status == 200 for r in records)
    assert len({r.response["id"] for r in records if r.response}) == 40
    assert api.totals().requests == 40


# --------------------------------------------------------------------------
# Validation


def test_tool_result_must_answer_the_previous_tool_use() -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    with serve() as (api, client):
        with pytest.raises(
            anthropic.BadRequestError,
            match="unexpected `tool_use_id` found in `tool_result` blocks: toolu_2",
        ) as info:
            ask(
                client,
                [
                    {"role": "user", "content": "go"},
                    {"role": "assistant", "content": [call]},
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_2"}],
                    },
                ],
            )
        assert "messages.2.content.0:" in str(info.value)
        with pytest.raises(
            anthropic.BadRequestError,
            match=r"messages\.1: `tool_use` ids were "
            "found without `tool_result` blocks immediately after: toolu_1",
        ):
            ask(
                client,
                [
                    {"role": "user", "content": "go"},
                    {"role": "assistant", "content": [call]},
                    {"role": "user", "content": "never mind"},
                ],
            )
    assert [r.status for r in api.requests] == [400, 400]
    assert api.requests[0].response is not None
    assert api.requests[0].response["error"]["type"] == "invalid_request_error"


def test_roles_must_alternate_starting_with_user() -> None:
    with serve() as (_, client):
        with pytest.raises(
            anthropic.BadRequestError, match='first message must use the "user" role'
        ):
            ask(client, [{"role": "assistant", "content": "hi"}])
        with pytest.raises(anthropic.BadRequestError, match='multiple "user" roles in a row'):
            ask(client, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        with pytest.raises(anthropic.BadRequestError, match="must have non-empty content"):
            ask(client, [{"role": "user", "content": []}])
        # A system-role message stands outside the alternation.
        ask(
            client,
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "be brief"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
        )
    with serve(strict_roles=False) as (_, client):
        ask(client, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def post(url: str, payload: bytes) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        url, data=payload, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), json.load(e)


def test_missing_fields_bad_json_and_unknown_paths_over_raw_http() -> None:
    with FakeMessagesAPI() as api:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        status, headers, err = post(api.base_url + "/v1/messages", json.dumps(body).encode())
        assert status == 400
        assert err == {
            "type": "error",
            "request_id": "req_fake_0001",
            "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        }
        assert headers["request-id"] == "req_fake_0001" and headers["x-should-retry"] == "false"
        # count_tokens does not need max_tokens.
        status, _, counted = post(
            api.base_url + "/v1/messages/count_tokens", json.dumps(body).encode()
        )
        assert (status, counted) == (200, {"input_tokens": count_prompt_tokens(body)})
        status, _, err = post(api.base_url + "/v1/messages", b"{not json")
        assert (status, err["error"]["type"]) == (400, "invalid_request_error")
        status, _, err = post(api.base_url + "/v1/complete", b"{}")
        assert (status, err["error"]["type"]) == (404, "not_found_error")
        assert [r.status for r in api.requests] == [400, 200, 400, 404]


def test_more_than_four_cache_breakpoints_is_a_bad_request() -> None:
    def system(n: int) -> list[Any]:
        return [block(f"part {i}", EPHEMERAL) for i in range(n)]

    with serve() as (_, client):
        ask(client, [{"role": "user", "content": "hi"}], system=system(4))
        with pytest.raises(
            anthropic.BadRequestError,
            match="A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ):
            ask(client, [{"role": "user", "content": "hi"}], system=system(5))
        # Automatic caching adds a breakpoint on the last block when it has none.
        with pytest.raises(anthropic.BadRequestError, match="Found 5"):
            ask(
                client,
                [{"role": "user", "content": "hi"}],
                system=system(4),
                cache_control=EPHEMERAL,
            )
        with pytest.raises(anthropic.BadRequestError, match="ttl"):
            ask(
                client,
                [{"role": "user", "content": "hi"}],
                system=[block("a", {"type": "ephemeral", "ttl": "10m"})],
            )
        with pytest.raises(anthropic.BadRequestError, match="longer TTLs must come first"):
            ask(
                client,
                [{"role": "user", "content": [block("b", {"type": "ephemeral", "ttl": "1h"})]}],
                system=[block("a", EPHEMERAL)],
            )


# --------------------------------------------------------------------------
# Errors, retries, timeouts


def test_429_then_success_through_sdk_retries() -> None:
    with serve(Script([error(429, retry_after=0.01), text("ok")])) as (api, client):
        started = time.monotonic()
        msg = client.with_options(max_retries=2).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert time.monotonic() - started < 2
    assert first_text(msg) == "ok"
    first, retry = api.requests
    assert (first.status, first.retry_count, first.usage) == (429, 0, None)
    assert (retry.status, retry.retry_count) == (200, 1)
    assert first.body == retry.body
    assert api.totals().requests == 1


def test_429_without_retries_is_a_rate_limit_error() -> None:
    with (
        serve(Script([error(429, retry_after=3)])) as (_, client),
        pytest.raises(anthropic.RateLimitError) as info,
    ):
        ask(client, [{"role": "user", "content": "hi"}])
    e = info.value
    assert e.status_code == 429 and e.request_id == "req_fake_0001"
    assert e.response.headers["retry-after"] == "3"
    assert e.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("status", "exc", "kind"),
    [
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_server_errors_are_retried(status: int, exc: type[Exception], kind: str) -> None:
    flaky = Script([error(status, retry_after=0.01), error(status, retry_after=0.01), text("ok")])
    with serve(flaky) as (api, client):
        msg = client.with_options(max_retries=2).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert first_text(msg) == "ok"
        assert [(r.status, r.retry_count) for r in api.requests] == [
            (status, 0),
            (status, 1),
            (200, 2),
        ]
    with serve(Script([error(status)])) as (_, client):
        with pytest.raises(exc) as info:
            ask(client, [{"role": "user", "content": "hi"}])
        assert info.value.body["error"]["type"] == kind  # type: ignore[attr-defined]


def test_x_should_retry_false_stops_sdk_retries() -> None:
    with (
        serve(Script([error(500, should_retry=False), text("never")])) as (api, client),
        pytest.raises(anthropic.InternalServerError),
    ):
        client.with_options(max_retries=3).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert len(api.requests) == 1


def test_delay_trips_the_client_timeout_and_the_retry_succeeds() -> None:
    with serve(Script([delay(30), delay(30, then=text("too late")), text("second try")])) as (
        api,
        client,
    ):
        started = time.monotonic()
        with pytest.raises(anthropic.APITimeoutError):
            client.with_options(timeout=0.2).messages.create(
                model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
        msg = client.with_options(timeout=0.2, max_retries=1).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert first_text(msg) == "second try"
        assert time.monotonic() - started < 3
        # The delayed requests are recorded, still unanswered.
        assert [r.status for r in api.requests] == [None, None, 200]
    # Closing the server ended the delays: they dropped their connections.
    assert [r.status for r in api.requests] == [0, 0, 200]


def test_short_delay_then_reply() -> None:
    with serve(Script([delay(0.05, then="slow")])) as (_, client):
        assert first_text(ask(client, [{"role": "user", "content": "hi"}])) == "slow"


def test_closed_connection_is_a_connection_error_and_retried() -> None:
    with serve(Script([close_connection(), close_connection(), text("ok")])) as (api, client):
        with pytest.raises(anthropic.APIConnectionError):
            ask(client, [{"role": "user", "content": "hi"}])
        msg = client.with_options(max_retries=1).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert first_text(msg) == "ok"
    assert [r.status for r in api.requests] == [0, 0, 200]


def test_an_exhausted_script_fails_without_retry() -> None:
    with (
        serve(Script([])) as (api, client),
        pytest.raises(anthropic.InternalServerError, match="script exhausted"),
    ):
        client.with_options(max_retries=2).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert len(api.requests) == 1
    assert isinstance(api.responder_errors[0], ScriptExhausted)


# --------------------------------------------------------------------------
# Prompt-cache simulator

BIG_SYSTEM = words("rules", 4000)  # about 1000 tokens


def cached_system(s: str = BIG_SYSTEM, ttl: str | None = None) -> list[Any]:
    cc = {"type": "ephemeral", "ttl": ttl} if ttl else EPHEMERAL
    return [block(s, cc)]


def test_cache_first_request_creates_and_an_identical_one_reads() -> None:
    with serve(min_cache_tokens=100) as (api, client):
        messages: Any = [{"role": "user", "content": "question"}]
        first = ask(client, messages, system=cached_system())
        second = ask(client, messages, system=cached_system())
        counted = client.messages.count_tokens(
            model=MODEL, messages=messages, system=cached_system()
        )
    prefix = tokens(block(BIG_SYSTEM))
    rest = tokens(block("question"))
    assert usage_tuple(first.usage) == (0, prefix, rest)
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    assert usage_tuple(second.usage) == (prefix, 0, rest)
    assert counted.input_tokens == prefix + rest
    assert [usage_tuple(r.usage) for r in api.requests[:2]] == [
        (0, prefix, rest),
        (prefix, 0, rest),
    ]


def test_cache_appended_turn_reads_the_old_prefix_and_creates_the_rest() -> None:
    # The rolling pattern: a breakpoint on the last block of every request.
    q1, a1, q2 = (
        block(words("first", 800)),
        block(words("answer", 800)),
        block(words("second", 800)),
    )
    with serve(min_cache_tokens=100) as (_, client):
        first = ask(
            client,
            [{"role": "user", "content": [dict(q1, cache_control=EPHEMERAL)]}],
            system=cached_system(),
        )
        second = ask(
            client,
            [
                {"role": "user", "content": [q1]},
                {"role": "assistant", "content": [a1]},
                {"role": "user", "content": [dict(q2, cache_control=EPHEMERAL)]},
            ],
            system=cached_system(),
        )
    sys_tokens = tokens(block(BIG_SYSTEM))
    assert usage_tuple(first.usage) == (0, sys_tokens + tokens(q1), 0)
    assert usage_tuple(second.usage) == (sys_tokens + tokens(q1), tokens(a1, q2), 0)


def test_cache_change_in_system_prompt_misses() -> None:
    with serve(min_cache_tokens=100) as (_, client):
        ask(client, [{"role": "user", "content": "q"}], system=cached_system())
        changed = BIG_SYSTEM.replace("rules", "RULES", 1)
        miss = ask(client, [{"role": "user", "content": "q"}], system=cached_system(changed))
    assert usage_tuple(miss.usage) == (0, tokens(block(changed)), tokens(block("q")))


def test_cache_prefix_below_the_minimum_is_not_cached() -> None:
    small = words("short", 2400)  # about 600 tokens: below Sonnet's 1024
    mid = words("middle", 6000)  # about 1500 tokens: above Sonnet's 1024, below Haiku's 2048
    assert (min_cacheable_tokens(MODEL), min_cacheable_tokens("claude-haiku-4-5")) == (1024, 2048)
    with serve() as (_, client):
        for _ in range(2):
            u = ask(client, [{"role": "user", "content": "q"}], system=cached_system(small)).usage
            assert usage_tuple(u) == (0, 0, tokens(block(small), block("q")))
        for _ in range(2):
            u = client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=16,
                system=cached_system(mid),
                messages=[{"role": "user", "content": "q"}],
            ).usage
            assert usage_tuple(u) == (0, 0, tokens(block(mid), block("q")))
        sonnet = [
            ask(client, [{"role": "user", "content": "q"}], system=cached_system(mid)).usage
            for _ in range(2)
        ]
    assert [u.cache_read_input_tokens for u in sonnet] == [0, tokens(block(mid))]


def test_cache_entries_expire_after_5_minutes_unless_refreshed() -> None:
    clock = ManualClock(1000.0)
    with serve(min_cache_tokens=100, clock=clock) as (_, client):

        def read() -> int:
            u = ask(client, [{"role": "user", "content": "q"}], system=cached_system()).usage
            return u.cache_read_input_tokens or 0

        prefix = tokens(block(BIG_SYSTEM))
        assert read() == 0
        clock.advance(299)
        assert read() == prefix
        clock.advance(299)  # 598 s after creation, but 299 s after the refresh
        assert read() == prefix
        clock.advance(301)
        assert read() == 0  # expired: created again
        assert read() == prefix


def test_cache_1h_ttl_outlives_5_minutes() -> None:
    clock = ManualClock()
    with serve(min_cache_tokens=100, clock=clock) as (_, client):
        first = ask(client, [{"role": "user", "content": "q"}], system=cached_system(ttl="1h"))
        assert first.usage.cache_creation is not None
        assert first.usage.cache_creation.ephemeral_1h_input_tokens == tokens(block(BIG_SYSTEM))
        assert first.usage.cache_creation.ephemeral_5m_input_tokens == 0
        clock.advance(3000)
        hit = ask(client, [{"role": "user", "content": "q"}], system=cached_system(ttl="1h"))
        assert hit.usage.cache_read_input_tokens == tokens(block(BIG_SYSTEM))
        clock.advance(3601)
        assert (
            ask(
                client, [{"role": "user", "content": "q"}], system=cached_system(ttl="1h")
            ).usage.cache_read_input_tokens
            == 0
        )


def test_cache_lookback_is_20_blocks_counting_the_breakpoint() -> None:
    parts = [f"block number {i:02d} " + "x" * 40 for i in range(40)]

    def request_with_breakpoint_at(i: int) -> list[Any]:
        content = [block(p, EPHEMERAL if j == i else None) for j, p in enumerate(parts)]
        return [{"role": "user", "content": content}]

    cached = tokens(*[block(p) for p in parts[:6]])
    with serve(min_cache_tokens=10) as (api, client):
        ask(client, request_with_breakpoint_at(5))
        # Block 24 is the 20th position back from itself to block 5: found.
        assert ask(client, request_with_breakpoint_at(24)).usage.cache_read_input_tokens == cached
        api.cache.clear()
        ask(client, request_with_breakpoint_at(5))
        # Block 25 is one too far: a miss, and the whole prefix is written again.
        far = ask(client, request_with_breakpoint_at(25)).usage
        assert usage_tuple(far) == (
            0,
            tokens(*[block(p) for p in parts[:26]]),
            tokens(*[block(p) for p in parts[26:]]),
        )


def test_cache_order_is_tools_then_system_then_messages() -> None:
    def tools(description: str) -> list[Any]:
        return [
            {"name": "read", "description": description, "input_schema": {"type": "object"}},
            {
                "name": "write",
                "description": words("writes", 2000),
                "input_schema": {"type": "object"},
                "cache_control": EPHEMERAL,
            },
        ]

    tool_desc, other_desc = words("reads", 2000), words("READS", 2000)
    system, other_system = BIG_SYSTEM, BIG_SYSTEM.upper()

    def run(client: anthropic.Anthropic, desc: str, s: str, question: str) -> Any:
        return ask(
            client,
            [{"role": "user", "content": [block(question, EPHEMERAL)]}],
            tools=tools(desc),
            system=cached_system(s),
        ).usage

    t = tokens(*tools(tool_desc))
    with serve(min_cache_tokens=100) as (_, client):
        base = run(client, tool_desc, system, "q1")
        new_message = run(client, tool_desc, system, "q2")
        new_system = run(client, tool_desc, other_system, "q2")
        new_tool = run(client, other_desc, other_system, "q2")
    s, s2 = tokens(block(system)), tokens(block(other_system))
    assert usage_tuple(base) == (0, t + s + tokens(block("q1")), 0)
    assert usage_tuple(new_message) == (t + s, tokens(block("q2")), 0)
    assert usage_tuple(new_system) == (t, s2 + tokens(block("q2")), 0)
    assert usage_tuple(new_tool) == (0, tokens(*tools(other_desc)) + s2 + tokens(block("q2")), 0)


def test_cache_tool_choice_change_keeps_tools_and_system() -> None:
    tool = {"name": "read", "description": words("reads", 2000), "input_schema": {"type": "object"}}
    messages = [{"role": "user", "content": [block("q", EPHEMERAL)]}]
    with serve(min_cache_tokens=100) as (_, client):
        ask(client, messages, tools=[tool], system=cached_system(), tool_choice={"type": "auto"})
        changed = ask(
            client, messages, tools=[tool], system=cached_system(), tool_choice={"type": "any"}
        )
    assert usage_tuple(changed.usage) == (tokens(tool, block(BIG_SYSTEM)), tokens(block("q")), 0)


def test_cache_automatic_breakpoint_from_top_level_cache_control() -> None:
    messages = [{"role": "user", "content": words("question", 2000)}]
    with serve(min_cache_tokens=100) as (_, client):
        first = ask(client, messages, system=BIG_SYSTEM, cache_control=EPHEMERAL)
        second = ask(client, messages, system=BIG_SYSTEM, cache_control=EPHEMERAL)
    total = tokens(block(BIG_SYSTEM), block(messages[0]["content"]))
    assert usage_tuple(first.usage) == (0, total, 0)
    assert usage_tuple(second.usage) == (total, 0, 0)


def test_totals_add_up_usage_of_answered_requests() -> None:
    script = Script([error(429, retry_after=0.01), text("a"), text("b")])
    with serve(script, min_cache_tokens=100) as (api, client):
        client = client.with_options(max_retries=1)
        usages = [
            ask(client, [{"role": "user", "content": "q"}], system=cached_system()).usage
            for _ in range(2)
        ]
    totals = api.totals()
    assert totals.requests == 2 and len(api.requests) == 3
    assert totals.input == sum(u.input_tokens for u in usages)
    assert totals.cache_creation == sum(u.cache_creation_input_tokens or 0 for u in usages)
    assert totals.cache_read == sum(u.cache_read_input_tokens or 0 for u in usages)
    assert totals.output == sum(u.output_tokens for u in usages)
    assert totals.cache_read == totals.cache_creation > 0


def test_prompt_cache_works_without_the_server() -> None:
    cache = PromptCache(clock=ManualClock(), min_tokens=1)
    body = {
        "model": MODEL,
        "max_tokens": 1,
        "system": [block("s" * 40, EPHEMERAL)],
        "messages": [{"role": "user", "content": "hello"}],
    }
    assert count_prompt_tokens(body) == tokens(block("s" * 40), block("hello"))
    assert usage_tuple(cache.process(body)) == (0, tokens(block("s" * 40)), tokens(block("hello")))
    assert usage_tuple(cache.process(body)) == (tokens(block("s" * 40)), 0, tokens(block("hello")))
    # Another model has its own cache.
    assert cache.process(dict(body, model="claude-opus-4-7")).cache_read_input_tokens == 0
    assert len(cache) == 2


# --------------------------------------------------------------------------
# Specs and the CLI


def test_spec_from_json_forms() -> None:
    assert spec_from_json("hi") == text("hi")
    assert spec_from_json({"text": "hi", "stop_reason": "max_tokens"}) == text(
        "hi", stop_reason="max_tokens"
    )
    assert spec_from_json(
        {"tool_use": {"name": "f", "input": {"a": 1}, "id": "t1"}, "text": "x"}
    ) == tool_use("f", {"a": 1}, "t1", text="x")
    two = spec_from_json({"tool_use": [{"name": "f"}, {"name": "g", "input": {}}]})
    assert isinstance(two, Reply) and two.stop_reason == "tool_use" and len(two.content) == 2
    assert spec_from_json({"content": [{"type": "text", "text": "t"}]}) == text("t")
    err = spec_from_json({"error": 529, "retry_after": 2})
    assert isinstance(err, ErrorReply) and (err.type, err.retry_after) == ("overloaded_error", 2)
    assert spec_from_json({"delay": 1.5, "then": "x"}) == Delay(1.5, text("x"))
    assert spec_from_json({"close_connection": True}) == CloseConnection()
    with pytest.raises(ValueError):
        spec_from_json({"nonsense": 1})
    with pytest.raises(ValueError):
        text("x", stop_reason="bored")


def test_cli_serves_a_script_then_done(tmp_path: Path) -> None:
    script = tmp_path / "script.jsonl"
    lines = [
        {"text": "one"},
        {"tool_use": {"name": "ls", "input": {"dir": "."}}},
        {"error": 529, "retry_after": 0.01},
        "three",
    ]
    script.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentfs.client.fake_messages_api", "--script", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=1) as client:
            got = [ask(client, [{"role": "user", "content": "go"}]) for _ in range(4)]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    assert [m.content[0].type for m in got] == ["text", "tool_use", "text", "text"]
    assert [getattr(m.content[0], "text", None) for m in got] == ["one", None, "three", "done"]
    assert got[1].content[0].id == "toolu_fake_0001"  # type: ignore[union-attr]
