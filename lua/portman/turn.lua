--- TURN: a relayed address on a TURN server (RFC 8656), with TCP relays
-- (RFC 6062), for a service that no router will map. The C codec
-- (csrc/stun.c, csrc/turn.c) reads and writes the bytes; this file is the
-- state machine: authentication (401, then 438 stale nonce), Allocate,
-- Refresh before expiry, permissions, channels, and the forwarding of a
-- relay to a local port (`M.relay`).
--
-- Every function that waits takes a callback as its last argument, or,
-- inside `portman.run` / `portman.spawn`, returns its result: the result or
-- `nil, msg, code`. The password and the key never appear in a message,
-- an event or a result.
local uv = require "luv"
local core = require "portman.core"
local async = require "portman.async"
local errors = require "portman.errors"
local check = require "portman.check"
local netaddr = require "portman.netaddr"
local resolver = require "portman.resolver"
local stun = require "portman.stun"

local M = {}

M.ALLOCATE, M.REFRESH, M.SEND, M.DATA = 0x003, 0x004, 0x006, 0x007
M.CREATE_PERMISSION, M.CHANNEL_BIND = 0x008, 0x009
M.CONNECT, M.CONNECTION_BIND, M.CONNECTION_ATTEMPT = 0x00A, 0x00B, 0x00C
M.UDP, M.TCP = 17, 6 -- REQUESTED-TRANSPORT's protocol numbers
-- RFC 8656: permissions last 5 min, channels 10 min; refreshed before that.
M.PERMISSION_REFRESH = 240 * 1000
M.CHANNEL_REFRESH = 540 * 1000
M.CHANNEL_FIRST, M.CHANNEL_LAST = 0x4000, 0x4FFF
M.DEFAULT_LIFETIME = 600
-- Caps on what the outside can make us hold.
M.MAX_PEERS = 256       -- UDP peers (a socket each) and TCP connections at once
M.MAX_FRAME = 65535 + 20 -- one STUN or ChannelData message on a stream
M.MAX_QUEUE = 1024 * 1024 -- bytes queued on a TCP pipe before it stops reading
M.PEER_IDLE = 300 * 1000 -- a UDP peer's socket closes after this long unused

local DEFAULTS = {timeout = 5000, rto = stun.RTO, lifetime = M.DEFAULT_LIFETIME}

-- The error codes of RFC 8656 section 19 and RFC 6062 in portman's words.
local ERROR_CODES = {
  [401] = "denied", [403] = "denied", [441] = "denied", [437] = "conflict", [446] = "conflict",
  [440] = "unsupported", [442] = "unsupported", [447] = "timeout", [486] = "exhausted",
  [508] = "exhausted",
}

--- The clock the client's timers run on: `after(ms, fn)` returns a handle
-- with `stop()`. A spec may pass its own.
M.clock = {
  after = function(ms, fn)
    local t = uv.new_timer()
    t:start(math.max(0, math.floor(ms)), 0, async.safe(function()
      t:close()
      fn()
    end, "turn timer"))
    return {stop = function() if not t:is_closing() then t:close() end end}
  end,
}

local function fmt(ip, port) return stun.format(ip, port) end

-- --- the control connection: UDP datagrams or a TCP stream of frames ---

-- A stream of STUN and ChannelData frames (RFC 8656 section 12.5): calls
-- on_frame(bytes) for each whole one; on_lost(msg, code) when the stream
-- carries something else or ends.
local function framer(on_frame, on_lost)
  local buf, dead = "", false
  local function lost(...)
    dead = true
    return on_lost(...)
  end
  return function(err, chunk)
    if dead then return end
    if err or not chunk then
      dead = true
      return on_lost(err and select(2, errors.from(err, "read")) or "closed: the server closed the connection",
                     err and errors.code(err) or "closed")
    end
    buf = buf .. chunk
    while true do
      local n, why = core.turn_frame_length(buf)
      if n == nil then return lost(why, "protocol") end
      if not n or #buf < n then
        if #buf > M.MAX_FRAME then return lost("protocol: frame over the cap", "protocol") end
        return
      end
      local frame = buf:sub(1, n)
      buf = buf:sub(n + 1)
      on_frame(frame)
    end
  end
end

