-- Listener open/close rate: portman.listener (C socket, options, luv
-- handle) against luv's own tcp bind+listen+close as the baseline, in the
-- same run. Prints cycles per second for each.
local uv = require "luv"
local listener = require "portman.listener"

local N = tonumber(arg and arg[1]) or 20000

local function rate(name, fn)
  uv.run("nowait")
  local t0 = uv.hrtime()
  for i = 1, N do
    fn()
    if i % 1000 == 0 then uv.run("nowait") end
  end
  uv.run("nowait")
  local secs = (uv.hrtime() - t0) / 1e9
  print(("%-44s %8d cycles  %8.0f /s  %6.1f us each"):format(name, N, N / secs, secs * 1e6 / N))
  return N / secs
end

local base = rate("baseline: luv tcp bind+listen+close", function()
  local t = uv.new_tcp()
  assert(t:bind("127.0.0.1", 0))
  assert(t:listen(511, function() end))
  t:close()
end)
local plain = rate("listener.open tcp + close", function()
  listener.open{address = "127.0.0.1"}:close()
end)
local opts = rate("listener.open tcp, 6 options + close", function()
  listener.open{address = "127.0.0.1", reuseaddr = true, reuseport = true, nodelay = true,
                keepalive = true, keepidle = 30, fastopen = 16}:close()
end)
rate("listener.open udp + close", function()
  listener.open{proto = "udp", address = "127.0.0.1"}:close()
end)
rate("listener.open unix abstract + close", function()
  listener.open{proto = "unix", abstract = "portman-bench"}:close()
end)
print(("listener/baseline: %.2fx plain, %.2fx with options"):format(plain / base, opts / base))
