-- wrk script: POST /v1/chat/completions with a fixed small body, optionally paced.
--
--   BENCH_DELAY_MS=D wrk ... -s bench/wrk/chat.lua URL -- MODEL KEY STREAM
--
-- MODEL    the model name the target expects
-- KEY      bearer key ("-" for none)
-- STREAM   "1" for "stream": true (wrk then times the whole SSE response)
-- BENCH_DELAY_MS (environment) think time in ms before each request on a connection;
--          unset or 0 = closed loop at saturation. With C connections and think time D
--          the offered rate is about C * 1000 / (D + latency): the "paced" load used
--          for added latency. (wrk decides whether delay() exists when it loads the
--          script, before init() sees the arguments, hence the environment variable.)
--
-- BENCH_PROMPT_BYTES (environment) pads the user message to about this many bytes of
--          plain English words (the "large prompt" measurement: RAG, long chats); unset
--          or 0 = the short message above.
--
-- At the end one line `BENCHJSON {...}` carries the figures (latencies in µs).

function init(args)
  local model = args[1] or "gpt-4o-mini"
  local key = args[2] or "-"
  local stream = args[3] == "1"
  local user = "Say hello to the benchmark in one short sentence."
  local pad = tonumber(os.getenv("BENCH_PROMPT_BYTES") or "0") or 0
  if pad > #user then
    local words = " Context passage: the quick brown fox jumps over the lazy dog, and the"
      .. " gateway meters every token of it."
    local parts = { user }
    local n = #user
    while n < pad do
      parts[#parts + 1] = words
      n = n + #words
    end
    user = table.concat(parts)
  end
  local body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are terse."},'
    .. '{"role":"user","content":"' .. user .. '"}],'
    .. '"max_tokens":64'
  if stream then
    body = body .. ',"stream":true'
  end
  body = body .. '}'
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  if key ~= "-" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
end

-- wrk only calls delay() when it is defined; a zero delay still costs a timer, so the
-- saturation runs get no delay() at all.
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.stdev))
end
