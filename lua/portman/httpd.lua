--- A small HTTP/1.1 server on the luv loop, for the daemon's /metrics,
-- status page and health endpoint (docs/design.md, "The HTTP endpoint").
-- It answers GET and HEAD on a fixed set of paths; the request heads are
-- parsed by the C core's strict parser (csrc/httpd.c). Every connection
-- is bounded: its head by MAX_HEAD bytes (431 past it), the time it may
-- take to send a head or read an answer by IDLE_MS (408, then closed),
-- the connections at once by MAX_CONNECTIONS (503 to the next). A
-- request body is refused (400), another method gets 405, an unknown path
-- 404, a malformed head 400. Handlers run on the loop and must not block.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local log = require "portman.log"
local async = require "portman.async"
local errors = require "portman.errors"

local M = {}

M.MAX_HEAD = 8192        -- bytes in a request head
M.IDLE_MS = 10000        -- ms to send a whole head, or to read an answer
M.MAX_CONNECTIONS = 64   -- at once; more get 503
M.LINGER_MS = 2000       -- ms an error answer waits for the client to finish sending
M.LINGER_BYTES = 4 * 1024 * 1024 -- bytes read and dropped meanwhile

local REASONS = {[200] = "OK", [400] = "Bad Request", [404] = "Not Found", [405] = "Method Not Allowed",
                 [408] = "Request Timeout", [431] = "Request Header Fields Too Large",
                 [500] = "Internal Server Error", [503] = "Service Unavailable"}
local OPTS = {max_head = true, idle_ms = true, max_connections = true}

--- Splits "host:port" or "[v6]:port" into host, port.
-- @return[1] host, port (an integer 0-65535; 0: the kernel picks)
-- @return[2] nil, msg, "protocol"
function M.parse_address(s)
  if type(s) ~= "string" then return nil, "protocol: http address: string expected", "protocol" end
  local host, port = s:match("^%[([%x:.]+)%]:(%d+)$")
  if not host then host, port = s:match("^([^:%[%]]+):(%d+)$") end
  port = port and math.tointeger(tonumber(port))
  if not host or not port or port > 65535 then
    return nil, ("protocol: http address '%s': HOST:PORT expected (e.g. 127.0.0.1:9207)"):format(s), "protocol"
  end
  return host, port
end

local function head_of(status, headers, len, close)
  local lines = {("HTTP/1.1 %d %s\r\n"):format(status, REASONS[status] or "Unknown")}
  for _, h in ipairs(headers or {}) do lines[#lines + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  lines[#lines + 1] = ("Content-Length: %d\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
    .. "Connection: %s\r\n\r\n"):format(len, close and "close" or "keep-alive")
  return table.concat(lines)
end

local TEXT = "text/plain; charset=utf-8"

-- One client connection.
local Conn = {}
Conn.__index = Conn

function Conn:close()
  if self.closed then return end
  self.closed = true
  self.server.count = self.server.count - 1
  self.server.conns[self] = nil
  if not self.timer:is_closing() then self.timer:close() end
  if not self.tcp:is_closing() then self.tcp:close() end
end

-- The deadline for the next head (or for the answer being read).
function Conn:arm(ms, fn)
  self.timer:start(ms, 0, async.safe(fn, "http timer"))
end

-- After an error answer: the client may still be sending (a huge head);
-- its bytes are read and dropped for a while, so that the kernel does not
-- reset the connection before the client has read the answer.
function Conn:linger()
  self.lingering, self.dropped = true, 0
  self.tcp:shutdown(function() end)
  self:arm(M.LINGER_MS, function() self:close() end)
end

-- The length of a body: a string, or a list of strings written in order.
local function length(body)
  if type(body) == "string" then return #body end
  local n = 0
  for _, s in ipairs(body) do n = n + #s end
  return n
end

