"""The official `google-genai` SDK, unchanged, against tollgate's Gemini emulator:
generate_content and generate_content_stream, with function calling, on the pinned
api_version v1beta and on the SDK's own default (v1 in google-genai 3.6.1); a bad key
raises the SDK's ClientError with code 400 (Google answers API_KEY_INVALID with 400).

Keep a reference to each Client: a collected Client closes its HTTP client."""
import pytest
from conftest import EMULATOR_KEY
from google import genai
from google.genai import errors, types

MODEL = "gemini-2.5-flash"

# Variables that would switch the SDK to Vertex AI or another key/endpoint.
ENV = ["GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION",
       "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_API_KEY", "GEMINI_API_KEY",
       "GOOGLE_GEMINI_BASE_URL", "GOOGLE_VERTEX_BASE_URL", "GOOGLE_GENAI_API_VERSION"]

WEATHER = types.FunctionDeclaration(
    name="get_weather", description="Weather for a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def base(emulator):
    return emulator("gemini")


def client(base, key=EMULATOR_KEY, api_version="v1beta"):
    opts = {"base_url": base}
    if api_version:
        opts["api_version"] = api_version
    return genai.Client(api_key=key, http_options=types.HttpOptions(**opts))


@pytest.mark.parametrize("api_version", ["v1beta", None], ids=["v1beta", "sdk-default"])
def test_generate_content(base, api_version):
    c = client(base, api_version=api_version)
    r = c.models.generate_content(
        model=MODEL, contents="Say hello",
        config=types.GenerateContentConfig(system_instruction="be brief", temperature=0.3,
                                           max_output_tokens=200))
    assert "Say hello" in r.text
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert u.prompt_token_count > 0 and u.candidates_token_count > 0
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count


@pytest.mark.parametrize("api_version", ["v1beta", None], ids=["v1beta", "sdk-default"])
def test_generate_content_stream(base, api_version):
    c = client(base, api_version=api_version)
    chunks = list(c.models.generate_content_stream(model=MODEL, contents="Say hello there"))
    assert len(chunks) > 3
    text = "".join(ch.text or "" for ch in chunks)
    assert "Say hello there" in text
    counts = [ch.usage_metadata.candidates_token_count for ch in chunks]
    assert counts == sorted(counts) and counts[-1] > 0
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_function_calling_round_trip(base):
    c = client(base)
    cfg = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    r = c.models.generate_content(model=MODEL, contents="Weather in Paris?", config=cfg)
    call = r.function_calls[0]
    assert call.name == "get_weather" and call.args == {"city": "example"}
    follow = c.models.generate_content(model=MODEL, config=cfg, contents=[
        types.Content(role="user", parts=[types.Part(text="Weather in Paris?")]),
        r.candidates[0].content,
        types.Content(role="user", parts=[types.Part.from_function_response(
            name="get_weather", response={"temp_c": 18})])])
    assert follow.text and not follow.function_calls


def test_function_calling_stream(base):
    c = client(base, api_version=None)
    cfg = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode="ANY", allowed_function_names=["get_weather"])),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    chunks = list(c.models.generate_content_stream(model=MODEL, contents="Weather?", config=cfg))
    calls = [fc for ch in chunks for fc in (ch.function_calls or [])]
    assert [(fc.name, fc.args) for fc in calls] == [("get_weather", {"city": "example"})]
    assert chunks[-1].usage_metadata.total_token_count > 0


def test_thinking_model_reports_thoughts(base):
    c = client(base)
    r = c.models.generate_content(model="gemini-2.5-pro", contents="think")
    assert r.usage_metadata.thoughts_token_count == 32


def test_bad_key_is_client_error_400(base):
    c = client(base, key="wrong-key")
    with pytest.raises(errors.ClientError) as e:
        c.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 400
    assert e.value.status == "INVALID_ARGUMENT"
    assert e.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_overloaded_is_server_error(base):
    c = genai.Client(api_key=EMULATOR_KEY, http_options=types.HttpOptions(
        base_url=base, api_version="v1beta", headers={"x-emulator-fault": "status=503"},
        retry_options=types.HttpRetryOptions(attempts=1)))
    with pytest.raises(errors.ServerError) as e:
        c.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 503 and e.value.status == "UNAVAILABLE"
