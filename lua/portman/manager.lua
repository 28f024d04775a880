--- The manager: the one object a policy drives. It keeps pools per service
-- type, and for each service allocates a port, registers it, opens its
-- listener, maps it on the router when asked, and health-checks it; it
-- stops one service or shuts everything down (listeners drained, mappings
-- deleted, state written).
local check = require "portman.check"
local allocator = require "portman.allocator"
local registry = require "portman.registry"
local health = require "portman.health"
local listener = require "portman.listener"
local log = require "portman.log"
local state = require "portman.state"
local json = require "portman.json"
local events = require "portman.events"
local async = require "portman.async"
local uv = require "luv"
local nat = require "portman.nat"

local M = {}
local Manager = events.mixin({})
local mt = {__index = Manager, __name = "portman.manager"}

local NEW_KEYS = {state_file = true, check_host = true, on_event = true, concurrency = true,
                  cluster = true}
local POOL_KEYS = {range = true, strategy = true, node_id = true, allow_privileged = true,
                   warning = true, critical = true}
local SERVICE_KEYS = {name = true, type = true, proto = true, address = true, port = true, pool = true,
                      listen = true, handler = true, check = true, map = true, metadata = true}
local MAP_KEYS = {external_port = true, method = true, lifetime = true, description = true, timeout = true}

--- Creates a manager.
-- @tparam[opt] table opts `state_file` (path of the JSON state, none by
--   default), `check_host` (refuse ports other processes hold; true),
--   `on_event` (called with each event: health status changes, pool
--   exhaustion, service lifecycle), `concurrency` (health checks at once),
--   `cluster` (a started portman.backend: services are registered there
--   too, and `where` answers from every node's registrations)
function M.new(opts)
  opts = opts or {}
  check.table("new", 1, opts)
  check.known("new", 1, opts, NEW_KEYS)
  local self = setmetatable({
    pools = {}, services = {}, registry = registry.new{check_host = opts.check_host},
    _state_file = opts.state_file, _previous = {}, _unclean = {},
  }, mt)
  self.health = health.new{concurrency = opts.concurrency, on_event = function(ev) self:_event(ev) end}
  if opts.on_event then self:on(opts.on_event) end
  self.health:start()
  if opts.cluster then self:_join(opts.cluster) end
  return self
end

-- ---- the cluster: registrations shared through a backend (etcd) ----

local SYNC_MS = 2000

-- Registers what is not registered yet. While the backend is unreachable
-- the services keep running here, and each round tries again; the
-- backend itself rewrites its records under a new lease after an outage.
function Manager:_sync()
  for name, svc in pairs(self.services) do
    if not svc.in_cluster and not svc.joining then
      svc.joining = true
      self.cluster:register({name = name, address = svc.address, port = svc.port, proto = svc.proto,
                             metadata = svc.metadata}, function(ok, err)
        svc.joining = nil
        if ok then
          svc.in_cluster = true
          self:_event({event = "cluster_registered", service = name})
        elseif not svc.cluster_warned then
          svc.cluster_warned = true
          log.warn("cluster_register_failed", {service = name, error = err})
        end
      end)
    end
  end
  if not self.cluster_view and not self._mirroring then
    self._mirroring = true
    self.cluster:mirror("services", function(m, err)
      self._mirroring = nil
      if m then self.cluster_view = m else log.warn("cluster_watch_failed", {error = err}) end
    end)
  end
end

function Manager:_join(backend)
  self.cluster = backend
  self._sync_timer = uv.new_timer()
  local sync = async.safe(function() self:_sync() end, "cluster sync")
  self._sync_timer:start(0, SYNC_MS, sync)
end

--- Where service name runs: every node's registration of it (from the
-- cluster's live view when the manager is in a cluster; else this node's
-- registry). Each entry is {name, node, address, port, proto}.
function Manager:where(name)
  local out = {}
  if self.cluster_view then
    for _, r in pairs(self.cluster_view.records) do
      local v = r.value
      if type(v) == "table" and v.name == name then
        out[#out + 1] = {name = v.name, node = v.node, address = v.address, proto = v.proto,
                         port = math.tointeger(v.port) or v.port}
      end
    end
    table.sort(out, function(a, b) return tostring(a.node) < tostring(b.node) end)
    return out
  end
  local e = self.registry:get(name)
  if e then out[1] = {name = e.name, node = "local", address = e.address, port = e.port, proto = e.proto} end
  return out
