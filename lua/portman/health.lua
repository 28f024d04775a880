--- Health checks on a schedule, and an exhaustion monitor for pools.
-- A check has a kind: "tcp" (connect), "udp" (send a datagram, wait for a
-- reply or an ICMP error), "bind" (can the port still be bound), "lua"
-- (a function) or "postgres" (PostgreSQL's SSLRequest, answered S or N).
-- Each result is a success or a failure with a status word; the check's
-- status moves to "healthy" after `rise` successes in a row and to the
-- failure's status after `fall` failures in a row (HAProxy's rise/fall),
-- so a flapping target does not flap the status. A postgres check's
-- messages start with their code word: refused, closed, protocol,
-- timeout, ...
-- Statuses: healthy, in_use, bind_error, unreachable, denied, unknown. A
-- failure's status comes from its code word (portman.errors): denied is
-- "denied" for every kind; a bind check's conflict (EADDRINUSE) is
-- "in_use" and its other failures "bind_error"; any other failure of a tcp,
-- udp or postgres check (refused, a timeout, a name that does not resolve,
-- a server that closes or answers out of protocol) is "unreachable".
-- A run that fails for want of portman's own resources (EMFILE, ENFILE,
-- ENOBUFS, ENOMEM: no fd or buffer left in this process or host) says
-- nothing about the target: it is not a result, the status stays, and the
-- scheduler emits a `local_error` event instead; the next run is due as
-- usual.
--
-- A check's host may be a name: it is resolved through portman.resolver's
-- default resolver (its cache and TTLs) before each run.
--
-- Due times and the history's timestamps go by the scheduler's clock
-- (`clock`, a function giving ms; by default a monotonic clock with
-- sub-millisecond precision); the checks themselves fire on luv timers.
local uv = require "luv"
local check = require "portman.check"
local async = require "portman.async"
local events = require "portman.events"
local errors = require "portman.errors"
local resolver = require "portman.resolver"
local names = require "portman.resolver.names"
local core = require "portman.core"

local M = {}
local mt = {__index = M}

M.HISTORY = 100
local KINDS = {"tcp", "udp", "bind", "lua", "postgres"}
local CHECK_KEYS = {name = true, kind = true, host = true, port = true, proto = true, fn = true, service = true,
                    payload = true, expect_reply = true, interval = true, unhealthy_interval = true,
                    timeout = true, rise = true, fall = true, initial_delay = true, jitter = true}
local NEW_KEYS = {concurrency = true, on_event = true, clock = true}

local function precise_ms() return uv.hrtime() / 1e6 end

--- Creates a scheduler.
-- @tparam[opt] table opts `concurrency` (checks running at once, 256 by
--   default), `on_event` (a function called with each event table),
--   `clock` (a function giving ms: due times and history timestamps;
--   default monotonic, sub-millisecond)
function M.new(opts)
  opts = opts or {}
  check.table("new", 1, opts)
  check.known("new", 1, opts, NEW_KEYS)
  check.optional("new", 1, opts, "clock", "function")
  local self = setmetatable({_checks = {}, _pools = {}, _queue = {}, _qhead = 1, _qtail = 0, _running = 0,
    _concurrency = opts.concurrency or 256, _started = false, _clock = opts.clock or precise_ms}, mt)
  if opts.on_event then self:on(opts.on_event) end
  return self
end

--- Adds a listener for events: {event = "status", check, from, to, msg}
-- and {event = "exhaustion", pool, level, utilization}; returns a function
-- that removes it (portman.events).
-- @function on
events.mixin(M)

local function positive(fname, opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= "number" or v < 0 then check.argerror(fname, 1, key .. ": non-negative number expected") end
  return v
end

-- A check's history is a ring in C (core.history_new: success, end time,
-- duration and lag of the last HISTORY results, 17 bytes each) written in
-- place: nothing to allocate a run. The status word of a failure and a
-- result's message live beside it in c.notes, a Lua array made at the
-- first result that has one: notes[2 * slot - 1] the status word,
-- notes[2 * slot] the message, false for none (an array made whole by a
-- constructor: 16 bytes a value, where keys set one by one would land in
-- the hash part at twice that). A check that always passes has no notes.
local notes_makers = {}
local function new_notes(size)
  local make = notes_makers[size]
  if not make then
    make = assert(load("return {" .. ("false,"):rep(2 * size) .. "}"))
    notes_makers[size] = make
  end
  return make()
