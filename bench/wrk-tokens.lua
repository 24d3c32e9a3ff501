-- Sends each request with the next of the tokens in the file named after `--` (one per line), round robin, in the
-- Authorization header; every other header as given with -H. Appended to wrk-report.lua by bench/wrk.mjs.
local tokens = {}
local next_token = 0
local headers = {}

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
  for name, value in pairs(wrk.headers) do headers[name] = value end
end

function request()
  next_token = next_token % #tokens + 1
  headers["Authorization"] = "Bearer " .. tokens[next_token]
  return wrk.format(nil, nil, headers)
end
