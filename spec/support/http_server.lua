--- A small HTTP/1.1 server on luv for specs, on 127.0.0.1 and an
-- ephemeral port. handler(req) gets {method, path, headers, body} and
-- returns {status, body, chunks, endless, hang, raw, close, headers}: chunks
-- are sent with chunked encoding 20 ms apart; endless is a chunk sent again
-- and again (as fast as the client reads) until the client goes away or
-- `limit` bytes went out; hang never answers; raw is written as is and the
-- connection closed; close closes without a word; headers (a string) are
-- extra header lines.
local uv = require "luv"

local M = {}

local REASONS = {[200] = "OK", [401] = "Unauthorized", [404] = "Not Found",
                 [500] = "Internal Server Error", [503] = "Service Unavailable"}

local function parse(buf)
  local head, rest = buf:match("^(.-)\r\n\r\n(.*)$")
  if not head then return nil end
  local method, path = head:match("^(%u+) (%S+) HTTP/1%.%d")
  local headers = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[k:lower()] = v end
  local len = tonumber(headers["content-length"] or "0")
  if #rest < len then return nil end
  return {method = method, path = path, headers = headers, body = rest:sub(1, len)}, rest:sub(len + 1)
end

--- Starts a server; returns it with `port`, `requests` (a count) and
-- `close()`.
function M.start(handler)
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", 0))
  server:unref() -- the server never keeps the loop going on its own
  local self = {port = server:getsockname().port, requests = 0, clients = {}}
  local function respond(client, res)
    if res.hang then return end
    if res.close then return client:close() end
    if res.raw then
      client:write(res.raw)
      return client:shutdown(function() client:close() end)
    end
    local status = res.status or 200
    local head = ("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"):format(status, REASONS[status] or "X")
      .. (res.headers or "")
    if res.endless then
      client:write(head .. "Transfer-Encoding: chunked\r\n\r\n")
      local frame, sent = ("%x\r\n%s\r\n"):format(#res.endless, res.endless), 0
      local function more()
        if client:is_closing() or sent >= (res.limit or math.huge) then return end
        sent = sent + #res.endless
        client:write(frame, function(err) if not err then more() end end)
      end
      return more()
    end
    if not res.chunks then
      local body = res.body or ""
      return client:write(head .. ("Content-Length: %d\r\n\r\n"):format(#body) .. body)
    end
    client:write(head .. "Transfer-Encoding: chunked\r\n\r\n")
    local i = 0
    local t = uv.new_timer()
    t:unref()
    t:start(0, 20, function()
      i = i + 1
      local c = res.chunks[i]
      if client:is_closing() then t:close() return end
      if c then
        client:write(("%x\r\n%s\r\n"):format(#c, c))
      else
        t:close()
        client:write("0\r\n\r\n")
      end
    end)
  end
  server:listen(64, function()
    local client = uv.new_tcp()
    server:accept(client)
    client:unref()
    self.clients[client] = true
    local buf = ""
    client:read_start(function(err, data)
      if err or not data then
        self.clients[client] = nil
        if not client:is_closing() then client:close() end
        return
      end
      buf = buf .. data
      while true do
        local req, rest = parse(buf)
        if not req then break end
        buf = rest
        self.requests = self.requests + 1
        respond(client, handler(req))
        if client:is_closing() then break end
      end
    end)
  end)
  --- Closes the connections the server accepted.
  function self.drop()
    for c in pairs(self.clients) do if not c:is_closing() then c:close() end end
    self.clients = {}
  end
  function self.close()
    self.drop()
    if not server:is_closing() then server:close() end
  end
  return self
end

--- A port on 127.0.0.1 that refuses connections (bound, then closed).
function M.closed_port()
  local s = uv.new_tcp()
  assert(s:bind("127.0.0.1", 0))
  local port = s:getsockname().port
  s:close()
  return port
end

return M
