-- wrk script for benches/load.sh: POSTs a mix of real Apizee envelopes with
-- the platform's `Content-Type: application/JSON` over wrk's keep-alive
-- connections.
--
--   wrk -t1 -c32 -d10s -s benches/load.lua http://127.0.0.1:PORT/webhooks \
--       -- SAMPLE_LIST RUN [DELAY_MS|-] [BODY_BYTES]
--
-- SAMPLE_LIST: a file naming one envelope file per line (the harness lists
--   tests/samples/valid/*.json and the two spec samples: 5 objects, 3 events).
-- RUN: a number unique to this wrk invocation. Every request gets its own
--   objectId built from RUN, the thread and a counter, so no two bodies of a
--   target's lifetime are equal: the bridge's event id is a hash of the body
--   and JetStream drops a repeated Nats-Msg-Id, which would make the bridge
--   look faster than it is.
-- DELAY_MS (optional): mean pause before each request on each connection,
--   for a fixed approximate rate (wrk has no rate option). wrk takes whole
--   milliseconds, so the pause is dithered between floor and ceil to keep
--   the mean exact. "-": no pause.
-- BODY_BYTES (optional): every body is padded to about this size (within
--   a few bytes: the objectId's length varies) with a "padding" field of
--   x's at the top of the envelope, which the bridge passes through like
--   any field it does not know.
--
-- done() prints one line starting with "RESULT" that the harness parses:
-- latencies in microseconds, errors split as wrk counts them ("status" is
-- every answer above 399).

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

local function read_file(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

-- Per thread (each wrk thread has its own Lua state).
local samples = {}
local counter = 0
local seed = 0
local delay_ms = nil
local head = nil

-- delay() is defined only when a pause was asked for: wrk checks for it
-- after init(), and a delay() that returns 0 would still put every request
-- through a timer.
local function paced()
  local whole = math.floor(delay_ms)
  if math.random() < delay_ms - whole then
    return whole + 1
  end
  return whole
end

function init(args)
  local list = assert(args[1], "usage: -- SAMPLE_LIST RUN [DELAY_MS]")
  local run = tonumber(args[2] or "1")
  delay_ms = (args[3] and args[3] ~= "-") and tonumber(args[3]) or nil
  local body_bytes = args[4] and tonumber(args[4]) or nil
  if delay_ms then
    delay = paced
  end
  seed = run * 64 + thread_id
  math.randomseed(seed)
  for path in io.lines(list) do
    if path ~= "" then
      local body = read_file(path)
      -- Split each body around its objectId value, to put a fresh one in.
      local s, e = body:find('"objectId"%s*:%s*')
      assert(s, path .. ": no objectId")
      local value_end
      local quoted = body:sub(e + 1, e + 1) == '"'
      if quoted then
        value_end = body:find('"', e + 2, true)
      else
        local _, digits_end = body:find("^%d+", e + 1)
        value_end = digits_end
      end
      assert(value_end, path .. ": objectId is neither a string nor an integer")
      local before = body:sub(1, e)
      if body_bytes then
        -- 12: about the length of the objectId put in below.
        local filler = '"padding":"",'
        local pad = body_bytes - (#before + #body - value_end + 12 + #filler)
        local brace = before:find("{", 1, true)
        if pad > 0 and brace then
          before = before:sub(1, brace) .. '"padding":"' .. string.rep("x", pad) .. '",'
            .. before:sub(brace + 1)
        end
      end
      table.insert(samples, {
        before = before,
        after = body:sub(value_end + 1),
        quoted = quoted,
      })
    end
  end
  assert(#samples > 0, list .. " names no sample")
  head = "POST " .. wrk.path .. " HTTP/1.1\r\n"
    .. "Host: " .. wrk.host .. ":" .. tostring(wrk.port) .. "\r\n"
    .. "Content-Type: application/JSON\r\n"
    .. "User-Agent: Cloud Apizee (benches/load.lua)\r\n"
    .. "Content-Length: "
end

function request()
  counter = counter + 1
  local sample = samples[(counter % #samples) + 1]
  local id
  if sample.quoted then
    -- The shape of the platform's conversation ids.
    id = string.format('"%08x-eb17-4d3f-901d-%012x"', seed, counter)
  else
    -- Below 2^53, so exact in LuaJIT's doubles.
    id = string.format("%d", seed * 100000000 + counter)
  end
  local body = sample.before .. id .. sample.after
  return head .. #body .. "\r\n\r\n" .. body
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f mean_us=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