--- Sends an answer (body: a string or a list of strings); close: the
-- connection ends after it.
function Conn:send(status, ctype, body, close, extra, head_only)
  local headers = {{"Content-Type", ctype or TEXT}}
  for _, h in ipairs(extra or {}) do headers[#headers + 1] = h end
  self.writing = true
  if self.server.on_status then self.server.on_status(status) end
  self:arm(self.server.idle_ms, function() self:close() end) -- a client that does not read
  local head = head_of(status, headers, length(body), close)
  local out = {head}
  if not head_only and type(body) == "string" then
    out[2] = body
  elseif not head_only then
    table.move(body, 1, #body, 2, out)
  end
  self.tcp:write(out, function(err)
    self.writing = false
    if self.closed then return end
    if err then return self:close() end
    if close then return self:linger() end
    self:arm(self.server.idle_ms, function() self:timeout() end)
    if self.paused then
      self.paused = false
      self.tcp:read_start(self.reader)
    end
    self:process()
  end)
end

function Conn:fail(status, msg, extra)
  self.failed = true
  self:send(status, TEXT, msg .. "\n", true, extra)
end

function Conn:timeout()
  if #self.buf > 0 then return self:fail(408, "request timeout: the request head did not arrive in time") end
  self:close() -- an idle keep-alive connection
end

-- Runs the handler of a parsed request and answers.
function Conn:answer(req)
  local path = req.target:match("^[^?#]*")
  local route = self.server.routes[path]
  local close = req.close or (req.minor == 0 and not req.keep_alive)
  if req.method ~= "GET" and req.method ~= "HEAD" then
    return self:fail(405, "method not allowed: " .. req.method, {{"Allow", "GET, HEAD"}})
  end
  if (req.content_length or 0) > 0 or req.chunked then
    return self:fail(400, "bad request: a " .. req.method .. " request has no body here")
  end
  if not route then return self:send(404, TEXT, "not found: " .. path .. "\n", close, nil, req.method == "HEAD") end
  local ok, status, ctype, body, extra = xpcall(route, debug.traceback, req)
  if not ok then
    log.error("http_handler_failed", {path = path, error = status})
    return self:fail(500, "internal error")
  end
  self:send(status, ctype, body, close, extra, req.method == "HEAD")
end

-- Answers the next whole request in the buffer, if one came.
function Conn:process()
  if self.closed or self.writing or self.failed then return end
  local max = self.server.max_head
  local req, err = core.httpd_parse(#self.buf > max and self.buf:sub(1, max) or self.buf)
  if req == false then
    if #self.buf >= max then
      return self:fail(431, ("request head too large: more than %d bytes"):format(max))
    end
    return
  end
  if not req then return self:fail(400, "bad request: " .. tostring(err):gsub("^protocol: ", "")) end
  self.buf = self.buf:sub(req.head + 1)
  self.server.requests = self.server.requests + 1
  self:answer(req)
end

function Conn:on_data(err, data)
  if self.closed then return end
  if err or not data then return self:close() end
  if self.lingering then
    self.dropped = self.dropped + #data
    if self.dropped > M.LINGER_BYTES then self:close() end
    return
  end
  if self.failed then return end
  self.buf = self.buf .. data
  -- pipelined requests wait while an answer is written; past a few heads'
  -- worth the client is not read until the answer is out (when nothing is
  -- being written, process() refuses a head past max_head at once)
  if self.writing and #self.buf > 4 * self.server.max_head then
    self.tcp:read_stop()
    self.paused = true
  end
  self:process()
end

local function accept(server)
  local tcp = uv.new_tcp()
  if not server.handle:accept(tcp) then return tcp:close() end
  server.count = server.count + 1
  local c = setmetatable({server = server, tcp = tcp, buf = "", timer = uv.new_timer()}, Conn)
  server.conns[c] = true
  if server.count > server.max_connections then
    c.failed = true
    tcp:read_start(function(err, data) c:on_data(err, data) end)
    return c:send(503, TEXT, "too many connections\n", true)
  end
  c:arm(server.idle_ms, function() c:timeout() end)
  c.reader = async.safe(function(err, data) c:on_data(err, data) end, "http read")
  tcp:read_start(c.reader)
end

--- Serves routes on address ("host:port").
-- @tparam table routes path -> fn(req) returning status, content type,
--   body (a string, or a list of strings to write in order), and optionally a list of {name, value} headers; req
--   is the parsed head ({method, target, minor, ...})
-- @tparam[opt] table opts `max_head`, `idle_ms`, `max_connections`
--   (defaults: MAX_HEAD, IDLE_MS, MAX_CONNECTIONS)
-- @return[1] the server: {address, port, close(), count (connections
--   open), requests (heads parsed)}; set its `on_status` to a function
--   to be called with the status code of each answer
-- @return[2] nil, msg, code (conflict for a port in use, protocol for a
--   bad address)
function M.serve(address, routes, opts)
  check.table("serve", 2, routes)
  opts = opts or {}
  check.table("serve", 3, opts)
  check.known("serve", 3, opts, OPTS)
  local host, port = M.parse_address(address)
  if not host then return nil, port, "protocol" end
  local handle, server = uv.new_tcp(), nil
  local ok, err = handle:bind(host, port)
  if ok then ok, err = handle:listen(128, async.safe(function(lerr)
    if not lerr and server then accept(server) end
  end, "http accept")) end
  if not ok then
    handle:close()
    return errors.from(err, "http listen on " .. address)
  end
  local name = handle:getsockname()
  server = {address = name.ip, port = name.port, handle = handle, routes = routes, count = 0, requests = 0,
                  conns = {},
                  max_head = opts.max_head or M.MAX_HEAD, idle_ms = opts.idle_ms or M.IDLE_MS,
                  max_connections = opts.max_connections or M.MAX_CONNECTIONS}
  -- stops listening and closes every connection
  function server.close()
    if not handle:is_closing() then handle:close() end
    for c in pairs(server.conns) do c:close() end
  end
  return server
end

return M
