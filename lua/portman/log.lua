--- Structured logs: one event a line, `time level event key=value ...`.
local M = {}

local LEVELS = {debug = 1, info = 2, warn = 3, error = 4}
M.threshold = LEVELS.info
M.out = io.stderr

local function quote(v)
  v = tostring(v)
  if v:find("[%s\"=]") or v == "" then
    return '"' .. v:gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
  end
  return v
end

--- Formats one line (without the newline); fields are written sorted.
function M.format(level, event, fields)
  local parts = {os.date("!%Y-%m-%dT%H:%M:%SZ"), level, event}
  if fields then
    local keys = {}
    for k in pairs(fields) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      parts[#parts + 1] = k .. "=" .. quote(fields[k])
    end
  end
  return table.concat(parts, " ")
end

--- Writes an event at level ("debug", "info", "warn", "error").
function M.log(level, event, fields)
  if (LEVELS[level] or 4) >= M.threshold then
    M.out:write(M.format(level, event, fields), "\n")
    M.out:flush()
  end
end

for name in pairs(LEVELS) do
  M[name] = function(event, fields) M.log(name, event, fields) end
end

return M
