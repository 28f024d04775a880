--- JSON through lua-cjson, with what cjson 2.1.0 lacks: an empty array
-- (cjson writes every empty table as {}), integers on decode (cjson
-- decodes every number as a float) and on encode (it writes 14 significant
-- digits, so 123456789012345 would become 1.2345678901234e+14).
local cjson = require "cjson"

local M = {}
local arrays = setmetatable({}, {__mode = "k"})
-- Placeholders cjson writes as strings and encode puts the real text back
-- for: an empty array, a large integer. The nonce makes a string of the
-- caller's that merely looks like one impossible to mistake for it.
local NONCE = ("%x%x"):format(os.time(), math.random(0, 0x7fffffff))
local EMPTY = "\0" .. NONCE .. "[]\0"
local EMPTY_JSON = cjson.encode(EMPTY)
local BIG_PATTERN = cjson.encode("\0" .. NONCE .. "i"):sub(1, -2):gsub("%p", "%%%0") .. "(%-?%d+)"
  .. cjson.encode("\0"):sub(2):gsub("%p", "%%%0")
local BIG = 1e14 -- from here cjson loses digits

--- Marks t (a table, {} by default) to be written as a JSON array even
-- when empty; returns it.
function M.array(t)
  t = t or {}
  arrays[t] = true
  return t
end

local function prepare(v, seen)
  if math.type(v) == "integer" and (v >= BIG or v <= -BIG) then
    return "\0" .. NONCE .. "i" .. v .. "\0", true
  end
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

-- The sorted encoder: objects with their keys in order, so that a
-- document prints the same every time (the command line's --json).
local encode_sorted

local ESCAPES = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                 ["\r"] = "\\r", ["\t"] = "\\t"}

-- A JSON string (cjson would also escape '/', which JSON allows bare).
local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return ESCAPES[c] or ("\\u%04x"):format(c:byte()) end) .. '"'
end

local function is_array(t)
  if arrays[t] then return true end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local function encode_table(t, out, depth)
  if depth > 100 then error("json: nesting deeper than 100 (a cycle?)", 0) end
  if is_array(t) then
    out[#out + 1] = "["
    for i = 1, #t do
      if i > 1 then out[#out + 1] = "," end
      encode_sorted(t[i], out, depth + 1)
    end
    out[#out + 1] = "]"
    return
  end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  out[#out + 1] = "{"
  for i, k in ipairs(keys) do
    if i > 1 then out[#out + 1] = "," end
    out[#out + 1] = quote(k) .. ":"
    local v = t[k]
    if v == nil then v = t[math.tointeger(tonumber(k))] end
    encode_sorted(v, out, depth + 1)
  end
  out[#out + 1] = "}"
end

function encode_sorted(v, out, depth)
  if type(v) == "table" then return encode_table(v, out, depth) end
  if type(v) == "string" then
    out[#out + 1] = quote(v)
  elseif math.type(v) == "integer" then
    out[#out + 1] = ("%d"):format(v)
  else
    out[#out + 1] = cjson.encode(v) -- floats, booleans, cjson.null; raises on the rest
  end
end

--- Encodes v; tables marked with json.array stay arrays when empty.
-- @tparam[opt] table opts `sorted`: object keys in order (a stable text)
function M.encode(v, opts)
  if opts and opts.sorted then
    local out = {}
    encode_sorted(v, out, 0)
    return table.concat(out)
  end
  local prepared, changed = prepare(v, {})
  local text = cjson.encode(prepared)
  if changed then
    text = text:gsub(EMPTY_JSON:gsub("%p", "%%%0"), "[]")
    text = text:gsub(BIG_PATTERN, "%1")
  end
  return text
end

--- The JSON null (decoded nulls are this value too).
M.null = cjson.null

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
