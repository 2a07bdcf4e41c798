"""The official `openai` SDK, through the gateway (demo), against the Anthropic and
Gemini emulators: the same checks test_gateway_openai.py runs for the OpenAI family
(plain and streamed chat with usage, raw bodies valid against OpenAI's schema, parallel
tool calls plain and streamed, tool results round-tripping), plus what is particular to
these vendors: Anthropic's cache reads in `prompt_tokens_details.cached_tokens`,
Gemini's thought tokens in `reasoning_tokens`, and synthesized Gemini call ids."""
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


def test_anthropic_cache_reads_reach_openai_usage(demo):
    c = gw.client(demo)
    system = [{"type": "text", "text": "Reference text. " * 100, "cache_control": {"type": "ephemeral"}}]
    r = c.chat.completions.create(model="anthropic/claude-haiku-4-5", messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "summarise"}])
    u = r.usage
    assert u.prompt_tokens_details.cached_tokens > 100
    assert u.prompt_tokens > u.prompt_tokens_details.cached_tokens


def test_gemini_thoughts_are_reasoning_tokens(demo):
    r = gw.client(demo).chat.completions.create(
        model="gemini/gemini-2.5-pro", messages=[{"role": "user", "content": "think"}])
    u = r.usage
    assert u.completion_tokens_details.reasoning_tokens == 32
    assert u.completion_tokens > 32
