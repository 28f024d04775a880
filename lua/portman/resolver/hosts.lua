--- The hosts file for portman.resolver: read into name -> addresses, and
-- read again when it changes (its mtime or size), looked at no more than
-- once a second by the resolver's clock.
local uv = require "luv"
local core = require "portman.core"

local M = {}
local Hosts = {}
Hosts.__index = Hosts

-- How often (ms by the clock) the file's stamp is looked at.
M.RECHECK_MS = 1000

--- Reads a hosts file into name -> {{address, family}, ...} (names in
-- lower case; an address once per name, in the file's order).
-- @return the table, or an empty one when the file cannot be read
function M.read(path)
  local map = {}
  local f = io.open(path)
  if not f then return map end
  for line in f:lines() do
    line = line:gsub("#.*", "")
    local fields = {}
    for w in line:gmatch("%S+") do fields[#fields + 1] = w end
    local family, ip = core.dns_parse_ip(fields[1] or "")
    if family and not (fields[1]):find("^%[") then
      for i = 2, #fields do
        local key = fields[i]:lower()
        local list = map[key] or {}
        map[key] = list
        local dup = false
        for _, rec in ipairs(list) do dup = dup or rec.address == ip end
        if not dup then list[#list + 1] = {address = ip, family = family} end
      end
    end
  end
  f:close()
  return map
end

--- A hosts file watched through clock (a function giving ms).
function M.new(path, clock)
  return setmetatable({_path = path, _clock = clock, _map = {}}, Hosts)
end

-- map with each name also under its absolute form ("name."), so that a
-- lookup is one index whichever form it asks for.
local function with_dots(map)
  local out = {}
  for name, list in pairs(map) do
    out[name] = list
    if name:byte(-1) ~= 46 then out[name .. "."] = out[name .. "."] or list end -- 46: "."
  end
  return out
end

--- The file's addresses for lname (a lower-case name, a trailing dot
-- allowed), or nil; re-reads the file first when it has changed.
-- @tparam[opt] number now the clock's time, when the caller has it
function Hosts:lookup(lname, now)
  now = now or self._clock()
  local checked = self._checked
  if not checked or now - checked >= M.RECHECK_MS or now < checked then
    self._checked = now
    local st = uv.fs_stat(self._path)
    local stamp = st and (st.mtime.sec .. "." .. st.mtime.nsec .. ":" .. st.size) or "none"
    if stamp ~= self._stamp then
      self._stamp = stamp
      self._map = with_dots(M.read(self._path))
    end
  end
  return self._map[lname]
end

return M
