-- wrk script: cycle through the request paths listed in a file (one per line), and print
-- the results as one JSON line prefixed "WRKJSON " (latencies in microseconds).
-- Usage: wrk -t1 -c50 -d10s -s bench/paths.lua http://127.0.0.1:PORT -- PATHS_FILE

local paths = {}
local count = 0
local index = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      count = count + 1
      paths[count] = line
    end
  end
  -- threads start at different points so they do not hit the same email in step
  index = math.random(count) - 1
end

function request()
  index = index % count + 1
  return wrk.format("GET", paths[index])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_status":%d,'
      .. '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