-- Opens the control connection to ip:port: cb(conn) or cb(nil, msg, code).
-- conn.send(bytes), conn.close(); conn.on_frame and conn.on_lost are set by
-- the caller.
local function open_conn(kind, family, ip, port, cb)
  local conn = {kind = kind}
  local function lost(msg, code) if conn.on_lost then conn.on_lost(msg, code) end end
  local function frame(bytes) if conn.on_frame then conn.on_frame(bytes) end end
  if kind == "udp" then
    local udp, uerr = uv.new_udp(family)
    if not udp then return cb(errors.from(uerr, "UDP socket")) end
    local ok, err = udp:connect(ip, port)
    if ok then
      ok, err = udp:recv_start(async.safe(function(e, data)
        if e then return lost(select(2, errors.from(e, "recv from " .. fmt(ip, port)))) end
        if data then frame(data) end
      end, "turn.recv"))
    end
    if not ok then
      udp:close()
      return cb(errors.from(err, "connect " .. fmt(ip, port)))
    end
    conn.handle = udp
    conn.send = function(bytes) udp:send(bytes, nil, nil, function() end) end
    conn.close = function() if not udp:is_closing() then udp:close() end end
    return cb(conn)
  end
  local tcp = uv.new_tcp(family)
  conn.handle = tcp
  conn.send = function(bytes) if not tcp:is_closing() then tcp:write(bytes) end end
  conn.close = function() if not tcp:is_closing() then tcp:close() end end
  tcp:connect(ip, port, async.safe(function(err)
    if err then
      conn.close()
      return cb(errors.from(err, "connect " .. fmt(ip, port)))
    end
    tcp:read_start(async.safe(framer(frame, lost), "turn.read"))
    cb(conn)
  end, "turn.connect"))
end

-- --- the client ---

local Client = {}
Client.__index = Client
M.Client = Client

