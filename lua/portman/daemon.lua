--- The daemon: `portman run POLICY.lua` runs a policy file in the runtime.
-- A policy is a Lua file that returns
--   {pools = {NAME = pool options, ...},
--    services = {{name = "web", type = "api", pool = "NAME", ...}, ...},
--    grace = ms}
-- (see portman.manager for the options). The daemon gives each service its
-- port (the one it had in the state file when there is one), opens its
-- listener and health check, serves the admin socket, reloads the policy on
-- SIGHUP (services that did not change keep their listeners) and shuts
-- down cleanly on SIGINT or SIGTERM (listeners drained, state written).
local uv = require "luv"
local manager = require "portman.manager"
local admin = require "portman.admin"
local log = require "portman.log"
local state = require "portman.state"
local async = require "portman.async"
local nat = require "portman.nat"
local backend = require "portman.backend"

local M = {}
local POLICY_KEYS = {pools = true, services = true, grace = true, cluster = true}
local CLUSTER_KEYS = {etcd = true, name = true, node = true, ttl = true, timeout = true, user = true,
                      password = true, cacert = true, cert = true, key = true, insecure = true}

local function policy_error(fmt, ...)
  return nil, "protocol: policy: " .. fmt:format(...), "protocol"
end

local function check_services(policy)
  local seen = {}
  for i, s in ipairs(policy.services or {}) do
    if type(s) ~= "table" then return policy_error("services[%d] must be a table", i) end
    if type(s.name) ~= "string" then return policy_error("services[%d].name must be a string", i) end
    if seen[s.name] then return policy_error("services[%d]: a second service '%s'", i, s.name) end
    seen[s.name] = true
    if s.pool ~= nil and not (policy.pools or {})[s.pool] then
      return policy_error("services[%d].pool: no pool '%s'", i, tostring(s.pool))
    end
  end
  return true
end

--- Reads and checks a policy file (the manager checks each pool and
-- service in full when it applies them).
-- @return[1] the policy table
-- @return[2] nil, msg, code ("not_found" for a missing file, "protocol" for a bad one)
function M.load_policy(path)
  local chunk, err = loadfile(path, "t", setmetatable({}, {__index = _G}))
  if not chunk then
    local f = io.open(path)
    if not f then return nil, "not_found: policy " .. path, "not_found" end
    f:close()
    return policy_error("%s", err)
  end
  local ok, policy = pcall(chunk)
  if not ok then return policy_error("%s", policy) end
  if type(policy) ~= "table" then return policy_error("%s must return a table", path) end
  for k in pairs(policy) do
    if not POLICY_KEYS[k] then return policy_error("unknown key '%s'", tostring(k)) end
  end
  local fine, cerr, code = check_services(policy)
  if not fine then return nil, cerr, code end
  return policy
end

-- Calls fn(...) and turns a raised bad-argument error into nil, "protocol".
local function apply(what, fn, ...)
  local ok, res, err, code = pcall(fn, ...)
  if not ok then
    local msg = tostring(res):gsub("^[^:]*:%d+: ", "")
    return policy_error("%s: %s", what, msg:match("^bad argument #%d+ to '[^']*' %((.*)%)$") or msg)
  end
  if res == nil then return nil, ("%s (%s)"):format(err, what), code end
  return res
end

local function add_services(m, services, only)
  -- services with a fixed port first, so that no other service takes it
  for _, fixed in ipairs({true, false}) do
    for _, s in ipairs(services or {}) do
      if (s.port ~= nil) == fixed and (not only or only[s.name]) then
        local ok, err, code = apply("service " .. s.name, m.add_service, m, s)
        if not ok then return nil, err, code end
      end
    end
  end
  return true
end

