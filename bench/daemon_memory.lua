-- The daemon's memory with 1,000 services: `portman run` with a policy of
-- 1,000 registered services (ports reserved in a pool, no listener), and
-- with 1,000 listening services with health checks, beside the same
-- daemon with no service at all (the baseline), all in this run.
package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local helpers = require "helpers"

local tmpdir = helpers.tmpdir

local function policy(dir, n, listen)
  local lines = {"return {pools = {p = {range = {40000, 41999}}}, services = {"}
  for i = 1, n do
    lines[#lines + 1] = listen
      and ('{name = "s%d", pool = "p", address = "127.0.0.1", check = {kind = "tcp", interval = 5000}},'):format(i)
      or ('{name = "s%d", pool = "p", listen = false, check = false, metadata = {n = %d}},'):format(i, i)
  end
  lines[#lines + 1] = "}}"
  local path = dir .. "/policy-" .. n .. tostring(listen) .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(table.concat(lines, "\n"))
  f:close()
  return path
end

-- Starts the daemon, waits for its n service lines, reads VmRSS, stops it.
local function rss_kib(dir, path, n)
  local stdout = uv.new_pipe()
  local out, code = "", nil
  local proc
  proc = uv.spawn("lua5.4", {args = {"bin/portman", "run", path, "--admin-socket", dir .. "/adm/s"},
    stdio = {nil, stdout, nil}}, function(c) code = c; proc:close() end)
  stdout:read_start(function(_, data)
    if data then out = out .. data else stdout:close() end
  end)
  while select(2, out:gsub("\n", "")) < n and code == nil do uv.run("once") end
  local t = uv.new_timer() -- let the first health checks run
  t:start(500, 0, function() t:close() end)
  uv.run("once")
  local f = io.open("/proc/" .. proc:get_pid() .. "/status")
  local rss = f and tonumber(f:read("a"):match("VmRSS:%s+(%d+)"))
  if f then f:close() end
  proc:kill("sigterm")
  uv.run()
  return rss
end

local dir = tmpdir()
local base = rss_kib(dir, policy(dir, 0, false), 0)
local reg = rss_kib(dir, policy(dir, 1000, false), 1000)
local live = rss_kib(dir, policy(dir, 1000, true), 1000)
print("daemon memory (VmRSS):")
print(("  %-44s %7d KiB"):format("baseline: no service", base))
print(("  %-44s %7d KiB (+%.1f KiB a service)"):format("1,000 registered services", reg, (reg - base) / 1000))
print(("  %-44s %7d KiB (+%.1f KiB a service)"):format("1,000 listening services with TCP checks", live,
  (live - base) / 1000))
os.execute("rm -rf " .. dir)
