-- Started by spec/listeners_spec.lua the way systemd starts a service: with
-- LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES set and the socket as fd 3.
-- Opens the "web" listener (adopted when inherited), prints one JSON line
-- describing it, serves one connection, then stops and exits.
local uv = require "luv"
local cjson = require "cjson"
local manager = require "portman.listeners"

local m = manager.new()
local function served(client)
  client:write(("served by %d\n"):format(uv.os_getpid()), function()
    client:close()
    m:stop_all(function() end)
  end)
end
assert(m:open{web = {proto = "tcp", address = "127.0.0.1", port = 0, handler = served}})
local d = m:list()[1]
io.stdout:write(cjson.encode{
  name = d.name, port = d.port, activated = d.activated, unclaimed = #m:unclaimed(),
  -- the variables are unset once read, so this process's children do not see them
  listen_fds = os.getenv("LISTEN_FDS") or cjson.null,
}, "\n")
io.stdout:flush()
uv.run()
