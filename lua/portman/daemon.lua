--- The daemon: `portman run POLICY.lua` runs a policy file in the runtime
-- (docs/design.md, "Policy files and the daemon"). A policy is a Lua file
-- that returns
--   {pools = {NAME = pool options, ...},
--    services = {{name = "web", type = "api", pool = "NAME", ...}, ...},
--    grace = ms, cluster = {...}}
-- (see portman.manager for the options).
--
-- Only a broken policy stops a start: a service that cannot start now (its
-- port held by another process, no fd left) is reported with that status
-- and tried again on a back-off while the others run. A failed start
-- leaves the state file as it was. A reload (SIGHUP) is all or nothing:
-- the new policy is loaded and checked, and every new port bound, before
-- any running service is touched; on any failure the old services keep
-- running and the failure shows in the log and in `status`.
local uv = require "luv"
local manager = require "portman.manager"
local admin = require "portman.admin"
local log = require "portman.log"
local state = require "portman.state"
local async = require "portman.async"
local backend = require "portman.backend"
local nat = require "portman.nat"
local sandbox = require "portman.sandbox"
local netaddr = require "portman.netaddr"
local allocator = require "portman.allocator"
local json = require "portman.json"
local check = require "portman.check"
local errors = require "portman.errors"
local notify = require "portman.notify"
local listeners = require "portman.listeners"
local supervisor = require "portman.supervisor"
local core = require "portman.core"
local endpoint = require "portman.endpoint"
local httpd = require "portman.httpd"

local M = {}
local POLICY_KEYS = {pools = true, services = true, grace = true, cluster = true, http = true}
local CLUSTER_KEYS = {etcd = true, name = true, node = true, ttl = true, timeout = true, user = true,
                      password = true, cacert = true, cert = true, key = true, insecure = true}

M.POLICY_BUDGET = 2000 -- ms a policy file's chunk may run
local STATE_NAME = "state.json" -- in the state dir

local function policy_error(fmt, ...)
  return nil, "protocol: policy: " .. fmt:format(...), "protocol"
end

