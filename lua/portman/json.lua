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
local EMPTY_PATTERN = EMPTY_JSON:gsub("%p", "%%%0")

--- Marks t (a table, {} by default) to be written as a JSON array even
-- when empty; returns it.
function M.array(t)
  t = t or {}
  arrays[t] = true
  return t
end

local plains = setmetatable({}, {__mode = "k"})

--- Marks t as plain: nothing below it is an empty table marked with
-- json.array, and no integer below it is beyond +-1e14 (the caller's
-- promise). encode then hands it to cjson without looking inside (a list
-- of 10,000 status entries). An empty t marked with json.array still
-- writes []. Returns t.
function M.plain(t)
  plains[t] = true
  return t
end

local math_type = math.type
local MAX_DEPTH = 1000 -- cjson's own limit: deeper (a cycle) it raises "excessive nesting"

-- v with what cjson cannot write replaced by placeholders (empty arrays,
-- large integers), and whether anything was: a table is copied (shallow)
-- only when something inside it changes, so a large document of plain
-- values is walked but not copied.
local function prepare(v, depth, copies)
  if type(v) ~= "table" then
    if math_type(v) == "integer" and (v >= BIG or v <= -BIG) then return "\0" .. NONCE .. "i" .. v .. "\0", true end
    return v, false
  end
  if next(v) == nil then
    if arrays[v] then return EMPTY, true end
    return v, false
  end
  if depth > MAX_DEPTH or plains[v] then return v, false end
  local copy
  for k, x in pairs(v) do
    local tx, y, changed = type(x), nil, false
    if tx == "table" then
      y, changed = prepare(x, depth + 1, copies)
    elseif tx == "number" and (x >= BIG or x <= -BIG) then
      y, changed = prepare(x, depth + 1, copies)
    end
    if changed then
      if not copy then
        copy = {}
        for k2, x2 in pairs(v) do copy[k2] = x2 end
        copies[copy] = true
      end
      copy[k] = y
    end
  end
  return copy or v, copy ~= nil
end

-- The sorted encoder: objects with their keys in order, so that a
-- document prints the same every time (the command line's --json). It
-- appends to a buffer, keeping its length at hand, and writes plain
-- strings and integers without a call: 10,000 services in tens of ms.
local encode_sorted

local ESCAPES = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                 ["\r"] = "\\r", ["\t"] = "\\t"}
local find = string.find

-- A JSON string (cjson would also escape '/', which JSON allows bare).
local function quote(s)
  if not find(s, '[%c"\\]') then return '"' .. s .. '"' end
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

-- A scalar's text (an integer as it is: table.concat writes it as %d).
local function scalar(v)
  if type(v) == "string" then return quote(v) end
  if math_type(v) == "integer" then return v end
  return cjson.encode(v) -- floats, booleans, cjson.null; raises on the rest
end

local function encode_array(t, out, n, depth, ctx)
  out[n + 1] = "["
  n = n + 1
  for i = 1, #t do
    if i > 1 then
      n = n + 1
      out[n] = ","
    end
    n = encode_sorted(t[i], out, n, depth + 1, ctx)
  end
  out[n + 1] = "]"
  return n + 1
end

-- A key's texts: '"key":' and ',"key":', and both with a string's opening
-- quote after them (a plain string value then goes in as it is).
local function key_texts(k)
  local q = quote(k) .. ":"
  return {q, "," .. q, q .. '"', "," .. q .. '"'}
end

-- The sorted names of t's keys and their count. The object before at
-- the same depth usually has the same keys (a list of services): its
-- sorted names are used again when t has as many keys, each among them;
-- else t's are collected and sorted, into the buffer kept for this depth.
local function sorted_names(t, depth, ctx)
  local last = ctx.last[depth]
  if last then
    local c, set = 0, last.set
    for k in pairs(t) do
      if not set[k] then
        c = -1
        break
      end
      c = c + 1
    end
    if c == last.count then return last.names, c end
  end
  local names, set, c = {}, {}, 0
  for k in pairs(t) do
    c = c + 1
    names[c] = type(k) == "string" and k or tostring(k)
    set[k] = true
  end
  table.sort(names)
  ctx.last[depth] = {names = names, set = set, count = c}
  return names, c
end

