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
local turn = require "portman.turn"
local supervisor = require "portman.supervisor"
local backend = require "portman.backend"
local netaddr = require "portman.netaddr"
local errors = require "portman.errors"
local core = require "portman.core"

local M = {}
local Manager = events.mixin({})
local mt = {__index = Manager, __name = "portman.manager"}

local NEW_KEYS = {state_file = true, check_host = true, on_event = true, concurrency = true,
                  cluster = true, activation = true, supervisor = true}
local POOL_KEYS = {range = true, strategy = true, node_id = true, allow_privileged = true,
                   warning = true, critical = true}
local SERVICE_KEYS = {name = true, type = true, proto = true, address = true, port = true, pool = true,
                      listen = true, handler = true, check = true, map = true, metadata = true,
                      relay = true, -- a TURN relay when the router maps nothing (portman.turn)
                      -- a program that serves the port (portman.supervisor)
                      exec = true, env = true, cwd = true, user = true, group = true, activation = true,
                      restart = true, stop_signal = true, stop_timeout = true, start_timeout = true, output = true,
                      -- run once before exec when `creates` does not exist (initdb)
                      setup = true, creates = true,
                      -- /healthz of the HTTP endpoint answers 503 while it is down
                      critical = true}
local MAP_KEYS = {external_port = true, method = true, lifetime = true, description = true, timeout = true}

