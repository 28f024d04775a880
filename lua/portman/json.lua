--- JSON through lua-cjson, with the two things cjson 2.1.0 lacks: an empty
-- array (cjson writes every empty table as {}) and integers on decode
-- (cjson decodes every number as a float).
local cjson = require "cjson"

local M = {}
local arrays = setmetatable({}, {__mode = "k"})
local EMPTY = "\0portman-empty-array\0"
local EMPTY_JSON = cjson.encode(EMPTY)

--- Marks t (a table, {} by default) to be written as a JSON array even
-- when empty; returns it.
function M.array(t)
  t = t or {}
  arrays[t] = true
  return t
end

local function prepare(v, seen)
  if type(v) ~= "table" then return v, false end
  if arrays[v] and next(v) == nil then return EMPTY, true end
  if seen[v] then return v, false end
  seen[v] = true
  local copy, changed = {}, false
  for k, x in pairs(v) do
    local y, c = prepare(x, seen)
    copy[k] = y
    changed = changed or c
  end
  seen[v] = nil
  return changed and copy or v, changed
end

--- Encodes v; tables marked with json.array stay arrays when empty.
function M.encode(v)
  local prepared, changed = prepare(v, {})
  local text = cjson.encode(prepared)
  if changed then text = text:gsub(EMPTY_JSON:gsub("%p", "%%%0"), "[]") end
  return text
end

local function integers(v)
  if type(v) == "number" then return math.tointeger(v) or v end
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = integers(x) end
  end
  return v
end

--- Decodes text, with integral numbers as Lua integers.
-- @return[1] the value
-- @return[2] nil, "protocol: ...", "protocol"
function M.decode(text)
  local ok, v = pcall(cjson.decode, text)
  if not ok then return nil, "protocol: " .. tostring(v), "protocol" end
  return integers(v)
end

return M
