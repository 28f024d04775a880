-- Started through core.spawn (spec/spawn_spec.lua) or portman.supervisor
-- (spec/supervisor_spec.lua) with listening TCP sockets at fds 3, 4, ...
-- and listen_fds. Writes one JSON line to the file named by its first
-- argument (what it saw: its pid, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES,
-- the port and close-on-exec flag of each fd from 3, whether fd 3 + #fds
-- is open), then serves one connection on fd 3 ("<name> served by <pid>"
-- with the first of LISTEN_FDNAMES, or "fd3") and exits 0.
local uv = require "luv"
local core = require "portman.core"
local cjson = require "cjson"

local report = assert(arg[1], "usage: spawned_child.lua REPORT")
local n = math.tointeger(tonumber(os.getenv("LISTEN_FDS") or "")) or 0
local fds = {}
for fd = 3, 2 + n do
  local info = core.sockinfo(fd)
  fds[#fds + 1] = {fd = fd, port = info and info.port, listening = info and info.listening,
                   cloexec = info and info.cloexec}
end
local after = core.sockinfo(3 + n)
local f = assert(io.open(report, "w"))
f:write(cjson.encode{
  pid = uv.os_getpid(), listen_fds = os.getenv("LISTEN_FDS") or cjson.null,
  listen_pid = os.getenv("LISTEN_PID") or cjson.null, listen_fdnames = os.getenv("LISTEN_FDNAMES") or cjson.null,
  fds = fds, next_fd_open = after ~= nil,
}, "\n")
f:close()
local name = (os.getenv("LISTEN_FDNAMES") or ""):match("^[^:]+") or "fd3"
local server = uv.new_tcp()
assert(server:open(3))
assert(server:listen(16, function()
  local client = uv.new_tcp()
  server:accept(client)
  client:write(("%s served by %d\n"):format(name, uv.os_getpid()), function()
    client:close()
    server:close()
  end)
end))
uv.run()
