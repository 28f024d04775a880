--- Supervised programs: portman starts the program that serves a port,
-- watches it, restarts it on a back-off, and stops it with its process
-- group (docs/design.md, "Supervised programs").
--
--     local sup = supervisor.new{on_event = function(ev) ... end}
--     local p = assert(sup:start{name = "web", argv = {"nginx", "-g", "daemon off;"},
--                                fds = {listener.fd}, activation = true, fdnames = {"web"},
--                                user = "www-data", restart = "on-failure"})
--     p:info()  -- {name, pid, pgid, status, exit_code, signal, restarts, since}
--     p:stop(function(info) ... end)
--
-- The program is forked and exec'd by the C core (core.spawn): its own
-- session and process group, the listening sockets at fds 3, 4, ... with
-- LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES as systemd sets them, and a
-- parent-death signal, so it ends when portman ends, even by kill -9.
-- One SIGCHLD signal handle per supervisor reaps its own pids only
-- (core.reap), so luv's process handles keep working beside it.
--
-- Statuses: "starting" (spawned, waiting for p:ready() when start_timeout
-- is set), "running", "stopped" (stopped by p:stop, or exited with 0),
-- "failed" (exited otherwise, killed by a signal, a start timeout, or an
-- exec that failed on a restart). A restart waits a back-off that starts at
-- backoff.initial ms and doubles up to backoff.max; a program that ran
-- backoff.reset ms before it exited starts over at the initial delay.
--
-- Events (portman.events; each with `event`, `name` and `time`, the
-- supervisor's clock in ms): started {pid, restarts}, running {pid} (after
-- p:ready()), exited {pid, exit_code, signal, runtime}, restarting {delay,
-- restarts, exit_code, signal}, start_failed {error, code} (a restart's
-- exec failed), start_timeout {pid}, stopped {status, exit_code, signal}
-- (down for good: stopped, or not restarted).
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local events = require "portman.events"
local errors = require "portman.errors"
local lines = require "portman.lines"
local log = require "portman.log"

local M = {}
local Supervisor = {}
local sup_mt = {__index = Supervisor, __name = "portman.supervisor"}
local Program = {}
local prog_mt = {__index = Program, __name = "portman.supervisor.program"}

--- Restart back-off in ms: the first delay, the cap, and how long a
-- program must have run for the next restart to start over.
M.BACKOFF = {initial = 100, max = 30000, reset = 10000}
--- Ms between stop_signal and SIGKILL, unless a program sets its own.
M.STOP_TIMEOUT = 10000
--- Output lines longer than this many bytes are cut.
M.MAX_LINE = 4096
--- Output lines logged per program and second at most; the rest are
-- counted in one program_output_dropped event.
M.MAX_LINES_PER_SECOND = 1000
--- Ms between checks that a stopping process group is gone.
M.GROUP_POLL = 20

local RESTARTS = {"no", "on-failure", "always"}
local START_KEYS = {name = true, file = true, argv = true, env = true, cwd = true, user = true, group = true,
                    fds = true, activation = true, fdnames = true, restart = true, stop_signal = true,
                    stop_timeout = true, start_timeout = true, output = true, pdeath_signal = true}
local NEW_KEYS = {on_event = true, clock = true, backoff = true}
-- What portman's own environment holds for portman alone: never passed on.
local PRIVATE_ENV = {LISTEN_PID = true, LISTEN_FDS = true, LISTEN_FDNAMES = true, NOTIFY_SOCKET = true,
                     WATCHDOG_PID = true, WATCHDOG_USEC = true}
