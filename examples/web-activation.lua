-- A web service under socket activation: portman binds the port (from a
-- pool), keeps it bound across the program's restarts, and hands it to
-- the program as fd 3 with LISTEN_FDS=1 and LISTEN_PID, as systemd does.
-- The program here is examples/bin/http-fd3.lua, a small luv HTTP/1.0
-- responder, so the example needs no other package.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
if here:sub(1, 1) ~= "/" then here = require("luv").cwd() .. "/" .. here end

return {
  pools = {
    web = {range = {28080, 28099}},
  },
  services = {
    {name = "web", type = "web", pool = "web", activation = true,
     exec = {"lua5.4", here .. "/bin/http-fd3.lua"},
     restart = "on-failure", stop_timeout = 5000,
     check = {kind = "tcp", interval = 1000, timeout = 1000, rise = 1, fall = 2}},
  },
  grace = 2000,
}
