--- STUN: the host's public address (RFC 8489) and the NAT's behaviour
-- (RFC 5780), over the C codec in portman.core.
--
-- `query` and `nat_type` take a callback as their last argument, or, called
-- inside `portman.run` / `portman.spawn`, wait and return their result.
-- Either way the result is `result` or `nil, msg, code`. A server named by
-- host name is resolved through portman.resolver's default resolver.
local uv = require "luv"
local core = require "portman.core"
local async = require "portman.async"
local check = require "portman.check"
local errors = require "portman.errors"
local resolver = require "portman.resolver"

local M = {}

--- The codec: `encode(msg [, key [, pad]])`, `decode(bytes [, key])`.
-- decode returns a message table or `nil, "protocol: ...", "protocol"`; it
-- never raises on any bytes. See csrc/lua_stun.c for the message table.
M.encode = core.stun_encode
M.decode = core.stun_decode
M.is_stun = core.stun_is_stun
M.long_term_key = core.stun_long_term_key
M.transaction_id = core.stun_transaction_id

M.BINDING = 0x001
M.DEFAULT_PORT = 3478
-- RFC 8489 section 6.2.1: initial RTO, transmissions, last wait in RTOs.
M.RTO, M.RC, M.RM = 500, 7, 16

local DEFAULTS = {timeout = 3000, cache_ttl = 60000, rto = M.RTO}

--- Splits "host:port", "[v6]:port", "v6" or "host" (port 3478).
-- @return host, port; or nil when the text is not an address.
function M.parse_server(text)
  if type(text) ~= "string" or text == "" then return nil end
  local host, port = text:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host = text:match("^%[([^%]]+)%]$") end
  if not host and text:find("[", 1, true) then return nil end
  if not host then
    local colons = select(2, text:gsub(":", ""))
    if colons == 1 then host, port = text:match("^([^:]+):(%d+)$")
    elseif colons == 0 or colons > 1 then host = text end
  end
  if not host then return nil end
  port = math.tointeger(tonumber(port or M.DEFAULT_PORT))
  if not port or port < 1 or port > 65535 then return nil end
  return host, port
end