local function encode_object(t, out, n, depth, ctx)
  local names, c = sorted_names(t, depth, ctx)
  local keys = ctx.keys
  out[n + 1] = "{"
  n = n + 1
  for i = 1, c do
    local k = names[i]
    local texts = keys[k]
    if not texts then
      texts = key_texts(k)
      keys[k] = texts
    end
    local v = t[k]
    if v == nil then v = t[math.tointeger(tonumber(k))] end
    local tv = type(v)
    if tv == "string" and not find(v, '[%c"\\]') then
      out[n + 1], out[n + 2], out[n + 3] = texts[i == 1 and 3 or 4], v, '"'
      n = n + 3
    else
      n = n + 1
      out[n] = texts[i == 1 and 1 or 2]
      if tv == "table" then
        n = encode_sorted(v, out, n, depth + 1, ctx)
      else
        n = n + 1
        out[n] = scalar(v)
      end
    end
  end
  out[n + 1] = "}"
  return n + 1
end

-- Appends v's text to out after out[n]; returns the new length.
function encode_sorted(v, out, n, depth, ctx)
  if type(v) ~= "table" then
    out[n + 1] = scalar(v)
    return n + 1
  end
  if depth > 100 then error("json: nesting deeper than 100 (a cycle?)", 0) end
  if is_array(v) then return encode_array(v, out, n, depth, ctx) end
  return encode_object(v, out, n, depth, ctx)
end

-- cjson's text of a prepared value with the placeholders put back.
local function restore(text)
  text = text:gsub(EMPTY_PATTERN, "[]")
  return (text:gsub(BIG_PATTERN, "%1"))
end

-- Writes a prepared value as pieces appended to out: the tables prepare
-- copied (those with a placeholder inside) piece by piece when they are a
-- sequence or have string keys only, so that the placeholders are
-- searched for in those pieces only, not in the whole text (a status of
-- 10,000 services with one empty list); any other value by cjson at once.
-- Pieces, not one string: joining a 1.5 MiB text copied it three times
-- into fresh pages, which took twice what cjson took to write it.
local function write(p, copies, out)
  if p == EMPTY then
    out[#out + 1] = "[]"
    return
  end
  if type(p) ~= "table" then
    out[#out + 1] = restore(cjson.encode(p))
    return
  end
  if not copies[p] then
    out[#out + 1] = cjson.encode(p)
    return
  end
  local count, strings = 0, true
  for k in pairs(p) do
    count = count + 1
    strings = strings and type(k) == "string"
  end
  if #p == count then
    for i = 1, count do
      out[#out + 1] = i == 1 and "[" or ","
      write(p[i], copies, out)
    end
    out[#out + 1] = "]"
    return
  end
  if not strings then
    out[#out + 1] = restore(cjson.encode(p))
    return
  end
  local sep = "{"
  for k, x in pairs(p) do
    out[#out + 1] = sep .. cjson.encode(k) .. ":"
    sep = ","
    write(x, copies, out)
  end
  out[#out + 1] = "}"
end

--- Encodes v as a list of strings whose concatenation is the text of
-- json.encode(v) (unsorted): a large document written as it is (a writev)
-- is never joined into one string.
function M.encode_pieces(v)
  local copies = {}
  local prepared, changed = prepare(v, 0, copies)
  if not changed then return {cjson.encode(v)} end
  local out = {}
  write(prepared, copies, out)
  return out
end

--- Encodes v; tables marked with json.array stay arrays when empty.
-- @tparam[opt] table opts `sorted`: object keys in order (a stable text)
function M.encode(v, opts)
  if opts and opts.sorted then
    local out = {}
    encode_sorted(v, out, 0, 0, {keys = {}, last = {}})
    return table.concat(out)
  end
  local out = M.encode_pieces(v)
  return out[2] and table.concat(out) or out[1]
end

--- Whether the encoder keeps its buffer between calls (cjson's default:
-- yes, as large as the largest text so far). A daemon turns it off, so
-- that one large text does not keep its buffer allocated for good.
function M.keep_buffer(on)
  cjson.encode_keep_buffer(on and true or false)
end

--- The JSON null (decoded nulls are this value too).
M.null = cjson.null

-- Turns integral floats into integers in place (a value written back
-- only when it changes).
local function integers(v)
  if type(v) == "number" then return math.tointeger(v) or v end
  if type(v) == "table" then
    for k, x in pairs(v) do
      local tx = type(x)
      if tx == "table" then
        integers(x)
      elseif tx == "number" then
        local i = math.tointeger(x)
        if i then v[k] = i end
      end
    end
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