--- A client of the TURN server at ip:port.
-- @tparam table opts `ip`, `port`, `family` ("inet" | "inet6"), `relay`
--   ("udp" | "tcp": the relayed transport; a TCP relay needs a TCP control
--   connection), `transport` ("udp" | "tcp", default: relay), `user`,
--   `password`, `realm` (optional: the server's realm must be this one),
--   `lifetime` (s, asked for), `timeout` (ms per transaction), `clock`,
--   and the callbacks `on_data(ip, port, data)`, `on_connection(id, ip,
--   port)` (TCP relays) and `on_event(name, fields)`.
function Client.new(opts)
  local self = setmetatable({}, Client)
  for k, v in pairs(DEFAULTS) do self[k] = v end
  for k, v in pairs(opts) do self[k] = v end
  self.relay = self.relay or "udp"
  self.transport = self.transport or self.relay
  assert(self.relay == "udp" or self.transport == "tcp", "turn: a TCP relay needs a TCP control connection")
  self.clock = self.clock or M.clock
  self.pending, self.permissions, self.channels, self.by_channel = {}, {}, {}, {}
  self.next_channel = M.CHANNEL_FIRST
  self.timers = {}
  self.server = fmt(self.ip, self.port)
  return self
end

function Client:_event(name, fields)
  if self.on_event then self.on_event(name, fields or {}) end
end

function Client:_fail(t, msg, code)
  self:_finish(t, nil, msg, code)
end

function Client:_finish(t, ...)
  if t.done then return end
  t.done = true
  self.pending[t.tid] = nil
  if t.timer then t.timer.stop() end
  t.cb(...)
end

-- The authentication attributes of a request, once the server named its
-- realm and nonce (RFC 8489 section 9.2).
function Client:_auth(msg)
  if not self.key then return end
  msg.username, msg.realm, msg.nonce = self.user, self.server_realm, self.nonce
  msg.message_integrity = true
end

-- Sends one request and waits for its answer, retransmitting over UDP
-- (RFC 8489 section 6.2.1). cb(msg) with a verified success response, or
-- cb(nil, msg, code); the error response, if any, is the fourth argument.
function Client:_transact(msg, cb, conn)
  conn = conn or self.conn
  local tid = core.stun_transaction_id()
  msg.transaction_id, msg.class = tid, "request"
  self:_auth(msg)
  msg.fingerprint = true
  local bytes = core.stun_encode(msg, self.key)
  local t = {tid = tid, method = msg.method, cb = cb, conn = conn}
  self.pending[tid] = t
  local started, rto, sent = uv.now(), self.rto, 0
  local name = M.method_name(msg.method)
  local function tick()
    if t.done then return end
    local elapsed = uv.now() - started
    if elapsed >= self.timeout or (conn.kind == "udp" and sent == stun.RC) then
      return self:_fail(t, ("timeout: no %s answer from %s after %d ms"):format(name, self.server, elapsed),
                        "timeout")
    end
    sent = sent + 1
    conn.send(bytes)
    local wait = conn.kind == "udp" and rto or self.timeout
    rto = rto * 2
    t.timer = self.clock.after(math.max(1, math.min(wait, self.timeout - elapsed)), tick)
  end
  uv.update_time()
  started = uv.now()
  tick()
end

-- An error response: its code, its reason, and a message.
local function error_of(resp, what, server)
  local e = resp.error_code
  if not e then return 0, "protocol: error response without ERROR-CODE", "protocol" end
  local code = ERROR_CODES[e.code] or "refused"
  -- the reason is the server's text: kept printable and short
  local reason = e.reason:gsub("[^%g ]", "?"):sub(1, 128)
  return e.code, ("%s: %s refused by %s: %d %s"):format(code, what, server, e.code, reason), code
end

-- A request with the long-term credential dance: a 401 names the realm
-- and nonce (the key follows), a 438 a fresh nonce; each retried once.
function Client:request(msg, cb, conn)
  local tries = 0
  local what = M.method_name(msg.method)
  local function attempt()
    tries = tries + 1
    local copy = {}
    for k, v in pairs(msg) do copy[k] = v end
    self:_transact(copy, function(resp, err, code, eresp)
      if resp then return cb(resp) end
      if not eresp then return cb(nil, err, code) end
      local ecode = eresp.error_code.code
      local had_key = self.key ~= nil
      if (ecode == 401 or ecode == 438) and eresp.nonce and tries < 3 then
        if ecode == 401 and had_key and eresp.realm == self.server_realm and eresp.nonce == self.nonce then
          return cb(nil, err, "denied") -- our credentials, refused
        end
        local ok, rerr, rcode = self:_learn(eresp)
        if not ok then return cb(nil, rerr, rcode) end
        if ecode == 401 and had_key then tries = tries + 1 end -- one more try, with the new nonce, only
        self:_event("nonce", {stale = ecode == 438, method = what})
        return attempt()
      end
      cb(nil, err, code)
    end, conn)
  end
  attempt()
end

-- Takes the realm and nonce of a 401 or 438 response and derives the key.
function Client:_learn(resp)
  local realm = resp.realm or self.server_realm
  if not realm then return errors.fail("protocol", "%s sent no REALM", self.server) end
  if self.realm and realm ~= self.realm then
    return errors.fail("denied", "%s's realm is not the one given (--realm)", self.server)
  end
  if realm ~= self.server_realm then
    self.server_realm = realm
    self.key = core.stun_long_term_key(self.user, realm, self.password)
  end
  self.nonce = resp.nonce
  return true
end

-- A frame from the server: a response, an indication or ChannelData.
function Client:_frame(bytes)
  local b = bytes:byte(1)
  if b and b >> 6 == 1 then
    local ch, data = core.turn_channel_decode(bytes, self.conn.kind == "tcp")
    local peer = ch and self.by_channel[ch]
    if peer and peer.bound and self.on_data then self.on_data(peer.ip, peer.port, data) end
    return
  end
  local msg = core.stun_decode(bytes)
  if not msg then return end
  if msg.class == "indication" then return self:_indication(msg) end
  local t = self.pending[msg.transaction_id]
  if not t or msg.method ~= t.method or msg.class == "request" then return end
  self:_answer(t, msg, bytes)
end

-- Checks an answer to transaction t before it counts: a success response
-- must carry a MESSAGE-INTEGRITY that the key verifies; an error response
-- that carries one must verify too (401 and 438 usually carry none).
function Client:_answer(t, msg, bytes)
  local what = M.method_name(t.method)
  if msg.unknown_required then
    return self:_fail(t, ("protocol: %s answer from %s has unknown required attributes"):format(what, self.server),
                      "protocol")
  end
  local signed = msg.message_integrity or msg.message_integrity_sha256
  if self.key and (msg.class == "success" or signed) then
    local checked, err = core.stun_decode(bytes, self.key)
    if not checked then
      return self:_fail(t, ("protocol: %s answer from %s: %s"):format(what, self.server,
        (err:gsub("^protocol: ", ""))), "protocol")
    end
    msg = checked
  elseif msg.class == "success" then
    return self:_fail(t, ("protocol: unauthenticated %s success from %s"):format(what, self.server), "protocol")
  end
  if msg.class == "success" then return self:_finish(t, msg) end
  local _, err, code = error_of(msg, what, self.server)
  self:_finish(t, nil, err, code, msg.error_code and msg or nil)
end

function Client:_indication(msg)
  local peer = msg.xor_peer_address
  if not peer or not self.permissions[peer.ip] then return end -- only peers we let in
  if msg.method == M.DATA and msg.data and self.on_data then
    self.on_data(peer.ip, peer.port, msg.data)
  elseif msg.method == M.CONNECTION_ATTEMPT and msg.connection_id and self.on_connection then
    self.on_connection(msg.connection_id, peer.ip, peer.port)
  end
end

--- Connects to the server and allocates a relayed address:
-- cb({relayed_ip, relayed_port, mapped_ip, mapped_port, lifetime}) or
-- cb(nil, msg, code). The allocation is refreshed at half its lifetime
-- until `close`.
function Client:allocate(cb)
  open_conn(self.transport, self.family, self.ip, self.port, function(conn, err, code)
    if not conn then return cb(nil, err, code) end
    self.conn = conn
    conn.on_frame = function(bytes) self:_frame(bytes) end
    conn.on_lost = function(msg, lcode) self:_lost(msg, lcode) end
    self:request({method = M.ALLOCATE, requested_transport = self.relay == "tcp" and M.TCP or M.UDP,
                  lifetime = self.lifetime}, function(resp, rerr, rcode)
      if not resp then return cb(nil, rerr, rcode) end
      local relayed = resp.xor_relayed_address
      if not relayed or not resp.lifetime then
        return cb(errors.fail("protocol", "Allocate success from %s without XOR-RELAYED-ADDRESS or LIFETIME",
                              self.server))
      end
      self.allocation = {relayed_ip = relayed.ip, relayed_port = relayed.port, lifetime = resp.lifetime,
                         mapped_ip = resp.xor_mapped_address and resp.xor_mapped_address.ip,
                         mapped_port = resp.xor_mapped_address and resp.xor_mapped_address.port}
      self:_schedule_refresh(resp.lifetime)
      cb(self.allocation)
    end)
  end)
end

-- The control connection errs. Over TCP it is gone, and the allocation
-- with it (RFC 6062 section 4.1): "lost", fatal. Over UDP an ICMP error
-- fails the requests in flight; the next may pass.
function Client:_lost(msg, code)
  if self.closed then return end
  for _, t in pairs(self.pending) do self:_fail(t, msg, code) end
  local fatal = self.conn.kind == "tcp"
  if fatal then
    self.conn.close()
    self.allocation = nil
  end
  self:_event("lost", {error = msg, code = code, fatal = fatal})
end

function Client:_timer(name, ms, fn)
  if self.timers[name] then self.timers[name].stop() end
  if self.closing or self.closed then return end
  self.timers[name] = self.clock.after(ms, function()
    self.timers[name] = nil
    if not self.closed then fn() end
  end)
end

function Client:_schedule_refresh(lifetime)
  uv.update_time()
  self.expires = uv.now() + lifetime * 1000
  -- at half the lifetime: a lost Refresh still leaves time to retry
  self:_timer("refresh", math.max(1, lifetime) * 500, function() self:refresh() end)
end

--- Refreshes the allocation now (the timer does it at half its lifetime).
function Client:refresh(cb)
  self:request({method = M.REFRESH, lifetime = self.lifetime}, function(resp, err, code)
    if not self.allocation then return end -- lost meanwhile
    if not resp then
      -- 437: the server has no such allocation; else retry soon, while it
      -- may still live
      if code == "conflict" or uv.now() >= self.expires then
        self.allocation = nil
        self:_event("expired", {error = err, code = code, fatal = true})
      else
        self:_event("refresh_failed", {error = err, code = code})
        self:_timer("refresh", math.min(5000, self.allocation.lifetime * 250), function() self:refresh() end)
      end
      if cb then cb(nil, err, code) end
      return
    end
    self.allocation.lifetime = resp.lifetime or self.lifetime
    self:_schedule_refresh(self.allocation.lifetime)
    self:_event("refreshed", {lifetime = self.allocation.lifetime})
    if cb then cb(self.allocation) end
  end)
end

--- Installs (and keeps refreshed) a permission for peer ip: cb(true) or
-- cb(nil, msg, code).
function Client:permit(ip, cb)
  self.permissions[ip] = true
  self:request({method = M.CREATE_PERMISSION, xor_peer_address = {ip = ip, port = 0}}, function(resp, err, code)
    if not resp then
      self.permissions[ip] = nil
      return cb(nil, err, code)
    end
    if not self.timers.permissions then self:_refresh_permissions_later() end
    cb(true)
  end)
end

function Client:_refresh_permissions_later()
  self:_timer("permissions", M.PERMISSION_REFRESH, function()
    for ip in pairs(self.permissions) do
      self:request({method = M.CREATE_PERMISSION, xor_peer_address = {ip = ip, port = 0}}, function(resp, err, code)
        if not resp then self:_event("permission_failed", {peer = ip, error = err, code = code}) end
      end)
    end
    self:_refresh_permissions_later()
  end)
end

--- Binds a channel to peer ip:port (UDP relays; refreshed every 9 min):
-- cb(channel) or cb(nil, msg, code). Until it is bound, `send` uses Send
-- indications.
function Client:bind_channel(ip, port, cb)
  local key = fmt(ip, port)
  local peer = self.channels[key]
  if not peer then
    if self.next_channel > M.CHANNEL_LAST then return cb(errors.fail("exhausted", "no channel number left")) end
    peer = {ip = ip, port = port, number = self.next_channel}
    self.next_channel = self.next_channel + 1
    self.channels[key], self.by_channel[peer.number] = peer, peer
  end
  self:request({method = M.CHANNEL_BIND, channel_number = peer.number, xor_peer_address = {ip = ip, port = port}},
    function(resp, err, code)
      if not resp then return cb(nil, err, code) end
      if not peer.bound then self:_event("channel", {peer = key, number = peer.number}) end
      peer.bound = true
      self:_timer("channel " .. peer.number, M.CHANNEL_REFRESH, function()
        self:bind_channel(ip, port, function() end)
      end)
      cb(peer.number)
    end)
end

--- Sends data to peer ip:port through the relay: ChannelData on a bound
-- channel, else a Send indication.
function Client:send(ip, port, data)
  if not self.conn then return end
  local peer = self.channels[fmt(ip, port)]
  if peer and peer.bound then
    return self.conn.send(core.turn_channel_encode(peer.number, data, self.conn.kind == "tcp"))
  end
  self.conn.send(core.stun_encode{method = M.SEND, class = "indication", transaction_id = core.stun_transaction_id(),
                                  xor_peer_address = {ip = ip, port = port}, data = data})
end

--- TCP relays (RFC 6062): opens a data connection for ConnectionAttempt
-- id and binds it: cb(tcp, leftover bytes) with the raw connection to the
-- peer, or cb(nil, msg, code).
function Client:accept(id, cb)
  open_conn("tcp", self.family, self.ip, self.port, function(conn, err, code)
    if not conn then return cb(nil, err, code) end
    local bound, buf = false, ""
    conn.on_lost = function(msg, lcode)
      for _, t in pairs(self.pending) do if t.conn == conn then self:_fail(t, msg, lcode) end end
    end
    -- only the ConnectionBind answer comes framed: what follows it is the
    -- peer's own bytes
    conn.handle:read_stop()
    conn.handle:read_start(async.safe(function(rerr, chunk)
      if rerr or not chunk then
        return conn.on_lost(rerr and select(2, errors.from(rerr, "read")) or "closed: the server closed", "closed")
      end
      buf = buf .. chunk
      while not bound do
        local n, why = core.turn_frame_length(buf)
        if n == nil then return conn.on_lost(why, "protocol") end
        if not n or #buf < n then
          if #buf > M.MAX_FRAME then conn.on_lost("protocol: frame over the cap", "protocol") end
          return
        end
        local frame = buf:sub(1, n)
        buf = buf:sub(n + 1)
        local msg = core.stun_decode(frame)
        local t = msg and self.pending[msg.transaction_id]
        if not t or t.conn ~= conn then return conn.on_lost("protocol: not a ConnectionBind answer", "protocol") end
        self:_answer(t, msg, frame)
      end
    end, "turn.bind"))
    self:request({method = M.CONNECTION_BIND, connection_id = id}, function(resp, berr, bcode)
      if not resp then
        conn.close()
        return cb(nil, berr, bcode)
      end
      bound = true
      conn.handle:read_stop()
      cb(conn.handle, buf)
    end, conn)
  end)
end

--- Deallocates (Refresh with LIFETIME 0) and closes: cb(true) or cb(nil,
-- msg, code) when the server did not confirm; closed either way.
function Client:close(cb)
  cb = cb or function() end
  if self.closed then return cb(true) end
  local function finish(...)
    self.closed = true
    for _, t in pairs(self.timers) do t.stop() end
    self.timers = {}
    for _, t in pairs(self.pending) do self:_fail(t, "closed: the TURN client was closed", "closed") end
    if self.conn then self.conn.close() end
    cb(...)
  end
  for name, t in pairs(self.timers) do t.stop(); self.timers[name] = nil end
  if not self.allocation then return finish(true) end
  self.closing = true
  self:request({method = M.REFRESH, lifetime = 0}, function(resp, err, code)
    if resp then return finish(true) end
    -- 437: the allocation was already gone; as good as deleted
    if code == "conflict" then return finish(true) end
    finish(nil, err, code)
  end)
end

-- --- the relay: a relayed address forwarded to a local port ---

local Relay = {}
Relay.__index = Relay

local function close_handle(h) if h and not h:is_closing() then h:close() end end

-- A UDP peer: a socket connected to the local service, so that the
-- service's answers go back to the peer they answer.
function Relay:_peer(ip, port)
  local key = fmt(ip, port)
  local p = self.peers[key]
  if p then return p end
  if self.npeers >= M.MAX_PEERS then
    self:_event("peer_refused", {peer = key, reason = "too many peers"})
    return nil
  end
  local udp = uv.new_udp(self.local_family)
  local ok, err = udp:connect(self.local_ip, self.port)
  if ok then
    ok, err = udp:recv_start(async.safe(function(rerr, data)
      if rerr or not data then return end
      p.last = uv.now()
      self.client:send(ip, port, data)
    end, "relay.peer"))
  end
  if not ok then
    close_handle(udp)
    self:_event("peer_failed", {peer = key, error = tostring(err)})
    return nil
  end
  p = {udp = udp, last = uv.now()}
  self.peers[key], self.npeers = p, self.npeers + 1
  self:_event("peer", {peer = key})
  self.client:bind_channel(ip, port, function(ch, berr, code)
    if not ch then self:_event("channel_failed", {peer = key, error = berr, code = code}) end
  end)
  return p
end

-- Closes the sockets of peers idle for PEER_IDLE ms (their channel stays
-- until the server lets it lapse).
function Relay:_sweep()
  local now = uv.now()
  for key, p in pairs(self.peers) do
    if now - p.last > M.PEER_IDLE then
      close_handle(p.udp)
      self.peers[key], self.npeers = nil, self.npeers - 1
    end
  end
  self.sweeper = self.client.clock.after(M.PEER_IDLE / 2, function() self:_sweep() end)
end

-- Copies a's bytes to b, pausing a while b's queue is over the cap; ends
-- with on_end(err) at a's end of stream or error.
local function copy(a, b, on_end)
  local paused = false
  local function reader(err, chunk)
    if err or not chunk then return on_end(err) end
    if b:is_closing() then return end
    b:write(chunk, function()
      if paused and not a:is_closing() and b:get_write_queue_size() < M.MAX_QUEUE / 2 then
        paused = false
        a:read_start(reader)
      end
    end)
    if b:get_write_queue_size() > M.MAX_QUEUE then
      paused = true
      a:read_stop()
    end
  end
  a:read_start(async.safe(reader, "relay.copy"))
end

-- Pipes the peer's data connection to a new connection to the service.
function Relay:_pipe(peer_tcp, leftover, key)
  local service = uv.new_tcp(self.local_family)
  self.npeers = self.npeers + 1
  local ended = 0
  local function done()
    if service:is_closing() then return end
    close_handle(service)
    close_handle(peer_tcp)
    self.conns[peer_tcp] = nil
    self.npeers = self.npeers - 1
  end
  self.conns[peer_tcp] = done
  service:connect(self.local_ip, self.port, async.safe(function(err)
    if err then
      self:_event("service_refused", {peer = key, error = tostring(err)})
      return done()
    end
    if #leftover > 0 then service:write(leftover) end
    -- one side's end of stream half-closes the other; both ended, or an
    -- error, closes the pair
    local function ended_one(from_err, to)
      if from_err then return done() end
      ended = ended + 1
      if ended == 2 then return done() end
      if not to:is_closing() then to:shutdown() end
    end
    copy(peer_tcp, service, function(e) ended_one(e, service) end)
    copy(service, peer_tcp, function(e) ended_one(e, peer_tcp) end)
  end, "relay.service"))
end

function Relay:_connection(id, ip, port)
  local key = fmt(ip, port)
  if self.npeers >= M.MAX_PEERS then
    return self:_event("peer_refused", {peer = key, reason = "too many connections"})
  end
  self.client:accept(id, function(tcp, leftover, code)
    if not tcp then return self:_event("bind_failed", {peer = key, error = leftover, code = code}) end
    self:_event("connection", {peer = key})
    self:_pipe(tcp, leftover, key)
  end)
end

function Relay:_event(name, fields)
  if self.on_event then self.on_event(name, fields) end
end

--- Closes every peer socket and connection, then deallocates: cb(true)
-- or cb(nil, msg, code) (closed either way); in a task, returns that.
Relay.close = async.adapt(function(self, cb)
  if self.sweeper then self.sweeper.stop() end
  for _, p in pairs(self.peers) do close_handle(p.udp) end
  for _, done in pairs(self.conns) do done() end
  self.peers, self.conns, self.npeers = {}, {}, 0
  self.client:close(cb)
end)

--- Allocates a relayed address and forwards it to local port opts.port:
-- UDP datagrams from each peer go to the service from a socket of their
-- own; TCP connections (RFC 6062) each get a connection to the service.
-- @tparam table opts the Client's (`ip`, `port` of the server is
--   `server_ip`, `server_port`), `port` (the local service's),
--   `local_ip` ("127.0.0.1"), `allow` (peer IPs: a relay only hears peers
--   it was told about, RFC 8656 section 9), `on_event(name, fields)`
-- cb(relay) with relay.info = {relayed_ip, relayed_port, server, proto,
-- lifetime}, or cb(nil, msg, code).
local function relay(opts, cb)
  assert(type(opts.allow) == "table" and #opts.allow > 0, "turn.relay: opts.allow: at least one peer IP expected")
  local self = setmetatable({port = opts.port, local_ip = opts.local_ip or "127.0.0.1", peers = {}, conns = {},
                             npeers = 0, on_event = opts.on_event}, Relay)
  self.local_family = self.local_ip:find(":", 1, true) and "inet6" or "inet"
  local copts = {}
  for k, v in pairs(opts) do copts[k] = v end
  copts.ip, copts.port, copts.local_ip, copts.allow = opts.server_ip, opts.server_port, nil, nil
  copts.on_event = function(name, fields) self:_event(name, fields) end
  copts.on_data = function(ip, port, data)
    local p = self:_peer(ip, port)
    if p then
      p.last = uv.now()
      p.udp:send(data, nil, nil, function() end)
    end
  end
  copts.on_connection = function(id, ip, port) self:_connection(id, ip, port) end
  self.client = Client.new(copts)
  self.client:allocate(function(a, err, code)
    if not a then return self.client:close(function() cb(nil, err, code) end) end
    local left = #opts.allow
    local failed
    for _, ip in ipairs(opts.allow) do
      self.client:permit(ip, function(ok, perr, pcode)
        if not ok and not failed then failed = {perr, pcode} end
        left = left - 1
        if left > 0 then return end
        if failed then return self:close(function() cb(nil, failed[1], failed[2]) end) end
        self.info = {relayed_ip = a.relayed_ip, relayed_port = a.relayed_port, lifetime = a.lifetime,
                     server = self.client.server, proto = self.client.relay}
        if self.client.relay == "udp" then self:_sweep() end
        cb(self)
      end)
    end
  end)
end
M.relay = async.adapt(relay)

-- --- a policy service's relay (portman.manager) ---

local SERVICE_KEYS = {server = true, user = true, password = true, password_file = true, password_env = true,
                      realm = true, allow = true, lifetime = true, timeout = true}

--- Checks a policy service's `relay` table: {server = "host:port", user,
-- password | password_file | password_env (a variable's name), realm?,
-- allow = {peer IP, ...}, lifetime?, timeout?}. Raises naming the field
-- (as fname's argument n); the password is never in the message.
function M.check_service(fname, n, conf)
  if type(conf) ~= "table" then check.argerror(fname, n, "relay: table expected") end
  check.known(fname, n, conf, SERVICE_KEYS, "relay.")
  if not stun.parse_server(conf.server) then check.argerror(fname, n, "relay.server: \"host:port\" expected") end
  if type(conf.user) ~= "string" or conf.user == "" then check.argerror(fname, n, "relay.user: string expected") end
  local sources = 0
  for _, k in ipairs({"password", "password_file", "password_env"}) do
    if conf[k] ~= nil then
      if type(conf[k]) ~= "string" then check.argerror(fname, n, "relay." .. k .. ": string expected") end
      sources = sources + 1
    end
  end
  if sources ~= 1 then
    check.argerror(fname, n, "relay: one of password, password_file, password_env expected")
  end
  if type(conf.allow) ~= "table" or #conf.allow == 0 then
    check.argerror(fname, n, "relay.allow: a list of peer IPs expected")
  end
  for i, ip in ipairs(conf.allow) do
    if not netaddr.normalize(ip) then check.argerror(fname, n, ("relay.allow[%d]: IP address expected"):format(i)) end
  end
  for _, k in ipairs({"lifetime", "timeout"}) do
    if conf[k] ~= nil and (math.type(conf[k]) ~= "integer" or conf[k] < 1) then
      check.argerror(fname, n, "relay." .. k .. ": positive integer expected")
    end
  end
end

-- The password a service's relay names: nil, msg, code when there is none.
local function service_password(conf)
  if conf.password then return conf.password end
  if conf.password_env then
    local v = os.getenv(conf.password_env)
    if not v or v == "" then return errors.fail("not_found", "relay.password_env: %s is not set", conf.password_env) end
    return v
  end
  local f, err, errno = io.open(conf.password_file)
  if not f then return errors.fail(errors.code(errors.name(errno)), "relay.password_file: %s", err) end
  local text = f:read(1025) or ""
  f:close()
  local pass = text:match("^([^\r\n]+)")
  if not pass or #text > 1024 then
    return errors.fail("protocol", "relay.password_file: no password on its first line")
  end
  return pass
end

--- Relays a manager's service (its port on 127.0.0.1, its proto) as its
-- checked `relay` table says: cb(relay) or cb(nil, msg, code).
-- relay:entry() is its status entry (method "turn").
function M.for_service(conf, svc, on_event, cb)
  local password, perr, pcode = service_password(conf)
  if not password then return cb(nil, perr, pcode) end
  local host, port = stun.parse_server(conf.server)
  resolver.lookup(host, nil, function(ip, family, code)
    if not ip then return cb(errors.fail(code, "relay.server: cannot resolve '%s'", host)) end
    local allow = {}
    for i, a in ipairs(conf.allow) do allow[i] = netaddr.normalize(a) end
    M.relay({server_ip = ip, server_port = port, family = family, relay = svc.proto == "udp" and "udp" or "tcp",
             user = conf.user, password = password, realm = conf.realm, lifetime = conf.lifetime,
             timeout = conf.timeout, port = svc.port, allow = allow, on_event = on_event,
             -- a service on every address is reached on loopback
             local_ip = (svc.address and svc.address ~= "0.0.0.0" and svc.address ~= "::") and svc.address
               or "127.0.0.1"}, cb)
  end)
end

--- The relay as a status entry: {method = "turn", external_ip,
-- external_port, internal_port, proto, lifetime, server}.
function Relay:entry()
  local i = self.info
  return {method = "turn", external_ip = i.relayed_ip, external_port = i.relayed_port, internal_port = self.port,
          proto = i.proto, lifetime = i.lifetime, server = i.server}
end

local METHOD_NAMES = {[0x001] = "Binding", [0x003] = "Allocate", [0x004] = "Refresh", [0x006] = "Send",
  [0x007] = "Data", [0x008] = "CreatePermission", [0x009] = "ChannelBind", [0x00A] = "Connect",
  [0x00B] = "ConnectionBind", [0x00C] = "ConnectionAttempt"}

--- The RFC's name of a method ("Allocate").
function M.method_name(m) return METHOD_NAMES[m] or ("method 0x%03x"):format(m) end

return M
