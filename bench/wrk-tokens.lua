-- Sends each request with the next of the tokens in the file named after `--` (one per line), round robin from the
-- index given after it (where the case's last run stopped: starting each run again at the first token, a run re-sent
-- the tokens its warm-up had just had verified and cached), in the Authorization header; every other header as given
-- with -H. Appended to wrk-report.lua by bench/wrk.mjs.
local tokens = {}
local next_token = 0
local headers = {}

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
  next_token = (tonumber(args[2]) or 0) % #tokens
  for name, value in pairs(wrk.headers) do headers[name] = value end
end

function request()
  next_token = next_token % #tokens + 1
  headers["Authorization"] = "Bearer " .. tokens[next_token]
  return wrk.format(nil, nil, headers)
end