end

-- host's address if it is a literal one (nothing to resolve), else nil.
local function literal(host)
  if names.query_name(host) ~= false then return nil end
  local _, ip = core.dns_parse_ip(host)
  return ip
end

local function check_spec(opts)
  check.table("add", 1, opts)
  check.known("add", 1, opts, CHECK_KEYS)
  if type(opts.name) ~= "string" then check.argerror("add", 1, "name: string expected") end
  local kind = check.oneof("add", 1, opts.kind, KINDS, "kind")
  if kind == "lua" then
    if type(opts.fn) ~= "function" then check.argerror("add", 1, "fn: function expected") end
  else
    check.port("add", 1, opts.port, "port")
  end
  if opts.host ~= nil and type(opts.host) ~= "string" then
    check.argerror("add", 1, "host: string expected, got " .. type(opts.host))
  end
  local interval = positive("add", opts, "interval", 5000)
  return {
    name = opts.name, kind = kind, host = opts.host or "127.0.0.1", port = opts.port,
    proto = check.oneof("add", 1, opts.proto or "tcp", {"tcp", "udp"}, "proto"),
    fn = opts.fn, service = opts.service, payload = opts.payload or "\0", expect_reply = opts.expect_reply ~= false,
    interval = interval,
    unhealthy_interval = positive("add", opts, "unhealthy_interval", interval),
    timeout = positive("add", opts, "timeout", 1000),
    rise = math.max(1, positive("add", opts, "rise", 2)),
    fall = math.max(1, positive("add", opts, "fall", 3)),
    initial_delay = positive("add", opts, "initial_delay", 0),
    jitter = positive("add", opts, "jitter", interval * 0.1),
    status = "unknown", successes = 0, failures = 0, runs = 0,
  }
end

--- Checks check options as add would, running nothing.
-- @return[1] true
-- @return[2] nil, what is wrong
function M.validate(opts)
  local ok, err = pcall(check_spec, opts)
  if ok then return true end
  return nil, check.reason(err)
end

-- The scheduler's internals: locals, not methods (nothing outside calls them).
--
-- What a run costs is what the connect costs: each check keeps, from add
-- to remove, its schedule timer and that timer's callback, its timeout
-- timer and callback, and `finished`, the function its runs report to; its
-- history is a ring written in place. A run makes only its socket and the
-- socket's callback (a name to resolve, a udp, postgres or lua check, a
-- few more). The per-run state lives in the check: `done`
-- (whom the running probe reports to; nil when none runs), `handle` (its
-- socket) and `runs` (a counter: a late callback of an earlier run sees a
-- newer count, or another handle, and does nothing).
local arm, enqueue, run, finished