end

--- Manager:on(fn) adds a listener for events ({event = ...}); it returns
-- a function that removes it again.

function Manager:_event(ev)
  local fields = {}
  for k, v in pairs(ev) do if k ~= "event" then fields[k] = v end end
  log.log(ev.level == "critical" and "error" or ev.level == "warning" and "warn" or "info", ev.event, fields)
  events.emit(self, ev)
end

--- Adds a pool. Services of a type take ports from the pool of that name
-- unless they name another.
-- @tparam table opts allocator options, plus `warning` and `critical`
--   (utilization percent for exhaustion events; 80 and 95)
-- @raise on a bad option or a pool name in use
function Manager:add_pool(name, opts)
  if type(name) ~= "string" then check.argerror("add_pool", 1, "string expected, got " .. type(name)) end
  check.table("add_pool", 2, opts)
  check.known("add_pool", 2, opts, POOL_KEYS)
  if self.pools[name] then check.argerror("add_pool", 1, "pool '" .. name .. "' exists") end
  local pool = allocator.new{range = opts.range, strategy = opts.strategy, node_id = opts.node_id,
                             allow_privileged = opts.allow_privileged}
  self.pools[name] = pool
  self.health:watch_pool(name, pool, {warning = opts.warning, critical = opts.critical})
  return pool
end

local function check_service(spec)
  check.table("add_service", 1, spec)
  check.known("add_service", 1, spec, SERVICE_KEYS)
  if type(spec.name) ~= "string" or spec.name == "" then
    check.argerror("add_service", 1, "name: non-empty string expected")
  end
  if spec.handler ~= nil and type(spec.handler) ~= "function" then
    check.argerror("add_service", 1, "handler: function expected")
  end
  for _, k in ipairs({"check", "map", "listen"}) do
    local v = spec[k]
    if v ~= nil and type(v) ~= "table" and type(v) ~= "boolean" then
      check.argerror("add_service", 1, k .. ": table or boolean expected")
    end
  end
  if type(spec.map) == "table" then check.known("add_service", 1, spec.map, MAP_KEYS, "map.") end
end

-- The default health check: connect to a TCP listener; none otherwise.
local function default_check(svc)
  if svc.proto ~= "tcp" or not svc.listener then return nil end
  local host = svc.address
  if host == "0.0.0.0" then host = "127.0.0.1" elseif host == "::" then host = "::1" end
  return {kind = "tcp", host = host, port = svc.port, interval = 2000, timeout = 1000, rise = 1, fall = 2,
          jitter = 200}
end

local function in_pool(pool, port)
  if not pool then return false end
  local lo, hi = pool:range()
  return port >= lo and port <= hi
end

local function no_pool(svc)
  return "not_found: service " .. svc.name .. " has no pool and no port", "not_found"
end

local function listen_opts(svc, spec)
  local lopts = {proto = svc.proto, address = svc.address, name = svc.name}
  -- as nginx and libuv do: a restarted TCP service must rebind its port
  -- while old connections linger in TIME_WAIT
  if svc.proto == "tcp" then lopts.reuseaddr = true end
  for k, v in pairs(type(spec.listen) == "table" and spec.listen or {}) do lopts[k] = v end
  return lopts
end

