--- Port probes: which ports of a host answer, and a fallback port selector.
--
-- The probes run in C (portman.core's probe engine: one epoll fd, results in
-- batches); portman.engine drives it on the luv loop (docs/design.md, "The
-- engine contract"), and this file resolves the host name first and
-- gathers the batches into one result. States are nmap's: open, closed,
-- filtered (no answer before the timeout), unreachable (ICMP host, net or
-- admin unreachable), error (anything else; its errno name is kept), and
-- for UDP open|filtered (no answer at all).
--
-- TCP probes have two methods: "connect" (a non-blocking connect() per
-- port, the default) and "syn" (nmap -sS: crafted SYNs from one raw socket,
-- core.syn_new, which needs CAP_NET_RAW and IPv4; an IPv6 target is probed
-- with connects). "auto" takes syn where it can and connect elsewhere.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local engine = require "portman.engine"
local log = require "portman.log"
local resolver = require "portman.resolver"

local M = {}

M.FRIENDLY_PORTS = {443, 80, 8080, 8443}
M.STATES = {"open", "closed", "filtered", "unreachable", "error", "open|filtered"}
local BATCH = 4096
local DEFAULT_TIMEOUT = 1000
M.DEFAULT_RETRIES = 6 -- the C engine's PM_PROBE_DEFAULT_RETRIES
local MAX_RETRIES = 50
local PROBE_OPTIONS = {timeout = true, concurrency = true, proto = true, payload = true,
                       on_batch = true, family = true, retries = true, method = true}
M.METHODS = {"connect", "syn", "auto"}

-- Ports ---------------------------------------------------------------------

-- One port of a PORTS text, or nil and why.
local function port_number(text, spec)
  local p = text:match("^%d+$") and math.tointeger(tonumber(text))
  if not p or p < 1 or p > 65535 then
    return nil, ("'%s' in '%s' is not a port in 1-65535"):format(text, spec)
  end
  return p
end

-- Adds the ports of one item of a PORTS text ("80" or "8000-8100").
local function add_item(item, spec, add)
  local a, b = item:match("^%s*([^-]*)-([^-]*)%s*$")
  if not a then
    local p, err = port_number(item:match("^%s*(.-)%s*$"), spec)
    if not p then return nil, err end
    add(p)
    return true
  end
  local lo, err = port_number(a, spec)
  local hi, err2 = port_number(b, spec)
  if not (lo and hi) then return nil, err or err2 end
  if lo > hi then return nil, ("range '%s' runs backwards"):format(item) end
  for p = lo, hi do add(p) end
  return true
end

--- Reads a port list, "1-65535" or "22,80,8000-8100", as the command line
-- gives it.
-- @return[1] the ports sorted, each once
-- @return[2] nil, and what is wrong with spec
function M.ports(spec)
  local seen, ports = {}, {}
  local function add(p)
    if not seen[p] then
      seen[p] = true
      ports[#ports + 1] = p
    end
  end
  for item in (spec .. ","):gmatch("([^,]*),") do
    local ok, err = add_item(item, spec, add)
    if not ok then return nil, err end
  end
  if #ports == 0 then return nil, "empty list" end
  table.sort(ports)
  return ports
end

--- Parses a port list: a string like "1-65535" or "22,80,8000-8100", or a
-- table of port numbers. Returns the ports sorted, each once.
-- @raise on anything else, naming argument n of fname
function M.parse_ports(spec, fname, n)
  fname, n = fname or "parse_ports", n or 1
  if type(spec) == "string" then
    local ports, err = M.ports(spec)
    if not ports then check.argerror(fname, n, "ports: " .. err) end
    return ports
  end
  if type(spec) ~= "table" then
    check.argerror(fname, n, "ports: string or table expected, got " .. type(spec))
  end
  local seen, ports = {}, {}
  for i, v in ipairs(spec) do
    local p = check.port(fname, n, v, ("ports[%d]"):format(i))
    if not seen[p] then
      seen[p] = true
      ports[#ports + 1] = p
    end
  end
  if #ports == 0 then check.argerror(fname, n, "ports: empty list") end
  table.sort(ports)
  return ports
end

-- Names ---------------------------------------------------------------------

-- Names go through portman's resolver (its cache and configured servers).
local lookup = resolver.lookup

-- Probes --------------------------------------------------------------------

local Scan = {}
Scan.__index = Scan

local function check_probe_opts(fname, opts)
  check.table(fname, 3, opts)
  check.known(fname, 3, opts, PROBE_OPTIONS)
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  if math.type(timeout) ~= "integer" or timeout < 1 or timeout > 3600000 then
    check.argerror(fname, 3, "timeout: integer milliseconds in 1-3600000 expected")
  end
  local conc = opts.concurrency or 0
  if math.type(conc) ~= "integer" or conc < 0 or conc > 1048576 then
    check.argerror(fname, 3, "concurrency: integer in 0-1048576 expected (0: the default)")
  end
  local proto = check.oneof(fname, 3, opts.proto or "tcp", {"tcp", "udp"}, "proto")
  if opts.payload ~= nil and type(opts.payload) ~= "string" then
    check.argerror(fname, 3, "payload: string expected, got " .. type(opts.payload))
  end
  check.optional(fname, 3, opts, "on_batch", "function")
  if opts.family ~= nil then check.oneof(fname, 3, opts.family, {"inet", "inet6"}, "family") end
  local retries = opts.retries or M.DEFAULT_RETRIES
  if math.type(retries) ~= "integer" or retries < 0 or retries > MAX_RETRIES then
    check.argerror(fname, 3, ("retries: integer in 0-%d expected"):format(MAX_RETRIES))
  end
  local method = check.oneof(fname, 3, opts.method or "connect", M.METHODS, "method")
  if proto == "udp" and method == "syn" then check.argerror(fname, 3, "method: syn probes TCP only") end
  return timeout, conc, proto, retries, method
end

local function new_result(host, proto, total)
  local counts = {}
  for _, s in ipairs(M.STATES) do counts[s] = 0 end
  return {host = host, proto = proto, total = total, scanned = 0, counts = counts,
          ports = {}, errors = {}, cancelled = false}
end

local function add_batch(result, batch)
  local ports, counts, errors = result.ports, result.counts, result.errors
  local port, state, error = batch.port, batch.state, batch.error
  for i = 1, batch.n do
    local p, s = port[i], state[i]
    ports[p] = s
    counts[s] = counts[s] + 1
    if error[i] then errors[p] = error[i] end
  end
  result.scanned = result.scanned + batch.n
end

local function finish_result(result, started)
  result.elapsed_ms = (uv.hrtime() - started) // 1000000
  local lists = {}
  for _, s in ipairs(M.STATES) do lists[s] = {} end
  for port, state in pairs(result.ports) do
    local l = lists[state]
    l[#l + 1] = port
  end
  for _, l in pairs(lists) do table.sort(l) end
  result.open, result.filtered, result.unreachable = lists.open, lists.filtered, lists.unreachable
  result.closed, result.error, result.open_filtered = lists.closed, lists.error, lists["open|filtered"]
  return result
end

-- Ends the scan: the engine and its driver closed, the result to the callback.
local function finish(scan)
  if scan._done then return end
  scan._done = true
  scan._stats = scan._probe:stats()
  scan._driver:close()
  scan._probe:close()
  scan._probe = nil
  scan._cb(finish_result(scan._result, scan._started))
end

-- One step's batch: into the result, then to on_batch. A failing progress
-- callback must not leave the scan hanging: it is logged, and the scan ends.
local function deliver(scan, batch)
  if scan._done or batch.n == 0 then return end
  add_batch(scan._result, batch)
  if scan._on_batch then
    local ok, err = xpcall(scan._on_batch, debug.traceback, batch, scan)
    if not ok then
      log.error("callback_failed", {what = "probe on_batch", error = err})
      scan:cancel()
    end
  end
end

-- The engine for the scan: the SYN scan's when its method asks for it and
-- the address is IPv4, else the connect engine; and the method it uses.
-- auto falls back on connects when the SYN scan cannot start (no
-- CAP_NET_RAW: denied; no route to the host: the connects then say so per
-- port); syn fails then.
local function new_engine(scan, address, family)
  local method = scan._method
  if scan._proto == "tcp" and method ~= "connect" and family == "inet" then
    local syn, err, code = core.syn_new(address, scan._ports, scan._timeout, scan._concurrency)
    if syn or method == "syn" then return syn, err, code, "syn" end
  end
  local probe, err, code = core.probe_new(scan._proto, {address}, scan._ports, scan._timeout,
                                          scan._concurrency, scan._payload, scan._retries)
  return probe, err, code, scan._proto == "tcp" and "connect" or nil
end

-- The host's address is known: the engine starts.
local function start_engine(scan, address, family)
  scan._result.address, scan._result.family = address, family
  local probe, err, code, method = new_engine(scan, address, family)
  scan._result.method = method
  if not probe then
    scan._done = true
    return scan._cb(nil, err, code)
  end
  scan._probe = probe
  scan._started = uv.hrtime()
  scan._driver = engine.drive(probe, {name = "probe",
    step = function(eng) return eng:step(BATCH) end,
    on_batch = function(batch) deliver(scan, batch) end,
    on_idle = function() finish(scan) end})
  if scan._cancelled then return finish(scan) end
  scan._driver:arm()
end

--- Stops the scan: sockets in flight are closed, and the callback gets what
-- was found so far, with `cancelled = true`. Idempotent.
function Scan:cancel()
  if self._done then return end
  self._result.cancelled = true
  self._cancelled = true
  if self._probe then
    self._probe:cancel()
    finish(self)
  end
end

--- The sockets in flight, the peak so far and the concurrency in force;
-- for UDP also the probes `sent` (every try), the `retransmits` among them,
-- and `pace_ms`, the least time between two probes the host's answers led to.
-- A SYN scan also counts every SYN in `sent`, its second SYNs in
-- `retransmits`, the replies it `ignored` (not matching a SYN in flight) and
-- gives its `source_port`.
function Scan:stats()
  return self._probe and self._probe:stats() or self._stats
end

--- The result so far: `host`, `total`, `scanned`, `counts`, `ports`,
-- `errors` as the batches filled them in (the sorted lists only once the
-- scan has ended).
function Scan:result()
  return self._result
end

--- Starts probing ports of host and returns the scan at once; see `probe`.
-- @return a scan with `:cancel()`, `:stats()` and `:result()`
-- @raise on a bad argument or option, naming it
function M.start(host, ports, opts, cb)
  if type(opts) == "function" then opts, cb = nil, opts end
  if type(host) ~= "string" or host == "" then
    check.argerror("probe", 1, "host: non-empty string expected, got " .. type(host))
  end
  ports = M.parse_ports(ports, "probe", 2)
  opts = opts or {}
  local timeout, conc, proto, retries, method = check_probe_opts("probe", opts)
  if type(cb) ~= "function" then check.argerror("probe", 4, "callback expected") end
  local scan = setmetatable({_ports = ports, _timeout = timeout, _concurrency = conc, _proto = proto,
                             _retries = retries, _method = method,
                             _payload = opts.payload, _on_batch = opts.on_batch, _cb = cb,
                             _result = new_result(host, proto, #ports)}, Scan)
  lookup(host, opts.family, function(address, family, code)
    if not address then
      scan._done = true
      return cb(nil, family, code)
    end
    start_engine(scan, address, family)
  end)
  return scan
end

--- Probes ports of host (TCP connects by default; SYNs with method "syn").
-- @param host a name (resolved first, the first address is probed) or an
--   IPv4/IPv6 address
-- @param ports "1-65535", "22,80,8000-8100", or a table of ports
-- @tparam[opt] table opts `timeout` (ms per probe, 1000), `concurrency`
--   (sockets in flight; 0 or nil: derived from RLIMIT_NOFILE, and never
--   above what it allows), `proto` ("tcp" or "udp"), `payload` (the UDP
--   datagram), `retries` (UDP: how many times an unanswered probe is sent
--   again before its port counts as open|filtered, 6; fewer when no port of
--   the host ever needed a retry to answer; the probes to a host are paced
--   down to one a second when retries get answers, as an ICMP rate limit
--   makes them), `family` ("inet" or "inet6" when resolving), `method`
--   (TCP: "connect", the default; "syn", a raw SYN scan as nmap -sS, which
--   needs CAP_NET_RAW, and probes an IPv6 address with connects; "auto",
--   syn when it can, else connect; with syn, `concurrency` counts SYNs
--   awaiting an answer, not sockets, and is not bound by RLIMIT_NOFILE),
--   `on_batch(batch, scan)` (progress: each batch as it comes, in columns:
--   `{n, port = {...}, state = {...}, error = {[i] = errno name}}`;
--   `scan:cancel()` stops the run, `scan:result()` is the result so far)
-- @param[opt] cb called with the result; without it, inside a portman task,
--   probe returns the result
-- @return[1] `{host, address, family, proto, method (TCP: the one used),
--   total, scanned, elapsed_ms,
--   cancelled, counts = {state = n}, ports = {[port] = state},
--   errors = {[port] = errno name}, open = {...}, closed, filtered,
--   unreachable, error, open_filtered}` (port lists sorted)
-- @return[2] nil, msg, code (`not_found` for a name that does not resolve,
--   `EMFILE` when no fd is left, `denied` for method syn without CAP_NET_RAW)
-- @raise on a bad argument or option, naming it
M.probe = async.adapt(function(host, ports, opts, cb)
  M.start(host, ports, opts, cb)
end)

--- Finds the first reachable port in priority order: the preferred ports,
-- then the firewall-friendly ones (443, 80, 8080, 8443), probed in parallel.
-- It answers as soon as every port before the first open one is known.
-- @param host name or address
-- @param preferred a table of ports (may be empty)
-- @tparam[opt] table opts `timeout` (ms, 1000), `family`
-- @return[1] the port, and the probe result so far
-- @return[2] nil, "unreachable: ...", "unreachable"
-- @raise on a bad argument
M.select_port = async.adapt(function(host, preferred, opts, cb)
  if type(opts) == "function" then opts, cb = nil, opts end
  check.table("select_port", 2, preferred)
  opts = opts or {}
  check.table("select_port", 3, opts)
  check.known("select_port", 3, opts, {timeout = true, family = true})
  local order, seen = {}, {}
  for i, p in ipairs(preferred) do
    p = check.port("select_port", 2, p, ("preferred[%d]"):format(i))
    if not seen[p] then order[#order + 1], seen[p] = p, true end
  end
  for _, p in ipairs(M.FRIENDLY_PORTS) do
    if not seen[p] then order[#order + 1], seen[p] = p, true end
  end
  local chosen
  local function decide(result) -- the port, false for none, nil: not yet known
    for _, p in ipairs(order) do
      local state = result.ports[p]
      if state == nil then return nil end
      if state == "open" then return p end
    end
    return false
  end
  M.start(host, order, {timeout = opts.timeout, family = opts.family, concurrency = #order,
    on_batch = function(_, scan)
      chosen = decide(scan:result())
      if chosen then scan:cancel() end
    end}, function(res, err, code)
    if not res then return cb(nil, err, code) end
    if chosen then return cb(chosen, res) end
    cb(nil, ("unreachable: no port of %s is open on %s"):format(table.concat(order, ", "), host),
       "unreachable")
  end)
end)

return M