--- Creates a manager.
-- @tparam[opt] table opts `state_file` (path of the JSON state, none by
--   default), `check_host` (refuse ports other processes hold; true),
--   `on_event` (called with each event: health status changes, pool
--   exhaustion, service lifecycle), `concurrency` (health checks at once),
--   `cluster` (a started portman.backend: services are registered there
--   too, and `where` answers from every node's registrations),
--   `activation` (sockets passed by systemd, name -> {fd, ...}, from
--   listeners.from_environment: a service of that name adopts its socket
--   instead of binding one), `supervisor` (a portman.supervisor that runs
--   the services' programs; one is made when a service has `exec`)
function M.new(opts)
  opts = opts or {}
  check.table("new", 1, opts)
  check.known("new", 1, opts, NEW_KEYS)
  local self = setmetatable({
    pools = {}, services = {}, registry = registry.new{check_host = opts.check_host},
    _state_file = opts.state_file, _previous = {}, _unclean = {},
    pending = {},     -- services that could not start yet: retried on a back-off
    inherited = opts.activation or {}, -- sockets systemd passed, by name, not yet claimed
    _sup = opts.supervisor,
    _runtime = {},    -- names registered at run time (kept across restarts)
    _ring = {}, _ring_next = 1, -- the last RING events, with wall-clock times
  }, mt)
  self.health = health.new{concurrency = opts.concurrency, on_event = function(ev) self:_event(ev) end}
  if opts.on_event then self:on(opts.on_event) end
  self.health:start()
  if opts.cluster then self:_join(opts.cluster) end
  return self
end

-- ---- the cluster: registrations shared through a backend (etcd) ----

-- Where svc is reached from outside: its router mapping or TURN relay.
local function external_of(svc)
  if svc.relay then
    local i = svc.relay.info
    return {address = i.relayed_ip, port = i.relayed_port, method = "turn"}
  end
  if svc.mapping then
    local i = svc.mapping:info()
    return {address = i.external_ip, port = i.external_port, method = i.method}
  end
end

local SYNC_MS = 2000

-- Registers what is not registered yet. While the backend is unreachable
-- the services keep running here, and each round tries again; the
-- backend itself rewrites its records under a new lease after an outage.
-- All of a round's services go in one register_many (one etcd txn a 128).
function Manager:_sync()
  local joining, recs = {}, {}
  for name, svc in pairs(self.services) do
    if not svc.in_cluster and not svc.joining then
      svc.joining = true
      joining[name] = svc
      recs[#recs + 1] = {name = name, address = svc.address, port = svc.port, proto = svc.proto,
                         metadata = svc.spec.metadata or {}, external = external_of(svc)}
    end
  end
  if #recs > 0 then
    self.cluster:register_many(recs, function(names, failed)
      local ok = {}
      for _, name in ipairs(names or {}) do ok[name] = true end
      for name, svc in pairs(joining) do
        svc.joining = nil
        if ok[name] then
          -- its mapping came while this register was on its way: again
          svc.in_cluster = not svc.rejoin or nil
          svc.rejoin = nil
          self:_event({event = "cluster_registered", service = name})
        elseif not svc.cluster_warned then
          svc.cluster_warned = true
          local err = names and failed[name] or failed
          log.warn("cluster_register_failed", {service = name, error = err})
        end
      end
    end)
  end
  if not self.cluster_view and not self._mirroring then
    self._mirroring = true
    self.cluster:mirror("services", function(m, err)
      self._mirroring = nil
      if m then self.cluster_view = m else log.warn("cluster_watch_failed", {error = err}) end
    end)
  end
end

function Manager:_join(cluster)
  self.cluster = cluster
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
      local v = backend.service_of(r.value) -- another node's record: checked first
      if v and v.name == name then
        out[#out + 1] = {name = v.name, node = v.node, address = v.address, proto = v.proto, port = v.port,
                         external = v.external}
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

M.RING = 1000 -- events kept for `portman events`

-- Keeps ev, with its wall-clock time, in the ring of recent events.
local function remember_event(self, ev)
  local kept = {time = os.time()}
  for k, v in pairs(ev) do
    if type(v) ~= "table" and type(v) ~= "function" and type(v) ~= "userdata" then kept[k] = v end
  end
  self._ring[self._ring_next] = kept
  self._ring_next = self._ring_next % M.RING + 1
end

function Manager:_event(ev)
  local fields = {}
  for k, v in pairs(ev) do if k ~= "event" then fields[k] = v end end
  local level = (ev.level == "critical" or ev.level == "error") and "error"
    or ev.level == "warning" and "warn" or "info"
  log.log(level, ev.event, fields)
  self:_note(ev)
end

-- An event kept and passed on, not logged (its source logged it).
function Manager:_note(ev)
  if ev.event == "status" then self:_status_changed(ev) end
  remember_event(self, ev)
  events.emit(self, ev)
end

--- The events of the last `seconds` (all kept when nil), oldest first:
-- {time = unix seconds, event = name, ...fields}.
function Manager:recent(seconds)
  local out, n = {}, #self._ring
  local first = n < M.RING and 1 or self._ring_next
  local since = seconds and os.time() - seconds
  for i = 0, n - 1 do
    local ev = self._ring[(first - 1 + i) % n + 1]
    if not since or ev.time >= since then out[#out + 1] = ev end
  end
  return out
end

-- A check's status changed: its service remembers since when and why.
function Manager:_status_changed(ev)
  local svc = self.services[ev.check]
  if not svc then return end
  svc.since, svc.reason = os.time(), ev.msg
  -- a program with a start_timeout is started once its check passes
  if ev.to == "healthy" and svc.program then svc.program:ready() end
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
  return self:set_pool(name, pool, opts)
end

--- Puts an allocator in place as pool name (a reload's new pool), watched
-- for exhaustion at opts.warning and opts.critical.
function Manager:set_pool(name, pool, opts)
  if self.pools[name] then self.health:unwatch_pool(name) end
  self.pools[name] = pool
  self.health:watch_pool(name, pool, {warning = opts and opts.warning, critical = opts and opts.critical})
  return pool
end

--- Removes pool name (its services must be stopped first).
function Manager:remove_pool(name)
  if not self.pools[name] then return false end
  self.health:unwatch_pool(name)
  self.pools[name] = nil
  return true
end

-- A program's argv in a service's spec (exec, setup): {program, args...}.
local function check_argv(argv, key)
  if type(argv) ~= "table" or #argv == 0 then
    check.argerror("add_service", 1, key .. ": {program, args...} expected")
  end
  for i, a in ipairs(argv) do
    if type(a) ~= "string" and math.type(a) ~= "integer" then
      check.argerror("add_service", 1, ("%s[%d]: string expected, got %s"):format(key, i, type(a)))
    end
  end
end

local SWITCHES = {"check", "map", "listen"} -- a table or a boolean each
local EXEC_ONLY = {"env", "cwd", "user", "group", "activation", "restart", "stop_signal", "stop_timeout",
                   "start_timeout", "output", "setup", "creates"}

local function check_service(spec)
  check.table("add_service", 1, spec)
  check.known("add_service", 1, spec, SERVICE_KEYS)
  if type(spec.name) ~= "string" or spec.name == "" then
    check.argerror("add_service", 1, "name: non-empty string expected")
  end
  if spec.handler ~= nil and type(spec.handler) ~= "function" then
    check.argerror("add_service", 1, "handler: function expected")
  end
  for _, k in ipairs(SWITCHES) do
    local v = spec[k]
    if v ~= nil and type(v) ~= "table" and type(v) ~= "boolean" then
      check.argerror("add_service", 1, k .. ": table or boolean expected")
    end
  end
  if type(spec.map) == "table" then check.known("add_service", 1, spec.map, MAP_KEYS, "map.") end
  if spec.relay ~= nil then turn.check_service("add_service", 1, spec.relay) end
  if spec.exec ~= nil then
    check_argv(spec.exec, "exec")
  else
    for _, k in ipairs(EXEC_ONLY) do
      if spec[k] ~= nil then check.argerror("add_service", 1, k .. ": only with exec") end
    end
  end
  if spec.env ~= nil and type(spec.env) ~= "table" then check.argerror("add_service", 1, "env: table expected") end
  if spec.setup ~= nil then check_argv(spec.setup, "setup") end
  if spec.creates ~= nil and (type(spec.creates) ~= "string" or spec.creates == "") then
    check.argerror("add_service", 1, "creates: non-empty string expected")
  end
  if spec.creates ~= nil and spec.setup == nil then check.argerror("add_service", 1, "creates: only with setup") end
  if spec.critical ~= nil and type(spec.critical) ~= "boolean" then
    check.argerror("add_service", 1, "critical: boolean expected")
  end
  if spec.activation ~= nil and type(spec.activation) ~= "boolean" then
    check.argerror("add_service", 1, "activation: boolean expected")
  end
end

-- Does the service bind its own port (a program started with exec and no
-- activation)? portman then only reserves the port.
local function program_binds(spec)
  return spec.exec ~= nil and not spec.activation
end

local reason_of = check.reason

--- Checks a service spec as add_service would, running nothing.
-- @return[1] true
-- @return[2] nil, what is wrong (a field named by its path)
function M.validate_service(spec)
  local ok, err = pcall(check_service, spec)
  if not ok then return nil, reason_of(err) end
  if type(spec.check) == "table" then
    -- the check as the manager would add it (its port is known only then)
    local opts = {name = spec.name, port = spec.port or 1}
    for k, v in pairs(spec.check) do opts[k] = v end
    local fine, why = health.validate(opts)
    if not fine then return nil, "check: " .. why end
  end
  return true
end

--- Checks pool options as add_pool would, running nothing.
-- @return[1] true
-- @return[2] nil, what is wrong
function M.validate_pool(opts)
  local ok, err = pcall(function()
    check.table("add_pool", 2, opts)
    check.known("add_pool", 2, opts, POOL_KEYS)
    allocator.new{range = opts.range, strategy = opts.strategy, node_id = opts.node_id,
                  allow_privileged = opts.allow_privileged}
  end)
  if ok then return true end
  return nil, reason_of(err)
end

-- The default health check: connect to a TCP listener; none otherwise.
local function default_check(svc)
  if svc.proto ~= "tcp" or not (svc.listener or svc.spec.exec) then return nil end
  local host = svc.address
  if host == "0.0.0.0" then host = "127.0.0.1" elseif host == "::" then host = "::1" end
  return {kind = "tcp", host = host, port = svc.port, interval = 2000, timeout = 1000, rise = 1, fall = 2,
          jitter = 200}
end

local function in_pool(pool, port)
  if not pool or not port then return false end
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
  local fds = self.inherited[svc.name]
  if fds and spec.listen ~= false and not program_binds(spec) then -- socket activation: systemd bound it
    local l, err, code = listener.adopt(fds[1], {proto = svc.proto, name = svc.name})
    if not l then return nil, nil, err, code end
    self.inherited[svc.name] = nil
    if in_pool(pool, l.port) and pool:reserve(l.port) then return l, l.port, true end
    return l, l.port, false
  end
  local wanted = spec.port
  if not wanted and in_pool(pool, self._previous[svc.name]) then
    wanted = self._previous[svc.name] -- the port it had, if its pool still holds it
  end
  local owned = wanted ~= nil and in_pool(pool, wanted)
  if owned and not pool:reserve(wanted) then
    if spec.port then
      return nil, nil, ("conflict: port %d is already allocated"):format(wanted), "conflict"
    end
    wanted, owned = nil, false -- the port it had went to another service
  end
  if spec.listen == false or program_binds(spec) then
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

-- Gives back what _prepare took: the listener and the port.
local function release(svc)
  if svc.listener then svc.listener:close() end
  if svc.reserved then svc.pool:release(svc.port) end
  svc.listener, svc.reserved = nil, nil
end

-- Undoes what activate had done (registered: it registered svc) when a
-- later step fails.
function Manager:_undo(svc, registered)
  if svc.check_name then self.health:remove(svc.check_name) end
  if registered then self.registry:unregister(svc.name) end
  release(svc)
end

-- ---- the programs that serve the ports (portman.supervisor) ----

-- The supervisor, made on first use; its events become the manager's
-- (logged by the supervisor already), and a program that started or
-- ended changes the state (its pid is kept for orphan cleanup).
function Manager:_supervisor()
  if self._sup_hooked then return self._sup end
  self._sup = self._sup or supervisor.new{}
  self._sup_hooked = true
  self._sup:on(function(ev)
    self:_note({event = "program_" .. ev.event, service = ev.name, pid = ev.pid, exit_code = ev.exit_code,
                signal = ev.signal, delay = ev.delay})
    -- a new instance is unknown until its own check passes
    local svc = self.services[ev.name]
    if ev.event == "started" and svc and svc.check_name and svc.program then self.health:reset(svc.check_name) end
    if ev.event == "started" or ev.event == "stopped" or ev.event == "exited" then self:_changed() end
  end)
  return self._sup
end

-- "{port}" and its kin in a word of exec, cwd or env.
local function substitute(word, vars)
  return (tostring(word):gsub("{(%a+)}", function(k) return vars[k] end))
end

local function env_name(name) return (name:upper():gsub("[^%w]", "_")) end

-- The service's own directory under the state dir ("{state}"), made 0700
-- (owned by the program's user when it runs as another; the services
-- directory above it is then 0711, so that user can reach it).
function Manager:_service_dir(svc)
  if not self._state_file then
    return nil, "not_found: {state} needs a state dir (portman run --state-dir)", "not_found"
  end
  local base = (self._state_file:match("^(.*)/[^/]*$") or ".") .. "/services"
  local dir = base .. "/" .. svc.name
  for _, d in ipairs({base, dir}) do
    local ok, err = uv.fs_mkdir(d, tonumber("700", 8))
    if not ok and not tostring(err):match("^EEXIST") then return errors.from(err, "mkdir " .. d) end
  end
  if svc.spec.user ~= nil then
    local u = core.user_info(svc.spec.user)
    if u then uv.fs_chown(dir, u.uid, u.gid) end
    -- the user must reach its directory: "services" is searchable by all,
    -- never listable (each service's own stays 0700)
    uv.fs_chmod(base, tonumber("711", 8))
  end
  return dir
end

-- Starts svc's program: argv and env with {port}, {address}, {name},
-- {state} filled in, PORTMAN_PORT, PORTMAN_ADDRESS, PORTMAN_SERVICE and
-- PORTMAN_PORT_<NAME> of every running service (Nomad's convention), the
-- listener as fd 3 with activation.
--
-- With `setup`, and unless `creates` names a path that exists, the setup
-- program runs first, under the same supervisor name, user, env, cwd and
-- output, with restart "no" and no fds; this returns at once and the
-- service is "starting" (svc.setting_up) until it exits. On exit 0 the
-- program starts; otherwise the service stops and is pending with a
-- "protocol" error naming the exit status, retried on the back-off.
function Manager:_start_program(svc)
  local spec = svc.spec
  local vars = {port = svc.port, address = svc.address, name = svc.name}
  local words = table.concat(spec.exec, " ") .. " " .. tostring(spec.cwd) .. " " ..
    table.concat(spec.setup or {}, " ") .. " " .. tostring(spec.creates)
  for _, v in pairs(spec.env or {}) do words = words .. " " .. tostring(v) end
  if words:find("{state}", 1, true) then
    local dir, err, code = self:_service_dir(svc)
    if not dir then return nil, err, code end
    vars.state = dir
  end
  local env = {PORTMAN_PORT = tostring(svc.port), PORTMAN_ADDRESS = svc.address, PORTMAN_SERVICE = svc.name}
  for name, other in pairs(self.services) do env["PORTMAN_PORT_" .. env_name(name)] = tostring(other.port) end
  env["PORTMAN_PORT_" .. env_name(svc.name)] = tostring(svc.port)
  for k, v in pairs(spec.env or {}) do env[k] = v and substitute(v, vars) end
  local function start(words_of, setup)
    local argv = {}
    for i, a in ipairs(words_of) do argv[i] = substitute(a, vars) end
    local act = spec.activation and not setup
    local p, err, code = self:_supervisor():start{name = svc.name, argv = argv, env = env,
      cwd = spec.cwd and substitute(spec.cwd, vars), user = spec.user, group = spec.group,
      fds = act and {svc.listener} or nil, activation = act or nil,
      fdnames = act and {svc.name} or nil, restart = setup and "no" or spec.restart,
      stop_signal = spec.stop_signal, stop_timeout = spec.stop_timeout,
      start_timeout = not setup and spec.start_timeout or nil, output = spec.output}
    if not p then return nil, ("%s (service %s%s)"):format(err, svc.name, setup and " setup" or ""), code end
    svc.program = p
    return true
  end
  if not spec.setup or (spec.creates and uv.fs_stat(substitute(spec.creates, vars))) then
    return start(spec.exec)
  end
  local ok, err, code = start(spec.setup, true)
  if not ok then return nil, err, code end
  svc.setting_up = true
  local off
  off = self._sup:on(function(ev)
    if ev.name ~= svc.name or ev.event ~= "stopped" then return end
    off()
    svc.setting_up = nil
    if self.services[svc.name] ~= svc or self._stopping then return end -- stopped meanwhile
    local why
    if ev.signal then
      why = ("protocol: setup of service %s was killed by %s"):format(svc.name, ev.signal)
    elseif ev.exit_code ~= 0 then
      why = ("protocol: setup of service %s exited with status %s"):format(svc.name, tostring(ev.exit_code))
    else
      self:_event({event = "setup_done", service = svc.name})
      -- after the supervisor is done with the setup program's exit
      local t = uv.new_timer()
      t:start(0, 0, async.safe(function()
        t:close()
        if self.services[svc.name] ~= svc or self._stopping then return end
        local started, serr = start(spec.exec)
        if not started then why = serr end
        if why then self:_setup_failed(svc, why) end
      end, "start after setup"))
      return
    end
    self:_setup_failed(svc, why)
  end)
  return true
end

-- The setup program (or the start after it) failed: the service stops and
-- waits on the back-off as a pending one.
function Manager:_setup_failed(svc, why)
  self:_event({event = "setup_failed", level = "error", service = svc.name, error = why})
  local t = uv.new_timer()
  t:start(0, 0, async.safe(function()
    t:close()
    if self.services[svc.name] ~= svc or self._stopping then return end
    self:stop_service(svc.name, 0, function()
      if not self._stopping then self:_keep_trying(svc.spec, why, "protocol") end
    end)
  end, "setup failure"))
end

-- The program part of a service's status entry: a program that is not
-- running makes the service "starting" (a restart waits) or "stopped".
local function program_status(svc, entry)
  local info = svc.program:info()
  entry.pid, entry.restarts, entry.exit_code, entry.signal = info.pid, info.restarts, info.exit_code, info.signal
  if svc.setting_up then -- the setup program runs (initdb): the service is not up yet
    entry.status, entry.setup = "starting", true
    return
  end
  if info.status == "running" and info.pid then return end
  local restarting = info.status == "failed" and (svc.spec.restart or "on-failure") ~= "no"
  entry.status = (info.status == "starting" or restarting) and "starting" or "stopped"
end

-- A service's record holds its type, proto and address only where they
-- are not the defaults (read through the metatable): with its name, pool,
-- spec, port, reserved flag and start time it fits a table of 8 slots,
-- not 16 (10,000 services: 2 MB less).
local SERVICE_DEFAULTS = {type = "custom", proto = "tcp", address = "0.0.0.0"}
local service_mt = {__index = SERVICE_DEFAULTS}

local function set_field(svc, k, v)
  if v == SERVICE_DEFAULTS[k] then v = nil end
  rawset(svc, k, v)
end

--- A new service record for spec, its port taken from pool (named
-- pool_name): what prepare makes, and a reload's moved service.
function M.record(spec, pool, pool_name)
  local svc = setmetatable({name = spec.name, pool = pool, pool_name = pool_name, spec = spec}, service_mt)
  set_field(svc, "type", spec.type)
  set_field(svc, "proto", spec.proto)
  set_field(svc, "address", spec.address)
  return svc
end

--- Takes a service's port (binding its listener) without registering or
-- announcing anything: the first half of add_service, so that a reload
-- can bind every new port before it stops an old service.
-- @tparam table spec as add_service
-- @tparam[opt] table pools the pools to take from (a reload's new ones)
-- @return[1] the prepared service (for activate, or discard)
-- @return[2] nil, msg, code
-- @raise on a bad spec
function Manager:prepare(spec, pools)
  check_service(spec)
  local pool_name = spec.pool or spec.type or "default"
  local pool = (pools or self.pools)[pool_name]
  if spec.pool and not pool then check.argerror("add_service", 1, "pool: no pool '" .. spec.pool .. "'") end
  local svc = M.record(spec, pool, pool and pool_name)
  local l, port, reserved, code = self:_take_port(svc, spec, pool)
  if not port then return nil, reserved, code end
  svc.listener, svc.port, svc.reserved = l, port, reserved
  return svc
end

--- Gives back a prepared service's port and listener.
function Manager:discard(svc) -- luacheck: ignore self
  release(svc)
end

-- The health check options of svc's spec, or nil for none.
local function check_opts(svc)
  local chk = svc.spec.check
  if chk == nil then chk = default_check(svc) end
  if not chk then return nil end
  local opts = {name = svc.name}
  for k, v in pairs(type(chk) == "table" and chk or {}) do opts[k] = v end
  opts.port = opts.port or (opts.kind ~= "lua" and svc.port or nil)
  if opts.kind == "lua" then -- a Lua check is told what it checks
    opts.service = {name = svc.name, address = svc.address, port = svc.port, proto = svc.proto}
  end
  return opts
end

-- What a service registers, filled in for each registration: the
-- registry keeps none of it (with `shared`, only the spec's metadata).
local to_register = {}
local SHARED = {shared = true}
local SHARED_CHECKED = {shared = true, check_host = false}

function Manager:_register(svc, check_host)
  local r = to_register
  r.name, r.type, r.proto, r.address, r.port, r.metadata = svc.name, svc.type, svc.proto, svc.address, svc.port,
    svc.spec.metadata
  local entry, err, code = self.registry:register(r, check_host and SHARED or SHARED_CHECKED)
  r.name, r.metadata = nil, nil
  return entry, err, code
end

--- Registers, serves, health-checks and maps a prepared service: the
-- second half of add_service. A failure undoes every step.
-- @return[1] the service's entry
-- @return[2] nil, msg, code
function Manager:activate(svc)
  local spec, l = svc.spec, svc.listener
  local entry, err, code = self:_register(svc, l == nil)
  if not entry then
    self:_undo(svc)
    return nil, err, code
  end
  set_field(svc, "address", entry.address)
  if l and svc.proto == "tcp" and not svc.serving and not spec.exec then
    local ok, serr, scode = l:serve(spec.handler or function(c) c:close() end)
    if not ok then
      self:_undo(svc, true)
      return nil, serr, scode
    end
    svc.serving = true
  end
  if spec.exec then
    local ok, perr, pcode = self:_start_program(svc)
    if not ok then
      self:_undo(svc, true)
      return nil, perr, pcode
    end
  end
  local copts = check_opts(svc)
  if copts then
    self.health:add(copts)
    svc.check_name = svc.name
  end
  if spec.map then
    local ok, merr = pcall(self._map, self, svc, spec)
    if not ok then
      self:_undo(svc, true)
      check.argerror("add_service", 1, "map: " .. reason_of(merr))
    end
  elseif spec.relay then
    self:_relay(svc, spec)
  end
  svc.since = os.time()
  self.services[svc.name] = svc
  self:_drop_pending(svc.name)
  self:_event({event = "service_started", service = svc.name, port = svc.port, proto = svc.proto})
  self:_changed()
  return self:service(svc.name)
end

--- Adds a service: allocates its port, registers it, opens its listener,
-- maps it on the router if asked, starts its health check. A failure at
-- any step undoes the earlier ones.
-- @tparam table spec `name`, `type` ("custom"), `proto` ("tcp"), `address`
--   ("0.0.0.0"), `port` (fixed; else from the pool), `pool` (the pool's
--   name; the type's by default), `listen` (false: only reserve the port; a
--   table: listener options), `handler` (serves accepted connections; by
--   default they are closed at once), `check` (false, or health check
--   options; a TCP connect check by default for TCP listeners; a Lua
--   check's fn gets the service as its second argument), `map` (router
--   mapping options), `metadata`
-- @return[1] the service's entry {name, type, proto, address, port, status, ...}
-- @return[2] nil, msg, code
-- @raise on a bad spec or a name in use
function Manager:add_service(spec)
  check_service(spec)
  if self.services[spec.name] or self.pending[spec.name] then
    check.argerror("add_service", 1, "name: service '" .. spec.name .. "' exists")
  end
  local svc, err, code = self:prepare(spec)
  if not svc then return nil, err, code end
  return self:activate(svc)
end

-- ---- services that cannot start yet ----

M.RETRY_FIRST, M.RETRY_MAX = 1000, 30000 -- ms: the back-off doubles between these

function Manager:_drop_pending(name)
  local p = self.pending[name]
  if not p then return false end
  self.pending[name] = nil
  if not p.timer:is_closing() then p.timer:close() end
  return true
end

-- Tries a pending service again; on failure waits twice as long.
function Manager:_retry(name)
  local p = self.pending[name]
  if not p then return end
  local svc, err, code = self:prepare(p.spec)
  local entry
  if svc then entry, err, code = self:activate(svc) end
  if entry then return end
  self:_keep_trying(p.spec, err, code)
end

--- Starts a service, or, when it cannot start now (its port held by
-- another process, no fd left, ...), keeps it pending: its status is the
-- failure's code word (`conflict`, ...) with the reason (and the holder's
-- pid and program where /proc tells), and it is tried again on a back-off
-- (RETRY_FIRST doubling to RETRY_MAX ms) until it starts or is stopped.
-- @return[1] the service's entry
-- @return[2] nil, msg, code (the service is now pending)
-- @raise on a bad spec or a name in use
function Manager:start_service(spec)
  local entry, err, code = self:add_service(spec)
  if entry then return entry end
  self:_keep_trying(spec, err, code)
  return nil, err, code
end

function Manager:_keep_trying(spec, err, code)
  local p = self.pending[spec.name]
  if not p then
    p = {spec = spec, since = os.time(), attempts = 0, timer = uv.new_timer()}
    self.pending[spec.name] = p
  end
  local proto, port = spec.proto or "tcp", spec.port or self._previous[spec.name]
  p.reason, p.code, p.attempts = err, code, p.attempts + 1
  p.holder = (code == "conflict" or code == "EADDRINUSE") and port and netaddr.holder(proto, port, spec.address) or nil
  p.delay = math.min(M.RETRY_MAX, p.delay and p.delay * 2 or M.RETRY_FIRST)
  p.timer:start(p.delay, 0, async.safe(function() self:_retry(spec.name) end, "service retry"))
  if p.attempts == 1 or p.code ~= p.logged then
    p.logged = p.code
    self:_event({event = "service_pending", level = "warning", service = spec.name, error = err, code = code,
                 holder_pid = p.holder and p.holder.pid, holder = p.holder and p.holder.program,
                 retry_ms = p.delay})
  end
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
      svc.mapping_error = err
      self:_event({event = "mapping_failed", level = "warning", service = svc.name, error = err, code = code})
      if spec.relay then self:_relay(svc, spec) end -- the router maps nothing: a TURN relay
      return
    end
    -- registered again, with where it is reached
    svc.mapping, svc.in_cluster, svc.rejoin = m, nil, svc.joining
    self:_event({event = "mapping_added", service = svc.name, method = m.method, external_ip = m.external_ip,
                 external_port = m.external_port, proto = m.proto})
    self:save()
  end)
end

-- Relays the service through its TURN server (portman.turn): the relayed
-- address shows as its mapping, method "turn". It lasts until the service
-- stops; it is not saved (a TURN allocation dies with its client).
function Manager:_relay(svc, spec)
  svc.relay_pending = true
  turn.for_service(spec.relay, svc, function(name, fields)
    if name ~= "refreshed" and name ~= "nonce" then
      self:_event({event = "relay_" .. name, service = svc.name, error = fields.error, peer = fields.peer})
    end
  end, function(r, err, code)
    svc.relay_pending = false
    if svc.stopped then
      if r then r:close(function() end) end
      return
    end
    if not r then
      svc.relay_error = err
      return self:_event({event = "relay_failed", level = "warning", service = svc.name, error = err, code = code})
    end
    -- registered again, with the relay
    svc.relay, svc.mapping_error, svc.in_cluster, svc.rejoin = r, nil, nil, svc.joining
    self:_event({event = "relay_added", service = svc.name, external_ip = r.info.relayed_ip,
                 external_port = r.info.relayed_port, proto = r.info.proto, server = r.info.server})
    self:_changed()
  end)
end

-- Deletes the service's mapping (waiting for one still being made); cb().
function Manager:_unmap(svc, cb)
  svc.stopped = true
  if svc.relay then -- a relay is there only when no mapping is
    local r = svc.relay
    svc.relay = nil
    return r:close(function(ok, err)
      if not ok then log.warn("relay_close_failed", {service = svc.name, error = err}) end
      cb()
    end)
  end
  if svc.mapping_pending then
    svc.on_unmapped = cb
    return
  end
  local m = svc.mapping
  if not m then return cb() end
  svc.mapping = nil
  m:close(function(ok, err)
    if not ok then
      -- the router was not told: kept in the state file, deleted later
      -- (the orphan timer, or the next start)
      self:keep_orphans({Manager._record(svc.name, m)})
      log.warn("unmap_failed", {service = svc.name, error = err})
    end
    cb()
  end)
end

function Manager._record(name, m)
  local i = m:info()
  return {service = name, method = i.method, external_ip = i.external_ip, external_port = i.external_port,
          internal_ip = i.internal_ip, internal_port = i.internal_port, proto = i.proto,
          description = i.description, expires = i.expires}
end

M.ORPHAN_RETRY = 60000 -- ms between tries to delete the mappings a run could not

--- Deletes a mapping record left on the router (a run killed before it
-- could, or a delete that failed): only portman's own entry is deleted.
-- cb(gone, err): gone when deleted, or when the router no longer has it
-- (or another program holds the port now: nothing of portman's is left);
-- a record too malformed to name a mapping is gone too, with err saying so.
function M.delete_orphan(r, cb)
  local ok_call, err = pcall(nat.unmap, {external_port = math.tointeger(r.external_port),
    internal_port = math.tointeger(r.internal_port), proto = r.proto, method = r.method,
    internal_ip = type(r.internal_ip) == "string" and r.internal_ip or nil,
    description = type(r.description) == "string" and r.description
      or (type(r.service) == "string" and "portman " .. r.service or nil)}, function(ok, uerr, code)
    cb(ok or code == "not_found" or code == "conflict", uerr)
  end)
  if not ok_call then
    log.warn("orphan_record_dropped", {error = check.reason(err)})
    cb(true, "protocol: bad mapping record: " .. check.reason(err))
  end
end

--- Keeps mapping records the router may still hold (not deleted yet) in
-- the state file, and tries to delete them every ORPHAN_RETRY ms until it
-- could: never forgotten before.
function Manager:keep_orphans(list)
  for _, r in ipairs(list or {}) do self._unclean[#self._unclean + 1] = r end
  if #self._unclean == 0 or self._orphan_timer then return end
  self._orphan_timer = uv.new_timer()
  self._orphan_timer:start(M.ORPHAN_RETRY, M.ORPHAN_RETRY, async.safe(function()
    self:_retry_orphans()
  end, "orphan mapping retry"))
  self:_changed()
end

function Manager:_retry_orphans()
  if self._orphans_busy then return end
  local list, left, kept = self._unclean, #self._unclean, {}
  if left == 0 then return end
  self._orphans_busy = true
  for _, r in ipairs(list) do
    M.delete_orphan(r, function(gone, err)
      if gone then
        self:_event({event = "orphan_mapping_deleted", service = r.service, external_port = r.external_port})
      else
        kept[#kept + 1] = r
        log.debug("orphan_mapping_left", {service = r.service, external_port = r.external_port, error = err})
      end
      left = left - 1
      if left > 0 then return end
      self._orphans_busy = false
      -- records added while these were tried stay too
      for i = #list + 1, #self._unclean do kept[#kept + 1] = self._unclean[i] end
      self._unclean = kept
      if #kept == 0 and self._orphan_timer then
        self._orphan_timer:close()
        self._orphan_timer = nil
      end
      self:_changed()
    end)
  end
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

-- The mapping part of a service's status entry.
local function mapping_entry(svc)
  if svc.relay then return svc.relay:entry() end
  if svc.mapping then
    local i = svc.mapping:info()
    return {method = i.method, external_ip = i.external_ip, external_port = i.external_port, proto = i.proto,
            lifetime = i.lifetime, expires = i.expires}
  end
  if svc.mapping_error or svc.relay_error then return {error = svc.relay_error or svc.mapping_error} end
  return nil
end

--- One service's status entry, or nil: {name, type, proto, address, port,
-- pool, status, reason, since, last_check, mapping}. status is the health
-- check's (healthy, unreachable, ...; unknown until its first result),
-- "unchecked" for a service without a check, or, for a service that could
-- not start yet, the failure's code word (conflict, ...) with `holder`.
-- Times are unix seconds.
function Manager:service(name)
  local svc = self.services[name]
  if not svc then return self:_pending_entry(name) end
  local status, ago
  if svc.check_name then status, ago = self.health:peek(svc.check_name) end
  -- the constructor names the 8 fields every entry has (8 slots); the
  -- others go in when set (naming 11 made 16 slots: 440 bytes an entry
  -- of a status of 10,000 services, not 248)
  local entry = {name = svc.name, type = svc.type, proto = svc.proto, address = svc.address, port = svc.port,
          pool = svc.pool_name, status = status or "unchecked", since = svc.since}
  local reason, mapping = svc.reason, mapping_entry(svc)
  if reason ~= nil then entry.reason = reason end
  if mapping ~= nil then entry.mapping = mapping end
  if ago then entry.last_check = os.time() - ago // 1000 end
  if svc.program then program_status(svc, entry) end
  return entry
end

function Manager:_pending_entry(name)
  local p = self.pending[name]
  if not p then return nil end
  local spec = p.spec
  return {name = name, type = spec.type or "custom", proto = spec.proto or "tcp", address = spec.address or "0.0.0.0",
          port = spec.port or self._previous[name], pool = spec.pool or spec.type, status = p.code or "unknown",
          reason = p.reason, since = p.since, holder = p.holder, attempts = p.attempts}
end

--- Stops a service: drains its listener for grace_ms (0), removes its
-- check, unregisters it and frees its port; a pending one stops being
-- tried. cb(forced) when done (or, in a task, returns forced).
function Manager:stop_service(name, grace_ms, cb)
  if self:_drop_pending(name) then
    self:_event({event = "service_stopped", service = name, forced = 0})
    if not self._stopping then self:_changed() end
    if cb then cb(0) end
    return true
  end
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
  local function release_socket()
    if svc.listener and svc.proto == "tcp" and not svc.spec.exec then
      svc.listener:drain(grace_ms or 0, finish)
    else
      if svc.listener then svc.listener:close() end
      finish(0)
    end
  end
  if svc.program then -- the program first: it may still use the socket
    svc.program:stop(function()
      self._sup:remove(name)
      release_socket()
    end)
  else
    release_socket()
  end
  return true
end

--- Hands svc's listener (and its port) over to the caller: stopping svc
-- later leaves them open. A reload moves a listener to a changed service
-- that keeps its port, so the port is never unbound.
function Manager:take_listener(name)
  local svc = self.services[name]
  if not svc or not svc.listener then return nil end
  local l, reserved = svc.listener, svc.reserved
  svc.listener, svc.reserved = nil, nil
  return l, reserved
end

--- Names of the running services (not the pending ones), sorted.
function Manager:names()
  local out = {}
  for name in pairs(self.services) do out[#out + 1] = name end
  table.sort(out)
  return out
end

--- Registers a service that the manager does not run (another process
-- owns its port), and writes the state so the registration survives a
-- restart. A registration the state file cannot take (a full disk) is
-- undone and reported.
-- @return[1] the entry
-- @return[2] nil, msg, code: conflict, or the save's failure
-- @raise on a bad entry, as registry:register
function Manager:register(entry, opts)
  local e, err, code = self.registry:register(entry, opts)
  if not e then return nil, err, code end
  self._runtime[e.name] = true
  local ok, serr, scode = self:_save_now()
  if not ok then
    self.registry:unregister(e.name)
    self._runtime[e.name] = nil
    return nil, ("%s: the registration of '%s' could not be saved (%s)"):format(scode, e.name, serr), scode
  end
  self:_event({event = "registered", service = e.name, port = e.port, proto = e.proto})
  return e
end

--- Removes a registration made with `register`.
-- @return[1] true if it existed (false if not)
-- @return[2] nil, msg, code when the state file cannot take the change
--   (the registration is then kept)
-- @raise when name is a service the manager runs
function Manager:unregister(name)
  if self.services[name] or self.pending[name] then
    check.argerror("unregister", 1, "'" .. name .. "' is a running service: use stop_service")
  end
  local e = self.registry:get(name)
  if not e then return false end
  self.registry:unregister(name)
  local runtime = self._runtime[name]
  self._runtime[name] = nil
  local ok, serr, scode = self:_save_now()
  if not ok then
    self.registry:register(e, {check_host = false})
    self._runtime[name] = runtime
    return nil, ("%s: the removal of '%s' could not be saved (%s)"):format(scode, name, serr), scode
  end
  self:_event({event = "deregistered", service = name})
  return true
end

local function round1(x) return math.floor(x * 10 + 0.5) / 10 end

-- The names of the services, registered and pending, sorted once
-- (strings, compared in C; the registry keeps its sorted list): the cost
-- of a status stays linear in the number of services.
function Manager:_sorted_names()
  local sorted, more = self.registry:names(), false
  for name in pairs(self.pending) do
    if not self.registry:peek(name) then
      sorted[#sorted + 1] = name
      more = true
    end
  end
  if more then table.sort(sorted) end
  return sorted
end

--- The status document of `portman status`.
function Manager:status()
  -- the entries hold no json.array and no integer near 1e14: json.plain
  -- lets json.encode skip looking through 10,000 of them
  local doc = {services = json.plain(json.array()), pools = json.array(), mappings = json.array()}
  local sorted = self:_sorted_names()
  local services, mappings = doc.services, doc.mappings
  for i, name in ipairs(sorted) do
    local entry = self:service(name)
    if not entry then -- registered only
      local e = self.registry:peek(name)
      entry = {name = e.name, type = e.type, proto = e.proto, address = e.address, port = e.port,
               status = "unchecked", runtime = true}
    end
    services[i] = entry
    local svc = self.services[name]
    local m = svc and (svc.mapping or svc.relay)
    if m then
      local info = m.entry and m:entry() or m:info()
      info.service = name
      mappings[#mappings + 1] = info
    end
  end
  local pools = {}
  for name in pairs(self.pools) do pools[#pools + 1] = name end
  table.sort(pools)
  for _, name in ipairs(pools) do
    local p = self.pools[name]
    local lo, hi = p:range()
    doc.pools[#doc.pools + 1] = {name = name, range = {lo, hi}, strategy = p:strategy(),
      allocated = p:allocated(), size = p:size(), utilization = round1(p:utilization())} -- percent
  end
  if self.reload_error then doc.reload = self.reload_error end
  if self._save_failing then doc.state = {error = self._save_failing} end
  return doc
end

--- The services in name order as parallel lists, for a metrics scrape:
-- names, protos, statuses (as status() says them) and mappings (the
-- mapping entry of status(), false for a service with none). It makes
-- no table a service: at 10,000 services a scrape reads this, not the
-- status document.
function Manager:brief()
  local names, protos, statuses, mappings = self:_sorted_names(), {}, {}, {}
  local checks = self.health
  for i, name in ipairs(names) do
    local svc, p = self.services[name], self.pending[name]
    if svc then
      protos[i], statuses[i] = svc.proto, svc.check_name and checks:peek(svc.check_name) or "unchecked"
      mappings[i] = mapping_entry(svc) or false
    elseif p then
      protos[i], statuses[i], mappings[i] = p.spec.proto or "tcp", p.code or "unknown", false
    else
      protos[i], statuses[i], mappings[i] = self.registry:peek(name).proto, "unchecked", false
    end
  end
  return names, protos, statuses, mappings
end

--- The pools in name order: {name, size, allocated} each.
function Manager:pool_counts()
  local out = {}
  for name, p in pairs(self.pools) do out[#out + 1] = {name = name, size = p:size(), allocated = p:allocated()} end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

--- The state to keep across a restart: pools, every service's port (the
-- pending ones' too, so they get it back), the names registered at run
-- time, and the router mappings open now (so a run after a crash deletes
-- them).
function Manager:snapshot()
  local pools = {}
  for name, p in pairs(self.pools) do pools[name] = p:snapshot() end
  local reg = self.registry:snapshot()
  for name, p in pairs(self.pending) do
    local port = p.spec.port or self._previous[name]
    if port then
      reg.services[#reg.services + 1] = {name = name, type = p.spec.type or "custom", proto = p.spec.proto or "tcp",
                                         address = p.spec.address or "0.0.0.0", port = port, metadata = {}}
    end
  end
  local runtime = json.array()
  for name in pairs(self._runtime) do runtime[#runtime + 1] = name end
  table.sort(runtime)
  local programs = json.array()
  for _, name in ipairs(self:names()) do
    local p = self.services[name].program
    local rec = p and p:record()
    if rec then programs[#programs + 1] = rec end
  end
  return {version = 1, pools = pools, registry = reg, runtime = runtime, mappings = self:_mapping_records(),
          programs = programs, gateway = nat.known()}
end

--- Uses a saved state: services added afterwards get back the port they had.
function Manager:remember(saved)
  for _, s in ipairs(saved and saved.registry and saved.registry.services or {}) do
    self._previous[s.name] = math.tointeger(s.port)
  end
end

--- Registers again what the saved state holds beyond the running
-- services: the registrations made at run time (`register`), which a
-- restart keeps. A service that left the policy is not brought back. (A
-- state written before portman kept `runtime` names none: then every
-- saved entry that is not running counts.)
function Manager:restore_registrations(saved)
  local runtime
  if saved and type(saved.runtime) == "table" then
    runtime = {}
    for _, name in ipairs(saved.runtime) do runtime[name] = true end
  end
  for _, s in ipairs(saved and saved.registry and saved.registry.services or {}) do
    if not self.registry:get(s.name) and not self.pending[s.name] and (not runtime or runtime[s.name]) then
      local ok, e, err = pcall(self.registry.register, self.registry, s, {check_host = false})
      if ok and e then
        self._runtime[s.name] = true
      else
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

-- A save a caller waits on (a registration): done now even while
-- autosave is off, since the caller is told whether it worked.
function Manager:_save_now()
  if self._autosave == false then return true end
  return self:save()
end

M.SAVE_RETRY = 2000 -- ms between tries while the state cannot be written

--- Writes the state file (when the manager has one): snap, or the
-- manager's snapshot now. While it fails (a full disk), it is tried again
-- every SAVE_RETRY ms, and status says so.
-- @return[1] true
-- @return[2] nil, msg, code
function Manager:save(snap)
  if not self._state_file then return true end
  local ok, err, code = state.save(self._state_file, snap or self:snapshot())
  self.state_saves = (self.state_saves or 0) + 1 -- counted for the metrics (portman.metrics)
  if not ok then self.state_save_failures = (self.state_save_failures or 0) + 1 end
  if ok then
    if self._save_failing then
      self._save_failing = nil
      self:_event({event = "state_saved", note = "the state file is written again"})
    end
    return true
  end
  if not self._save_failing then
    self:_event({event = "state_save_failed", level = "critical", error = err})
  end
  self._save_failing = err
  if not self._save_timer then self._save_timer = uv.new_timer() end
  if not self._stopping then
    self._save_timer:start(M.SAVE_RETRY, 0, async.safe(function()
      if self._save_failing and not self._stopping then self:save() end
    end, "state save retry"))
  end
  return nil, err, code
end

local function close_timer(t)
  if t and not t:is_closing() then t:close() end
end

--- Stops every service (listeners drained for grace_ms), writes the state
-- as it was before the stop (so the next start gives each service its port
-- back), stops the health checks. cb() when done. With opts.save = false
-- the state file is left as it is (a start that failed).
function Manager:shutdown(grace_ms, cb, opts)
  local snap = self:snapshot()
  self._stopping = true
  for name in pairs(self.pending) do self:_drop_pending(name) end
  close_timer(self._save_timer)
  close_timer(self._orphan_timer)
  local names = self:names()
  local left = #names
  local function done()
    if not (opts and opts.save == false) then
      snap.mappings = self:_mapping_records() -- what is left on the router: nothing, normally
      snap.programs = json.array() -- every program was stopped
      self:save(snap)
      close_timer(self._save_timer)
    end
    self.health:close()
    if self._sup then self._sup:close() end
    close_timer(self._sync_timer)
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
