--- Tunnel checks for a client behind a strict firewall: an HTTP CONNECT
-- through a proxy and a WebSocket upgrade through the tunnel, with the
-- helpers that build and check their heads (RFC 9110 9.3.6, RFC 6455).
-- Failures follow docs/design.md, "Errors": nil, msg, code.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local errors = require "portman.errors"
local resolver = require "portman.resolver"

local M = {}

-- Names go through portman's resolver (its cache and configured servers).
local lookup = resolver.lookup

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

-- A parsed head: response as it is, or parsed from its raw text.
local function head_of(response)
  if type(response) ~= "string" then return response end
  local head, err, code = M.parse_response(response)
  if not head then return nil, err or "protocol: incomplete response head", code or "protocol" end
  return head
end

--- Validates the server's answer to an upgrade request (RFC 6455 4.1, the
-- client's checks): status 101, Upgrade: websocket, Connection: Upgrade, and
-- Sec-WebSocket-Accept matching key; a subprotocol only among those asked.
-- @param response a parsed head (from `parse_response`) or the raw text
-- @return[1] true, the parsed head
-- @return[2] nil, "protocol: ...", "protocol"
function M.websocket_validate(response, key, protocols)
  local err, code
  response, err, code = head_of(response)
  if not response then return nil, err, code end
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
  local err, code
  response, err, code = head_of(response)
  if not response then return nil, err, code end
  local s = response.status
  if s >= 200 and s < 300 then return true, response end
  code = (s == 403 or s == 407) and "denied" or (s == 502 or s == 503) and "unreachable"
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
  local proxy_text, target_text = host_port(phost, pport), host_port(thost, tport)
  local started = uv.hrtime()
  local tcp = uv.new_tcp()
  local done = false
  local finish = async.with_timeout(timeout, function(...)
    done = true
    if not tcp:is_closing() then tcp:close() end
    cb(...)
  end, "no answer through " .. proxy_text)
  local function fail(msg, code) finish(nil, msg, code) end
  local buf, stage, connect_status = "", "connect", nil
  local function on_head(head, rest)
    if stage == "connect" then
      local ok, err, code = M.connect_validate(head)
      if not ok then return fail(err, code) end
      if not ws_req then
        return finish({proxy = proxy_text, target = target_text, status = head.status, websocket = false,
                       elapsed_ms = (uv.hrtime() - started) // 1000000})
      end
      stage, buf, connect_status = "websocket", rest, head.status
      tcp:write(ws_req)
      return true
    end
    local ok, err, code = M.websocket_validate(head, ws_key)
    if not ok then return fail(err, code) end
    finish({proxy = proxy_text, target = target_text, status = connect_status, websocket = true,
            elapsed_ms = (uv.hrtime() - started) // 1000000})
  end
  local function on_read(err, data)
    if done then return end
    if err then return finish(errors.from(err, "read from " .. proxy_text)) end
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
  lookup(phost, nil, function(addr, ferr, fcode)
    if done then return end
    if not addr then return fail(ferr, fcode) end
    local ok, cerr = tcp:connect(addr, pport, async.safe(function(err)
      if done then return end
      if err then return finish(errors.from(err, "connect " .. proxy_text)) end
      tcp:read_start(async.safe(on_read, "tunnel.check_proxy"))
      tcp:write(connect_req)
    end, "tunnel.check_proxy"))
    if not ok then finish(errors.from(cerr, "connect " .. proxy_text)) end
  end)
end)

return M