-- Takes the service's port: its fixed port, else the one it had before the
-- restart, else a pool's. With a listener the port is bound at once
-- (allocate-and-bind in one step); otherwise it is only reserved.
-- @return listener or nil, port, reserved (the manager frees the port on
--   stop); or nil, nil, err, code
function Manager:_take_port(svc, spec, pool)
  local wanted = spec.port or self._previous[svc.name]
  local owned = wanted ~= nil and in_pool(pool, wanted)
  if owned and not pool:reserve(wanted) then
    if spec.port then
      return nil, nil, ("conflict: port %d is already allocated"):format(wanted), "conflict"
    end
    wanted, owned = nil, false -- the port it had went to another service
  end
  if spec.listen == false then
    if wanted then return nil, wanted, owned end
    if not pool then return nil, nil, no_pool(svc) end
    local port, err, code = pool:allocate()
    if not port then return nil, nil, err, code end
    return nil, port, true
  end
  local lopts = listen_opts(svc, spec)
  if wanted then
    lopts.port = wanted
    local l, err, code = listener.open(lopts)
    if l then return l, wanted, owned end
    if owned then pool:release(wanted) end
    if spec.port or not pool then return nil, nil, err, code end
  end
  if not pool then return nil, nil, no_pool(svc) end
  lopts.port, lopts.allocator = "auto", pool
  local l, err, code = listener.open(lopts)
  if not l then return nil, nil, err, code end
  return l, l.port, false -- an auto port goes back to the pool with the listener
end

-- Undoes what add_service had done when a later step fails.
function Manager:_undo(svc)
  if svc.check_name then self.health:remove(svc.check_name) end
  if svc.registered then self.registry:unregister(svc.name) end
  if svc.listener then svc.listener:close() end
  if svc.reserved then svc.pool:release(svc.port) end
end

--- Adds a service: allocates its port, registers it, opens its listener,
-- maps it on the router if asked, starts its health check. A failure at
-- any step undoes the earlier ones.
-- @tparam table spec `name`, `type` ("custom"), `proto` ("tcp"), `address`
--   ("0.0.0.0"), `port` (fixed; else from the pool), `pool` (the pool's
--   name; the type's by default), `listen` (false: only reserve the port; a
--   table: listener options), `handler` (serves accepted connections; by
--   default they are closed at once), `check` (false, or health check
--   options; a TCP connect check by default for TCP listeners), `map`
--   (router mapping options), `metadata`
-- @return[1] the service's entry {name, type, proto, address, port, status}
-- @return[2] nil, msg, code
-- @raise on a bad spec or a name in use
function Manager:add_service(spec)
  check_service(spec)
  if self.services[spec.name] then
    check.argerror("add_service", 1, "name: service '" .. spec.name .. "' exists")
  end
  local pool_name = spec.pool or spec.type or "default"
  local pool = self.pools[pool_name]
  if spec.pool and not pool then check.argerror("add_service", 1, "pool: no pool '" .. spec.pool .. "'") end
  local svc = {name = spec.name, type = spec.type or "custom", proto = spec.proto or "tcp",
               address = spec.address or "0.0.0.0", pool = pool, pool_name = pool and pool_name,
               metadata = spec.metadata or {}, spec = spec}
  local l, port, reserved, code = self:_take_port(svc, spec, pool)
  if not port then return nil, reserved, code end
  svc.listener, svc.port, svc.reserved = l, port, reserved
  local entry, err
  entry, err, code = self.registry:register({name = svc.name, type = svc.type, proto = svc.proto,
    address = svc.address, port = port, metadata = svc.metadata}, {check_host = l == nil})
  if not entry then
    self:_undo(svc)
    return nil, err, code
  end
  svc.registered = true
  svc.address = entry.address
  if l and svc.proto == "tcp" then
    local ok, serr, scode = l:serve(spec.handler or function(c) c:close() end)
    if not ok then
      self:_undo(svc)
      return nil, serr, scode
    end
  end
  local chk = spec.check
  if chk == nil then chk = default_check(svc) end
  if chk then
    local opts = {name = svc.name}
    for k, v in pairs(type(chk) == "table" and chk or {}) do opts[k] = v end
    opts.port = opts.port or (opts.kind ~= "lua" and port or nil)
    self.health:add(opts)
    svc.check_name = svc.name
  end
  if spec.map then
    local ok, merr = pcall(self._map, self, svc, spec)
    if not ok then
      self:_undo(svc)
      local why = tostring(merr):match("bad argument #1 to 'map' %((.*)%)$") or tostring(merr)
      check.argerror("add_service", 1, "map: " .. why)
    end
  end
  self.services[svc.name] = svc
  self:_event({event = "service_started", service = svc.name, port = port, proto = svc.proto})
  self:_changed()
  return self:service(svc.name)
end

