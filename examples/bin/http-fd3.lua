#!/usr/bin/env lua5.4
-- A tiny HTTP/1.0 responder for socket activation: it serves the listening
-- socket it was given as fd 3 (LISTEN_FDS=1, as systemd and portman pass
-- it), answering every request with one page naming the service. Needs
-- only luv. Used by examples/web-activation.lua.
local uv = require "luv"

local fds = tonumber(os.getenv("LISTEN_FDS") or "")
if fds ~= 1 then
  io.stderr:write("http-fd3: expects one socket as fd 3 (LISTEN_FDS=1)\n")
  os.exit(2)
end
local name = os.getenv("PORTMAN_SERVICE") or os.getenv("LISTEN_FDNAMES") or "web"
local body = ("hello from %s (pid %d)\n"):format(name, uv.os_getpid())
local reply = ("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s")
  :format(#body, body)

local server = uv.new_tcp()
assert(server:open(3))
assert(server:listen(128, function(err)
  if err then return end
  local c = uv.new_tcp()
  if not server:accept(c) then return c:close() end
  local got = ""
  c:read_start(function(rerr, data)
    if rerr or not data then return c:close() end
    got = got .. data
    if got:find("\r?\n\r?\n") or #got > 8192 then -- the request's head is in
      c:read_stop()
      c:write(reply, function() c:shutdown(function() c:close() end) end)
    end
  end)
end))

-- SIGTERM (portman's stop signal): stop accepting and leave
local term = uv.new_signal()
term:start("sigterm", function()
  term:close()
  server:close()
  uv.stop()
end)
uv.run()
