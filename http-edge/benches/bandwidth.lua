-- wrk script: the spec's Bandwidth inbound webhook with HTTP Basic auth (bench:bench), each call
-- with a unique message id (so none is a duplicate). Used by benches/p1.sh and benches/p2.sh.
--
--   wrk ... -s bandwidth.lua URL                 as fast as the connections allow
--   WRK_RATE=N wrk ... -s bandwidth.lua URL      paced at N calls/s per wrk thread
-- (an environment variable, as wrk decides whether a script paces before it passes arguments)
--
-- Counts non-200 replies, and prints p50/p99 latency and the counts in a parseable line.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } timespec_t;
  int clock_gettime(int clk_id, timespec_t *tp);
]]
local ts = ffi.new("timespec_t")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

local counter = 0
local next_slot = nil

function init(args)
  failures = 0
end

-- Paced mode: each call takes the next free slot of this thread's schedule, so the thread sends
-- N calls/s whatever the latency (until its connections are all busy).
local rate = tonumber(os.getenv("WRK_RATE") or "")
if rate and rate > 0 then
  local interval = 1000 / rate
  function delay()
    local now = now_ms()
    if not next_slot or next_slot < now then
      next_slot = now
    end
    next_slot = next_slot + interval
    return math.floor(next_slot - now)
  end
end

-- Ids unique across runs too (the core would dedupe a repeated one): WRK_RUN names the run.
-- The request is built once around a fixed-width counter, so its length (and Content-Length)
-- never changes and each call costs wrk one string.format and one concatenation: the load
-- generator must not be what limits the bare handler.
local run = os.getenv("WRK_RUN") or tostring(os.time())
local auth = "Basic YmVuY2g6YmVuY2g=" -- bench:bench
local marker = "COUNTER___"
local template = nil

function request()
  if not template then
    local body = '[{"type":"message-received","time":"2024-01-15T10:30:00.000Z",' ..
      '"description":"Incoming message received","to":"+15551234567","message":{' ..
      '"id":"msg-bench-' .. run .. '-' .. id .. '-' .. marker .. '","owner":"+15559876543",' ..
      '"applicationId":"app-12345","time":"2024-01-15T10:30:00.000Z","segmentCount":1,' ..
      '"direction":"in","to":["+15551234567"],"from":"+15559876543",' ..
      '"text":"Hello, I need help with my order","media":[]}}]'
    local raw = wrk.format("POST", "/bandwidth/15551234567",
      {["Content-Type"] = "application/json", ["Authorization"] = auth}, body)
    local at = raw:find(marker, 1, true)
    template = { raw:sub(1, at - 1), raw:sub(at + #marker) }
  end
  counter = counter + 1
  return template[1] .. string.format("%010d", counter) .. template[2]
end

function response(status, headers, body)
  if status ~= 200 then
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local failed = 0
  for _, t in ipairs(threads) do
    failed = failed + t:get("failures")
  end
  io.write(string.format("RESULT requests=%d non200=%d rate=%.1f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    summary.requests, failed, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
