--- The service registry: which service owns which port.
-- A service is {name, type, proto, address, port, metadata}. Registering
-- checks for conflicts with other registrations and with sockets already
-- bound on the host (/proc/net/tcp, tcp6, udp, udp6).
local json = require "portman.json"
local check = require "portman.check"
local netaddr = require "portman.netaddr"

local M = {}
local mt = {__index = M}

--- Well-known service types and their default ports.
M.TYPES = {database = 5432, cluster = 5433, replication = 5434, admin = 8080, api = 8081}

local SERVICE_KEYS = {name = true, type = true, proto = true, address = true, port = true, metadata = true}
local NEW_KEYS = {check_host = true}

--- Creates a registry.
-- @tparam[opt] table opts `check_host` (default true): also refuse ports
--   that a socket on this host already holds.
-- @raise on an unknown option
function M.new(opts)
  opts = opts or {}
  check.table("new", 1, opts)
  check.known("new", 1, opts, NEW_KEYS)
  return setmetatable({_services = {}, _by_port = {}, _count = 0, _check_host = opts.check_host ~= false}, mt)
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

local PROTOS = {"tcp", "udp"}

-- An entry holds its type, proto and address only where they are not the
-- defaults (its metatable reads those): with its name, port and metadata
-- it fits a table of 4 slots, not 8 (10,000 services: 1 MB less). What
-- leaves the registry (get, list, snapshot) has every field written out.
local DEFAULTS = {type = "custom", proto = "tcp", address = "0.0.0.0"}
local entry_mt = {__index = DEFAULTS}

-- e as a plain table; its metadata copied unless shared.
local function full(e, shared)
  if e == nil then return nil end
  return {name = e.name, type = e.type, proto = e.proto, address = e.address, port = e.port,
          metadata = shared and e.metadata or copy(e.metadata)}
end

-- Checks a service table and fills its defaults; raises naming the field.
-- Its metadata is copied, unless shared (the caller never changes it).
local function normalize(fname, s, shared)
  check.table(fname, 1, s)
  check.known(fname, 1, s, SERVICE_KEYS)
  if type(s.name) ~= "string" or s.name == "" then
    check.argerror(fname, 1, "name: non-empty string expected")
  end
  local stype = s.type or "custom"
  if type(stype) ~= "string" then check.argerror(fname, 1, "type: string expected") end
  local port = s.port or M.TYPES[stype]
  if port == nil then check.argerror(fname, 1, ("port: required for type '%s'"):format(stype)) end
  port = check.port(fname, 1, port, "port")
  local proto = check.oneof(fname, 1, s.proto or "tcp", PROTOS, "proto")
  local address = netaddr.normalize(s.address or "0.0.0.0")
  if not address then
    check.argerror(fname, 1, "address: IP address expected, got " .. tostring(s.address))
  end
  if s.metadata ~= nil and type(s.metadata) ~= "table" then
    check.argerror(fname, 1, "metadata: table expected")
  end
  local metadata = s.metadata
  if not (shared and metadata) then metadata = copy(metadata or {}) end
  local e = setmetatable({name = s.name, port = port, metadata = metadata}, entry_mt)
  if stype ~= DEFAULTS.type then e.type = stype end
  if proto ~= DEFAULTS.proto then e.proto = proto end
  if address ~= DEFAULTS.address then e.address = address end
  return e
end

-- The entries on one proto/port are indexed, so a registration checks the
-- few on its port rather than every one (10,000 services register in
-- linear time). The index key is a number (no string made a service), and
-- a port with one entry holds that entry itself, not a table of one.
local function port_key(s)
  return s.proto == "udp" and s.port + 65536 or s.port
end

-- An index slot holds one entry (its name a string) or a set of them by
-- name (a service may be called "name": its entry then is a table).
local function single(on)
  return type(on.name) == "string"
end

local function add(self, s)
  self._services[s.name] = s
  self._count = self._count + 1
  self._sorted = nil
  local key = port_key(s)
  local on = self._by_port[key]
  if on == nil then
    self._by_port[key] = s
  elseif single(on) then -- one entry so far: now a set of them
    self._by_port[key] = {[on.name] = on, [s.name] = s}
  else
    on[s.name] = s
  end
end

local function remove(self, name)
  local s = self._services[name]
  if not s then return false end
  self._services[name] = nil
  self._count = self._count - 1
  self._sorted = nil
  local key = port_key(s)
  local on = self._by_port[key]
  if on == s then
    self._by_port[key] = nil
  else
    on[name] = nil
    if next(on) == nil then self._by_port[key] = nil end
  end
  return true
end

-- The entry on s's proto/port whose address overlaps s's, or nil.
local function overlapping(self, s)
  local on = self._by_port[port_key(s)]
  if not on then return nil end
  if single(on) then return netaddr.overlap(on.address, s.address) and on or nil end
  for _, o in pairs(on) do
    if netaddr.overlap(o.address, s.address) then return o end
  end
  return nil
end