local SIGNALS = {}
for _, s in ipairs{"SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTERM",
                   "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGWINCH", "SIGPWR"} do SIGNALS[#SIGNALS + 1] = s end

local function precise_ms() return uv.hrtime() / 1e6 end

local function emit(self, ev)
  ev.time = self._clock()
  events.emit(self, ev)
end

local function close_handle(h)
  if h and not h:is_closing() then h:close() end
end

-- --- /proc -----------------------------------------------------------------

--- What /proc/PID/stat says of a process: {state, ppid, pgid, sid,
-- start_ticks} (start_ticks: its start time in clock ticks since boot),
-- or nil when there is no such process.
function M.process_info(pid)
  local f = io.open("/proc/" .. tostring(math.tointeger(pid)) .. "/stat")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  -- the name is in parentheses and may hold anything: the rest follows the last ") "
  local rest = s and s:match("^%d+ %(.*%) (.*)$")
  if not rest then return nil end
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  local function int(i) return math.tointeger(tonumber(fields[i])) end
  -- fields[1] is stat's field 3 (state); starttime is field 22
  return {state = fields[1], ppid = int(2), pgid = int(3), sid = int(4), start_ticks = int(20)}
end

local function boot_id()
  local f = io.open("/proc/sys/kernel/random/boot_id")
  if not f then return nil end
  local id = f:read("l")
  f:close()
  return id
end

-- Is any process of group pgid still alive? Zombies do not count: a
-- member reparented to an init that does not reap would count forever.
local function group_alive(pgid)
  local ok, _, code = core.kill(-pgid, "SIG0")
  if not ok and code ~= "denied" then return false end
  local req = uv.fs_scandir("/proc")
  if not req then return true end
  for name in uv.fs_scandir_next, req do
    local pid = name:match("^%d+$") and tonumber(name)
    if pid then
      local info = M.process_info(pid)
      if info and info.pgid == pgid and info.state ~= "Z" then return true end
    end
  end
  return false
end

-- --- options -----------------------------------------------------------------

local function ms_option(fname, opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  local n = type(v) == "number" and math.tointeger(v)
  if not n or n < 0 then check.argerror(fname, 1, key .. ": non-negative integer (ms) expected") end
  return n
end

local function string_list(fname, key, v, allow_empty)
  if type(v) ~= "table" then check.argerror(fname, 1, ("%s: list of strings expected, got %s"):format(key, type(v))) end
  if #v == 0 and not allow_empty then check.argerror(fname, 1, key .. ": non-empty list of strings expected") end
  for i = 1, #v do
    if type(v[i]) ~= "string" then
      check.argerror(fname, 1, ("%s[%d]: string expected, got %s"):format(key, i, type(v[i])))
    end
  end
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then
      check.argerror(fname, 1, ("%s: list expected (key '%s')"):format(key, tostring(k)))
    end
  end
  return v
end

local function id_option(fname, key, v)
  if v == nil then return nil end
  if type(v) == "number" and math.tointeger(v) and v >= 0 then return math.tointeger(v) end
  if type(v) == "string" and v ~= "" then return v end
  check.argerror(fname, 1, key .. ": name or id expected, got " .. type(v))
end

-- fds: integers, or objects with an fd (portman.listener).
local function fd_list(v)
  if v == nil then return {} end
  if type(v) ~= "table" then check.argerror("start", 1, "fds: list expected, got " .. type(v)) end
  local out = {}
  for i = 1, #v do
    local x = v[i]
    local fd = type(x) == "number" and math.tointeger(x)
    if type(x) == "table" and type(x.fd) == "number" then fd = math.tointeger(x.fd) end
    if not fd or fd < 0 then check.argerror("start", 1, ("fds[%d]: fd or listener expected"):format(i)) end
    out[i] = fd
  end
  return out
end

local function check_start(opts)
  check.table("start", 1, opts)
  check.known("start", 1, opts, START_KEYS)
  local s = {}
  if type(opts.name) ~= "string" or opts.name == "" then
    check.argerror("start", 1, "name: non-empty string expected, got " .. type(opts.name))
  end
  s.name = opts.name
  s.argv = string_list("start", "argv", opts.argv)
  if opts.file ~= nil and (type(opts.file) ~= "string" or opts.file == "") then
    check.argerror("start", 1, "file: non-empty string expected")
  end
  s.file = opts.file or s.argv[1]
  if s.file == "" then check.argerror("start", 1, "argv[1]: the program expected, got an empty string") end
  s.env = {}
  if opts.env ~= nil then
    if type(opts.env) ~= "table" then check.argerror("start", 1, "env: table expected, got " .. type(opts.env)) end
    for k, v in pairs(opts.env) do
      if type(k) ~= "string" or k == "" or k:find("[=%z]") then
        check.argerror("start", 1, ("env: bad variable name '%s'"):format(tostring(k)))
      end
      if v ~= false and type(v) ~= "string" and type(v) ~= "number" then
        check.argerror("start", 1, ("env.%s: string or false expected, got %s"):format(k, type(v)))
      end
      s.env[k] = v ~= false and tostring(v) or false
    end
  end
  if opts.cwd ~= nil and (type(opts.cwd) ~= "string" or opts.cwd == "") then
    check.argerror("start", 1, "cwd: non-empty string expected")
  end
  s.cwd = opts.cwd
  s.user, s.group = id_option("start", "user", opts.user), id_option("start", "group", opts.group)
  s.fds = fd_list(opts.fds)
  if opts.activation ~= nil and type(opts.activation) ~= "boolean" then
    check.argerror("start", 1, "activation: boolean expected, got " .. type(opts.activation))
  end
  s.activation = opts.activation == true
  if opts.fdnames ~= nil then
    if not s.activation then check.argerror("start", 1, "fdnames: needs activation = true") end
    string_list("start", "fdnames", opts.fdnames, true)
    if #opts.fdnames ~= #s.fds then
      check.argerror("start", 1, ("fdnames: %d names for %d fds"):format(#opts.fdnames, #s.fds))
    end
    for i, n in ipairs(opts.fdnames) do
      -- sd_listen_fds_with_names: at most 255 printable characters, no ':'
      if n == "" or #n > 255 or n:find("[:%c]") then
        check.argerror("start", 1, ("fdnames[%d]: 1-255 printable characters without ':' expected"):format(i))
      end
    end
    s.fdnames = opts.fdnames
  end
  s.restart = check.oneof("start", 1, opts.restart or "on-failure", RESTARTS, "restart")
  s.stop_signal = check.oneof("start", 1, opts.stop_signal or "SIGTERM", SIGNALS, "stop_signal")
  if opts.pdeath_signal == false then
    s.pdeath_signal = nil
  else
    s.pdeath_signal = check.oneof("start", 1, opts.pdeath_signal or s.stop_signal, SIGNALS, "pdeath_signal")
  end
  s.stop_timeout = ms_option("start", opts, "stop_timeout", M.STOP_TIMEOUT)
  s.start_timeout = ms_option("start", opts, "start_timeout", nil)
  local out = opts.output
  if out == nil then out = "log" end
  if out ~= false and (type(out) ~= "string" or out == "") then
    check.argerror("start", 1, "output: \"log\", a path or false expected")
  end
  s.output = out
  return s
end

-- The ids to take, and the environment's USER, LOGNAME and HOME.
local function resolve_ids(s)
  if s.user == nil and s.group == nil then return {} end
  local ids, me = {}, uv.os_get_passwd() or {}
  if s.user ~= nil then
    local u, err, code = core.user_info(s.user)
    if not u then
      if code ~= "not_found" or not math.tointeger(s.user) then return nil, err, code end
      if s.group == nil then
        return errors.fail("not_found", "user %s has no passwd entry: give a group too", tostring(s.user))
      end
      ids.uid = s.user
    else
      ids.uid, ids.gid, ids.groups = u.uid, u.gid, u.groups
      ids.env = {USER = u.name, LOGNAME = u.name, HOME = u.home}
    end
  end
  if s.group ~= nil then
    local g, err, code = core.group_info(s.group)
    if not g then
      if code ~= "not_found" or not math.tointeger(s.group) then return nil, err, code end
      g = {gid = s.group}
    end
    if ids.groups then
      -- the user's groups, with the primary one replaced (initgroups(user, gid))
      local list, seen = {g.gid}, {[g.gid] = true}
      for _, id in ipairs(ids.groups) do
        if id ~= ids.gid and not seen[id] then list[#list + 1], seen[id] = id, true end
      end
      ids.groups = list
    end
    ids.gid = g.gid
  end
  if me.uid ~= 0 then
    -- not root: nothing to drop; ids that are ours already are no change
    if (ids.uid == nil or ids.uid == me.uid) and (ids.gid == nil or ids.gid == me.gid) then
      ids.uid, ids.gid = nil, nil
    end
    ids.groups = nil
  end
  return ids
end

local function build_env(s, ids)
  local vars = {}
  for k, v in pairs(uv.os_environ()) do
    if not PRIVATE_ENV[k] then vars[k] = v end
  end
  for k, v in pairs(ids.env or {}) do vars[k] = v end
  if s.fdnames then vars.LISTEN_FDNAMES = table.concat(s.fdnames, ":") end
  for k, v in pairs(s.env) do vars[k] = v or nil end
  local list = {}
  for k, v in pairs(vars) do list[#list + 1] = k .. "=" .. v end
  table.sort(list)
  return list
end

-- --- output --------------------------------------------------------------

-- Logs a program's lines: at most MAX_LINE bytes of each (the event says
-- how many more were dropped), at most MAX_LINES_PER_SECOND a second.
local function output_logger(p, stream)
  local max = M.MAX_LINE
  local framer = lines.new(max) -- fed at most max bytes a line: never over its cap
  local window, count, dropped = nil, 0, 0
  local fed, cut = 0, 0 -- of the line in progress: bytes passed on, bytes dropped
  local function flush_dropped()
    if dropped > 0 then
      log.warn("program_output_dropped", {service = p.name, stream = stream, lines = dropped})
      dropped = 0
    end
  end
  local function line(text)
    local now = uv.now()
    if not window or now - window >= 1000 then
      flush_dropped()
      window, count = now, 0
    end
    count = count + 1
    if count > M.MAX_LINES_PER_SECOND then
      dropped = dropped + 1
    else
      log.info("program_output", {service = p.name, stream = stream, text = text,
                                  truncated = cut > 0 and cut or nil})
    end
  end
  local obj = {}
  function obj.feed(data)
    local start, n = 1, #data
    while start <= n do
      local nl = data:find("\n", start, true)
      local stop = nl and nl - 1 or n
      local take = math.min(stop - start + 1, max - fed)
      if take > 0 then
        framer:feed(data:sub(start, start + take - 1), line)
        fed = fed + take
      end
      cut = cut + (stop - start + 1 - take)
      if nl then
        framer:feed("\n", line)
        fed, cut = 0, 0
      end
      start = stop + 2
    end
  end
  function obj.finish()
    if fed > 0 or cut > 0 then
      framer:feed("\n", line)
      fed, cut = 0, 0
    end
    flush_dropped()
  end
  return obj
end

-- Opens what the program's stdout and stderr go to: two pipes read into
-- log events, a file opened for appending, or nothing (/dev/null).
-- Returns the fds for spawn and a function closing the parent's ends.
local function open_output(p)
  local out = p._spec.output
  if out == false then return {}, function() end end
  if out ~= "log" then
    local fd, err = uv.fs_open(out, "a", tonumber("640", 8))
    if not fd then return errors.from(err, "open " .. out) end
    return {stdout = fd, stderr = fd}, function() uv.fs_close(fd) end
  end
  local fds, writers = {}, {}
  local function undo()
    for _, w in ipairs(writers) do uv.fs_close(w) end
  end
  for _, stream in ipairs{"stdout", "stderr"} do
    local pair, err = uv.pipe({nonblock = true}, {nonblock = false})
    if not pair then
      undo()
      return errors.from(err, "pipe")
    end
    writers[#writers + 1] = pair.write
    local h = uv.new_pipe(false)
    local ok, oerr = h:open(pair.read)
    if not ok then
      h:close()
      uv.fs_close(pair.read)
      undo()
      return errors.from(oerr, "pipe")
    end
    local sink = output_logger(p, stream)
    p._readers[h] = true
    h:read_start(async.safe(function(rerr, data)
      if data then return sink.feed(data) end
      -- EOF (every writer gone: the program and its children) or an error
      sink.finish()
      if rerr then log.warn("program_output_error", {service = p.name, stream = stream, error = rerr}) end
      p._readers[h] = nil
      close_handle(h)
    end, "output of " .. p.name))
    fds[stream] = pair.write
  end
  return fds, undo
end

-- --- the life of a program ------------------------------------------------

local function set_status(p, status)
  if p.status ~= status then p.status, p.since = status, os.time() end
end

local function stop_timer(p, key)
  local t = p[key]
  p[key] = nil
  close_handle(t)
end

local function after_timer(p, key, ms, fn, what)
  stop_timer(p, key)
  local t = uv.new_timer()
  p[key] = t
  t:start(ms, 0, async.safe(function()
    if p[key] == t then p[key] = nil end
    close_handle(t)
    fn()
  end, what .. " of " .. p.name))
end

local function signal_group(p, sig)
  local ok, err, code = core.kill(-p.pgid, sig)
  if not ok and code ~= "not_found" then
    log.warn("program_signal_failed", {service = p.name, pgid = p.pgid, signal = sig, error = err})
  end
end

-- Stop signal now, SIGKILL to the whole group after stop_timeout (once).
local function terminate(p)
  if not p._signalled then
    p._signalled = true
    signal_group(p, p._spec.stop_signal)
  end
  if not p._kill_timer and not p._killed then
    after_timer(p, "_kill_timer", p._spec.stop_timeout, function()
      p._killed = true
      log.warn("program_killed", {service = p.name, pgid = p.pgid, after_ms = p._spec.stop_timeout})
      signal_group(p, "SIGKILL")
      if p._drain_done then p._drain_done() end
    end, "stop timeout")
  end
end

local launch, on_exit

local function finish_stop_callbacks(p)
  local cbs = p._stop_cbs
  p._stop_cbs = {}
  local info = p:info()
  for _, cb in ipairs(cbs) do cb(info) end
end

local function schedule_restart(p, runtime)
  local sup = p._sup
  local b = sup._backoff
  if runtime >= b.reset then p._failures = 0 end
  local delay = math.min(b.initial * 2 ^ p._failures, b.max)
  delay = math.tointeger(delay) or math.floor(delay)
  p._failures = p._failures + 1
  log.info("program_restarting", {service = p.name, delay_ms = delay, restarts = p.restarts + 1})
  emit(sup, {event = "restarting", name = p.name, delay = delay, restarts = p.restarts + 1,
             exit_code = p.exit_code, signal = p.signal})
  after_timer(p, "_restart_timer", delay, function()
    p.restarts = p.restarts + 1
    local ok, err, code = launch(p)
    if not ok then
      set_status(p, "failed")
      log.warn("program_start_failed", {service = p.name, error = err})
      emit(sup, {event = "start_failed", name = p.name, error = err, code = code})
      schedule_restart(p, 0)
    end
  end, "restart")
end

-- The program's process group is gone: stopped for good, or restarted.
local function after_exit(p, runtime)
  p._drain_done = nil
  stop_timer(p, "_kill_timer")
  stop_timer(p, "_poll_timer")
  local sup = p._sup
  if p._stopping then
    p._stopping = false
    set_status(p, "stopped")
    log.info("program_stopped", {service = p.name, exit_code = p.exit_code, signal = p.signal})
    emit(sup, {event = "stopped", name = p.name, status = "stopped", exit_code = p.exit_code, signal = p.signal})
    return finish_stop_callbacks(p)
  end
  local failed = p._timed_out or p.signal ~= nil or p.exit_code ~= 0
  set_status(p, failed and "failed" or "stopped")
  local r = p._spec.restart
  if r == "always" or (r == "on-failure" and failed) then return schedule_restart(p, runtime) end
  log.info("program_stopped", {service = p.name, status = p.status, exit_code = p.exit_code, signal = p.signal})
  emit(sup, {event = "stopped", name = p.name, status = p.status, exit_code = p.exit_code, signal = p.signal})
  finish_stop_callbacks(p)
end

-- The program (its group's leader) exited: what is left of its group gets
-- the stop signal, and SIGKILL after stop_timeout; then after_exit.
function on_exit(p, code, signal)
  local sup = p._sup
  local pid = p.pid
  sup._by_pid[pid] = nil
  if next(sup._by_pid) == nil then sup._sigchld:unref() end
  p.pid, p.exit_code, p.signal = nil, code or nil, signal
  stop_timer(p, "_start_timer")
  local runtime = sup._clock() - p._started_at
  log.info("program_exited", {service = p.name, pid = pid, exit_code = p.exit_code, signal = signal,
                              runtime_ms = math.floor(runtime)})
  emit(sup, {event = "exited", name = p.name, pid = pid, exit_code = p.exit_code, signal = signal,
             runtime = runtime})
  local done = async.once(function() after_exit(p, runtime) end)
  if p._killed or not group_alive(p.pgid) then return done() end
  p._drain_done = done
  terminate(p)
  local poll = uv.new_timer()
  p._poll_timer = poll
  poll:start(M.GROUP_POLL, M.GROUP_POLL, async.safe(function()
    if not group_alive(p.pgid) then done() end
  end, "group of " .. p.name))
end

-- Forks and execs the program; true, or nil, msg, code.
function launch(p)
  local s, sup = p._spec, p._sup
  local fds, close_parent_ends, ocode = open_output(p)
  if not fds then return nil, close_parent_ends, ocode end
  local ok, pid, err, code = pcall(core.spawn, {
    file = s.file, argv = s.argv, env = s.envlist, cwd = s.cwd, uid = s.ids.uid, gid = s.ids.gid,
    groups = s.ids.groups, fds = s.fds, listen_fds = s.activation, stdout = fds.stdout, stderr = fds.stderr,
    new_session = true, pdeath_signal = s.pdeath_signal,
  })
  close_parent_ends()
  if not ok then -- a bad argument: an fd closed since the start, most likely
    pid, err, code = nil, "EBADF: spawn " .. s.name .. ": " .. tostring(pid), "EBADF"
  end
  if not pid then
    for h in pairs(p._readers) do close_handle(h) end -- their writers are closed: EOF anyway
    p._readers = {}
    return nil, err, code
  end
  p.pid, p.pgid = pid, pid
  p._started_at = sup._clock()
  p._signalled, p._killed, p._timed_out = false, false, false
  local info = M.process_info(pid)
  p._start_ticks = info and info.start_ticks
  sup._by_pid[pid] = p
  sup._sigchld:ref()
  p.exit_code, p.signal = nil, nil
  set_status(p, s.start_timeout and "starting" or "running")
  log.info("program_started", {service = p.name, pid = pid, restarts = p.restarts})
  emit(sup, {event = "started", name = p.name, pid = pid, restarts = p.restarts})
  if s.start_timeout then
    after_timer(p, "_start_timer", s.start_timeout, function()
      if p.status ~= "starting" or not p.pid then return end
      p._timed_out = true
      log.warn("program_start_timeout", {service = p.name, pid = p.pid, timeout_ms = s.start_timeout})
      emit(sup, {event = "start_timeout", name = p.name, pid = p.pid})
      terminate(p)
    end, "start timeout")
  end
  return true
end

-- --- the supervisor -------------------------------------------------------

local function reap_all(self)
  local pids = {}
  for pid in pairs(self._by_pid) do pids[#pids + 1] = pid end
  table.sort(pids)
  for _, pid in ipairs(pids) do
    local p = self._by_pid[pid]
    local code, signal, ecode = core.reap(pid)
    if code ~= nil then
      on_exit(p, code, signal or nil)
    elseif signal then -- reaped by someone else (ECHILD): its status is lost
      log.warn("program_lost", {service = p.name, pid = pid, error = signal, code = ecode})
      on_exit(p, nil, nil)
    end
  end
end

--- Creates a supervisor.
-- @tparam[opt] table opts `on_event` (a function called with each event),
--   `clock` (a function giving ms: event times, how long a program ran;
--   default monotonic), `backoff` ({initial, max, reset} in ms, defaults
--   from M.BACKOFF)
-- @raise on a bad option
function M.new(opts)
  opts = opts or {}
  check.table("new", 1, opts)
  check.known("new", 1, opts, NEW_KEYS)
  check.optional("new", 1, opts, "clock", "function")
  check.optional("new", 1, opts, "on_event", "function")
  local b = {}
  if opts.backoff ~= nil then
    check.table("new", 1, opts.backoff)
    check.known("new", 1, opts.backoff, {initial = true, max = true, reset = true}, "backoff.")
  end
  for k, v in pairs(M.BACKOFF) do
    b[k] = ms_option("new", opts.backoff or {}, k, v)
  end
  if b.initial < 1 then check.argerror("new", 1, "backoff.initial: at least 1 ms expected") end
  local self = setmetatable({_programs = {}, _by_pid = {}, _clock = opts.clock or precise_ms, _backoff = b},
    sup_mt)
  if opts.on_event then self:on(opts.on_event) end
  local sig = uv.new_signal()
  sig:start("sigchld", async.safe(function() reap_all(self) end, "SIGCHLD"))
  sig:unref() -- only a running program keeps the loop alive
  self._sigchld = sig
  -- a program may have ended before the handle was there
  return self
end

--- Adds a listener for events; returns a function that removes it
-- (portman.events).
-- @function Supervisor:on
events.mixin(Supervisor)

local function live(p)
  return p.pid ~= nil or p._restart_timer ~= nil or p._drain_done ~= nil
end

--- Starts a program.
-- @tparam table opts `name`; `argv` ({program, args...}: the program is
--   looked up in PATH when it has no '/'; `file` overrides it); `env`
--   ({K = V}, added to portman's environment, false removes one);
--   `cwd`; `user`, `group` (names or ids: as root, the program runs with
--   them, the user's groups, and USER, LOGNAME and HOME set); `fds` (fds
--   or listeners, at 3, 4, ... in the program); `activation` (sets
--   LISTEN_FDS and LISTEN_PID), `fdnames` (LISTEN_FDNAMES, one per fd);
--   `restart` ("no", "on-failure" (default), "always"); `stop_signal`
--   ("SIGTERM"), `stop_timeout` (ms before SIGKILL, 10000);
--   `start_timeout` (ms: the program is "starting" until p:ready(), and
--   stopped as failed when that does not come in time); `output` ("log"
--   (default): each line of stdout and stderr becomes a program_output
--   log event; a path: appended to that file; false: /dev/null);
--   `pdeath_signal` (what the program gets when portman dies: the stop
--   signal by default; false for none)
-- @return[1] the program
-- @return[2] nil, msg, code: "conflict" (a program of that name runs),
--   "not_found" (exec: no such program, no such user), "denied", ...
-- @raise on a bad option
function Supervisor:start(opts)
  if getmetatable(self) ~= sup_mt then error("bad self to 'start' (portman.supervisor expected)", 2) end
  if self._closed then error("attempt to use a closed supervisor", 2) end
  local s = check_start(opts)
  local old = self._programs[s.name]
  if old and live(old) then return errors.fail("conflict", "program %s is running", s.name) end
  local ids, err, code = resolve_ids(s)
  if not ids then return nil, err, code end
  s.ids, s.envlist = ids, build_env(s, ids)
  local p = setmetatable({name = s.name, _spec = s, _sup = self, status = "starting", since = os.time(),
                          restarts = 0, _failures = 0, _stop_cbs = {}, _readers = {}}, prog_mt)
  local ok
  ok, err, code = launch(p)
  if not ok then return nil, err, code end
  self._programs[s.name] = p
  return p
end

--- The program of that name, or nil.
function Supervisor:get(name) return self._programs[name] end

--- Forgets a program that is down (stopped or failed, no restart
-- pending): it leaves list(). Returns true, or false while it is live.
function Supervisor:remove(name)
  local p = self._programs[name]
  if not p then return true end
  if live(p) then return false end
  self._programs[name] = nil
  return true
end

--- Every program's info, by name.
function Supervisor:list()
  local out = {}
  for _, p in pairs(self._programs) do out[#out + 1] = p:info() end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

--- Stops every program (as p:stop, all at once); cb(true) once all are down.
Supervisor.stop_all = async.adapt(function(self, cb)
  local left = 1
  local function one()
    left = left - 1
    if left == 0 then cb(true) end
  end
  for _, p in pairs(self._programs) do
    left = left + 1
    p:stop(one)
  end
  one()
end)

--- Ends the supervisor: SIGKILL to the group of any program still
-- running (stop_all first for a clean stop), its handles closed, and the
-- callbacks of stops under way called.
function Supervisor:close()
  if self._closed then return end
  self._closed = true
  for _, p in pairs(self._programs) do
    if p.pid then
      signal_group(p, "SIGKILL")
      -- reaped at once: nothing is left to do it later
      for _ = 1, 100 do
        if core.reap(p.pid) ~= nil then break end
        uv.sleep(1)
      end
      self._by_pid[p.pid], p.pid = nil, nil
      set_status(p, "stopped")
    end
    for _, key in ipairs{"_kill_timer", "_poll_timer", "_start_timer", "_restart_timer"} do stop_timer(p, key) end
    p._drain_done, p._stopping = nil, false
    for h in pairs(p._readers) do close_handle(h) end
    p._readers = {}
    finish_stop_callbacks(p) -- a stop under way ends here
  end
  close_handle(self._sigchld)
end

-- --- a program ------------------------------------------------------------

--- {name, pid, pgid, status, exit_code, signal, restarts, since}: pid
-- while it runs; exit_code or signal (a name) of its last exit; restarts
-- so far; since: when the status began (os.time()).
function Program:info()
  return {name = self.name, pid = self.pid, pgid = self.pid and self.pgid, status = self.status,
          exit_code = self.exit_code, signal = self.signal, restarts = self.restarts, since = self.since}
end

--- Marks a "starting" program as running (its port answers, say): the
-- start_timeout no longer applies.
function Program:ready()
  if self.status ~= "starting" or not self.pid then return false end
  stop_timer(self, "_start_timer")
  set_status(self, "running")
  emit(self._sup, {event = "running", name = self.name, pid = self.pid})
  return true
end

--- Stops the program: stop_signal to its process group, SIGKILL after
-- stop_timeout; a pending restart is cancelled. cb(info) once the group
-- is gone (at once when the program is down already).
Program.stop = async.adapt(function(self, cb)
  if self._restart_timer then
    stop_timer(self, "_restart_timer")
    set_status(self, "stopped")
    log.info("program_stopped", {service = self.name, exit_code = self.exit_code, signal = self.signal})
    emit(self._sup, {event = "stopped", name = self.name, status = "stopped", exit_code = self.exit_code,
                     signal = self.signal})
    return cb(self:info())
  end
  if not live(self) then return cb(self:info()) end
  self._stop_cbs[#self._stop_cbs + 1] = cb
  if self._stopping then return end
  self._stopping = true
  stop_timer(self, "_start_timer")
  terminate(self)
end)

--- What to save so that a later portman can end this program if portman
-- dies first (supervisor.reap_orphans): {name, pid, pgid,
-- started_at_boot_ticks, boot_id}, or nil when it is not running.
function Program:record()
  if not self.pid or not self._start_ticks then return nil end
  return {name = self.name, pid = self.pid, pgid = self.pgid, started_at_boot_ticks = self._start_ticks,
          boot_id = boot_id()}
end

-- --- orphans --------------------------------------------------------------

--- Ends the programs a portman that died (kill -9) left running, from
-- what their p:record() said: a process whose /proc/PID/stat start time
-- (and boot) still match gets `signal` to its process group, and SIGKILL
-- after `timeout` ms; a pid that is gone or now another process's is left
-- alone. cb(report): {{name, pid, result}}, result "gone" (no such
-- process, or another boot), "reused" (another process has the pid),
-- "stopped" (ended after the signal), "killed" (SIGKILL).
-- @tparam table list records
-- @tparam[opt] table opts `timeout` (ms, 5000), `signal` ("SIGTERM")
M.reap_orphans = async.adapt(function(list, opts, cb)
  if cb == nil and type(opts) == "function" then opts, cb = nil, opts end
  check.table("reap_orphans", 1, list)
  opts = opts or {}
  check.table("reap_orphans", 2, opts)
  check.known("reap_orphans", 2, opts, {timeout = true, signal = true})
  local timeout = ms_option("reap_orphans", opts, "timeout", 5000)
  local sig = check.oneof("reap_orphans", 2, opts.signal or "SIGTERM", SIGNALS, "signal")
  local report, pending, boot = {}, {}, boot_id()
  for i, rec in ipairs(list) do
    if type(rec) ~= "table" then check.argerror("reap_orphans", 1, ("[%d]: table expected"):format(i)) end
    local pid, ticks = math.tointeger(rec.pid), math.tointeger(rec.started_at_boot_ticks)
    local pgid = rec.pgid == nil and pid or math.tointeger(rec.pgid)
    if not pid or pid <= 1 or not ticks or not pgid or pgid <= 1 then
      check.argerror("reap_orphans", 1, ("[%d]: {pid, pgid, started_at_boot_ticks} expected"):format(i))
    end
    local entry = {name = rec.name, pid = pid}
    report[#report + 1] = entry
    local info = M.process_info(pid)
    if not info or (rec.boot_id and boot and rec.boot_id ~= boot) then
      entry.result = "gone"
    elseif info.start_ticks ~= ticks then
      entry.result = "reused"
    else
      -- ours: its group, when it still leads it, else the process alone
      entry.target = (info.pgid == pgid) and -pgid or pid
      log.warn("orphan_stopping", {service = rec.name, pid = pid, pgid = pgid, signal = sig})
      core.kill(entry.target, sig)
      pending[#pending + 1] = entry
    end
  end
  local function alive(e)
    if e.target < 0 then return group_alive(-e.target) end
    local info = M.process_info(e.pid)
    return info ~= nil and info.state ~= "Z"
  end
  local function finish()
    for _, e in ipairs(report) do e.target = nil end
    cb(report)
  end
  if #pending == 0 then return finish() end
  local poll, waited = uv.new_timer(), 0
  poll:start(M.GROUP_POLL, M.GROUP_POLL, async.safe(function()
    waited = waited + M.GROUP_POLL
    local left = {}
    for _, e in ipairs(pending) do
      if alive(e) then left[#left + 1] = e else e.result = "stopped" end
    end
    pending = left
    if #pending > 0 and waited < timeout then return end
    for _, e in ipairs(pending) do
      log.warn("orphan_killed", {service = e.name, pid = e.pid})
      core.kill(e.target, "SIGKILL")
      e.result = "killed"
    end
    close_handle(poll)
    finish()
  end, "reap_orphans"))
end)

M.Supervisor, M.Program = Supervisor, Program
return M