-- The problems of a policy's shape (not yet of each pool and service):
-- a list of texts.
local function shape_problems(policy, path)
  if type(policy) ~= "table" then return {path .. " must return a table"} end
  local problems = {}
  for k in pairs(policy) do
    if not POLICY_KEYS[k] then problems[#problems + 1] = ("unknown key '%s'"):format(tostring(k)) end
  end
  if policy.pools ~= nil and type(policy.pools) ~= "table" then problems[#problems + 1] = "pools must be a table" end
  if policy.services ~= nil and type(policy.services) ~= "table" then
    problems[#problems + 1] = "services must be a list"
  end
  if policy.grace ~= nil and (math.type(policy.grace) ~= "integer" or policy.grace < 0) then
    problems[#problems + 1] = "grace must be an integer number of ms"
  end
  if policy.http ~= nil then
    local ok, why = httpd.parse_address(policy.http)
    if not ok then problems[#problems + 1] = why:gsub("^protocol: ", "") end
  end
  local seen = {}
  for i, s in ipairs(type(policy.services) == "table" and policy.services or {}) do
    if type(s) ~= "table" then
      problems[#problems + 1] = ("services[%d] must be a table"):format(i)
    elseif type(s.name) ~= "string" then
      problems[#problems + 1] = ("services[%d].name must be a string"):format(i)
    elseif seen[s.name] then
      problems[#problems + 1] = ("services[%d]: a second service '%s'"):format(i, s.name)
    else
      seen[s.name] = true
      if s.pool ~= nil and not (type(policy.pools) == "table" and policy.pools[s.pool]) then
        problems[#problems + 1] = ("services[%d].pool: no pool '%s'"):format(i, tostring(s.pool))
      end
    end
  end
  return problems
end

--- Runs a policy file's chunk under a time budget (a policy that loops
-- ends with an error, it does not freeze the daemon) and returns what it
-- returns, unchecked.
-- @return[1] the value
-- @return[2] nil, msg, code ("not_found" for a missing file, "protocol" for a bad one)
function M.read_policy(path, opts)
  local chunk, err = loadfile(path, "t", setmetatable({}, {__index = _G}))
  if not chunk then
    local f = io.open(path)
    if not f then return nil, "not_found: policy " .. path, "not_found" end
    f:close()
    return policy_error("%s", err)
  end
  local ok, policy = sandbox.run(chunk, {budget = opts and opts.budget or M.POLICY_BUDGET,
                                         what = "policy " .. path})
  if not ok then return policy_error("%s", policy:gsub("^timeout: ", "")) end
  if type(policy) ~= "table" then return policy_error("%s must return a table", path) end
  return policy
end

--- Reads a policy file (read_policy) and checks its shape (each pool and
-- service is checked in full by check_policy, and again when applied).
-- @return[1] the policy table
-- @return[2] nil, msg, code ("not_found" for a missing file, "protocol" for a bad one)
function M.load_policy(path, opts)
  local policy, err, code = M.read_policy(path, opts)
  if not policy then return nil, err, code end
  local problems = shape_problems(policy, path)
  if #problems > 0 then return policy_error("%s", problems[1]) end
  return policy
end

-- The problems of one service's fixed port on this host: another process
-- holds it (named by /proc where it can be).
local function host_problem(i, s)
  local proto = s.proto or "tcp"
  if math.type(s.port) ~= "integer" or s.listen == false then return nil end
  for _, b in ipairs(netaddr.bound(proto)) do
    if b.port == s.port and netaddr.overlap(b.address, netaddr.normalize(s.address or "0.0.0.0") or "") then
      local h = netaddr.holder(proto, s.port, s.address)
      return ("services[%d] (%s): port %d/%s is held on this host%s"):format(i, s.name, s.port, proto,
        h and (" by pid %d (%s)"):format(h.pid, h.program or "?") or "")
    end
  end
  return nil
end

--- Every problem of a policy, as `portman check` lists them: its shape,
-- each pool's and service's options, fixed ports used twice, and (with
-- opts.host) fixed ports another process holds on this host.
-- @return a list of texts (empty: the policy is fine)
function M.check_policy(policy, opts)
  local problems = shape_problems(policy, "the policy")
  if type(policy) ~= "table" then return problems end
  local names = {}
  for name in pairs(type(policy.pools) == "table" and policy.pools or {}) do names[#names + 1] = name end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, name in ipairs(names) do
    local ok, why = manager.validate_pool(policy.pools[name])
    if not ok then problems[#problems + 1] = ("pools.%s: %s"):format(tostring(name), why) end
  end
  local fixed = {}
  for i, s in ipairs(type(policy.services) == "table" and policy.services or {}) do
    if type(s) == "table" and type(s.name) == "string" then
      local ok, why = manager.validate_service(s)
      if not ok then problems[#problems + 1] = ("services[%d] (%s): %s"):format(i, s.name, why) end
      local key = s.port and (s.proto or "tcp") .. "/" .. tostring(s.port)
      if key and fixed[key] then
        problems[#problems + 1] = ("services[%d] (%s): port %s is also '%s''s"):format(i, s.name, key, fixed[key])
      elseif key then
        fixed[key] = s.name
      end
      local held = opts and opts.host and host_problem(i, s)
      if held then problems[#problems + 1] = held end
    end
  end
  return problems
end

-- Calls fn(...) and turns a raised bad-argument error into nil, "protocol".
local function apply(what, fn, ...)
  local ok, res, err, code = pcall(fn, ...)
  if not ok then
    return policy_error("%s: %s", what, check.reason(res))
  end
  if res == nil then return nil, ("%s (%s)"):format(err, what), code end
  return res
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
-- it could, or a delete failed): those in the saved state, each only if it
-- is still portman's own entry. Mappings the router already forgot count
-- as deleted. The gateway the previous run knew is used first (no
-- discovery while it answers). cb(deleted, failed, left): left lists the
-- records not deleted, to be kept and tried again.
function M.remove_orphans(saved, cb)
  local list = type(saved) == "table" and type(saved.mappings) == "table" and saved.mappings or {}
  if type(saved) == "table" and saved.gateway ~= nil then
    local ok, err = nat.use_known(saved.gateway)
    if not ok then log.warn("gateway_state_ignored", {error = err}) end
  end
  local left, deleted, kept = #list, 0, {}
  if left == 0 then return cb(0, 0, kept) end
  for _, r in ipairs(list) do
    manager.delete_orphan(r, function(gone, err)
      if gone then
        deleted = deleted + 1
        log.info("orphan_mapping_deleted",
          {service = r.service, external_port = r.external_port, proto = r.proto})
      else
        kept[#kept + 1] = r
        log.warn("orphan_mapping_left", {service = r.service, external_port = r.external_port, error = err})
      end
      left = left - 1
      if left == 0 then cb(deleted, #kept, kept) end
    end)
  end
end

--- Ends the programs a killed run left (their pids and start times are in
-- the saved state): a pid that is now another process's is left alone.
-- cb() when done.
function M.reap_programs(saved, cb)
  local list = type(saved) == "table" and type(saved.programs) == "table" and saved.programs or {}
  if #list == 0 then return cb() end
  local ok, err = pcall(supervisor.reap_orphans, list, function(report)
    for _, r in ipairs(report) do
      log.info("orphan_program", {service = r.name, pid = r.pid, result = r.result})
    end
    cb()
  end)
  if not ok then
    log.warn("orphan_programs_unread", {error = tostring(err)})
    cb()
  end
end

-- Starts the services of a policy, fixed ports first (so that no other
-- service takes one). A service that cannot start now is kept pending;
-- only a bad service spec (a policy error) fails.
local function start_services(m, services, only)
  for _, fixed in ipairs({true, false}) do
    for _, s in ipairs(services or {}) do
      if (s.port ~= nil) == fixed and (not only or only[s.name]) then
        local ok, err = pcall(m.start_service, m, s)
        if not ok then return apply("service " .. s.name, error, err) end
      end
    end
  end
  return true
end

local START_GC_PAUSE = 100 -- percent: a new cycle as soon as one ends

--- Starts a policy in a new manager (autosave off: the caller saves once
-- the start is complete).
-- @return[1] the manager
-- @return[2] nil, msg, code for a policy error (the state is not written)
function M.start(policy, opts)
  opts = opts or {}
  local cluster
  if policy.cluster then
    local err, code
    cluster, err, code = join_cluster(policy.cluster)
    if not cluster then return nil, err, code end
  end
  local m = manager.new{state_file = opts.state_file, cluster = cluster, activation = opts.activation}
  m:autosave(false)
  m:remember(opts.saved)
  for name, p in pairs(policy.pools or {}) do
    local ok, err, code = apply("pools." .. name, m.add_pool, m, name, p)
    if not ok then
      m:shutdown(0, nil, {save = false})
      return nil, err, code
    end
  end
  -- the collector keeps up with the start's garbage (the default pause
  -- lets the heap double first): each service's garbage is freed before
  -- the next ones are made, and the holes it leaves between the records
  -- that stay are used again, not kept as RSS for good
  local pause = collectgarbage("setpause", START_GC_PAUSE)
  local ok, err, code = start_services(m, policy.services)
  collectgarbage("setpause", pause)
  if not ok then
    m:shutdown(0, nil, {save = false})
    return nil, err, code
  end
  m:restore_registrations(opts.saved)
  return m
end

-- ---- reload ----

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

local function pool_of(spec) return spec.pool or spec.type or "default" end

-- The new policy's pools: the running allocator where a pool did not
-- change, a new one where it did. Raises (a policy error) on a bad pool.
local function stage_pools(m, old, new)
  local staged, changed = {}, {}
  for name, p in pairs(new.pools or {}) do
    local before = (old.pools or {})[name]
    if before and m.pools[name] and fingerprint(before) == fingerprint(p) then
      staged[name] = m.pools[name]
    else
      local ok, why = manager.validate_pool(p)
      if not ok then error(("pools.%s: %s"):format(name, why), 0) end
      staged[name] = allocator.new{range = p.range, strategy = p.strategy, node_id = p.node_id,
                                   allow_privileged = p.allow_privileged}
      changed[name] = true
    end
  end
  return staged, changed
end

-- Does a changed service keep the running one's socket as it is: the same
-- proto, address, listener options and port?
local function same_socket(m, old_spec, spec, pool)
  local svc = m.services[spec.name]
  if not svc or not svc.listener then return false end
  if (spec.proto or "tcp") ~= svc.proto or (spec.address or "0.0.0.0") ~= (old_spec.address or "0.0.0.0")
     or fingerprint(spec.listen) ~= fingerprint(old_spec.listen) then
    return false
  end
  if spec.port ~= nil then return spec.port == svc.port end
  if old_spec.port ~= nil or not pool then return false end
  local lo, hi = pool:range()
  return svc.port >= lo and svc.port <= hi
end

-- What a reload does with each service of the new policy: "keep" (did not
-- change), "move" (changed, keeps its socket), "late" (changed, wants the
-- port its running self holds: bound once that one stopped), "new".
local function plan(m, old, new, changed_pools, staged)
  local old_by = {}
  for _, s in ipairs(old.services or {}) do old_by[s.name] = s end
  local steps, stop = {}, {}
  for _, s in ipairs(new.services or {}) do
    local o = old_by[s.name]
    old_by[s.name] = nil
    if o and fingerprint(o) == fingerprint(s) and not changed_pools[pool_of(s)] then
      steps[#steps + 1] = {spec = s, how = "keep"}
    else
      local how = "new"
      if o and same_socket(m, o, s, staged[pool_of(s)]) then
        how = "move"
      elseif o and m.services[s.name] and (s.port or m.services[s.name].port) == m.services[s.name].port then
        how = "late"
      end
      steps[#steps + 1] = {spec = s, how = how}
      if o then stop[#stop + 1] = s.name end
    end
  end
  for name in pairs(old_by) do stop[#stop + 1] = name end
  return steps, stop
end

-- Binds every new port of the plan before anything stops: all or nothing.
local function prepare_all(m, steps, staged)
  for _, step in ipairs(steps) do
    if step.how == "new" then
      local ok, svc, err, code = pcall(m.prepare, m, step.spec, staged)
      if not ok or not svc then
        for _, done in ipairs(steps) do
          if done.svc then m:discard(done.svc) end
        end
        if not ok then return apply("service " .. step.spec.name, error, svc) end
        return nil, ("%s (service %s)"):format(err, step.spec.name), code
      end
      step.svc = svc
    end
  end
  return true
end

-- A moved service: the running one's listener under the new spec.
local function moved(m, step, staged, l, reserved, port)
  local spec = step.spec
  local pool = staged[pool_of(spec)]
  if pool and pool ~= m.pools[pool_of(spec)] then
    local lo, hi = pool:range()
    if port >= lo and port <= hi then
      pool:reserve(port) -- the new allocator learns the port is taken
      reserved = true
    end
  end
  local svc = manager.record(spec, pool, pool and pool_of(spec))
  svc.listener, svc.port, svc.reserved, svc.serving = l, port, reserved, true
  return svc
end

-- Stops the services named in stop, hands over the listeners of the moved
-- ones first; cb() once all stopped.
local function stop_all(m, stop, steps, grace, cb)
  for _, step in ipairs(steps) do
    if step.how == "move" then
      step.port = m.services[step.spec.name].port
      step.listener, step.reserved = m:take_listener(step.spec.name)
    elseif step.how == "late" then
      m._previous[step.spec.name] = m.services[step.spec.name].port
    end
  end
  local left = #stop + 1
  local function stopped()
    left = left - 1
    if left == 0 then cb() end
  end
  for _, name in ipairs(stop) do m:stop_service(name, grace, stopped) end
  stopped()
end

-- The new pools take the old ones' places.
local function swap_pools(m, new, staged, changed)
  for name in pairs(m.pools) do
    if not staged[name] or changed[name] then m:remove_pool(name) end
  end
  for name in pairs(changed) do m:set_pool(name, staged[name], new.pools[name]) end
end

--- Applies a new policy to a running manager, all or nothing: pools are
-- checked and every new port bound first; only then are the services that
-- left or changed stopped (a changed one that keeps its socket hands its
-- listener over, so its port is never unbound) and the new and changed
-- ones started. On a failure nothing has changed. cb(ok, err, code).
function M.reload(m, old, new, cb)
  local problems = M.check_policy(new)
  if #problems > 0 then return cb(policy_error("%s", problems[1])) end
  local ok, staged, changed = pcall(stage_pools, m, old, new)
  if not ok then return cb(policy_error("%s", staged)) end
  local steps, stop = plan(m, old, new, changed, staged)
  local ready, err, code = prepare_all(m, steps, staged)
  if not ready then return cb(nil, err, code) end
  stop_all(m, stop, steps, new.grace or 0, function()
    swap_pools(m, new, staged, changed)
    for _, step in ipairs(steps) do
      local svc = step.svc
      if step.how == "move" then svc = moved(m, step, staged, step.listener, step.reserved, step.port) end
      if svc then
        local entry, aerr, acode = m:activate(svc)
        if not entry then m:_keep_trying(step.spec, aerr, acode) end
      elseif step.how == "late" then
        m:start_service(step.spec)
      elseif step.how == "keep" and not m.services[step.spec.name] and not m.pending[step.spec.name] then
        m:start_service(step.spec)
      end
    end
    cb(true)
  end)
end

-- ---- the daemon ----

local PROBE = ".portman-write-test."

-- nil, or why others than this uid (and root) can write dir: it is owned
-- by another uid, or it is group- or other-writable and not a sticky
-- directory of ours (there no one else may rename or remove our files).
local function shared_dir_problem(dir, st)
  local _, uid = core.ids()
  local mode = st.mode & tonumber("7777", 8)
  if st.uid ~= uid and st.uid ~= 0 then
    return ("denied: state dir %s belongs to uid %d (mode %04o), not to %d or root"):format(dir, st.uid, mode, uid)
  end
  local sticky_ours = mode & tonumber("1000", 8) ~= 0 and st.uid == uid
  if mode & tonumber("022", 8) ~= 0 and not sticky_ours then
    return ("denied: state dir %s has mode %04o: others can write it (chmod go-w %s)"):format(dir, mode, dir)
  end
end

-- A state directory that exists (made 0700 when missing), that no one
-- else can write, and that takes a write; the temporary files killed runs
-- left in it are removed.
local function state_dir(dir)
  local st = uv.fs_stat(dir)
  if not st then
    local parent = dir:match("^(.*)/[^/]+$")
    if parent and parent ~= "" and not uv.fs_stat(parent) then
      local ok, err, code = state_dir(parent)
      if not ok then return nil, err, code end
    end
    local ok, err = uv.fs_mkdir(dir, tonumber("700", 8))
    if not ok and not tostring(err):match("^EEXIST") then
      local _, msg, code = errors.from(err, "state dir " .. dir)
      return nil, msg, code
    end
    st = uv.fs_stat(dir)
  end
  if not st or st.type ~= "directory" then
    return nil, ("protocol: state dir %s is not a directory"):format(dir), "protocol"
  end
  local shared = shared_dir_problem(dir, st)
  if shared then return nil, shared, "denied" end
  local removed = state.remove_stale(dir, {STATE_NAME .. ".tmp.", PROBE}) or {}
  for _, name in ipairs(removed) do log.info("state_temp_removed", {dir = dir, file = name}) end
  local probe = ("%s/%s%d"):format(dir, PROBE, uv.os_getpid())
  local ok, err, code = state.save(probe, {})
  if not ok then return nil, ("%s (the state dir %s cannot be written)"):format(err, dir), code end
  os.remove(probe)
  return true
end

-- The saved state, checked in full; a corrupt or foreign file refuses the
-- start and is left as it is for the operator (docs/design.md, "The
-- state file").
local function load_state(file)
  local saved, err, code = state.load_checked(file)
  if saved then return saved end
  err = ("%s; the file is left as it is: move it away to start without the saved state"):format(err)
  log.error("state_refused", {file = file, error = err})
  return nil, err, code
end

local function print_services(m, out)
  for _, name in ipairs(m:names()) do
    local s = m.services[name] -- the record itself: no status entry made a service
    out:write(("%-20s %-12s %-5s %d\n"):format(s.name, s.pool_name or "-", s.proto, s.port))
  end
  for name in pairs(m.pending) do
    local s = m:service(name)
    out:write(("%-20s %-12s %-5s %s %s\n"):format(s.name, s.pool or "-", s.proto, tostring(s.port or "-"), s.status))
  end
  out:flush()
end

-- The signals: SIGHUP reloads, SIGINT/SIGTERM stop. Set up before
-- anything else, so a signal at any moment of the start is honoured.
local function on_signals(handlers)
  local signals = {}
  local function close_all()
    for _, h in ipairs(signals) do
      if not h:is_closing() then h:close() end
    end
  end
  for name, fn in pairs(handlers) do
    local s = uv.new_signal()
    s:start(name, async.safe(function() fn(name) end, "signal " .. name))
    signals[#signals + 1] = s
  end
  return close_all
end

-- Closes every handle left, so that uv.run returns.
local function close_everything()
  uv.walk(function(h) if not h:is_closing() then h:close() end end)
end

-- The admin socket's answers besides status and the REPL.
local function admin_ops(d)
  return {
    events = function(req)
      local list = d.manager and d.manager:recent(math.tointeger(req.since)) or {}
      return {events = json.array(list)}
    end,
    register = function(req)
      local m = d.manager
      if not m then return {error = "closed: the daemon is starting", code = "closed"} end
      local ok, e, err, code = pcall(m.register, m, req.service)
      if not ok then return {error = "protocol: " .. tostring(e):gsub("^[^:]*:%d+: ", ""), code = "protocol"} end
      if not e then return {error = err, code = code} end
      return {registered = e}
    end,
    deregister = function(req)
      local m = d.manager
      if not m then return {error = "closed: the daemon is starting", code = "closed"} end
      local ok, had, err, code = pcall(m.unregister, m, req.name)
      if not ok then return {error = "protocol: " .. tostring(had):gsub("^[^:]*:%d+: ", ""), code = "protocol"} end
      if had == nil then return {error = err, code = code} end
      if not had then return {error = "not_found: no registration " .. tostring(req.name), code = "not_found"} end
      return {deregistered = req.name}
    end,
  }
end

-- Reloads on SIGHUP: load, check and apply the policy; on any failure the
-- old services keep running and status shows why. systemd hears
-- RELOADING=1, then READY=1 either way.
local function reload(d)
  local m = d.manager
  d.notify:reloading("reloading " .. d.path)
  local function failed(why)
    m.reload_error = {error = why, at = os.time()}
    m:_event({event = "reload_failed", level = "error", error = why})
    d.notify:ready("reload failed, the old policy kept: " .. why)
  end
  local new, err = M.load_policy(d.path)
  if not new then return failed(err) end
  d.reloading = true
  M.reload(m, d.policy, new, function(ok, rerr)
    d.reloading = false
    if not ok then return failed(rerr) end
    d.policy, m.reload_error = new, nil
    m:save()
    m:_event({event = "reloaded", policy = d.path, services = #m:names()})
    d.notify:ready(#m:names() .. " services")
  end)
end

--- Runs policy_path until SIGINT/SIGTERM.
-- @return[1] true after a clean stop
-- @return[2] nil, msg, code when the policy, the state dir or the admin
--   socket cannot be used (the state file is then left as it was)
function M.run(policy_path, opts, out)
  -- systemd's variables are read (and unset, so programs started later do
  -- not inherit them) before anything else
  local d = {path = policy_path, notify = notify.new()}
  local inherited = listeners.from_environment()
  local stopping = false
  -- the encoder's buffer is not kept between calls: after the state file
  -- of 10,000 services (1.5 MB) or their status it would hold a megabyte
  -- or more for good. A buffer per call costs a malloc.
  json.keep_buffer(false)
  local close_signals = on_signals({
    sighup = function() if d.manager and not stopping and not d.reloading then reload(d) end end,
    sigint = function(name) d.stop(name) end,
    sigterm = function(name) d.stop(name) end,
  })
  -- until the services run, a stop signal only ends the start
  function d.stop(signame)
    if stopping then return end
    stopping = true
    log.info("daemon_stopping", {signal = signame})
  end
  local function fail(err, code)
    d.notify:close()
    close_signals()
    if d.server then d.server.close() end
    if d.http then d.http.close() end
    close_everything()
    uv.run()
    return nil, err, code
  end
  local policy, err, code = M.load_policy(policy_path)
  if not policy then return fail(err, code) end
  local problems = M.check_policy(policy)
  if #problems > 0 then return fail(select(2, policy_error("%s", table.concat(problems, "; ")))) end
  d.policy = policy
  local state_file, saved = nil, {}
  if opts.state_dir then
    local ok, serr, scode = state_dir(opts.state_dir)
    if not ok then return fail(serr, scode) end
    state_file = opts.state_dir .. "/" .. STATE_NAME
    saved, err, code = load_state(state_file)
    if not saved then return fail(err, code) end
  end
  -- the admin socket first: a directory it may not use refuses the start
  -- before any service runs
  local vars = {daemon = d}
  local ops = admin_ops(d)
  ops.status = function()
    if d.manager then return d.manager:status() end
    return {starting = true, services = json.array(), pools = json.array(), mappings = json.array()}
  end
  local status_op = ops.status
  ops = endpoint.counted(ops, d) -- the admin requests, for the metrics
  d.server, err, code = admin.serve(opts.admin_socket or admin.default_path(), {ops = ops, vars = vars})
  if not d.server then return fail(err, code) end
  -- the HTTP endpoint (off unless asked): a port in use refuses the start
  if opts.http or policy.http then
    d.http, err, code = endpoint.start(opts.http or policy.http, d, status_op)
    if not d.http then return fail(err, code) end
  end
  -- what a killed run left on the router goes first, so that a service
  -- mapping the same port again is not deleted after it mapped
  local cleaned, reaped, orphans = false, false, nil
  M.remove_orphans(saved, function(_, _, left) cleaned, orphans = true, left end)
  M.reap_programs(saved, function() reaped = true end)
  while not (cleaned and reaped) and not stopping do uv.run("once") end
  uv.run("nowait") -- a signal that came while the policy loaded
  if stopping then
    fail()
    log.info("daemon_stopped", {})
    return true
  end
  local m
  m, err, code = M.start(policy, {state_file = state_file, saved = saved, activation = inherited})
  if not m then return fail(err, code) end
  d.manager, vars.manager = m, m
  m:keep_orphans(orphans) -- not deleted: kept in the state file and tried again
  if d.http then endpoint.attach(d) end
  function d.stop(signame)
    if stopping then return end
    stopping = true
    log.info("daemon_stopping", {signal = signame})
    d.notify:stopping("draining")
    d.server.close()
    if d.http then d.http.close() end
    m:shutdown(d.policy.grace or 0, close_signals)
  end
  m:autosave(true)
  m:save()
  for name in pairs(m.inherited) do log.warn("activation_unclaimed", {name = name}) end
  log.info("daemon_started", {policy = policy_path, services = #m:names(), admin = d.server.path})
  print_services(m, out)
  -- the start's garbage (thousands of services leave megabytes) goes, and
  -- its pages back to the system: the RSS is what the services hold
  admin.release_memory()
  d.notify:ready(#m:names() .. " services")
  d.notify:watchdog_start()
  if stopping then -- a signal came while the services started
    stopping = false
    d.stop("early")
  end
  uv.run()
  d.notify:close()
  log.info("daemon_stopped", {})
  return true
end

return M
