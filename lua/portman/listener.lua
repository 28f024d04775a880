--- Listeners: sockets made in C with their options set before bind, handed
-- to luv so the caller uses luv's own API on `l.handle`.
--
-- The C side (csrc/listener.c) makes the socket close-on-exec and
-- non-blocking, sets the options asked, binds, listens (streams) and chmods
-- a Unix path; this file checks options, picks "auto" ports from an
-- allocator (allocate-and-bind as one step), wraps the fd in a luv handle
-- and counts and drains the connections it accepts for `serve`.
--
--   tcp      uv.new_tcp():open(fd)     udp       uv.new_udp():open(fd)
--   unix     uv.new_pipe():open(fd)    unixgram  uv.new_poll(fd) (luv has no
--            Unix datagram handle: `l:recv()` / `l:send()` do the I/O)
--
-- A stream's handle (tcp, unix) is made on first use: `serve`, or reading
-- `l.handle`. A listener whose fd only goes to a child, or that only holds
-- its port, never pays for one.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local log = require "portman.log"

local M = {}
local Listener = {}
local mt = {__index = Listener, __name = "portman.listener"}

local PROTOS = {"tcp", "udp", "unix", "unixgram"}
local TYPE = {tcp = "stream", udp = "dgram", unix = "stream", unixgram = "dgram"}
local UNIX = {unix = true, unixgram = true}
-- Every key open takes, by what it is: one lookup per key tells them apart.
local KEY, SOCKOPT, UNIX_ONLY = 1, 2, 3
local OPTIONS = {proto = KEY, address = KEY, port = KEY, path = UNIX_ONLY, abstract = UNIX_ONLY,
                 mode = UNIX_ONLY, backlog = KEY, allocator = KEY, name = KEY}
--- Every socket option by name: {available, cname, kind, inet, inet6, unix, stream, dgram}.
M.SOCKOPTS = core.sockopts()
for name in pairs(M.SOCKOPTS) do OPTIONS[name] = SOCKOPT end
M.DEFAULT_BACKLOG = 511 -- nginx's default: the kernel caps it at net.core.somaxconn

