-- Listener open/close rate: portman.listener (C socket, options, luv
-- handle) against luv's own bind(+listen)+close as the baseline, in the
-- same run. Each rep alternates the two in chunks of 500 cycles, so a load
-- that comes and goes (a shared machine) weighs on both alike. Prints
-- cycles per second (wall clock) min/median/max over the reps, the CPU time
-- per cycle (median), the ratio of the medians, and the syscalls per cycle
-- of each (counted by running this file as a child under `strace -f -c`,
-- when strace is installed).
--
--   lua5.4 bench/listener.lua [cycles per rep (5000)] [reps (7)]
local uv = require "luv"
local listener = require "portman.listener"

-- A port the kernel picked, free again: the "given port" rows bind it over
-- and over (a listener closed with no connection leaves no TIME_WAIT).
local function free_port()
  local t = uv.new_tcp()
  assert(t:bind("127.0.0.1", 0))
  local port = t:getsockname().port
  t:close()
  uv.run("nowait")
  return port
end
local PORT = free_port()

local function noop() end

-- name -> one open+close cycle; the luv ones are the baselines.
local CYCLE = {
  luv_tcp = function()
    local t = uv.new_tcp()
    assert(t:bind("127.0.0.1", 0))
    assert(t:listen(511, noop))
    t:close()
  end,
  luv_tcp_port = function()
    local t = uv.new_tcp()
    assert(t:bind("127.0.0.1", PORT))
    assert(t:listen(511, noop))
    t:close()
  end,
  luv_udp = function()
    local u = uv.new_udp()
    assert(u:bind("127.0.0.1", 0))
    u:close()
  end,
  tcp = function() assert(listener.open{address = "127.0.0.1"}):close() end,
  -- the luv handle made too, as serve makes it (tcp:open, and close's epoll_ctl)
  tcp_handle = function()
    local l = assert(listener.open{address = "127.0.0.1"})
    assert(l.handle)
    l:close()
  end,
  tcp_port = function() assert(listener.open{address = "127.0.0.1", port = PORT}):close() end,
  tcp_opts = function()
    assert(listener.open{address = "127.0.0.1", reuseaddr = true, reuseport = true, nodelay = true,
                         keepalive = true, keepidle = 30, fastopen = 16}):close()
  end,
  udp = function() assert(listener.open{proto = "udp", address = "127.0.0.1"}):close() end,
  unix = function() assert(listener.open{proto = "unix", abstract = "portman-bench"}):close() end,
}

local function run_cycles(fn, n)
  for i = 1, n do
    fn()
    if i % 1000 == 0 then uv.run("nowait") end -- let luv finish the closes
  end
  uv.run("nowait")
end

-- Child mode: `--cycles NAME N` runs N cycles of NAME and exits.
if arg and arg[1] == "--cycles" then
  run_cycles(CYCLE[arg[2]], tonumber(arg[3]))
  os.exit(0)
end

local N = tonumber(arg and arg[1]) or 5000
local REPS = tonumber(arg and arg[2]) or 7

local CHUNK = 500

-- One rep of a pair: the cycles/s and CPU us per cycle of each.
local function rep_pair(base, mine)
  local wall, cpu = {0, 0}, {0, 0}
  local done = 0
  while done < N do
    local n = math.min(CHUNK, N - done)
    for side, fn in ipairs{base, mine} do
      collectgarbage()
      uv.run("nowait")
      local t0, c0 = uv.hrtime(), os.clock()
      run_cycles(fn, n)
      wall[side] = wall[side] + (uv.hrtime() - t0) / 1e9
      cpu[side] = cpu[side] + (os.clock() - c0)
    end
    done = done + n
  end
  return N / wall[1], N / wall[2], cpu[1] * 1e6 / N, cpu[2] * 1e6 / N
end

local function stats(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  return s[1], s[(#s + 1) // 2], s[#s]
end

-- The syscalls of n cycles of name, from strace -c's total line; nil
-- without strace.
local STRACE = os.execute("command -v strace >/dev/null 2>&1")
local function syscalls(name, n)
  local out = os.tmpname()
  local cmd = ("strace -f -c -o %s %s %s --cycles %s %d >/dev/null 2>&1"):format(
    out, arg[-1], arg[0], name, n)
  local ok = os.execute(cmd)
  local f = io.open(out)
  local text = f and f:read("a") or ""
  if f then f:close() end
  os.remove(out)
  return ok and tonumber(text:match("\n%s*[%d.]+%s+[%d.]+%s+%d*%s*(%d+)%s+%d*%s*total")) or nil
end

-- Per cycle: the difference of two runs cancels the interpreter's startup.
local function per_cycle(name)
  if not STRACE then return nil end
  local a, b = syscalls(name, 1000), syscalls(name, 3000)
  return a and b and (b - a) / 2000 or nil
end

local function fmt_sys(x) return x and ("%5.1f"):format(x) or "    -" end

print(("%d cycles per rep, %d reps; cycles/s min / median / max; syscalls per cycle%s"):format(
  N, REPS, STRACE and "" or " (strace not installed)"))
local PAIRS = {
  {"tcp port 0", "luv_tcp", "tcp", "luv tcp bind+listen+close"},
  {"tcp given port", "luv_tcp_port", "tcp_port", "luv tcp bind+listen+close"},
  {"tcp port 0, luv handle made (as serve)", "luv_tcp", "tcp_handle", "luv tcp bind+listen+close",
   "listener.open + l.handle + close"},
  -- luv sets none of these options (it cannot set most): a reference only
  {"tcp port 0, 6 options", "luv_tcp", "tcp_opts", "luv tcp (no options)"},
  {"udp port 0", "luv_udp", "udp", "luv udp bind+close"},
  {"unix abstract", "luv_tcp", "unix", "luv tcp (reference)"},
}
for _, p in ipairs(PAIRS) do
  local title, base, mine, base_name, mine_name = p[1], p[2], p[3], p[4], p[5] or "listener.open + close"
  local rb, rm, cb, cm = {}, {}, {}, {}
  for i = 1, REPS do
    rb[i], rm[i], cb[i], cm[i] = rep_pair(CYCLE[base], CYCLE[mine])
  end
  local bmin, bmed, bmax = stats(rb)
  local mmin, mmed, mmax = stats(rm)
  local _, bcpu = stats(cb)
  local _, mcpu = stats(cm)
  print(("%s:"):format(title))
  print(("  baseline %-30s %7.0f / %7.0f / %7.0f /s  cpu %5.1f us  %s syscalls"):format(base_name,
    bmin, bmed, bmax, bcpu, fmt_sys(per_cycle(base))))
  print(("  portman  %-30s %7.0f / %7.0f / %7.0f /s  cpu %5.1f us  %s syscalls"):format(
    mine_name, mmin, mmed, mmax, mcpu, fmt_sys(per_cycle(mine))))
  print(("  portman/baseline: %.2fx (median rates), %.2fx (median cpu)"):format(mmed / bmed, bcpu / mcpu))
end
