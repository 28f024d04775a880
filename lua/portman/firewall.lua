--- Reachability: port probes, a fallback port selector, and the tunnelling
-- helpers a client behind a strict firewall needs (WebSocket upgrade, HTTP
-- CONNECT through a proxy).
--
-- The probes run in C (portman.core's probe engine: one epoll fd, results in
-- batches); this module attaches the engine's fd to the luv loop with
-- uv.new_poll and a uv timer, resolves host names first, and gathers the
-- batches into one result. States are nmap's: open, closed, filtered (no
-- answer before the timeout), unreachable (ICMP host, net or admin
-- unreachable), error (anything else; its errno name is kept), and for UDP
-- open|filtered (no answer at all).
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local log = require "portman.log"

local M = {}

M.FRIENDLY_PORTS = {443, 80, 8080, 8443}
M.STATES = {"open", "closed", "filtered", "unreachable", "error", "open|filtered"}
local BATCH = 4096
local DEFAULT_TIMEOUT = 1000
local PROBE_OPTIONS = {timeout = true, concurrency = true, proto = true, payload = true,
                       on_batch = true, family = true}

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

--- Resolves host to one address (the first the resolver gives; a numeric
-- address is its own), calling cb(address, family) or
-- cb(nil, "not_found: ...", "not_found").
-- @param family nil, "inet" or "inet6"
function M.resolve(host, family, cb)
  local name = host:match("^%[(.+)%]$") or host -- "[::1]" as URLs write it
  local function fail(err)
    cb(nil, ("not_found: cannot resolve %s: %s"):format(host, err or "no address"), "not_found")
  end
  local req, err = uv.getaddrinfo(name, nil, {socktype = "stream", family = family},
    async.safe(function(gerr, res)
      if gerr or not res or not res[1] then return fail(gerr) end
      cb(res[1].addr, res[1].family)
    end, "firewall.resolve"))
  if not req then fail(err) end
end

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
  if opts.on_batch ~= nil and type(opts.on_batch) ~= "function" then
    check.argerror(fname, 3, "on_batch: function expected, got " .. type(opts.on_batch))
  end
  if opts.family ~= nil then check.oneof(fname, 3, opts.family, {"inet", "inet6"}, "family") end
  return timeout, conc, proto
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

--- Stops the scan: sockets in flight are closed, and the callback gets what
-- was found so far, with `cancelled = true`. Idempotent.
function Scan:cancel()
  if self._done then return end
  self._result.cancelled = true
  if self._probe then self._probe:cancel() end
  self._cancelled = true
  if self._probe then self:_finish() end
end

--- The sockets in flight, the peak so far and the concurrency in force.
function Scan:stats()
  return self._probe and self._probe:stats() or self._stats
end

function Scan:_finish()
  if self._done then return end
  self._done = true
  self._stats = self._probe:stats()
  self._poll:stop()
  self._poll:close()
  self._timer:close()
  self._probe:close()
  self._probe = nil
  self._cb(finish_result(self._result, self._started))
end

function Scan:_pump()
  if self._done then return end
  local batch = self._probe:step(BATCH)
  if batch.n > 0 then
    add_batch(self._result, batch)
    if self._on_batch then
      local ok, err = xpcall(self._on_batch, debug.traceback, batch, self)
      if not ok then
        -- a failing progress callback must not leave the scan hanging
        log.error("callback_failed", {what = "firewall.probe on_batch", error = err})
        self:cancel()
      end
    end
    if self._done then return end
  end
  local ms = self._probe:timeout()
  if ms == nil then return self:_finish() end
  self._timer:start(ms, 0, self._step_cb)
end

function Scan:_start(address, family)
  self._result.address, self._result.family = address, family
  local probe, err, code = core.probe_new(self._proto, {address}, self._ports, self._timeout,
                                          self._concurrency, self._payload)
  if not probe then
    self._done = true
    return self._cb(nil, err, code)
  end
  self._probe = probe
  self._started = uv.hrtime()
  self._step_cb = async.safe(function() self:_pump() end, "firewall.probe")
  self._poll = uv.new_poll(probe:fd())
  self._timer = uv.new_timer()
  self._poll:start("r", self._step_cb)
  if self._cancelled then return self:_finish() end
  self:_pump()
end

