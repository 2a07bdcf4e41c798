"""The official `openai` SDK, through the gateway (demo), against the Anthropic and
Gemini emulators: the same checks test_gateway_openai.py runs for the OpenAI family
(plain and streamed chat with usage, raw bodies valid against OpenAI's schema, parallel
tool calls plain and streamed, tool results round-tripping), plus what is particular to
these vendors: Anthropic's cache reads in `prompt_tokens_details.cached_tokens`,
Gemini's thought tokens in `reasoning_tokens`, and synthesized Gemini call ids."""
from decimal import Decimal

import pytest
import test_gateway_openai as gw

MODELS = ["anthropic/claude-haiku-4-5", "gemini/gemini-2.5-flash"]


@pytest.mark.parametrize("model", MODELS)
def test_chat_and_stream_with_usage(demo, model):
    gw.test_chat_and_stream_with_usage(demo, model)


@pytest.mark.parametrize("model", MODELS)
def test_raw_bodies_and_streams_match_openai_schema(demo, model):
    gw.test_raw_bodies_and_streams_match_openai_schema(demo, model)


@pytest.mark.parametrize("model", MODELS)
def test_tool_calls_plain_and_streamed(demo, model):
    gw.test_tool_calls_plain_and_streamed(demo, model)


def test_anthropic_cache_reads_are_priced_at_the_cache_price(demo):
    """The emulator reports the cache_control'd system prompt as a cache read; the
    gateway puts it in cached_tokens and prices it at claude-haiku-4-5's cached-input
    price (catalog/anthropic.toml: input 1, cached_input 0.1, output 5 USD per million)."""
    c = gw.client(demo)
    system = [{"type": "text", "text": "Reference text. " * 100, "cache_control": {"type": "ephemeral"}}]
    raw = c.chat.completions.with_raw_response.create(model="anthropic/claude-haiku-4-5", messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "summarise"}])
    u = raw.parse().usage
    cached = u.prompt_tokens_details.cached_tokens
    assert cached > 100 and u.prompt_tokens > cached
    amount, currency = raw.headers["x-tollgate-cost"].split()
    assert currency == "USD"
    expected = (Decimal(u.prompt_tokens - cached) * 1 + Decimal(cached) * Decimal("0.1")
                + Decimal(u.completion_tokens) * 5) / 1_000_000
    assert Decimal(amount) >= expected and Decimal(amount) - expected < Decimal("0.000001")


def test_gemini_thoughts_are_reasoning_tokens(demo):
    r = gw.client(demo).chat.completions.create(
        model="gemini/gemini-2.5-pro", messages=[{"role": "user", "content": "think"}])
    u = r.usage
    assert u.completion_tokens_details.reasoning_tokens == 32
    assert u.completion_tokens > 32
