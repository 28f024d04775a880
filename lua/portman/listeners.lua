--- A set of named listeners: opened from one table, listed with their
-- options and connection counts, stopped one by one or all at once with a
-- drain (stop accepting, wait for open connections up to a grace period,
-- then close).
--
-- Socket activation: a process started with systemd's LISTEN_FDS,
-- LISTEN_PID and LISTEN_FDNAMES (sd_listen_fds(3)) adopts those fds, matched
-- by name, instead of binding new ones. The inherited fds start at 3.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local listener = require "portman.listener"
local log = require "portman.log"

local M = {}
local Set = {}
local mt = {__index = Set, __name = "portman.listeners"}

M.LISTEN_FDS_START = 3
local MAX_LISTEN_FDS = 4096
-- keys of a set entry besides listener.open's options
local ENTRY = {count = true, handler = true}

--- Reads systemd's socket activation variables.
-- @tparam[opt] function getenv defaults to os.getenv
-- @tparam[opt] int pid this process's pid (uv.os_getpid())
-- @return a table name -> array of fds (in order), or an empty table when
--   the variables are absent, malformed or meant for another process
function M.activation(getenv, pid)
  getenv = getenv or os.getenv
  pid = pid or uv.os_getpid()
  local want, n = getenv("LISTEN_PID"), getenv("LISTEN_FDS")
  if not want or not n then return {} end
  -- plain decimal only, as systemd writes them ("0x4d" is not a pid)
  want = want:match("^%d+$") and math.tointeger(tonumber(want))
  n = n:match("^%d+$") and math.tointeger(tonumber(n))
  if want ~= pid or not n or n < 1 or n > MAX_LISTEN_FDS then
    if want ~= pid then log.debug("activation_other_pid", {listen_pid = want}) end
    return {}
  end
  local names = {}
  local raw = getenv("LISTEN_FDNAMES")
  if raw then
    for name in (raw .. ":"):gmatch("([^:]*):") do names[#names + 1] = name end
    if #names ~= n then
      log.warn("activation_names_mismatch", {fds = n, names = #names})
      names = {}
    end
  end
  local byname = {}
  for i = 1, n do
    local name = names[i] or "unknown" -- systemd's name for an unnamed fd
    byname[name] = byname[name] or {}
    table.insert(byname[name], M.LISTEN_FDS_START + i - 1)
  end
  return byname
end

--- This process's inherited fds, as `activation` reads them, taken over
-- the way sd_listen_fds(unset_environment = 1) does: LISTEN_PID,
-- LISTEN_FDS and LISTEN_FDNAMES are unset, so children do not inherit
-- them, and every socket among the fds is made close-on-exec, so no child
-- inherits one that no listener claims either. Call it once, early.
-- @return a table name -> array of fds, as `activation`
function M.from_environment()
  local byname = M.activation()
  for _, k in ipairs{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} do uv.os_unsetenv(k) end
  for _, fds in pairs(byname) do
    for _, fd in ipairs(fds) do
      -- adopt sets FD_CLOEXEC; release hands the fd back untouched
      local s = core.socket_adopt(fd)
      if s then s:release() end
    end
  end
  return byname
end

--- Creates a manager.
-- @tparam[opt] table opts `activation` (a table from `listeners.activation`;
--   by default `from_environment()`, which unsets the LISTEN_* variables
--   so children do not inherit them; false: none),
--   `allocator` (default pool for entries with port = "auto")
-- @raise on a bad option
function M.new(opts)
  opts = opts or {}
  check.table("new", 1, opts)
  check.known("new", 1, opts, {activation = true, allocator = true})
  local inherited = opts.activation
  if inherited == nil then
    inherited = M.from_environment()
  elseif inherited == false then
    inherited = {}
  else
    check.table("new", 1, inherited)
  end
  return setmetatable({_sets = {}, _inherited = inherited, _allocator = opts.allocator}, mt)
end

local function check_entry(name, entry)
  local where = "entry '" .. tostring(name) .. "'"
  if type(name) ~= "string" or name == "" then
    check.argerror("open", 1, "listener names must be non-empty strings")
  end
  if type(entry) ~= "table" then check.argerror("open", 1, where .. ": table expected") end
  local count = entry.count or 1
  if not math.tointeger(count) or count < 1 then
    check.argerror("open", 1, where .. ": count: positive integer expected")
  end
  if entry.handler ~= nil and type(entry.handler) ~= "function" then
    check.argerror("open", 1, where .. ": handler: function expected")
  end
end

-- The listener.open options of an entry (without count and handler).
local function open_opts(self, name, entry)
  local o = {name = name}
  for k, v in pairs(entry) do
    if not ENTRY[k] then o[k] = v end
  end
  if o.port == "auto" and not o.allocator then o.allocator = self._allocator end
  return o
end

-- Inherited fds named name, adopted as listeners; nil when there are none.
local function adopt(self, name, o)
  local fds = self._inherited[name]
  if not fds then return nil end
  local members = {}
  for i, fd in ipairs(fds) do
    local l, err, code = listener.adopt(fd, {proto = o.proto, name = name,
                                             backlog = o.backlog})
    if not l then
      for _, m in ipairs(members) do m:close() end
      return nil, err, code
    end
    members[i] = l
  end
  self._inherited[name] = nil
  return members
end

local function open_one(self, name, entry)
  local o = open_opts(self, name, entry)
  local members, err, code = adopt(self, name, o)
  if members or err then return members, err, code end
  if (entry.count or 1) > 1 then return listener.group(entry.count, o) end
  local l
  l, err, code = listener.open(o)
  if not l then return nil, err, code end
  return {l}
end

local function serve_all(members, handler)
  for _, l in ipairs(members) do
    local ok, err, code = l:serve(handler)
    if not ok then return nil, err, code end
  end
  return true
end

--- Opens a set of listeners: `set` maps a name to listener.open's options
-- plus `count` (a SO_REUSEPORT group of that many members on one port) and
-- `handler` (passed to `l:serve`: the manager then counts connections).
-- An inherited fd of the same name is adopted instead of binding.
-- All or nothing: on a failure, those this call opened are closed.
-- @return[1] true
-- @return[2] nil, msg, code (the msg names the listener)
-- @raise on a bad entry or a name already open
function Set:open(set)
  check.table("open", 1, set)
  local names = {}
  for name, entry in pairs(set) do
    check_entry(name, entry)
    if self._sets[name] then check.argerror("open", 1, ("listener '%s' is already open"):format(name)) end
    names[#names + 1] = name
  end
  table.sort(names)
  local opened = {}
  for _, name in ipairs(names) do
    local entry = set[name]
    local members, err, code = open_one(self, name, entry)
    if members and entry.handler then
      local ok, serr, scode = serve_all(members, entry.handler)
      if not ok then
        for _, l in ipairs(members) do l:close() end
        members, err, code = nil, serr, scode
      end
    end
    if not members then
      for _, n in ipairs(opened) do self:_close(n) end
      return nil, ("%s (listener '%s')"):format(err, name), code
    end
    self._sets[name] = members
    opened[#opened + 1] = name
  end
  return true
end

--- The members of a listener set (an array), or nil.
function Set:get(name)
  return self._sets[name]
end

--- Names of inherited fds that no entry has claimed yet.
function Set:unclaimed()
  local out = {}
  for name in pairs(self._inherited) do out[#out + 1] = name end
  table.sort(out)
  return out
end

local function describe(name, members)
  local first = members[1]
  local d = {name = name, proto = first.proto, address = first.address, host = first.host,
             port = first.port, path = first.path, abstract = first.abstract,
             members = #members, activated = first.activated == true, state = first.state,
             connections = 0, accepted = 0}
  for _, l in ipairs(members) do
    d.connections = d.connections + l:connections()
    d.accepted = d.accepted + l.accepted
  end
  if first.state == "open" then d.options = first:options() end
  return d
end

--- Lists the listener sets, sorted by name: {name, proto, address, host,
-- port, path, abstract, members, activated, state, connections, accepted,
-- options (read back from the socket)}.
function Set:list()
  local names = {}
  for name in pairs(self._sets) do names[#names + 1] = name end
  table.sort(names)
  local out = {}
  for i, name in ipairs(names) do out[i] = describe(name, self._sets[name]) end
  return out
end

function Set:_close(name)
  for _, l in ipairs(self._sets[name] or {}) do l:close() end
  self._sets[name] = nil
end

local function check_grace(fname, opts)
  opts = opts or {}
  check.table(fname, 2, opts)
  check.known(fname, 2, opts, {grace = true})
  local grace = opts.grace or 0
  if not math.tointeger(grace) or grace < 0 then
    check.argerror(fname, 2, "grace: non-negative integer (ms) expected")
  end
  return grace
end

-- Drains the members of each set in names at once; cb(forced) at the end.
local function drain(self, names, grace, cb)
  local all = {}
  for _, name in ipairs(names) do
    for _, l in ipairs(self._sets[name]) do all[#all + 1] = l end
    self._sets[name] = nil
  end
  -- one extra count, dropped after every drain has started: a drain that
  -- finishes at once must not end the whole stop early
  local pending, forced = #all + 1, 0
  local function one_done(n)
    forced = forced + n
    pending = pending - 1
    if pending == 0 then cb(forced) end
  end
  for _, l in ipairs(all) do
    if l.state == "closed" then one_done(0) else l:drain(grace, one_done) end
  end
  one_done(0)
end

--- Stops one listener set with a drain: stop accepting, wait up to
-- `opts.grace` ms (0 by default) for open connections, close the rest.
-- `m:stop(name, opts, cb)`, or in a task `local forced = m:stop(name, opts)`.
-- @return[1] the number of connections closed by force
-- @return[2] nil, msg, "not_found" for an unknown name
Set.stop = async.adapt(function(self, name, opts, cb)
  if type(opts) == "function" then opts, cb = nil, opts end
  local grace = check_grace("stop", opts)
  if not self._sets[name] then
    return cb(nil, ("not_found: no listener '%s'"):format(tostring(name)), "not_found")
  end
  drain(self, {name}, grace, cb)
end)

--- Stops every listener set at once, as `stop` does one.
-- @return the number of connections closed by force
Set.stop_all = async.adapt(function(self, opts, cb)
  if type(opts) == "function" then opts, cb = nil, opts end
  local grace = check_grace("stop_all", opts)
  local names = {}
  for name in pairs(self._sets) do names[#names + 1] = name end
  drain(self, names, grace, cb)
end)

--- Is v a listener set?
function M.is_set(v) return getmetatable(v) == mt end

return M