--- Starts probing ports of host and returns the scan at once; see `probe`.
-- @return a scan with `:cancel()` and `:stats()`
-- @raise on a bad argument or option, naming it
function M.start(host, ports, opts, cb)
  if type(opts) == "function" then opts, cb = nil, opts end
  if type(host) ~= "string" or host == "" then
    check.argerror("probe", 1, "host: non-empty string expected, got " .. type(host))
  end
  ports = M.parse_ports(ports, "probe", 2)
  opts = opts or {}
  local timeout, conc, proto = check_probe_opts("probe", opts)
  if type(cb) ~= "function" then check.argerror("probe", 4, "callback expected") end
  local scan = setmetatable({_ports = ports, _timeout = timeout, _concurrency = conc, _proto = proto,
                             _payload = opts.payload, _on_batch = opts.on_batch, _cb = cb,
                             _result = new_result(host, proto, #ports)}, Scan)
  M.resolve(host, opts.family, function(address, family, code)
    if not address then
      scan._done = true
      return cb(nil, family, code)
    end
    scan:_start(address, family)
  end)
  return scan
end

--- Probes ports of host (TCP connects by default).
-- @param host a name (resolved first, the first address is probed) or an
--   IPv4/IPv6 address
-- @param ports "1-65535", "22,80,8000-8100", or a table of ports
-- @tparam[opt] table opts `timeout` (ms per probe, 1000), `concurrency`
--   (sockets in flight; 0 or nil: derived from RLIMIT_NOFILE, and never
--   above what it allows), `proto` ("tcp" or "udp"), `payload` (the UDP
--   datagram), `family` ("inet" or "inet6" when resolving),
--   `on_batch(batch, scan)` (progress: each batch as it comes, in columns:
--   `{n, port = {...}, state = {...}, error = {[i] = errno name}}`;
--   `scan:cancel()` stops the run)
-- @param[opt] cb called with the result; without it, inside a portman task,
--   probe returns the result
-- @return[1] `{host, address, family, proto, total, scanned, elapsed_ms,
--   cancelled, counts = {state = n}, ports = {[port] = state},
--   errors = {[port] = errno name}, open = {...}, closed, filtered,
--   unreachable, error, open_filtered}` (port lists sorted)
-- @return[2] nil, msg, code (`not_found` for a name that does not resolve,
--   `EMFILE` when no fd is left)
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
      chosen = decide(scan._result)
      if chosen then scan:cancel() end
    end}, function(res, err, code)
    if not res then return cb(nil, err, code) end
    if chosen then return cb(chosen, res) end
    cb(nil, ("unreachable: no port of %s is open on %s"):format(table.concat(order, ", "), host),
       "unreachable")
  end)
end)

-- Base64 and SHA-1 (for Sec-WebSocket-Accept), from libcrypto -------------

--- Base64 (RFC 4648, with padding) of a string.
M.base64 = core.base64

--- SHA-1 of a string, as 20 raw bytes. Only for the WebSocket handshake,
-- where RFC 6455 fixes it; never for security.
M.sha1 = core.sha1

-- HTTP heads ----------------------------------------------------------------

local MAX_HEAD = 16384

--- Parses an HTTP/1.x response head at the start of buf.
-- @return[1] `{version, status, reason, headers = {lowercase name = value}}`
--   and the offset of the first byte after the head
-- @return[2] nil when buf holds no complete head yet
-- @return[3] nil, "protocol: ...", "protocol" for a malformed or oversized head
function M.parse_response(buf)
  local stop = buf:find("\r\n\r\n", 1, true)
  if not stop then
    if #buf > MAX_HEAD then return nil, "protocol: response head larger than 16384 bytes", "protocol" end
    return nil
  end
  if stop > MAX_HEAD then return nil, "protocol: response head larger than 16384 bytes", "protocol" end
  local head = buf:sub(1, stop + 1)
  local version, status, reason, pos = head:match("^HTTP/(1%.[01]) (%d%d%d) ?([^\r\n]*)\r\n()")
  if not version then return nil, "protocol: not an HTTP/1.x status line", "protocol" end
  local headers = {}
  while pos <= #head do
    local name, value, nxt = head:match("^([!#$%%&'*+%-.^_`|~%w]+):[ \t]*([^\r\n]-)[ \t]*\r\n()", pos)
    if not name then return nil, "protocol: malformed header line", "protocol" end
    name = name:lower()
    headers[name] = headers[name] and headers[name] .. ", " .. value or value
    pos = nxt
  end
  return {version = version, status = math.tointeger(tonumber(status)), reason = reason,
          headers = headers}, stop + 4
end

local function has_token(value, token)
  for item in (value or ""):gmatch("[^,]+") do
    if item:match("^%s*(.-)%s*$"):lower() == token then return true end
  end
  return false
end

local function host_port(host, port)
  if host:find(":", 1, true) and not host:match("^%[") then host = "[" .. host .. "]" end
  return host .. ":" .. port
end

local WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

--- A fresh Sec-WebSocket-Key: 16 random bytes, base64 (RFC 6455 4.1).
function M.websocket_key()
  return M.base64(uv.random(16))
end