-- Resolves a server's host to one address (a literal at once; IPv4
-- preferred when a name has both): cb(ip, family) or cb(nil, "code: cannot
-- resolve 'host' (reason)", code).
local function resolve(host, cb)
  resolver.lookup(host, nil, function(ip, family_or_err, code)
    if not ip then
      return cb(nil, ("%s: cannot resolve '%s' (%s)"):format(code, host, (family_or_err:gsub("^%w+: ", ""))), code)
    end
    cb(ip, family_or_err)
  end)
end

-- An Endpoint is one UDP socket with its transactions in flight, keyed by
-- transaction id. A datagram that is not STUN, not a response, names no
-- transaction of ours, or comes from another address than the one asked,
-- is dropped: a spoofer must guess a 96-bit id and the source.
local Endpoint = {}
Endpoint.__index = Endpoint

-- Opens a socket of family ("inet" | "inet6") on local_port (0: any);
-- with peer, connects it there (the kernel then drops other sources and
-- reports ICMP refusals). Returns the endpoint or nil, msg, code.
function Endpoint.open(family, local_port, peer_ip, peer_port)
  local udp, uerr = uv.new_udp(family)
  if not udp then return errors.from(uerr or "EAFNOSUPPORT", "UDP socket (" .. family .. ")") end
  local self = setmetatable({udp = udp, pending = {}, family = family}, Endpoint)
  local any = family == "inet6" and "::" or "0.0.0.0"
  local what = "bind " .. M.format(any, local_port or 0)
  local ok, err = udp:bind(any, local_port or 0)
  if ok and peer_ip then
    what = "connect " .. M.format(peer_ip, peer_port)
    ok, err = udp:connect(peer_ip, peer_port)
  end
  if ok then
    what = "recv"
    ok, err = udp:recv_start(async.safe(function(e, data, addr)
      self:_receive(e, data, addr)
    end, "stun.recv"))
  end
  if not ok then
    self:close()
    return errors.from(err, what)
  end
  self.connected = peer_ip ~= nil
  return self
end

function Endpoint:local_address()
  local name = self.udp:getsockname()
  return name and name.ip, name and name.port
end

function Endpoint:_receive(err, data, addr)
  if err then -- an ICMP error on a connected socket: the peer refused, or is unreachable
    local code = errors.code(err)
    if code == "error" then code = "refused" end
    for _, t in pairs(self.pending) do
      self:_finish(t, nil, ("%s: %s (%s)"):format(code, M.format(t.ip, t.port), tostring(err)), code)
    end
    return
  end
  if not data then return end
  local msg = core.stun_decode(data)
  if not msg then return end
  if msg.class == "request" then
    if self.on_request then self.on_request(msg, addr) end
    return
  end
  local t = self.pending[msg.transaction_id]
  if not t or msg.method ~= M.BINDING then return end
  if not addr or addr.ip ~= t.expect_ip or addr.port ~= t.expect_port then return end
  self:_finish(t, msg, addr)
end

function Endpoint:_finish(t, ...)
  if t.done then return end
  t.done = true
  self.pending[t.tid] = nil
  t.timer:stop()
  t.timer:close()
  t.cb(...)
end

function Endpoint:_send(t)
  t.sent_at = uv.hrtime()
  local host, port = t.ip, t.port
  if self.connected then host, port = nil, nil end
  self.udp:send(t.bytes, host, port, function() end)
end

-- Sends a Binding request to ip:port with retransmissions (RFC 8489
-- 6.2.1), bounded by opts.timeout. The response must come from
-- expect_ip:expect_port (ip:port by default).
-- cb(msg, from, rtt_ms) or cb(nil, msg, code).
function Endpoint:request(ip, port, opts, cb)
  local tid = core.stun_transaction_id()
  local t = {tid = tid, ip = ip, port = port, cb = cb, timer = uv.new_timer(),
             expect_ip = opts.expect_ip or ip, expect_port = opts.expect_port or port,
             bytes = core.stun_encode{class = "request", transaction_id = tid,
                                      change_request = opts.change_request, fingerprint = true}}
  self.pending[tid] = t
  uv.update_time() -- after CPU-bound work the loop's clock lags: the deadline must not
  local rto, sent, started = opts.rto, 0, uv.now()
  local last_wait = M.RM * opts.rto
  local function tick()
    if t.done then return end
    local elapsed = uv.now() - started
    if sent == M.RC or elapsed >= opts.timeout then
      return self:_finish(t, nil, ("timeout: no answer from %s after %d ms"):format(
        M.format(ip, port), elapsed), "timeout")
    end
    sent = sent + 1
    self:_send(t)
    local wait = sent == M.RC and last_wait or rto
    rto = rto * 2
    t.timer:start(math.max(1, math.min(wait, opts.timeout - elapsed)), 0, tick)
  end
  tick()
  return t
end

function Endpoint:close()
  if self.closed then return end
  self.closed = true
  for _, t in pairs(self.pending) do
    self:_finish(t, nil, "closed: the STUN socket was closed", "closed")
  end
  if not self.udp:is_closing() then self.udp:close() end
end

--- "ip:port", with brackets around an IPv6 address.
function M.format(ip, port)
  if ip:find(":", 1, true) then return ("[%s]:%d"):format(ip, port) end
  return ("%s:%d"):format(ip, port)
end

local function mapped(msg)
  return msg.xor_mapped_address or msg.mapped_address
end

-- One transaction with a server, on a new connected socket:
-- cb(result) or cb(nil, msg, code).
local function query_one(server, opts, cb)
  local host, port = M.parse_server(server)
  resolve(host, function(ip, family, code)
    if not ip then return cb(nil, family, code) end
    local ep, err, ecode = Endpoint.open(family, opts.local_port, ip, port)
    if not ep then return cb(nil, err, ecode) end
    local t
    t = ep:request(ip, port, opts, function(msg, from_or_err, code2)
      local local_ip, local_port = ep:local_address()
      local rtt = (uv.hrtime() - t.sent_at) / 1e6
      ep:close()
      if not msg then return cb(nil, from_or_err, code2) end
      if msg.class == "error" then
        local e = msg.error_code or {code = 0, reason = "no ERROR-CODE"}
        return cb(nil, ("refused: %s answered %d %s"):format(server, e.code, e.reason), "refused")
      end
      local addr = mapped(msg)
      if not addr then
        return cb(nil, ("protocol: %s sent no mapped address"):format(server), "protocol")
      end
      cb({external_ip = addr.ip, external_port = addr.port, local_ip = local_ip,
          local_port = local_port, server = server, rtt_ms = math.floor(rtt * 1000 + 0.5) / 1000})
    end)
  end)
end

local cache = {}

--- Forgets every cached query answer.
function M.flush_cache() cache = {} end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local QUERY_OPTS = {servers = true, timeout = true, local_port = true, cache_ttl = true, rto = true}

local function positive(fname, opts, key, zero_ok)
  local v = opts[key]
  if v == nil then return DEFAULTS[key] end
  local n = math.tointeger(v)
  if not n or n < (zero_ok and 0 or 1) then
    check.argerror(fname, 1, ("%s: %s integer expected"):format(key,
      zero_ok and "non-negative" or "positive"))
  end
  return n
end

local function check_query(opts)
  check.table("query", 1, opts)
  check.known("query", 1, opts, QUERY_OPTS)
  local servers = opts.servers
  if type(servers) ~= "table" or #servers == 0 then
    check.argerror("query", 1, "servers: non-empty list of \"host:port\" expected")
  end
  for i, s in ipairs(servers) do
    if not M.parse_server(s) then
      check.argerror("query", 1, ("servers[%d]: \"host:port\" expected, got %s"):format(i,
        type(s) == "string" and "'" .. s .. "'" or type(s)))
    end
  end
  local local_port = opts.local_port or 0
  if local_port ~= 0 then local_port = check.port("query", 1, local_port, "local_port") end
  return {servers = servers, local_port = local_port, timeout = positive("query", opts, "timeout"),
          cache_ttl = positive("query", opts, "cache_ttl", true), rto = positive("query", opts, "rto")}
end

--- The host's public address as a STUN server sees it.
-- Tries each server in turn, each for at most `timeout` ms with RFC 8489
-- retransmissions, until one answers; caches the answer for `cache_ttl` ms.
-- @tparam table opts `servers` (list of "host:port", required), `timeout`
--   (ms per server, default 3000), `local_port` (default 0: any),
--   `cache_ttl` (ms, default 60000; 0: no cache), `rto` (initial
--   retransmission timeout, ms, default 500)
-- @tparam[opt] function cb called with the results below; without it,
--   inside portman.run/spawn, query waits and returns them
-- @return[1] `{external_ip, external_port, local_ip, local_port, server, rtt_ms}`
-- @return[2] nil, msg, code: the last server's failure (`timeout`,
--   `refused`, `protocol`, `not_found` or an errno name)
-- @raise on a bad option
M.query = async.adapt(function(opts, cb)
  local o = check_query(opts)
  local key = table.concat(o.servers, " ") .. "|" .. o.local_port
  local hit = o.cache_ttl > 0 and cache[key]
  if hit and hit.expires > uv.now() then return cb(copy(hit.result)) end
  local i = 0
  local function next_server(_, err, code)
    i = i + 1
    if i > #o.servers then return cb(nil, err, code) end
    query_one(o.servers[i], o, function(result, e, c)
      if not result then return next_server(nil, e, c) end
      if o.cache_ttl > 0 then
        uv.update_time()
        cache[key] = {result = copy(result), expires = uv.now() + o.cache_ttl}
      end
      cb(result)
    end)
  end
  next_server()
end)

