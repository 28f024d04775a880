--- `portman events`: a running daemon's recent events, with wall-clock times.
local cmd = require "portman.cmd"
local client = require "portman.cmd.client"
local json = require "portman.json"

local UNITS = {s = 1, m = 60, h = 3600, d = 86400}

-- "90s", "15m", "2h", "1d" (or plain seconds) as seconds.
local function seconds(text)
  local n, unit = tostring(text):match("^(%d+)([smhd]?)$")
  if not n then cmd.usage_error(("--since: a duration like 90s, 15m, 2h or 1d expected, got '%s'"):format(text)) end
  return math.tointeger(tonumber(n)) * UNITS[unit ~= "" and unit or "s"]
end

-- An event's fields besides its time and name, as key=value words.
local function fields(ev)
  local keys = {}
  for k in pairs(ev) do
    if k ~= "time" and k ~= "event" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(ev[k]) end
  return table.concat(keys, " ")
end

return {events = {
  summary = "show a running daemon's recent events (services, statuses, mappings, reloads, pools)",
  flags = {
    {"since", "DURATION", "only events of the last DURATION: 90s, 15m, 2h, 1d (default: every event kept)"},
    client.SOCKET, client.TIMEOUT,
  },
  json = true,
  table = true,
  run = function(opts)
    local since = opts.since and seconds(opts.since)
    local doc, err, code = client.ask(opts, {op = "events", since = since})
    if not doc then return nil, err, code end
    local rows = {}
    for i, ev in ipairs(doc.events or {}) do
      rows[i] = {os.date("!%Y-%m-%dT%H:%M:%SZ", ev.time), ev.event, fields(ev)}
    end
    return {json = {events = json.array(doc.events or {})}, header = {"TIME", "EVENT", "DETAILS"}, rows = rows}
  end,
}}