--- Adds a check (started at once if the scheduler runs).
-- @tparam table opts `name`, `kind`, `host` (an address or a name,
--   "127.0.0.1"), `port`, `proto`
--   (bind checks: "tcp" or "udp"), `fn` (lua checks: `fn(done, service)`,
--   calling `done(true)` or `done(false, status, msg)` once, now or later;
--   service is opts.service, the manager's {name, address, port, proto}),
--   `service`, `payload`, `expect_reply`
--   (udp: false counts silence as success), `interval` (ms, 5000),
--   `unhealthy_interval` (ms, the interval), `timeout` (ms, 1000), `rise` (2),
--   `fall` (3), `initial_delay` (ms, 0), `jitter` (ms, a tenth of the interval)
-- @raise on a bad option, or a name already in use
function M:add(opts)
  local c = check_spec(opts)
  if self._checks[c.name] then check.argerror("add", 1, "name: check '" .. c.name .. "' exists") end
  self._checks[c.name] = c
  c.hist, c.ip = core.history_new(M.HISTORY), literal(c.host)
  c.fire = async.safe(function() enqueue(self, c) end, "health timer")
  c.finished = function(ok, status, msg) finished(self, c, ok, status, msg) end
  if self._started then arm(self, c, c.initial_delay + math.random() * c.jitter) end
  return c.name
end

local function disarm(c)
  c.due = nil
  if c.timer then
    c.timer:close()
    c.timer = nil
  end
  if c.ttimer and not c.done then -- a running probe still needs its timeout
    c.ttimer:close()
    c.ttimer = nil
  end
end

--- Removes a check; true if it existed.
function M:remove(name)
  local c = self._checks[name]
  if not c then return false end
  disarm(c)
  c.removed = true
  self._checks[name] = nil
  return true
end

--- Starts a check over: its status is "unknown" and its counters zero
-- until new results come (the program it checks was restarted, say); its
-- history stays. Emits a status event when the status changes.
function M:reset(name)
  local c = self._checks[name]
  if not c then return false end
  c.successes, c.failures = 0, 0
  if c.status ~= "unknown" then
    local old = c.status
    c.status = "unknown"
    events.emit(self, {event = "status", check = c.name, from = old, to = "unknown", msg = "restarted"})
  end
  return true
end

function arm(self, c, delay)
  c.timer = c.timer or uv.new_timer()
  -- at least 1 ms: libuv 1.44 runs a 0 ms timer restarted from a timer
  -- callback again in the same pass, forever
  delay = math.max(1, math.floor(delay))
  c.due = self._clock() + delay
  c.timer:start(delay, 0, c.fire)
end

-- The queue of checks waiting for a slot: a list read from _qhead on.
function enqueue(self, c)
  -- still running (stopped and started again meanwhile): its end arms it
  if c.done then return end
  if self._running < self._concurrency then return run(self, c) end
  self._qtail = self._qtail + 1
  self._queue[self._qtail] = c
end

local function dequeue(self)
  while self._qhead <= self._qtail do
    local c = self._queue[self._qhead]
    self._queue[self._qhead] = nil
    self._qhead = self._qhead + 1
    if not c.removed then return c end
  end
  self._qhead, self._qtail = 1, 0
  return nil
end

local function record(self, c, ok, status, msg, started, due)
  local t = self._clock()
  -- lag: libuv fires timers on its cached millisecond clock, up to 1 ms
  -- before the precise due time; that counts as on time
  local slot = c.hist:push(ok, t, t - started, due and math.max(0, started - due) or 0)
  local word = not ok and status or nil
  if c.notes or word or msg ~= nil then
    local size = c.hist:size()
    local notes = c.notes or new_notes(size)
    c.notes = notes
    -- a failing check says the same thing each run: the message of the
    -- run before is kept in its stead (a long string is a new object each
    -- time, and 100 copies were 9 KB a check)
    local before = notes[2 * ((slot - 2) % size) + 2]
    if msg == before then msg = before end
    notes[2 * slot - 1], notes[2 * slot] = word or false, msg == nil and false or msg
  end
  c.last_at = t
  if self._observer then self._observer(c.name, ok, status, t - started) end
  if ok then
    c.successes, c.failures = c.successes + 1, 0
  else
    c.failures, c.successes = c.failures + 1, 0
  end
  local new = c.status
  if ok and c.successes >= c.rise then new = "healthy" end
  if not ok and c.failures >= c.fall then new = status end
  if new ~= c.status then
    local old = c.status
    c.status = new
    events.emit(self, {event = "status", check = c.name, from = old, to = new, msg = msg})
  end
end

-- The end of a run (c.finished): records it, arms the next, and gives the
-- slot to the next check waiting.
function finished(self, c, ok, status, msg)
  self._running = self._running - 1
  if not c.removed and status == "local" then
    c.local_errors, c.local_streak = (c.local_errors or 0) + 1, (c.local_streak or 0) + 1
    if c.local_streak == 1 then -- once a streak: a shortage would flood the log
      events.emit(self, {event = "local_error", level = "error", check = c.name, msg = msg})
    end
    if self._started then arm(self, c, c.interval) end
  elseif not c.removed then
    c.local_streak = 0
    record(self, c, ok, status, msg, c.started, c.run_due)
    if self._started then
      arm(self, c, c.status == "healthy" and c.interval or c.unhealthy_interval)
    end
  end
  if not c.timer and c.ttimer then -- removed or stopped: nothing will run it again
    c.ttimer:close()
    c.ttimer = nil
  end
  local nxt = dequeue(self)
  if nxt then run(self, nxt) end
end

-- Ends c's running probe, once: stops its timeout, closes its socket and
-- reports (ok, status, msg) to c.done.
local function settle(c, ok, status, msg)
  local done = c.done
  if not done then return end
  c.done = nil
  if c.ttimer then c.ttimer:stop() end
  local h = c.handle
  if h then
    c.handle = nil
    if not h:is_closing() then h:close() end
  end
  done(ok, status, msg)
end

local PROBES

function run(self, c)
  self._running = self._running + 1
  c.started, c.run_due, c.due = self._clock(), c.due, nil
  c.runs, c.done = c.runs + 1, c.finished
  local ok, err = pcall(PROBES[c.kind], c)
  -- a probe that raised before finishing still gives back its slot
  if not ok then settle(c, false, "unknown", tostring(err)) end
end

--- Sets fn(name, ok, status, ms) to be called with each check result
-- (one observer: the daemon's metrics, portman.metrics); nil removes it.
-- Not an event: a result is too frequent to log or keep.
function M:observe(fn)
  self._observer = fn
end

--- Starts every check: the first runs after its initial delay plus a random
-- part of its jitter, so that many checks do not fire together. Idempotent.
function M:start()
  if self._started then return end
  self._started = true
  uv.update_time() -- started from outside the loop, its clock may be stale
  for _, c in pairs(self._checks) do arm(self, c, c.initial_delay + math.random() * c.jitter) end
  for _, p in pairs(self._pools) do p.timer:start(0, p.interval, p.tick) end
end

--- Stops every check and monitor (running probes finish). Idempotent.
function M:stop()
  if not self._started then return end
  self._started = false
  for _, c in pairs(self._checks) do disarm(c) end
  for _, p in pairs(self._pools) do p.timer:stop() end
  self._queue, self._qhead, self._qtail = {}, 1, 0
end

--- Stops and frees every handle.
function M:close()
  self:stop()
  for _, p in pairs(self._pools) do p.timer:close() end
  self._pools = {}
end

-- The k-th oldest result of c's history as a table.
local function result(c, k)
  local slot, ok, at, ms, lag = c.hist:get(k)
  local notes = c.notes
  local status = ok and "healthy" or notes and notes[2 * slot - 1] or nil
  return {ok = ok, status = status, msg = notes and notes[2 * slot] or nil, at = at, ms = ms, lag = lag}
end

--- {status, successes, failures, last, last_ago_ms, due} of a check, or
-- nil; `last` is its last result and `last_ago_ms` how long ago that was;
-- `due` is when its next run is due by the scheduler's clock (nil while it
-- runs, or while the scheduler is stopped).
function M:status(name)
  local c = self._checks[name]
  if not c then return nil end
  local n = c.hist:count()
  local last = n > 0 and result(c, n) or nil
  return {status = c.status, successes = c.successes, failures = c.failures, last = last,
          last_ago_ms = last and self._clock() - last.at or nil, due = c.due, local_errors = c.local_errors or 0}
end

--- A check's status word and how long ago (ms) its last result came
-- (nil before the first), or nil when there is no such check: what
-- status() says, without making its tables (a status document reads this
-- for each of 10,000 services).
function M:peek(name)
  local c = self._checks[name]
  if not c then return nil end
  if not c.last_at then return c.status end
  -- c.last_at, not the ring: one table read a check
  return c.status, self._clock() - c.last_at
end

--- The last results of a check (at most health.HISTORY), oldest first:
-- {ok, status, msg, at, ms, lag} each (`at`: when it ended by the
-- scheduler's clock; `ms`: how long it took; `lag`: how late it started).
function M:history(name)
  local c = self._checks[name]
  if not c then return nil end
  local out = {}
  for k = 1, c.hist:count() do out[k] = result(c, k) end
  return out
end

--- Names of the checks.
function M:names()
  local out = {}
  for name in pairs(self._checks) do out[#out + 1] = name end
  table.sort(out)
  return out
end

-- ---- the probes: each ends its run with settle(c, ok, status, msg) once ----

-- portman's own shortage, not the target's failure (see the top).
local LOCAL = {EMFILE = true, ENFILE = true, ENOBUFS = true, ENOMEM = true}

-- A failure's status, from its code word (portman.errors); "local" for
-- portman's own shortage.
local function status_of(code, kind)
  if LOCAL[code] then return "local" end
  if code == "denied" then return "denied" end
  if kind == "bind" then return code == "conflict" and "in_use" or "bind_error" end
  return "unreachable"
end

-- At c.timeout, the run ends with the timeout's verdict: udp with
-- expect_reply = false takes silence as success; anything else is
-- unreachable.
local function expire(c)
  if c.kind == "udp" and not c.expect_reply then return settle(c, true) end
  settle(c, false, "unreachable", ("timeout: %s check '%s' after %d ms"):format(c.kind, c.name, c.timeout))
end

-- Starts the run's race against c.timeout, on the check's own timer.
local function start_timeout(c)
  if not c.ttimer then
    c.ttimer = uv.new_timer()
    c.expire = c.expire or async.safe(function() expire(c) end, "timeout of health check")
  end
  uv.update_time() -- a stale clock after blocking work fires timers at once
  c.ttimer:start(c.timeout, 0, c.expire)
end

-- Calls on_ip(c, ip) with c.host's address (a literal's at once; a name
-- through the default resolver), or settles with the lookup's failure.
local function with_address(c, on_ip)
  if c.ip then return on_ip(c, c.ip) end
  local n = c.runs
  resolver.lookup(c.host, nil, function(ip, msg, code)
    if c.runs ~= n or not c.done then return end -- that run is over (a timeout)
    if not ip then return settle(c, false, status_of(code, c.kind), msg) end
    on_ip(c, ip)
  end)
end

local function connect_tcp(c, ip)
  local tcp = uv.new_tcp()
  c.handle = tcp
  local ok, ret, err = pcall(tcp.connect, tcp, ip, c.port, function(cerr)
    if c.handle ~= tcp then return end -- closed at its timeout
    if cerr then
      settle(c, false, status_of(errors.code(cerr), "tcp"), cerr)
    else
      settle(c, true)
    end
  end)
  if not ok then return settle(c, false, "unknown", tostring(ret)) end
  if not ret then settle(c, false, status_of(errors.code(err), "tcp"), err) end
end

local function probe_tcp(c)
  start_timeout(c)
  with_address(c, connect_tcp)
end

local function send_udp(c, ip)
  local udp = uv.new_udp()
  c.handle = udp
  local function fail(err)
    if c.handle == udp then settle(c, false, status_of(errors.code(err), "udp"), err) end
  end
  local ok, err = udp:connect(ip, c.port)
  if not ok then return fail(err) end
  udp:recv_start(function(rerr, data)
    if rerr then
      fail(rerr)
    elseif data and c.handle == udp then
      settle(c, true)
    end
  end)
  udp:send(c.payload, nil, nil, function(serr) -- connected: no address
    if serr then fail(serr) end
  end)
end

local function probe_udp(c)
  start_timeout(c)
  with_address(c, send_udp)
end

local function try_bind(c, ip)
  local h = c.proto == "udp" and uv.new_udp() or uv.new_tcp()
  local ok, err = h:bind(ip, c.port)
  if ok and c.proto == "tcp" then
    ok, err = h:listen(1, function() end) -- libuv reports EADDRINUSE at listen
  end
  h:close()
  if ok then return settle(c, true) end
  settle(c, false, status_of(errors.code(err), "bind"), err)
end

local function probe_bind(c)
  with_address(c, try_bind)
end

local function probe_lua(c)
  local n = c.runs
  local function finish(...) -- counts once, and never for a later run
    if c.runs == n then settle(c, ...) end
  end
  local ok, err = xpcall(c.fn, debug.traceback, function(success, status, msg)
    if success then finish(true) else finish(false, status or "unknown", msg) end
  end, c.service)
  if not ok then finish(false, "unknown", err) end
end

-- PostgreSQL's SSLRequest: length 8, code 80877103 (1234 << 16 | 5679).
-- A server answers it with one byte, 'S' (go on with TLS) or 'N' (not),
-- before any authentication: a check that needs no credentials, and that
-- the server does not log when the client then closes.
local SSL_REQUEST = string.pack(">I4I4", 8, 80877103)

local function ask_postgres(c, ip)
  local tcp = uv.new_tcp()
  c.handle = tcp
  local where = (ip:find(":", 1, true) and "[%s]:%d" or "%s:%d"):format(ip, c.port)
  local function finish(...)
    if c.handle == tcp then settle(c, ...) end
  end
  local function fail(err, what)
    local _, msg, code = errors.from(err, what .. " " .. where)
    finish(false, status_of(code, "postgres"), msg)
  end
  local ok, ret, err = pcall(tcp.connect, tcp, ip, c.port, function(cerr)
    if cerr then return fail(cerr, "connect") end
    tcp:read_start(function(rerr, data)
      if rerr then return fail(rerr, "read") end
      if not data then
        return finish(false, "unreachable", "closed: " .. where .. " closed without answering the SSLRequest")
      end
      local answer = data:sub(1, 1)
      if answer == "S" or answer == "N" then return finish(true) end
      local shown = data:sub(1, 16):gsub("[^%g ]", function(ch) return ("\\x%02x"):format(ch:byte()) end)
      finish(false, "unreachable", ("protocol: %s answered the SSLRequest with '%s', not S or N")
        :format(where, shown))
    end)
    tcp:write(SSL_REQUEST, function(werr) if werr then fail(werr, "write") end end)
  end)
  if not ok then return finish(false, "unknown", tostring(ret)) end
  if not ret then fail(err, "connect") end
end

local function probe_postgres(c)
  start_timeout(c)
  with_address(c, ask_postgres)
end

PROBES = {tcp = probe_tcp, udp = probe_udp, bind = probe_bind, lua = probe_lua, postgres = probe_postgres}

--- Runs one check once, outside the schedule: done(ok, status, msg).
-- Exposed for the manager; c is a check as add keeps it.
function M.probe(c, done)
  c.runs = c.runs + 1
  c.done = function(...)
    if c.ttimer and not c.timer then -- no schedule owns the timer
      c.ttimer:close()
      c.ttimer = nil
    end
    done(...)
  end
  PROBES[c.kind](c)
end

-- ---- exhaustion monitor ----

local function check_pool(self, name, p)
  local u = p.pool:utilization()
  local level = u >= p.critical and "critical" or u >= p.warning and "warning" or "ok"
  if level ~= p.level then
    p.level = level
    events.emit(self, {event = "exhaustion", pool = name, level = level, utilization = u})
  end
end

--- Watches a pool's utilization every `interval` ms and emits
-- {event = "exhaustion", pool, level, utilization} when it crosses
-- `warning` or `critical` (percent; 80 and 95 by default), and level "ok"
-- when it falls back below warning.
function M:watch_pool(name, pool, opts)
  opts = opts or {}
  check.table("watch_pool", 3, opts)
  check.known("watch_pool", 3, opts, {warning = true, critical = true, interval = true})
  local p = {pool = pool, warning = opts.warning or 80, critical = opts.critical or 95,
             interval = opts.interval or 1000, level = "ok", timer = uv.new_timer()}
  if p.warning > p.critical then check.argerror("watch_pool", 3, "warning above critical") end
  p.tick = async.safe(function() check_pool(self, name, p) end, "pool monitor")
  if self._pools[name] then self._pools[name].timer:close() end
  self._pools[name] = p
  if self._started then p.timer:start(0, p.interval, p.tick) end
end

--- Stops watching a pool.
function M:unwatch_pool(name)
  local p = self._pools[name]
  if p then
    p.timer:close()
    self._pools[name] = nil
  end
end

return M