local VALUE = { -- checks of a socket option's value, by kind: nil when fine
  bool = function(v) return type(v) ~= "boolean" and "boolean expected" end,
  int = function(v)
    local n = math.tointeger(v)
    return not (n and n >= 0 and n <= 0x7fffffff) and "integer 0-2147483647 expected"
  end,
  tos = function(v)
    local n = math.tointeger(v)
    return not (n and n >= 0 and n <= 255) and "integer 0-255 expected"
  end,
  linger = function(v)
    local n = math.tointeger(v)
    return v ~= false and not (n and n >= 0 and n <= 65535) and "integer 0-65535 or false expected"
  end,
  device = function(v)
    return v ~= false and not (type(v) == "string" and #v > 0 and #v < 16 and not v:find("%z"))
      and "interface name expected"
  end,
}

local function check_value(fname, n, name, value)
  local bad = VALUE[M.SOCKOPTS[name].kind](value)
  if bad then
    check.argerror(fname, n, ("option '%s': %s, got %s"):format(name, bad,
      math.type(value) == "float" and "float" or type(value)))
  end
end

local function check_name(fname, n, kind, name)
  if type(name) ~= "string" or name == "" or #name > 106 or name:find("%z") then
    check.argerror(fname, n, kind .. ": string of 1-106 bytes without NUL expected")
  end
end

local function check_port(fname, port)
  if port == "auto" then return port end
  local p = math.tointeger(port)
  if not p or p < 0 or p > 65535 then
    check.argerror(fname, 1, ("port: 0-65535 or \"auto\" expected, got %s"):format(
      type(port) == "number" and tostring(port) or type(port)))
  end
  return p
end

-- The socket options among opts, checked; nil when there are none to set.
-- Walks opts (a few keys), not every known option.
local function check_sockopts(fname, opts, family, proto)
  local options
  for name, value in pairs(opts) do
    local info = M.SOCKOPTS[name]
    if info then
      if not (info[family] and info[TYPE[proto]]) then
        local v4 = family == "inet" and info.inet6 and info[TYPE[proto]]
        check.argerror(fname, 1, ("option '%s' does not apply to %s listeners%s"):format(
          name, proto, v4 and " on IPv4" or ""))
      end
      check_value(fname, 1, name, value)
      options = options or {}
      options[name] = value
    end
  end
  if family == "inet6" and (options == nil or options.v6only == nil) then
    options = options or {}
    options.v6only = false -- dual-stack on "::", whatever net.ipv6.bindv6only says
  end
  return options
end

-- core.ip_family of recent addresses (listeners reuse a few: "0.0.0.0",
-- "::", "127.0.0.1"), false for a non-address; bounded, so no input grows
-- it past 64 entries.
local FAMILY, nfamily = {}, 0
local function ip_family(host)
  local f = FAMILY[host]
  if f == nil then
    f = core.ip_family(host) or false
    if nfamily >= 64 then FAMILY, nfamily = {}, 0 end
    FAMILY[host], nfamily = f, nfamily + 1
  end
  return f
end

local function check_unix(fname, opts)
  if opts.address or opts.port then
    check.argerror(fname, 1, "unix listeners take path or abstract, not address or port")
  end
  if (opts.path == nil) == (opts.abstract == nil) then
    check.argerror(fname, 1, "unix listeners need exactly one of path, abstract")
  end
  if opts.path ~= nil then check_name(fname, 1, "path", opts.path) end
  if opts.abstract ~= nil then check_name(fname, 1, "abstract", opts.abstract) end
end

-- Checks opts; raises on a bad one. Returns proto, host, port (nil for
-- unix) and the socket options to set (nil when none). No table is made
-- for a listener without options: this runs on every open.
local function check_opts(fname, opts)
  if type(opts) ~= "table" then check.table(fname, 1, opts) end
  local sockopts, unix_only = false, false
  for k, v in next, opts do
    local kind = OPTIONS[k]
    if kind == SOCKOPT then sockopts = true
    elseif kind == UNIX_ONLY then unix_only = unix_only or v ~= false
    elseif not kind then check.known(fname, 1, opts, OPTIONS) end
  end
  local proto = opts.proto or "tcp"
  if not TYPE[proto] then check.oneof(fname, 1, proto, PROTOS, "proto") end
  local family, host, port = "unix", nil, nil
  if proto == "tcp" or proto == "udp" then
    if unix_only then
      check.argerror(fname, 1, "path, abstract and mode are for unix listeners")
    end
    host = opts.address or "0.0.0.0"
    family = type(host) == "string" and ip_family(host)
    if not family then
      check.argerror(fname, 1, "address: IP address expected, got " .. (type(host) == "string"
        and "'" .. host .. "'" or type(host)))
    end
    port = opts.port or 0
    if math.type(port) ~= "integer" or port < 0 or port > 65535 then port = check_port(fname, port) end
    if port == "auto" and not opts.allocator then
      check.argerror(fname, 1, "port \"auto\" needs allocator")
    end
  else
    check_unix(fname, opts)
  end
  local mode, backlog = opts.mode, opts.backlog
  if mode ~= nil and not (math.tointeger(mode) and mode >= 0 and mode <= 4095) then
    check.argerror(fname, 1, "mode: integer 0-4095 (0-07777) expected")
  end
  if backlog ~= nil and not (math.tointeger(backlog) and backlog >= 0 and backlog <= 0x7fffffff) then
    check.argerror(fname, 1, "backlog: non-negative integer expected")
  end
  local options
  if sockopts or family == "inet6" then options = check_sockopts(fname, opts, family, proto) end
  return proto, host, port, options
end

local function new_handle(proto, fd)
  local h
  if proto == "tcp" then h = uv.new_tcp()
  elseif proto == "udp" then h = uv.new_udp()
  elseif proto == "unix" then h = uv.new_pipe(false)
  else return uv.new_poll(fd) end
  local ok, err, code = h:open(fd)
  if not ok then
    h:close()
    return nil, err, code
  end
  return h
end

local function new_listener(proto, opts, h, fd, address, host, port)
  return setmetatable({
    proto = proto, name = opts.name, handle = h, fd = fd, host = host, port = port,
    address = address, backlog = opts.backlog or M.DEFAULT_BACKLOG,
    state = "open", accepted = 0, -- _conns: made by serve
    -- present, so reading them finds them without the __index function
    _sock = false, _group = false, _alloc = false,
  }, mt)
end

-- Wraps an open core socket. A stream's luv handle is made on first use
-- (see handle_of); udp's at once (luv's udp:open also sets SO_REUSEADDR,
-- which a udp listener has always had); unixgram keeps its socket object,
-- watched by a poll.
local function wrap(sock, proto, opts, address, host, port)
  local fd, h = sock:fd(), nil
  if TYPE[proto] == "dgram" then
    local err, code
    h, err, code = new_handle(proto, fd)
    if not h then
      sock:close()
      return nil, err, code
    end
  end
  local self = new_listener(proto, opts, h, fd, address, host, port)
  if proto == "unixgram" then self._sock = sock else sock:release() end
  return self
