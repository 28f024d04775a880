--- The daemon: `portman run POLICY.lua` runs a policy file on the luv loop.
-- A policy is a Lua file that returns
--   {pools = {NAME = allocator options, ...},
--    services = {{name = "web", pool = "NAME", port = optional fixed port}, ...}}
-- The daemon makes the pools, gives each service its port (the one it had in
-- the state file when there is one, so a restart keeps ports stable), logs
-- them, and runs until SIGINT or SIGTERM, when it saves its state and exits.
local uv = require "luv"
local allocator = require "portman.allocator"
local log = require "portman.log"
local state = require "portman.state"
local async = require "portman.async"

local M = {}
local POLICY_KEYS = {pools = true, services = true}
local SERVICE_KEYS = {name = true, pool = true, port = true}

local function policy_error(fmt, ...)
  return nil, "protocol: policy: " .. fmt:format(...), "protocol"
end

--- Reads and checks a policy file.
-- @return[1] the policy table
-- @return[2] nil, msg, code ("not_found" for a missing file, "protocol" for a bad one)
function M.load_policy(path)
  local chunk, err = loadfile(path, "t", setmetatable({}, {__index = _G}))
  if not chunk then
    if not io.open(path) then return nil, "not_found: policy " .. path, "not_found" end
    return policy_error("%s", err)
  end
  local ok, policy = pcall(chunk)
  if not ok then return policy_error("%s", policy) end
  if type(policy) ~= "table" then return policy_error("%s must return a table", path) end
  for k in pairs(policy) do
    if not POLICY_KEYS[k] then return policy_error("unknown key '%s'", tostring(k)) end
  end
  for i, s in ipairs(policy.services or {}) do
    for k in pairs(s) do
      if not SERVICE_KEYS[k] then return policy_error("unknown key 'services[%d].%s'", i, tostring(k)) end
    end
    if type(s.name) ~= "string" then return policy_error("services[%d].name must be a string", i) end
    if not (policy.pools or {})[s.pool] then
      return policy_error("services[%d].pool: no pool '%s'", i, tostring(s.pool))
    end
  end
  return policy
end

local function make_pools(policy)
  local pools = {}
  for name, opts in pairs(policy.pools or {}) do
    local ok, pool = pcall(allocator.new, opts)
    if not ok then
      return policy_error("pools.%s: %s", name, tostring(pool):gsub("^bad argument #1 to 'new' ", ""))
    end
    pools[name] = pool
  end
  return pools
end

-- The port a service gets: its fixed port, else the one the last run gave
-- it, else a fresh one from its pool.
local function place(pool, service, previous)
  local lo, hi = pool:range()
  if service.port then
    if math.tointeger(service.port) == nil or service.port < lo or service.port > hi then
      return policy_error("service %s: port %s outside its pool %d-%d", service.name,
        tostring(service.port), lo, hi)
    end
    local ok, err, code = pool:reserve(service.port)
    if not ok then return nil, err, code end
    return service.port
  end
  if previous and previous >= lo and previous <= hi and pool:reserve(previous) then
    return previous
  end
  return pool:allocate()
end

--- Starts the policy: makes the pools and places every service, those with
-- a fixed port first so that no other service takes it.
-- @return[1] a daemon table {pools, services = {{name, pool, port}}}
-- @return[2] nil, msg, code
function M.start(policy, saved)
  local pools, err, code = make_pools(policy)
  if not pools then return nil, err, code end
  local previous = {}
  for _, s in ipairs(saved and saved.services or {}) do previous[s.name] = s.port end
  local placed = {}
  for _, fixed in ipairs({true, false}) do
    for _, s in ipairs(policy.services or {}) do
      if (s.port ~= nil) == fixed then
        local port, perr, pcode = place(pools[s.pool], s, math.tointeger(previous[s.name]))
        if not port then return nil, ("%s (service %s)"):format(perr, s.name), pcode end
        placed[s] = port
      end
    end
  end
  local services = {}
  for _, s in ipairs(policy.services or {}) do
    services[#services + 1] = {name = s.name, pool = s.pool, port = placed[s]}
    log.info("service_placed", {service = s.name, pool = s.pool, port = placed[s]})
  end
  return {pools = pools, services = services}
end

--- The state document of a running daemon.
function M.snapshot(d)
  local pools = {}
  for name, pool in pairs(d.pools) do pools[name] = pool:snapshot() end
  return {services = d.services, pools = pools}
end

-- Stops the loop on SIGINT or SIGTERM after on_stop(signal name). Set up
-- before the daemon reports anything, so no early signal kills it outright.
local function on_signals(on_stop)
  local signals = {}
  for _, name in ipairs({"sigint", "sigterm"}) do
    local s = uv.new_signal()
    s:start(name, async.safe(function()
      on_stop(name)
      for _, h in ipairs(signals) do h:close() end
    end, "signal"))
    signals[#signals + 1] = s
  end
end

--- Runs policy_path until SIGINT/SIGTERM.
-- @return[1] true after a clean stop
-- @return[2] nil, msg, code when the policy or the state cannot be used
function M.run(policy_path, opts, out)
  local policy, err, code = M.load_policy(policy_path)
  if not policy then return nil, err, code end
  local state_path = opts.state_dir and (opts.state_dir .. "/state.json")
  local saved = {}
  if state_path then
    saved, err, code = state.load(state_path)
    if not saved then return nil, err, code end
  end
  local d
  d, err, code = M.start(policy, saved)
  if not d then return nil, err, code end
  local function save()
    if not state_path then return end
    local ok, serr = state.save(state_path, M.snapshot(d))
    if not ok then log.error("state_save_failed", {error = serr}) end
  end
  on_signals(function(signame)
    log.info("daemon_stopping", {signal = signame})
    save()
  end)
  save()
  log.info("daemon_started", {policy = policy_path, services = #d.services})
  for _, s in ipairs(d.services) do
    out:write(("%-20s %-12s %d\n"):format(s.name, s.pool, s.port))
  end
  out:flush()
  uv.run()
  log.info("daemon_stopped", {})
  return true
end

M.cli = {run = {
  usage = "portman run POLICY.lua [--state-dir DIR] [--admin-socket PATH]",
  flags = {["state-dir"] = "string", ["admin-socket"] = "string"},
  positional = {"POLICY"},
  run = function(opts, out) return M.run(opts.policy, opts, out) end,
}}

return M