--- The Sec-WebSocket-Accept a server must send for key (RFC 6455 4.2.2).
function M.websocket_accept(key)
  if type(key) ~= "string" then
    check.argerror("websocket_accept", 1, "string expected, got " .. type(key))
  end
  return M.base64(M.sha1(key .. WS_GUID))
end

--- Builds a WebSocket upgrade request (RFC 6455 4.1).
-- @param host the Host header's host, port the server's port, path the
--   request target ("/" by default)
-- @tparam[opt] table opts `key` (else a fresh one), `origin`, `protocols`
--   (a list of subprotocol names)
-- @return the request text, and the key to validate the answer with
-- @raise on a bad argument
function M.websocket_request(host, port, path, opts)
  if type(host) ~= "string" or host == "" then
    check.argerror("websocket_request", 1, "host: string expected")
  end
  port = check.port("websocket_request", 2, port, "port")
  path = path or "/"
  if type(path) ~= "string" or not path:match("^/[!-~]*$") then
    check.argerror("websocket_request", 3, "path: '/' and visible ASCII expected")
  end
  opts = opts or {}
  check.table("websocket_request", 4, opts)
  check.known("websocket_request", 4, opts, {key = true, origin = true, protocols = true})
  local key = opts.key or M.websocket_key()
  local lines = {"GET " .. path .. " HTTP/1.1", "Host: " .. host_port(host, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " .. key, "Sec-WebSocket-Version: 13"}
  if opts.origin then lines[#lines + 1] = "Origin: " .. opts.origin end
  if opts.protocols then
    lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. table.concat(opts.protocols, ", ")
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n", key
end

--- Validates the server's answer to an upgrade request (RFC 6455 4.1, the
-- client's checks): status 101, Upgrade: websocket, Connection: Upgrade, and
-- Sec-WebSocket-Accept matching key; a subprotocol only among those asked.
-- @param response a parsed head (from `parse_response`) or the raw text
-- @return[1] true, the parsed head
-- @return[2] nil, "protocol: ...", "protocol"
function M.websocket_validate(response, key, protocols)
  if type(response) == "string" then
    local head, err, code = M.parse_response(response)
    if not head then return nil, err or "protocol: incomplete response head", code or "protocol" end
    response = head
  end
  local h = response.headers
  local function fail(msg) return nil, "protocol: " .. msg, "protocol" end
  if response.status ~= 101 then return fail("status " .. tostring(response.status) .. ", not 101") end
  if not has_token(h.upgrade, "websocket") then return fail("no 'Upgrade: websocket'") end
  if not has_token(h.connection, "upgrade") then return fail("no 'Connection: Upgrade'") end
  if h["sec-websocket-accept"] ~= M.websocket_accept(key) then
    return fail("Sec-WebSocket-Accept mismatch")
  end
  if h["sec-websocket-extensions"] then return fail("an extension nobody asked for") end
  local proto = h["sec-websocket-protocol"]
  if proto then
    local asked = false
    for _, p in ipairs(protocols or {}) do asked = asked or p == proto end
    if not asked then return fail("subprotocol '" .. proto .. "' was not asked for") end
  end
  return true, response
end

--- Builds an HTTP CONNECT request for target host:port (RFC 9110 9.3.6).
-- @tparam[opt] table opts `user` and `password` for Basic proxy auth
function M.connect_request(host, port, opts)
  if type(host) ~= "string" or host == "" or host:find("[%s%c]") then
    check.argerror("connect_request", 1, "host: string without spaces expected")
  end
  port = check.port("connect_request", 2, port, "port")
  opts = opts or {}
  check.table("connect_request", 3, opts)
  check.known("connect_request", 3, opts, {user = true, password = true})
  local target = host_port(host, port)
  local req = "CONNECT " .. target .. " HTTP/1.1\r\nHost: " .. target .. "\r\n"
  if opts.user then
    local credentials = M.base64(opts.user .. ":" .. (opts.password or ""))
    req = req .. "Proxy-Authorization: Basic " .. credentials .. "\r\n"
  end
  return req .. "\r\n"
end

--- Checks a proxy's answer to CONNECT: a 2xx opens the tunnel.
-- @return[1] true, the parsed head
-- @return[2] nil, msg, code: `denied` (403, 407), `unreachable` (502, 503),
--   `timeout` (504), `refused` (any other status), `protocol` (malformed)
function M.connect_validate(response)
  if type(response) == "string" then
    local head, err, code = M.parse_response(response)
    if not head then return nil, err or "protocol: incomplete response head", code or "protocol" end
    response = head
  end
  local s = response.status
  if s >= 200 and s < 300 then return true, response end
  local code = (s == 403 or s == 407) and "denied" or (s == 502 or s == 503) and "unreachable"
    or s == 504 and "timeout" or "refused"
  return nil, ("%s: proxy answered %d %s"):format(code, s, response.reason), code
end

-- The connectivity check through an HTTP proxy ------------------------------

local function parse_endpoint(fname, n, v)
  local host, port
  if type(v) == "table" then
    host, port = v.host, v.port
  elseif type(v) == "string" then
    host, port = v:match("^%[(.+)%]:(%d+)$")
    if not host then host, port = v:match("^([^:]+):(%d+)$") end
    port = math.tointeger(tonumber(port))
  end
  if type(host) ~= "string" or host == "" then
    check.argerror(fname, n, "HOST:PORT or {host, port} expected")
  end
  return host, check.port(fname, n, port, "port")
end

local function errname(err)
  local code = tostring(err):match("^(E[%u%d]+)") or "error"
  if code == "ECONNREFUSED" then return "refused" end
  if code == "ENETUNREACH" or code == "EHOSTUNREACH" then return "unreachable" end
  return code
end

--- Checks that target is reachable through the HTTP proxy: CONNECT, then,
-- with `opts.websocket` (a path), a WebSocket upgrade through the tunnel.
-- @param proxy "HOST:PORT" or {host, port} (a name is resolved first)
-- @param target "HOST:PORT" or {host, port}, as the proxy should reach it
-- @tparam[opt] table opts `timeout` (ms, 5000, for the whole check),
--   `websocket` (a path), `user`, `password` (proxy auth)
-- @return[1] `{proxy, target, status, websocket = bool, elapsed_ms}`
-- @return[2] nil, msg, code: `refused`, `unreachable`, `denied`, `timeout`,
--   `protocol`, `closed` (the proxy hung up), `not_found`
-- @raise on a bad argument
M.check_proxy = async.adapt(function(proxy, target, opts, cb)
  if type(opts) == "function" then opts, cb = nil, opts end
  local phost, pport = parse_endpoint("check_proxy", 1, proxy)
  local thost, tport = parse_endpoint("check_proxy", 2, target)
  opts = opts or {}
  check.table("check_proxy", 3, opts)
  check.known("check_proxy", 3, opts, {timeout = true, websocket = true, user = true, password = true})
  local timeout = opts.timeout or 5000
  if math.type(timeout) ~= "integer" or timeout < 1 then
    check.argerror("check_proxy", 3, "timeout: positive integer milliseconds expected")
  end
  local connect_req = M.connect_request(thost, tport, {user = opts.user, password = opts.password})
  local ws_req, ws_key
  if opts.websocket then ws_req, ws_key = M.websocket_request(thost, tport, opts.websocket) end
  local started = uv.hrtime()
  local tcp, timer = uv.new_tcp(), uv.new_timer()
  local done = false
  local function finish(...)
    if done then return end
    done = true
    timer:close()
    if not tcp:is_closing() then tcp:close() end
    cb(...)
  end
  local function fail(msg, code) finish(nil, msg, code) end
  timer:start(timeout, 0, function()
    fail(("timeout: no answer through %s within %d ms"):format(host_port(phost, pport), timeout), "timeout")
  end)
  local buf, stage, connect_status = "", "connect", nil
  local function on_head(head, rest)
    if stage == "connect" then
      local ok, err, code = M.connect_validate(head)
      if not ok then return fail(err, code) end
      if not ws_req then
        return finish({proxy = host_port(phost, pport), target = host_port(thost, tport),
                       status = head.status, websocket = false,
                       elapsed_ms = (uv.hrtime() - started) // 1000000})
      end
      stage, buf, connect_status = "websocket", rest, head.status
      tcp:write(ws_req)
      return true
    end
    local ok, err, code = M.websocket_validate(head, ws_key)
    if not ok then return fail(err, code) end
    finish({proxy = host_port(phost, pport), target = host_port(thost, tport), status = connect_status,
            websocket = true, elapsed_ms = (uv.hrtime() - started) // 1000000})
  end
  local function on_read(err, data)
    if done then return end
    if err then return fail(err, errname(err)) end
    if not data then return fail("closed: the proxy closed the connection during " .. stage, "closed") end
    buf = buf .. data
    while not done do
      local head, perr, code = M.parse_response(buf)
      if not head then
        if perr then fail(perr, code) end
        return
      end
      if not on_head(head, buf:sub(perr)) then return end
    end
  end
  M.resolve(phost, nil, function(addr, ferr, fcode)
    if done then return end
    if not addr then return fail(ferr, fcode) end
    local ok, cerr = tcp:connect(addr, pport, async.safe(function(err)
      if done then return end
      if err then return fail(err, errname(err)) end
      tcp:read_start(async.safe(on_read, "firewall.check_proxy"))
      tcp:write(connect_req)
    end, "firewall.check_proxy"))
    if not ok then fail(cerr, errname(cerr)) end
  end)
end)

return M