end

-- A stream listener's luv handle, made on first use (serve, or reading
-- l.handle): opening and closing a listener that never needed one (its fd
-- goes to a child, or it only held the port) costs no luv handle, no
-- ioctl(FIONBIO) of handle:open and no epoll_ctl of handle:close.
local function handle_of(self)
  local h, err, code
  if self.state == "open" then
    h, err, code = new_handle(self.proto, self.fd)
    if not h then return nil, err, code end
  else -- closed before it had one: a closed handle, as it would have had
    h = self.proto == "tcp" and uv.new_tcp() or uv.new_pipe(false)
    h:close()
  end
  rawset(self, "handle", h)
  return h
end

-- Opens the listener: the listener, or nil, msg, code. The C core makes
-- the socket (SOCK_NONBLOCK|SOCK_CLOEXEC), sets the options asked, binds
-- and listens, and knows where it is bound from the request: getsockname
-- only when the kernel picked the port. TCP, the common case, goes
-- positionally (core.tcp_open), with no spec table to build and read.
local function open_listener(proto, host, port, options, opts)
  local backlog = opts.backlog or M.DEFAULT_BACKLOG
  if proto == "tcp" then
    -- the listener first: the fd goes into a slot it already has, so
    -- nothing can fail between the socket's making and its keeping
    local l = new_listener("tcp", opts, nil, false, nil, host, false)
    local fd, bound_port, bound_host = core.tcp_open(host, port, backlog, options)
    if not fd then return nil, bound_port, bound_host end
    l.fd, l.port, l.host = fd, bound_port, bound_host
    return l
  end
  local sock, address, bound_host, bound_port, ino = core.listen{
    type = TYPE[proto], host = host, port = port, path = opts.path, abstract = opts.abstract,
    mode = opts.mode, backlog = backlog, options = options}
  if not sock then return nil, address, bound_host end
  local l, err, code = wrap(sock, proto, opts, address, bound_host, bound_port)
  if not l then return nil, err, code end
  if UNIX[proto] then l.path, l.abstract, l._ino = opts.path, opts.abstract, ino end
  return l
end

