-- Started by spec/activation_spec.lua under systemd-socket-activate, which
-- execs it in its own place (so LISTEN_PID is this process) with three
-- listening sockets named web, api and spare as fds 3, 4 and 5. Prints one
-- JSON line (what listeners.activation() read, the listeners it adopted,
-- whether the fds are close-on-exec now), tells NOTIFY_SOCKET it is ready,
-- serves one connection on web and api, then stops.
local uv = require "luv"
local core = require "portman.core"
local cjson = require "cjson"
local listeners = require "portman.listeners"
local notify = require "portman.notify"

local seen = {LISTEN_FDS = os.getenv("LISTEN_FDS"), LISTEN_FDNAMES = os.getenv("LISTEN_FDNAMES"),
              LISTEN_PID = os.getenv("LISTEN_PID")}
local activation = listeners.activation()
local n = notify.new()
local m = listeners.new() -- reads the same variables, then unsets them
local left = 2
local function serve(name)
  return function(client)
    client:write(("%s served by %d\n"):format(name, uv.os_getpid()), function()
      client:close()
      left = left - 1
      if left == 0 then
        n:stopping()
        n:close()
        m:stop_all(function() end)
      end
    end)
  end
end
-- what a daemon would bind when not activated: another port, any will do
local ok, err = m:open{web = {address = "127.0.0.1", port = 0, handler = serve("web")},
                       api = {address = "127.0.0.1", port = 0, handler = serve("api")}}
assert(ok, err)
local list = {}
for _, d in ipairs(m:list()) do
  list[#list + 1] = {name = d.name, port = d.port, activated = d.activated, fd = m:get(d.name)[1].fd}
end
local cloexec = {}
for fd = 3, 5 do cloexec[#cloexec + 1] = core.sockinfo(fd).cloexec end
io.stdout:write(cjson.encode{
  pid = uv.os_getpid(), seen = seen, activation = activation, listeners = list,
  unclaimed = m:unclaimed(), cloexec = cloexec, listen_fds_after = os.getenv("LISTEN_FDS") or cjson.null,
}, "\n")
io.stdout:flush()
n:ready("serving web and api")
uv.run()
