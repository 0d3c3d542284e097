-- wrk script: Twilio inbound webhooks, each with a unique MessageSid (so none is a duplicate).
-- Counts non-2xx replies, which must stay at zero.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  failures = 0
end

function request()
  counter = counter + 1
  local body = "MessageSid=SMload" .. id .. "x" .. counter ..
    "&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=load+test&NumSegments=1"
  return wrk.format("POST", "/twilio", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
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
  io.write(string.format("non-200 replies: %d\n", failed))
  io.write(string.format("latency p50 %.2f ms, p99 %.2f ms\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