-- Allocate-and-bind as one step: a port someone else holds (EADDRINUSE)
-- stays reserved while we try the next, then all of those go back.
local function open_auto(proto, host, options, opts)
  local alloc, busy = opts.allocator, {}
  local l, err, code, port
  repeat
    port, err, code = alloc:allocate()
    if port then
      l, err, code = open_listener(proto, host, port, options, opts)
      if not l then
        if code == "conflict" then busy[#busy + 1] = port else alloc:release(port) end
      end
    end
  until l or code ~= "conflict"
  for _, p in ipairs(busy) do alloc:release(p) end
  if not l then return nil, err, code end
  l._alloc = alloc
  return l
end

--- Opens a listener.
-- @tparam table opts `proto` ("tcp" by default, "udp", "unix", "unixgram");
--   `address` (an IP literal, "0.0.0.0" by default; "::" is dual-stack
--   unless `v6only = true`) and `port` (0: the kernel picks; "auto": one
--   from `allocator`, returned on close); or `path` (with `mode`, e.g.
--   tonumber("660", 8)) or `abstract` (Linux's abstract namespace) for
--   unix; `backlog` (511); `name`; and socket options by name, see
--   `SOCKOPTS`: reuseaddr, reuseport, v6only, nodelay, keepalive, keepidle,
--   keepintvl, keepcnt, fastopen, defer_accept, rcvbuf, sndbuf, freebind,
--   bindtodevice, tos, linger, broadcast, local_port_range.
-- @return[1] a listener: `l.handle` is the luv handle, `l.port` the bound port
-- @return[2] nil, msg, code: "conflict" (EADDRINUSE), "denied" (EACCES),
--   "unsupported" (an option this system lacks), "exhausted" (no auto port),
--   or an errno name
-- @raise on a bad or unknown option, or one that does not apply to proto
function M.open(opts)
  local proto, host, port, options = check_opts("open", opts)
  if port == "auto" then return open_auto(proto, host, options, opts) end
  return open_listener(proto, host, port, options, opts)
end

--- Wraps an inherited socket (socket activation) as a listener.
-- @param fd an open socket fd, owned by the listener from now on
-- @tparam table opts `proto` (must match the socket) and `name`
-- @return[1] a listener with `activated = true`
-- @return[2] nil, msg, code ("protocol" when the fd is another kind)
function M.adopt(fd, opts)
  local proto = check.oneof("adopt", 2, opts.proto or "tcp", PROTOS, "proto")
  local sock, err, code = core.socket_adopt(fd)
  if not sock then return nil, err, code end
  local info = sock:info()
  local unix = proto == "unix" or proto == "unixgram"
  local family_ok = unix and info.family == "unix"
    or not unix and (info.family == "inet" or info.family == "inet6")
  if info.type ~= TYPE[proto] or not family_ok
     or (TYPE[proto] == "stream" and not info.listening) then
    sock:close()
    return nil, ("protocol: fd %d is a %s %s socket%s, not a %s listener"):format(fd,
      info.family, info.type, info.listening and " (listening)" or "", proto), "protocol"
  end
  local l, werr, wcode = wrap(sock, proto, opts, info.address, info.host, info.port)
  if not l then return nil, werr, wcode end
  -- no _ino: the socket file belongs to whoever made it (systemd), not us
  l.path, l.abstract, l.activated = info.path, info.abstract, true
  return l
end

--- Opens `count` listeners on one port with SO_REUSEPORT: the kernel
-- spreads connections (or datagrams) across them. Port 0 or "auto" picks
-- the port for the first; the others bind the same one. (Linux lets a
-- socket join a group only of the same user, so another user's listener
-- still makes "auto" move on; one of the same user's with SO_REUSEPORT set
-- would be joined.)
-- @return[1] an array of listeners
-- @return[2] nil, msg, code (none is left open)
-- @raise as `open`, or on a count below 1
function M.group(count, opts)
  local n = math.tointeger(count)
  if not n or n < 1 then check.argerror("group", 1, "count: positive integer expected") end
  check.table("group", 2, opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.reuseport = true
  local first, err, code = M.open(o)
  if not first then return nil, err, code end
  local members, shared = {first}, {open = n}
  first._group = shared
  o.port, o.allocator = first.port, nil
  for i = 2, n do
    local l
    l, err, code = M.open(o)
    if not l then
      for _, m in ipairs(members) do m:close() end
      return nil, err, code
    end
    l._group, members[i] = shared, l
  end
  -- the pool port goes back when the last member closes
  shared.alloc, first._alloc = first._alloc, nil
  shared.port = first.port
  return members
end

local function check_open(self, fname)
  if getmetatable(self) ~= mt then
    error(("bad self to '%s' (portman.listener expected)"):format(fname), 3)
  end
  if self.state == "closed" then error("attempt to use a closed listener", 3) end
  return self
end

--- Reads a socket option back (getsockopt).
-- @return[1] its value (boolean, integer, or string; false for linger off)
-- @return[2] nil, msg, "unsupported" when this system lacks it
-- @raise on an unknown option name or a closed listener
function Listener:getsockopt(name)
  check_open(self, "getsockopt")
  if not M.SOCKOPTS[name] then
    check.argerror("getsockopt", 1, ("unknown socket option '%s'"):format(tostring(name)))
  end
  return core.getsockopt(self.fd, name)
end

--- Sets a socket option now (after bind: some only matter before).
-- @return[1] true
-- @return[2] nil, msg, code
function Listener:setsockopt(name, value)
  check_open(self, "setsockopt")
  if not M.SOCKOPTS[name] then
    check.argerror("setsockopt", 1, ("unknown socket option '%s'"):format(tostring(name)))
  end
  check_value("setsockopt", 2, name, value)
  return core.setsockopt(self.fd, name, value)
end

--- Every option that applies to this listener, read back from the socket;
-- options this system lacks are left out.
function Listener:options()
  check_open(self, "options")
  local info, out = core.sockinfo(self.fd), {}
  for name, o in pairs(M.SOCKOPTS) do
    if o.available and o[info.family] and o[info.type] then
      local v = core.getsockopt(self.fd, name)
      if v ~= nil then out[name] = v end
    end
  end
  out.backlog = self.backlog
  return out
end

--- The socket's kernel view: family, type, address, host, port, path,
-- listening, cloexec, nonblock.
function Listener:info()
  check_open(self, "info")
  return core.sockinfo(self.fd)
end

-- luv frees a handle's memory once its close completes, and is_closing
-- then raises "Expected uv_handle userdata": that handle is closed too.
local function is_open(handle)
  local ok, closing = pcall(handle.is_closing, handle)
  return ok and not closing
end

--- Open connections accepted by `serve` and not closed yet.
function Listener:connections()
  local n = 0
  for c in pairs(self._conns or {}) do
    if is_open(c) then n = n + 1 else self._conns[c] = nil end
  end
  return n
end

local function accept_stream(self, handler)
  return async.safe(function(err)
    if err then
      log.warn("accept_failed", {listener = self.name or self.address, error = err})
      return
    end
    local c = self.proto == "tcp" and uv.new_tcp() or uv.new_pipe(false)
    if not self.handle:accept(c) then
      c:close()
      return
    end
    self._conns[c] = true
    self.accepted = self.accepted + 1
    if self.accepted % 256 == 0 then self:connections() end -- prune closed ones
    handler(c, self)
  end, "listener.accept")
end

--- Starts serving. Streams: handler(client, listener) for each accepted
-- connection, client a luv tcp or pipe handle the handler owns (closing it
-- ends the connection's count). udp: handler(err, data, addr, flags) as
-- luv's recv_start. unixgram: handler(err, data, from_address).
-- Handler errors are logged, never raised into the loop.
function Listener:serve(handler)
  check_open(self, "serve")
  if type(handler) ~= "function" then check.argerror("serve", 1, "function expected") end
  if self.state ~= "open" then error("listener is " .. self.state, 2) end
  if TYPE[self.proto] == "stream" then
    local h, herr, hcode = rawget(self, "handle"), nil, nil
    if not h then h, herr, hcode = handle_of(self) end
    if not h then return nil, herr, hcode end
    -- weak: a connection closed and collected leaves by itself; luv anchors
    -- the open ones, so none is lost from the count
    self._conns = self._conns or setmetatable({}, {__mode = "k"})
    local ok, err, code = h:listen(self.backlog, accept_stream(self, handler))
    if not ok then return nil, err, code end
  elseif self.proto == "udp" then
    local on = async.safe(function(err, data, addr, flags)
      if data then self.accepted = self.accepted + 1 end
      handler(err, data, addr, flags)
    end, "listener.recv")
    return self.handle:recv_start(on)
  else
    self.handle:start("r", async.safe(function(perr)
      if perr then return handler(perr) end
      while self.state ~= "closed" do
        local data, from, code = core.dgram_recv(self.fd)
        if not data then
          if code ~= "EAGAIN" then handler(from) end
          return
        end
        self.accepted = self.accepted + 1
        handler(nil, data, from)
      end
    end, "listener.recv"))
  end
  return true
end

--- unixgram: sends data to the socket at path (or abstract name).
-- @return[1] bytes sent
-- @return[2] nil, msg, code
function Listener:send(data, path, abstract)
  check_open(self, "send")
  return core.dgram_send(self.fd, data, path, abstract)
end

-- Gives back what the socket held: the pool port, the socket file.
local function give_back(self)
  local g = self._group
  if g then
    g.open = g.open - 1
    if g.open == 0 and g.alloc then g.alloc:release(g.port) end
  elseif self._alloc then
    self._alloc:release(self.port)
  end
  if self.path and self._ino then core.unlink_socket(self.path, self._ino) end
end

-- Closes the listening socket: the handle's, or the raw fd of a stream
-- that never needed one.
local function stop_accepting(self)
  if self.state ~= "open" then return end
  self.state = "draining"
  local h = rawget(self, "handle")
  if h then
    if not h:is_closing() then h:close() end
  elseif not self._sock then -- a stream that never needed its handle
    core.close_fd(self.fd)
  end
  if self._sock then self._sock:close() end
  give_back(self)
end

--- Stops accepting: closes the listening socket (queued connections that
-- were never accepted are reset), keeps accepted ones. Idempotent.
Listener.stop_accepting = stop_accepting

--- Closes the listener now; accepted connections stay with their owner.
-- Idempotent; also the __close metamethod.
function Listener:close()
  if self.state == "closed" then return end
  stop_accepting(self)
  self.state = "closed"
end

--- Drains: stops accepting, waits until every accepted connection is
-- closed or grace_ms pass, closes those still open, then closes.
-- Callback form `l:drain(grace_ms, cb)`, or in a task `local forced = l:drain(ms)`.
-- @return the number of connections closed by force
Listener.drain = async.adapt(function(self, grace_ms, cb)
  if type(grace_ms) == "function" then grace_ms, cb = 0, grace_ms end
  check_open(self, "drain")
  if not math.tointeger(grace_ms) or grace_ms < 0 then
    check.argerror("drain", 1, "grace_ms: non-negative integer expected")
  end
  stop_accepting(self)
  if self:connections() == 0 then
    self.state = "closed"
    return cb(0)
  end
  local timer, watch = uv.new_timer(), uv.new_check()
  local function finish()
    if timer:is_closing() then return end
    timer:close()
    watch:close()
    local forced = 0
    for c in pairs(self._conns or {}) do
      if is_open(c) then
        c:close()
        forced = forced + 1
      end
      self._conns[c] = nil
    end
    self.state = "closed"
    cb(forced)
  end
  -- a check handle runs after each I/O phase: the moment a handler closes
  -- its last connection, the drain finishes (no polling interval)
  watch:start(async.safe(function()
    if self:connections() == 0 then finish() end
  end, "listener.drain"))
  timer:start(grace_ms, 0, async.safe(finish, "listener.drain"))
end)

-- A function, for what a listener makes on first use: its luv handle, and
-- a TCP listener's address. Every other key reads Listener (the
-- listener's own fields, set in new_listener, never get here).
mt.__index = function(self, k)
  if k == "handle" then
    local h, err = handle_of(self)
    if not h then error("listener handle: " .. tostring(err), 2) end
    return h
  elseif k == "address" and rawget(self, "proto") == "tcp" then
    local host = self.host
    local a = (host:find(":", 1, true) and "[%s]:%d" or "%s:%d"):format(host, self.port)
    rawset(self, "address", a)
    return a
  end
  return Listener[k]
end

-- No __gc: at lua_close luv may free its loop and handles first, and a
-- finalizer touching them then crashes. The luv handle outlives a lost
-- listener object anyway (luv anchors it until closed), as in luv itself.
mt.__close = Listener.close
mt.__tostring = function(self)
  return ("portman.listener %s %s (%s)"):format(self.proto, self.address, self.state)
end

--- Is v a listener?
function M.is_listener(v) return getmetatable(v) == mt end

return M