-- Maps the service's port on the router (after its listener opened); the
-- mapping renews itself, and its events become the manager's.
function Manager:_map(svc, spec)
  local mopts = {internal_port = svc.port, proto = svc.proto, description = "portman " .. svc.name}
  for k, v in pairs(type(spec.map) == "table" and spec.map or {}) do mopts[k] = v end
  mopts.on_event = function(ev)
    if ev.event == "closed" then return end
    self:_event({event = "mapping_" .. ev.event, service = svc.name, external_port = ev.mapping.external_port,
                 error = ev.error, level = ev.event == "renew_failed" and "warning" or nil})
    self:save()
  end
  svc.mapping_pending = true
  nat.map(mopts, function(m, err, code)
    svc.mapping_pending = false
    if svc.stopped then -- stopped while the router answered
      local after = svc.on_unmapped or function() end
      if m then return m:close(function() after() end) end
      return after()
    end
    if not m then
      return self:_event({event = "mapping_failed", level = "warning", service = svc.name, error = err,
                          code = code})
    end
    svc.mapping = m
    self:_event({event = "mapping_added", service = svc.name, method = m.method, external_ip = m.external_ip,
                 external_port = m.external_port, proto = m.proto})
    self:save()
  end)
end

-- Deletes the service's mapping (waiting for one still being made); cb().
function Manager:_unmap(svc, cb)
  svc.stopped = true
  if svc.mapping_pending then
    svc.on_unmapped = cb
    return
  end
  local m = svc.mapping
  if not m then return cb() end
  svc.mapping = nil
  m:close(function(ok, err)
    if not ok then
      -- the router was not told: the next start deletes it
      self._unclean[#self._unclean + 1] = Manager._record(svc.name, m)
      log.warn("unmap_failed", {service = svc.name, error = err})
    end
    cb()
  end)
end

function Manager._record(name, m)
  local i = m:info()
  return {service = name, method = i.method, external_ip = i.external_ip, external_port = i.external_port,
          internal_port = i.internal_port, proto = i.proto, expires = i.expires}
end

-- The mappings to keep in the state file: the open ones and those that
-- could not be deleted.
function Manager:_mapping_records()
  local list = json.array()
  for _, name in ipairs(self:names()) do
    local svc = self.services[name]
    if svc.mapping then list[#list + 1] = Manager._record(name, svc.mapping) end
  end
  for _, r in ipairs(self._unclean) do list[#list + 1] = r end
  return list
end

--- One service's status entry, or nil.
function Manager:service(name)
  local svc = self.services[name]
  if not svc then return nil end
  local st = svc.check_name and self.health:status(svc.check_name)
  return {name = svc.name, type = svc.type, proto = svc.proto, address = svc.address, port = svc.port,
          status = st and st.status or "unknown", pool = svc.pool_name}
end

--- Stops a service: drains its listener for grace_ms (0), removes its
-- check, unregisters it and frees its port. cb(forced) when done (or, in
-- a task, returns forced).
function Manager:stop_service(name, grace_ms, cb)
  local svc = self.services[name]
  if not svc then
    if cb then return cb(nil, "not_found: no service " .. tostring(name), "not_found") end
    return nil, "not_found: no service " .. tostring(name), "not_found"
  end
  self.services[name] = nil
  if svc.in_cluster then
    self.cluster:deregister(name, function(ok, err, code)
      if not ok and code ~= "not_found" then
        log.warn("cluster_deregister_failed", {service = name, error = err})
      end
    end)
  end
  if svc.check_name then self.health:remove(svc.check_name) end
  self.registry:unregister(name)
  local function finish(forced)
    if svc.reserved then svc.pool:release(svc.port) end
    self:_unmap(svc, function()
      self:_event({event = "service_stopped", service = name, forced = forced})
      if not self._stopping then self:_changed() end
      if cb then cb(forced) end
    end)
  end
  if svc.listener and svc.proto == "tcp" then
    svc.listener:drain(grace_ms or 0, finish)
  else
    if svc.listener then svc.listener:close() end
    finish(0)
  end
  return true
end

--- Names of the services.
function Manager:names()
  local out = {}
  for name in pairs(self.services) do out[#out + 1] = name end
  table.sort(out)
  return out
end

--- Registers a service that the manager does not run (another process
-- owns its port), and writes the state so the registration survives a
-- restart. Arguments and results as registry:register.
function Manager:register(entry, opts)
  local e, err, code = self.registry:register(entry, opts)
  if e then self:_changed() end
  return e, err, code
end

--- Removes a registration made with `register`; true if it existed.
function Manager:unregister(name)
  if self.services[name] then
    check.argerror("unregister", 1, "'" .. name .. "' is a running service: use stop_service")
  end
  local had = self.registry:unregister(name)
  if had then self:_changed() end
  return had
end

--- The status document of `portman status`.
function Manager:status()
  local doc = {services = json.array(), pools = json.array(), mappings = json.array()}
  for _, e in ipairs(self.registry:list()) do
    doc.services[#doc.services + 1] = self:service(e.name) or {name = e.name, type = e.type, proto = e.proto,
      address = e.address, port = e.port, status = "unknown"} -- registered only: no check here
  end
  for _, name in ipairs(self:names()) do
    local m = self.services[name].mapping
    if m then
      local i = m:info()
      i.service = name
      doc.mappings[#doc.mappings + 1] = i
    end
  end
  local names = {}
  for name in pairs(self.pools) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local p = self.pools[name]
    local lo, hi = p:range()
    doc.pools[#doc.pools + 1] = {name = name, range = {lo, hi}, strategy = p:strategy(),
      allocated = p:allocated(), size = p:size(),
      utilization = math.floor(p:utilization() * 10 + 0.5) / 10} -- percent, one decimal
  end
  return doc
end

--- The state to keep across a restart: pools, every service's port, and
-- the router mappings open now (so a run after a crash deletes them).
function Manager:snapshot()
  local pools = {}
  for name, p in pairs(self.pools) do pools[name] = p:snapshot() end
  return {version = 1, pools = pools, registry = self.registry:snapshot(), mappings = self:_mapping_records()}
end

--- Uses a saved state: services added afterwards get back the port they had.
function Manager:remember(saved)
  for _, s in ipairs(saved and saved.registry and saved.registry.services or {}) do
    self._previous[s.name] = math.tointeger(s.port)
  end
end

--- Registers again what the saved state holds beyond the running
-- services: registrations made at run time (`register`), which a restart
-- must keep.
function Manager:restore_registrations(saved)
  for _, s in ipairs(saved and saved.registry and saved.registry.services or {}) do
    if not self.registry:get(s.name) then
      local ok, e, err = pcall(self.registry.register, self.registry, s, {check_host = false})
      if not ok or not e then
        log.warn("registration_dropped", {service = s.name, error = ok and err or e})
      end
    end
  end
end

--- Turns writing the state on every change on or off (on by default; off
-- while a daemon starts, so a half-started state never replaces the last).
function Manager:autosave(on)
  self._autosave = on
end

function Manager:_changed()
  if self._autosave ~= false then self:save() end
end

--- Writes the state file (when the manager has one): snap, or the
-- manager's snapshot now.
-- @return[1] true
-- @return[2] nil, msg, code
function Manager:save(snap)
  if not self._state_file then return true end
  local ok, err, code = state.save(self._state_file, snap or self:snapshot())
  if not ok then log.error("state_save_failed", {error = err}) end
  return ok, err, code
end

--- Stops every service (listeners drained for grace_ms), writes the state
-- as it was before the stop (so the next start gives each service its port
-- back), stops the health checks. cb() when done.
function Manager:shutdown(grace_ms, cb)
  local snap = self:snapshot()
  self._stopping = true
  local names = self:names()
  local left = #names
  local function done()
    snap.mappings = self:_mapping_records() -- what is left on the router: nothing, normally
    self:save(snap)
    self.health:close()
    if self._sync_timer then self._sync_timer:close() end
    if self.cluster_view then self.cluster_view.close() end
    if not self.cluster then return cb and cb() end
    -- revoking the lease takes this node's registrations out at once
    self.cluster:close(function() if cb then cb() end end)
  end
  if left == 0 then return done() end
  for _, name in ipairs(names) do
    self:stop_service(name, grace_ms, function()
      left = left - 1
      if left == 0 then done() end
    end)
  end
end

return M