-- The reason s cannot be registered, or nil.
local function conflict(self, s, check_host)
  if self._services[s.name] then
    return ("conflict: service '%s' is already registered"):format(s.name)
  end
  local o = overlapping(self, s)
  if o then return ("conflict: port %d/%s is registered to '%s'"):format(s.port, s.proto, o.name) end
  if check_host then
    for _, b in ipairs(netaddr.bound_by_port(s.proto)[s.port] or {}) do
      if netaddr.overlap(b.address, s.address) then
        return ("conflict: port %d/%s is already bound on this host (%s)"):format(s.port, s.proto, b.address)
      end
    end
  end
end

--- Registers a service.
-- @tparam table s `name`, `type` (one of registry.TYPES or any other
--   word; "custom" by default), `proto` ("tcp" or "udp"), `address`
--   ("0.0.0.0" by default), `port` (the type's default port when omitted),
--   `metadata` (a table).
-- @tparam[opt] table opts `check_host = false` skips the host's sockets
--   for this call (a caller that has just bound the port itself);
--   `shared = true`: the registry keeps s.metadata itself, not a copy
--   (the caller never changes it: the manager's policy specs), and
--   returns its own entry, to be read only (10,000 services make no copy)
-- @return[1] a copy of the registered entry (the entry itself when shared)
-- @return[2] nil, "conflict: ...", "conflict"
-- @raise on a bad or unknown field
function M:register(s, opts)
  local shared = opts and opts.shared
  s = normalize("register", s, shared)
  local check_host = self._check_host and not (opts and opts.check_host == false)
  local why = conflict(self, s, check_host)
  if why then return nil, why, "conflict" end
  add(self, s)
  if shared then return s end
  return full(s)
end

--- Removes a service; true if it was registered.
function M:unregister(name)
  if type(name) ~= "string" then check.argerror("unregister", 1, "string expected, got " .. type(name)) end
  return remove(self, name)
end

--- A copy of one entry, or nil.
function M:get(name)
  return full(self._services[name])
end

--- The entry of name itself, not a copy (for a caller that only reads
-- it, such as a status of 10,000 services), or nil. Its default type,
-- proto and address are read through its metatable: pairs does not see them.
function M:peek(name)
  return self._services[name]
end

--- The registered names, sorted (a new list each call). The sorted list
-- is kept until a registration changes, so a status of 10,000 services
-- does not sort them again.
function M:names()
  local sorted = self._sorted
  if not sorted then
    sorted = {}
    local n = 0
    for name in pairs(self._services) do
      n = n + 1
      sorted[n] = name
    end
    table.sort(sorted) -- strings, compared in C: no Lua comparator a step
    self._sorted = sorted
  end
  return table.move(sorted, 1, #sorted, 1, {})
end

--- Copies of every entry, sorted by name.
function M:list()
  local out = self:names()
  for i, name in ipairs(out) do out[i] = full(self._services[name]) end
  return out
end

--- The number of registered services.
function M:count()
  return self._count
end

--- The registry as a JSON-safe table (for the state file), sorted by
-- name. Its entries share their metadata with the registry's (a save of
-- 10,000 services copies none): the caller only reads them, or encodes.
function M:snapshot()
  local out = self:names()
  for i, name in ipairs(out) do out[i] = full(self._services[name], true) end
  return {version = 1, services = json.array(out)}
end

--- The registry as a JSON document.
function M:export()
  return json.encode(self:snapshot())
end

-- Adds every entry of a snapshot or none: checks all first.
local function add_all(self, snap, check_host)
  if type(snap) ~= "table" or snap.version ~= 1 or type(snap.services) ~= "table" then
    return nil, "protocol: not a portman registry document", "protocol"
  end
  local entries, staged = {}, M.new()
  for _, s in pairs(self._services) do add(staged, s) end
  for i, s in ipairs(snap.services) do
    local ok, entry = pcall(normalize, "import", s)
    if not ok then
      local why = tostring(entry):match("%((.*)%)$") or entry
      return nil, ("protocol: services[%d]: %s"):format(i, why), "protocol"
    end
    local why = conflict(staged, entry, check_host)
    if why then return nil, why, "conflict" end
    add(staged, entry)
    entries[#entries + 1] = entry
  end
  for _, e in ipairs(entries) do add(self, e) end
  return #entries
end

--- Adds the services of an `export()` document, all or none.
-- @return[1] the number of services added
-- @return[2] nil, "protocol: ...", "protocol" for a malformed document;
--   nil, "conflict: ...", "conflict" when one would conflict
function M:import(text)
  local doc = json.decode(text)
  if doc == nil then return nil, "protocol: registry document is not JSON", "protocol" end
  return add_all(self, doc, self._check_host)
end

--- Rebuilds a registry from `snapshot()` (a restart: the host's sockets
-- are not checked, since the services' own listeners may hold them).
-- @return[1] a registry
-- @return[2] nil, msg, code
function M.restore(snap, opts)
  local reg = M.new(opts)
  local ok, err, code = add_all(reg, snap, false)
  if not ok then return nil, err, code end
  return reg
end

return M
