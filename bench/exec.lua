-- Supervised programs: the time from `portman run` to every service
-- healthy for 50 exec'd programs (a small luv TCP server each, binding
-- its own port), and portman's RSS and CPU with 200 idle supervised
-- programs (`sleep`). Runs the daemon in a network namespace of its own
-- (unshare -n: needs root). From the repo root: lua5.4 bench/exec.lua
package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local helpers = require "helpers"
local json = require "cjson"

local LUA = os.getenv("PORTMAN_LUA") or "lua5.4"
local SERVER = [[local uv = require "luv"; local s = uv.new_tcp()
assert(s:bind("127.0.0.1", tonumber(os.getenv("PORTMAN_PORT")))); assert(s:listen(64, function()
local c = uv.new_tcp(); s:accept(c); c:close() end)); uv.run()]]

local tmpdir = helpers.tmpdir

local function policy(dir, n, idle)
  local lines = {"return {pools = {p = {range = {40000, 41999}}}, services = {"}
  for i = 1, n do
    if idle then
      lines[#lines + 1] = ('{name = "s%d", pool = "p", address = "127.0.0.1", check = false, '
        .. 'exec = {"sleep", "100000"}},'):format(i)
    else
      lines[#lines + 1] = ('{name = "s%d", pool = "p", address = "127.0.0.1", exec = {%q, "-e", %q}, '
        .. 'check = {kind = "tcp", interval = 100, timeout = 500, rise = 1, fall = 2, jitter = 0}},')
        :format(i, LUA, SERVER)
    end
  end
  lines[#lines + 1] = "}}"
  local path = ("%s/policy-%d.lua"):format(dir, n)
  local f = assert(io.open(path, "w"))
  f:write(table.concat(lines, "\n"))
  f:close()
  return path
end

local function status(sock)
  local p = io.popen(("%s bin/portman status --json --admin-socket %s 2>/dev/null"):format(LUA, sock))
  local out = p:read("a")
  p:close()
  local ok, doc = pcall(json.decode, out)
  return ok and doc or nil
end

local function sleep_ms(ms)
  local t = uv.new_timer()
  t:start(ms, 0, function() t:close() end)
  uv.run("once")
end

local function ticks(pid) -- utime + stime, in clock ticks
  local f = io.open("/proc/" .. pid .. "/stat")
  local s = f:read("a")
  f:close()
  local fields = {}
  for w in s:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = w end
  return tonumber(fields[12]) + tonumber(fields[13])
end

local function rss_kib(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  local rss = tonumber(f:read("a"):match("VmRSS:%s+(%d+)"))
  f:close()
  return rss
end

-- Starts the daemon in a namespace; returns its process and pid.
local function start(dir, path)
  local proc
  local args = {"-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "netns", LUA, "bin/portman", "run",
                path, "--state-dir", dir, "--admin-socket", dir .. "/adm/s"}
  local pid
  proc, pid = uv.spawn("unshare", {args = args, stdio = {nil, nil, nil}}, function() proc:close() end)
  return proc, pid
end

local function stop(proc)
  proc:kill("sigterm")
  while not proc:is_closing() do uv.run("once") end
end

local dir = tmpdir()

-- 1. 50 programs: from the start to every one healthy
local n = 50
local path = policy(dir, n, false)
local t0 = uv.hrtime()
local proc = start(dir, path)
local healthy
repeat
  sleep_ms(20)
  local doc = status(dir .. "/adm/s")
  healthy = 0
  for _, s in ipairs(doc and doc.services or {}) do
    if s.status == "healthy" then healthy = healthy + 1 end
  end
until healthy == n or (uv.hrtime() - t0) / 1e9 > 60
local elapsed = (uv.hrtime() - t0) / 1e6
stop(proc)

-- baseline: the same 50 servers started directly (uv.spawn, ports the
-- kernel gave), until each accepts a connection, polled the same way
local ports = {}
for i = 1, n do
  local s = uv.new_tcp()
  assert(s:bind("127.0.0.1", 0))
  ports[i] = s:getsockname().port
  s:close()
end
uv.run("nowait")
local b0, procs = uv.hrtime(), {}
for i = 1, n do
  procs[i] = uv.spawn(LUA, {args = {"-e", SERVER}, env = {"PORTMAN_PORT=" .. ports[i], "PATH=" .. os.getenv("PATH")}},
    function() end)
end
local up = {}
local accepted
repeat
  sleep_ms(20)
  accepted = 0
  for i = 1, n do
    if not up[i] then
      local c = uv.new_tcp()
      c:connect("127.0.0.1", ports[i], function(err) if not err then up[i] = true end c:close() end)
    end
  end
  uv.run("nowait")
  for i = 1, n do if up[i] then accepted = accepted + 1 end end
until accepted == n or (uv.hrtime() - b0) / 1e9 > 60
local baseline = (uv.hrtime() - b0) / 1e6
for _, p in ipairs(procs) do p:kill("sigterm"); p:close() end
uv.run("nowait")
print("supervised programs:")
print(("  %-52s %8.0f ms (%d/%d healthy)"):format("portman run to 50 exec'd TCP servers healthy", elapsed, healthy, n))
print(("  %-52s %8.0f ms (%d/%d accepting)"):format("baseline: the 50 servers spawned directly, all accepting",
  baseline, accepted, n))

-- 2. 200 idle programs: portman's RSS and CPU
os.execute("rm -rf " .. dir .. "/services " .. dir .. "/state.json")
n = 200
path = policy(dir, n, true)
local pid
proc, pid = start(dir, path)
local running
repeat
  sleep_ms(100)
  local doc = status(dir .. "/adm/s")
  running = 0
  for _, s in ipairs(doc and doc.services or {}) do
    if s.pid then running = running + 1 end
  end
until running == n
sleep_ms(1000)
local hz, secs = 100, 10
local before, w0 = ticks(pid), uv.hrtime()
sleep_ms(secs * 1000)
local used = (ticks(pid) - before) / hz
local wall = (uv.hrtime() - w0) / 1e9
print(("  %-52s %8d KiB"):format("portman RSS with 200 idle supervised programs", rss_kib(pid)))
print(("  %-52s %8.2f %% of a CPU (over %.0f s)"):format("portman CPU with 200 idle supervised programs",
  used / wall * 100, wall))
stop(proc)
os.execute("rm -rf " .. dir)
