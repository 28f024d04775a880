-- A small TCP server for the exec specs: it serves on the port in argv[1],
-- or, with "fd3", on the socket at fd 3 (socket activation), after waiting
-- argv[2] ms. Each connection gets "<pid> <LISTEN_FDS> <PORTMAN_PORT>\n".
local uv = require "luv"
local how, delay = arg[1], tonumber(arg[2] or "0")
local server = uv.new_tcp()
if how == "fd3" then
  assert(server:open(3))
else
  assert(server:bind("127.0.0.1", tonumber(how)))
end
local function serve()
  assert(server:listen(64, function()
    local c = uv.new_tcp()
    server:accept(c)
    c:write(("%d %s %s\n"):format(uv.os_getpid(), os.getenv("LISTEN_FDS") or "-", os.getenv("PORTMAN_PORT") or "-"),
      function() c:close() end)
  end))
end
if delay > 0 then uv.new_timer():start(delay, 0, serve) else serve() end
uv.run()