-- The policy's `cluster = {etcd = URLs, name = cluster name, node?, ttl?,
-- ...}` as a started etcd backend: the services are registered cluster-wide.
local function join_cluster(c)
  if type(c) ~= "table" then return policy_error("cluster must be a table") end
  for k in pairs(c) do
    if not CLUSTER_KEYS[k] then return policy_error("unknown key 'cluster.%s'", tostring(k)) end
  end
  local opts = {kind = "etcd", endpoints = c.etcd, cluster = c.name}
  for k, v in pairs(c) do
    if k ~= "etcd" and k ~= "name" then opts[k] = v end
  end
  local b, err, code = apply("cluster", backend.new, opts)
  if not b then return nil, err, code end
  return b:start()
end

--- Deletes the router mappings a previous run left (it was killed before
-- it could): those in the saved state. Mappings the router already forgot
-- count as deleted. cb(deleted, failed) when done.
function M.remove_orphans(saved, cb)
  local list = saved and saved.mappings or {}
  local left, deleted, failed = #list, 0, 0
  if left == 0 then return cb(0, 0) end
  for _, r in ipairs(list) do
    nat.unmap({external_port = math.tointeger(r.external_port),
               internal_port = math.tointeger(r.internal_port),
               proto = r.proto, method = r.method}, function(ok, err, code)
      if ok or code == "not_found" then
        deleted = deleted + 1
        log.info("orphan_mapping_deleted",
          {service = r.service, external_port = r.external_port, proto = r.proto})
      else
        failed = failed + 1
        log.warn("orphan_mapping_left", {service = r.service, external_port = r.external_port, error = err})
      end
      left = left - 1
      if left == 0 then cb(deleted, failed) end
    end)
  end
end

--- Starts a policy in a new manager.
-- @return[1] the manager
-- @return[2] nil, msg, code
function M.start(policy, opts)
  opts = opts or {}
  local cluster
  if policy.cluster then
    local err, code
    cluster, err, code = join_cluster(policy.cluster)
    if not cluster then return nil, err, code end
  end
  local m = manager.new{state_file = opts.state_file, cluster = cluster}
  m:autosave(false)
  m:remember(opts.saved)
  for name, p in pairs(policy.pools or {}) do
    local ok, err, code = apply("pools." .. name, m.add_pool, m, name, p)
    if not ok then m:shutdown(0) return nil, err, code end
  end
  local ok, err, code = add_services(m, policy.services)
  if not ok then m:shutdown(0) return nil, err, code end
  m:restore_registrations(opts.saved)
  m:autosave(true)
  return m
end

-- A comparable text of a table without its functions' identities, so a
-- reloaded policy's unchanged parts compare equal.
local function fingerprint(v)
  if type(v) == "function" then return "function" end
  if type(v) ~= "table" then return type(v) .. ":" .. tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. "=" .. fingerprint(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

--- Applies a new policy to a running manager: services that did not change
-- (nor their pool) keep running untouched; the others are stopped, and
-- the new or changed ones started. cb(ok, err, code) when done.
function M.reload(m, old, new, cb)
  local old_pools, changed_pool = old.pools or {}, {}
  for name, p in pairs(new.pools or {}) do
    if old_pools[name] and fingerprint(old_pools[name]) ~= fingerprint(p) then changed_pool[name] = true end
  end
  local old_by, start, stop = {}, {}, {}
  for _, s in ipairs(old.services or {}) do old_by[s.name] = s end
  for _, s in ipairs(new.services or {}) do
    local o = old_by[s.name]
    local pool = s.pool or s.type or "default"
    if not o or fingerprint(o) ~= fingerprint(s) or changed_pool[pool] then
      start[s.name] = true
      if o then stop[#stop + 1] = s.name end
    end
    old_by[s.name] = nil
  end
  for name in pairs(old_by) do stop[#stop + 1] = name end
  local left = #stop + 1
  local function stopped()
    left = left - 1
    if left > 0 then return end
    for name in pairs(changed_pool) do
      m.health:unwatch_pool(name)
      m.pools[name] = nil
    end
    for name, p in pairs(new.pools or {}) do
      if not m.pools[name] then
        local ok, err, code = apply("pools." .. name, m.add_pool, m, name, p)
        if not ok then return cb(nil, err, code) end
      end
    end
    cb(add_services(m, new.services, start))
  end
  for _, name in ipairs(stop) do m:stop_service(name, new.grace or 0, stopped) end
  stopped()
end

local function print_services(m, out)
  for _, name in ipairs(m:names()) do
    local s = m:service(name)
    out:write(("%-20s %-12s %-5s %d\n"):format(s.name, s.pool or "-", s.proto, s.port))
  end
  out:flush()
end

-- The signals: SIGHUP reloads, SIGINT/SIGTERM stop. Set up before the
-- daemon reports anything, so no early signal kills it outright.
local function on_signals(handlers)
  local signals = {}
  local function close_all()
    for _, h in ipairs(signals) do h:close() end
  end
  for name, fn in pairs(handlers) do
    local s = uv.new_signal()
    s:start(name, async.safe(function() fn(name, close_all) end, "signal " .. name))
    signals[#signals + 1] = s
  end
end

--- Runs policy_path until SIGINT/SIGTERM.
-- @return[1] true after a clean stop
-- @return[2] nil, msg, code when the policy, the state or the admin socket cannot be used
function M.run(policy_path, opts, out)
  local policy, err, code = M.load_policy(policy_path)
  if not policy then return nil, err, code end
  local state_file = opts.state_dir and (opts.state_dir .. "/state.json")
  local saved = {}
  if state_file then
    saved, err, code = state.load(state_file)
    if not saved then return nil, err, code end
  end
  local d = {policy = policy, path = policy_path}
  local stopping = false
  on_signals({
    sighup = function()
      if stopping then return end
      local new, perr = M.load_policy(policy_path)
      if not new then return log.error("reload_failed", {error = perr}) end
      M.reload(d.manager, d.policy, new, function(ok, rerr)
        d.policy = new
        d.manager:save()
        if ok then log.info("reloaded", {policy = policy_path, services = #d.manager:names()})
        else log.error("reload_failed", {error = rerr}) end
      end)
    end,
    sigint = function(name, close_all) d.stop(name, close_all) end,
    sigterm = function(name, close_all) d.stop(name, close_all) end,
  })
  -- what a killed run left on the router goes first, so that a service
  -- mapping the same port again is not deleted after it mapped
  local cleaned = false
  M.remove_orphans(saved, function() cleaned = true end)
  while not cleaned do uv.run("once") end
  local m
  m, err, code = M.start(policy, {state_file = state_file, saved = saved})
  if not m then
    uv.walk(function(h) if not h:is_closing() then h:close() end end)
    return nil, err, code
  end
  d.manager = m
  local server
  server, err, code = admin.serve(opts.admin_socket or admin.default_path(),
    {status = function() return m:status() end, vars = {manager = m, daemon = d}})
  if not server then
    m:shutdown(0, function()
      uv.walk(function(h) if not h:is_closing() then h:close() end end)
    end)
    uv.run()
    return nil, err, code
  end
  function d.stop(signame, close_all)
    if stopping then return end
    stopping = true
    log.info("daemon_stopping", {signal = signame})
    server.close()
    m:shutdown(d.policy.grace or 0, close_all)
  end
  m:save()
  log.info("daemon_started", {policy = policy_path, services = #m:names(), admin = server.path})
  print_services(m, out)
  uv.run()
  log.info("daemon_stopped", {})
  return true
end

return M