-- --- RFC 5780 behaviour discovery ---

local NAT_OPTS = {server = true, timeout = true, rto = true}

-- A request on ep that waits in the task: msg, or nil, err, code.
local function ask(ep, ip, port, opts, extra)
  local o = {timeout = opts.timeout, rto = opts.rto}
  for k, v in pairs(extra or {}) do o[k] = v end
  return async.await(function(cb)
    ep:request(ip, port, o, function(msg, a, b)
      if not msg then return cb(nil, a, b) end
      if msg.class == "error" then
        local e = msg.error_code or {code = 0, reason = ""}
        return cb(nil, ("refused: %s answered %d %s"):format(M.format(ip, port), e.code, e.reason),
          "refused")
      end
      if not mapped(msg) then
        return cb(nil, "protocol: Binding response without a mapped address", "protocol")
      end
      cb(msg)
    end)
  end)
end

local function same(a, b) return a.ip == b.ip and a.port == b.port end

-- RFC 5780 4.3: tests I, II and III on one socket.
local function mapping_behaviour(ep, p, opts)
  local r1, err, code = ask(ep, p.ip, p.port, opts)
  if not r1 then return nil, err, code end
  local other = r1.other_address
  if not other then
    return nil, "unsupported: the server sends no OTHER-ADDRESS (RFC 5780)", "unsupported"
  end
  local x1 = mapped(r1)
  local r2
  r2, err, code = ask(ep, other.ip, p.port, opts)
  if not r2 then return nil, err, code end
  if same(mapped(r2), x1) then return "endpoint-independent", x1, other end
  local r3
  r3, err, code = ask(ep, other.ip, other.port, opts)
  if not r3 then return nil, err, code end
  if same(mapped(r3), mapped(r2)) then return "address-dependent", x1, other end
  return "address-and-port-dependent", x1, other
