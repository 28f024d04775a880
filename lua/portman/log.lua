--- Structured logs: one event a line, `time level event key=value ...`.
local M = {}

local LEVELS = {debug = 1, info = 2, warn = 3, error = 4}
M.threshold = LEVELS.info
M.out = io.stderr

local ESCAPES = {["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\"}

-- A value as one token: quoted when it holds spaces, quotes, '=' or
-- control characters, which are escaped so that no value can end the line
-- or forge another event.
local function quote(v)
  v = tostring(v)
  if v:find("[%s%c\"=]") or v == "" then
    return '"' .. v:gsub('[%c"\\]', function(c) return ESCAPES[c] or ("\\x%02x"):format(c:byte()) end) .. '"'
  end
  return v
end

--- Formats one line (without the newline); fields are written sorted.
function M.format(level, event, fields)
  local parts = {os.date("!%Y-%m-%dT%H:%M:%SZ"), level, event}
  if fields then
    local keys = {}
    for k in pairs(fields) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = fields[k]
      if v == nil then v = fields[math.tointeger(tonumber(k))] end
      parts[#parts + 1] = k .. "=" .. quote(v)
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
