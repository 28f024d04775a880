--- Argument checks that raise in Lua's standard words, blaming the caller.
local M = {}

-- Where portman's modules were loaded from ("@lua/portman/"): a source
-- under it is portman's own, in a subdirectory (portman/resolver/) too.
local OWN = debug.getinfo(1, "S").source:match("^(@.*/)check%.lua$")

local function own(source)
  return (OWN and source:sub(1, #OWN) == OWN) or source:match("[/@]portman/[%w_/]+%.lua$") ~= nil
end

-- The stack level of the first function outside portman's own modules: the
-- code that made the bad call, wherever in portman the check happened.
local function blame_level()
  local level = 3 -- 1: this function, 2: argerror
  while true do
    local info = debug.getinfo(level, "S")
    if not info then return 1 end
    if not own(info.source) then return level - 1 end
    level = level + 1
  end
end

--- Raises "bad argument #n to 'fname' (msg)" at the code that called portman.
function M.argerror(fname, n, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), blame_level())
end

--- The message of a raised argument error without where and whose:
-- "x.lua:3: bad argument #1 to 'new' (range: lo 5 > hi 1)" gives
-- "range: lo 5 > hi 1"; any other error its text without the position.
function M.reason(err)
  local msg = tostring(err):gsub("^[^:]*:%d+: ", "")
  return msg:match("^bad argument #%d+ to '[^']*' %((.*)%)$") or msg
end

--- Checks that value is a table; returns it.
function M.table(fname, n, value)
  if type(value) ~= "table" then
    M.argerror(fname, n, "table expected, got " .. type(value))
  end
  return value
end

--- Checks that opts[key], when given, is of Lua type kind ("function",
-- "table", ...); returns it.
function M.optional(fname, n, opts, key, kind)
  local v = opts[key]
  if v ~= nil and type(v) ~= kind then
    M.argerror(fname, n, ("%s: %s expected, got %s"):format(key, kind, type(v)))
  end
  return v
end

--- Rejects keys of opts not in allowed (a set); prefix names nested tables.
-- @raise on the first unknown key, named by its dotted path.
function M.known(fname, n, opts, allowed, prefix)
  for k in pairs(opts) do
    if not allowed[k] then
      M.argerror(fname, n, ("unknown option '%s%s'"):format(prefix or "", tostring(k)))
    end
  end
end

--- An integer port in 1-65535 (an integral float is accepted); returns it.
function M.port(fname, n, value, what)
  local p = type(value) == "number" and math.tointeger(value)
  if not p then
    M.argerror(fname, n, ("%s: integer port expected, got %s"):format(what,
      math.type(value) == "float" and tostring(value) or type(value)))
  end
  if p < 1 or p > 65535 then
    M.argerror(fname, n, ("%s: port out of range 1-65535"):format(what))
  end
  return p
end

--- A value that must be one of the names in list; returns it.
function M.oneof(fname, n, value, list, what)
  for _, name in ipairs(list) do
    if value == name then return value end
  end
  M.argerror(fname, n, ("unknown %s '%s' (%s)"):format(what, tostring(value),
    table.concat(list, ", ")))
end

return M