end

-- RFC 5780 4.4, on a fresh socket that has only talked to the primary
-- address, so no earlier test opened the NAT's filter for the others.
local function filtering_behaviour(ep, p, other, opts)
  local r, err, code = ask(ep, p.ip, p.port, opts)
  if not r then return nil, err, code end
  r, err, code = ask(ep, p.ip, p.port, opts, {change_request = {ip = true, port = true},
                      expect_ip = other.ip, expect_port = other.port})
  if r then return "endpoint-independent" end
  if code ~= "timeout" then return nil, err, code end
  r, err, code = ask(ep, p.ip, p.port, opts, {change_request = {ip = false, port = true},
                      expect_ip = p.ip, expect_port = other.port})
  if r then return "address-dependent" end
  if code ~= "timeout" then return nil, err, code end
  return "address-and-port-dependent"
end

-- RFC 5780 4.5: a request from another socket to the first one's mapped
-- address comes back through the NAT only if the NAT hairpins. ep is no
-- server and does not answer: seeing the request arrive is the answer.
local function hairpinning(family, ep, x1, opts)
  local probe = Endpoint.open(family, 0)
  if not probe then return false end
  local seen = async.await(function(cb)
    local t
    -- arrived(true) when the request comes in; at the timeout, arrived(nil, ...)
    local arrived = async.with_timeout(opts.timeout, function(yes)
      ep.on_request = nil
      cb(yes == true)
    end, "hairpinning test")
    ep.on_request = function(msg)
      if msg.transaction_id == t.tid then arrived(true) end
    end
    t = probe:request(x1.ip, x1.port, {timeout = opts.timeout, rto = opts.rto}, function() end)
  end)
  probe:close()
  return seen
end

local function discover(opts)
  local host, port = M.parse_server(opts.server)
  local ip, family, code = async.await(resolve, host)
  if not ip then return nil, family, code end
  local p = {ip = ip, port = port}
  local ep1, err, ecode = Endpoint.open(family, 0)
  if not ep1 then return nil, err, ecode end
  local ep2
  local ok, a, b, c = pcall(function()
    local mapping, x1, other = mapping_behaviour(ep1, p, opts)
    if not mapping then return nil, x1, other end
    local e2, e, ec = Endpoint.open(family, 0)
    if not e2 then return nil, e, ec end
    ep2 = e2
    local filtering, ferr, fcode = filtering_behaviour(ep2, p, other, opts)
    if not filtering then return nil, ferr, fcode end
    return {mapping = mapping, filtering = filtering, external_ip = x1.ip,
            hairpinning = hairpinning(family, ep1, x1, opts)}
  end)
  ep1:close()
  if ep2 then ep2:close() end
  if not ok then error(a, 0) end
  return a, b, c
end

--- The NAT's mapping and filtering behaviour (RFC 5780 section 4) against
-- a server that supports it (OTHER-ADDRESS, CHANGE-REQUEST).
-- @tparam table opts `server` ("host:port", required), `timeout` (ms per
--   test, default 3000; the filtering tests wait this long for answers
--   that a filtering NAT drops), `rto` (ms, default 500)
-- @tparam[opt] function cb as for query
-- @return[1] `{mapping, filtering, external_ip, hairpinning}`: mapping and
--   filtering are "endpoint-independent", "address-dependent" or
--   "address-and-port-dependent"; hairpinning a boolean
-- @return[2] nil, msg, code (`unsupported` when the server lacks RFC 5780)
-- @raise on a bad option
M.nat_type = async.adapt(function(opts, cb)
  check.table("nat_type", 1, opts)
  check.known("nat_type", 1, opts, NAT_OPTS)
  if not M.parse_server(opts.server) then
    check.argerror("nat_type", 1, "server: \"host:port\" expected")
  end
  local o = {server = opts.server, timeout = positive("nat_type", opts, "timeout"),
             rto = positive("nat_type", opts, "rto")}
  async.spawn(function()
    local ok, r, err, code = xpcall(discover, debug.traceback, o)
    if not ok then return cb(nil, "protocol: " .. tostring(r), "protocol") end
    cb(r, err, code)
  end)
end)

return M
