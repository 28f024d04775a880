-- Probe benchmark (run by `make bench`, or on its own from the checkout:
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 bench/probe.lua
-- as root). It re-runs itself in a private network namespace (unshare -n),
-- so its listeners, its firewall rule and nmap's traffic touch nothing else.
--
-- 1. All 65,535 TCP ports of 127.0.0.1 with a few hundred listening, beside
--    Debian's `nmap -sT -p- -T5 127.0.0.1` in the same run; both must find
--    exactly the ports the kernel lists as listening. Then the SYN scan
--    (method "syn") beside `nmap -sS -p- -T5`.
-- 2. 10,000 ports that an nftables rule drops (filtered), 250 ms timeout, at
--    several concurrencies, beside ceil(10000 / concurrency) x 250 ms; the
--    same with the SYN scan.
-- 3. UDP: a host in a namespace of its own (a veth pair away, so that the
--    kernel's default ICMP rate limit applies: loopback is exempt) with 20
--    closed ports and one UDP echo, beside `nmap -sU` on the same ports:
--    the states each finds and the time each takes.
local ROUNDS = 3
local FILTERED_ROUNDS = 5
local UDP_ROUNDS = 3
local LISTENERS = 300

if not os.getenv("PORTMAN_BENCH_NETNS") then
  local self = arg[0]
  local ok, _, code = os.execute(("unshare -n sh -c 'ip link set lo up && PORTMAN_BENCH_NETNS=1 exec %s %s'")
    :format(arg[-1] or "lua5.4", self))
  if not ok then
    print(("probe bench: could not run in a private network namespace (exit %s): it needs root"):format(code))
  end
  os.exit(ok and 0 or 1)
end

package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local helpers = require "helpers"
local portman = require "portman"
local probe = require "portman.probe"
local core = require "portman.core"

local sh = helpers.output

-- CPU seconds (user, system) of this process (self) or of its waited-for
-- children (children), from /proc/self/stat.
local HZ = math.tointeger(tonumber(sh("getconf CLK_TCK"))) or 100
local function cpu(children)
  local f = assert(io.open("/proc/self/stat"))
  local fields = {}
  for v in f:read("a"):match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = v end
  f:close()
  local u, s = children and 14 or 12, children and 15 or 13 -- utime, stime, cutime, cstime after ")"
  return tonumber(fields[u]) / HZ, tonumber(fields[s]) / HZ
end

-- Runs cmd, returning its output, wall seconds and the children's CPU.
local function timed(cmd)
  local u0, s0 = cpu(true)
  local t0 = uv.hrtime()
  local out = sh(cmd)
  local wall = (uv.hrtime() - t0) / 1e9
  local u1, s1 = cpu(true)
  return out, wall, u1 - u0, s1 - s0
end

local function listening()
  local ports = {}
  for _, file in ipairs({"/proc/net/tcp", "/proc/net/tcp6"}) do
    for line in io.lines(file) do
      local addr, port, st = line:match("^%s*%d+: (%x+):(%x+) %x+:%x+ (%x%x)")
      if st == "0A" and (addr == "0100007F" or addr == "00000000" or addr == ("0"):rep(32)) then
        ports[#ports + 1] = tonumber(port, 16)
      end
    end
  end
  table.sort(ports)
  return ports
end

local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- The listeners: a few hundred ephemeral ports plus some well-known ones.
local handles = {}
for _, port in ipairs({22, 80, 443, 8080}) do
  local t = uv.new_tcp()
  assert(t:bind("127.0.0.1", port))
  assert(t:listen(128, function() end))
  handles[#handles + 1] = t
end
for _ = 1, LISTENERS - #handles do
  local t = uv.new_tcp()
  assert(t:bind("127.0.0.1", 0))
  assert(t:listen(128, function() end))
  handles[#handles + 1] = t
end
for _, t in ipairs(handles) do t:unref() end
local expect = listening()
print(("full scan of 127.0.0.1:1-65535, %d ports listening (kernel's list), %d rounds, median:")
  :format(#expect, ROUNDS))

local nmap_have = sh("command -v nmap") ~= ""

-- One timed nmap run (scan type -sT or -sS) over 127.0.0.1:1-65535: its
-- open ports, read from the grepable output, checked against expect.
local function nmap_row(scan, expect_open)
  local out, wall, u, s = timed("nmap " .. scan .. " -p- -T5 -n -Pn 127.0.0.1 -oG - 2>&1")
  local open = {}
  for port in (out:match("Ports: ([^\t\n]*)") or ""):gmatch("(%d+)/open/") do
    open[#open + 1] = tonumber(port)
  end
  table.sort(open)
  return {wall = wall, user = u, sys = s, ok = same(open, expect_open), n = #open}
end
local env = ("LUA_PATH=%q LUA_CPATH=%q"):format(package.path, package.cpath)
local rows = {nmap = {}, cli = {}, lib = {}, nmap_syn = {}, syn = {}}
for _ = 1, ROUNDS do
  if nmap_have then
    rows.nmap[#rows.nmap + 1] = nmap_row("-sT", expect)
  end
  local out, wall, u, s = timed(("%s %s bin/portman probe 127.0.0.1 1-65535 --json")
    :format(env, arg[-1] or "lua5.4"))
  local open = {}
  for port in (out:match('"open":%[([%d,]*)%]') or ""):gmatch("%d+") do open[#open + 1] = tonumber(port) end
  rows.cli[#rows.cli + 1] = {wall = wall, user = u, sys = s, ok = same(open, expect), n = #open}
  local u0, s0 = cpu(false)
  local t0 = uv.hrtime()
  local r = portman.run(function() return probe.probe("127.0.0.1", "1-65535") end)
  local lwall = (uv.hrtime() - t0) / 1e9
  local u1, s1 = cpu(false)
  rows.lib[#rows.lib + 1] = {wall = lwall, user = u1 - u0, sys = s1 - s0, ok = same(r.open, expect),
                             n = #r.open}
  if nmap_have then
    rows.nmap_syn[#rows.nmap_syn + 1] = nmap_row("-sS", expect)
  end
  u0, s0 = cpu(false)
  t0 = uv.hrtime()
  r = portman.run(function() return probe.probe("127.0.0.1", "1-65535", {method = "syn"}) end)
  lwall = (uv.hrtime() - t0) / 1e9
  u1, s1 = cpu(false)
  rows.syn[#rows.syn + 1] = {wall = lwall, user = u1 - u0, sys = s1 - s0,
                             ok = r.method == "syn" and same(r.open, expect), n = #r.open}
end

local function report(name, list)
  if #list == 0 then
    print(("  %-34s not installed"):format(name))
    return nil
  end
  local walls, users, syss, ok = {}, {}, {}, true
  for i, row in ipairs(list) do
    walls[i], users[i], syss[i] = row.wall, row.user, row.sys
    ok = ok and row.ok
  end
  local wall = median(walls)
  print(("  %-34s %7.3f s wall  %6.3f s user  %6.3f s sys  found %d open: %s"):format(name, wall,
    median(users), median(syss), list[1].n, ok and "exactly the kernel's list" or "MISMATCH"))
  return wall
end

local nmap = report("nmap -sT -p- -T5 (baseline)", rows.nmap)
local cli = report("portman probe (the command)", rows.cli)
local lib = report("probe.probe (in-process)", rows.lib)
if nmap then
  print(("  speed-up over nmap: %.1fx (the command), %.1fx (in-process); target 2x, goal 3x")
    :format(nmap / cli, nmap / lib))
end
local nmap_syn = report("nmap -sS -p- -T5 (baseline)", rows.nmap_syn)
local syn = report("probe.probe method syn (in-process)", rows.syn)
if nmap_syn then print(("  speed-up over nmap -sS: %.1fx"):format(nmap_syn / syn)) end

-- Filtered: an nftables rule on this namespace's loopback drops SYNs.
local rule_ok = os.execute("nft -f - <<'EOF'\n" .. [[
table inet pmbench {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 20000-29999 drop
  }
}
]] .. "EOF")
if not rule_ok then
  print("filtered: nft failed, skipped")
else
  print(("10,000 filtered ports (nftables drop), timeout 250 ms; the default concurrency here is %d:")
    :format(core.probe_default_concurrency()))
  -- min/median/max of FILTERED_ROUNDS runs; cpu: this process's user +
  -- sys ms for the run (the sockets' syscalls, mostly), median
  print(("  %d rounds each, min/median/max, and the CPU a run takes (median):"):format(FILTERED_ROUNDS))
  local runs = {}
  for _, conc in ipairs({1000, 2500, 5000, 10000, 0}) do runs[#runs + 1] = {"connect", conc} end
  runs[#runs + 1] = {"syn", 10000}
  runs[#runs + 1] = {"syn", 0}
  for _, run in ipairs(runs) do
    local method, conc = run[1], run[2]
    local times, cpus, filtered = {}, {}, true
    for i = 1, FILTERED_ROUNDS do
      local u0, s0 = cpu(false)
      local r = portman.run(function()
        return probe.probe("127.0.0.1", "20000-29999", {timeout = 250, concurrency = conc, method = method})
      end)
      local u1, s1 = cpu(false)
      times[i], cpus[i] = r.elapsed_ms, math.floor((u1 - u0 + s1 - s0) * 1000 + 0.5)
      filtered = filtered and r.counts.filtered == 10000 and r.method == method
    end
    table.sort(times)
    -- the SYN scan's default concurrency is 4096 whatever RLIMIT_NOFILE says
    local c = conc > 0 and conc or method == "syn" and 4096 or core.probe_default_concurrency()
    local expected = math.ceil(10000 / c) * 250
    local mid = median(times)
    local over = 100 * (mid - expected) / expected
    print(("  %-7s concurrency %-7s %5d / %5d / %5d ms  floor ceil(10000/%d) x 250 = %d ms, median +%.1f%% (%s) "
      .. " cpu %d ms  %s"):format(method, conc > 0 and conc or "default", times[1], mid, times[#times], c,
      expected, over, over <= 10 and "within 10%" or "NOT within 10%", median(cpus),
      filtered and "all 10000 filtered" or "NOT ALL FILTERED"))
  end
  -- No nmap -sS row here: on these 10,000 dropped ports it took 2.5 to 8
  -- minutes a run on the machine this was written on (502 s with -T5
  -- --max-retries 1), too long for a bench; the full-range rows above
  -- compare it with the SYN scan.
end

-- UDP against the kernel's ICMP rate limit. Each run starts with the
-- host's ICMP budget full (6 s without a probe refills it), so every run,
-- portman's and nmap's, meets the same limit.
local function udp_bench()
  local ns = "pmbench-udp-" .. sh("echo $PPID"):match("%d+")
  local function run(cmd) return os.execute(cmd .. " >/dev/null 2>&1") end
  run("ip netns del " .. ns)
  if not (run("ip netns add " .. ns)
          and run("ip link add pmb0 type veth peer name pmb1 netns " .. ns)
          and run("ip addr add 10.91.0.1/24 dev pmb0") and run("ip link set pmb0 up")
          and run(("ip -n %s addr add 10.91.0.2/24 dev pmb1"):format(ns))
          and run(("ip -n %s link set pmb1 up"):format(ns)) and run(("ip -n %s link set lo up"):format(ns))) then
    print("UDP: could not make the target namespace, skipped")
    run("ip netns del " .. ns)
    return
  end
  local echo = io.popen(("exec ip netns exec %s sh -c 'echo $$; exec %s -e %q'"):format(ns, arg[-1] or "lua5.4", [[
    local uv = require "luv"
    local u = uv.new_udp()
    assert(u:bind("0.0.0.0", 4010))
    u:recv_start(function(err, data, addr) if data and not err then u:send(data, addr.ip, addr.port) end end)
    uv.run()]]))
  local echo_pid = echo:read("l")
  local limit = sh(("ip netns exec %s sysctl -n net.ipv4.icmp_ratelimit"):format(ns)):match("%d+")
  print(("UDP: 10.91.0.2:4000-4020 (20 closed, an echo on 4010), ICMP rate limit %s ms (the default), "
    .. "%d rounds, min/median/max:"):format(limit, UDP_ROUNDS))
  local function states_text(counts)
    local parts = {}
    for _, s in ipairs({"open", "closed", "open|filtered", "filtered"}) do
      if (counts[s] or 0) > 0 then parts[#parts + 1] = ("%s %d"):format(s, counts[s]) end
    end
    return table.concat(parts, ", ")
  end
  local udp_rows = {portman = {}, nmap = {}}
  for _ = 1, UDP_ROUNDS do
    uv.sleep(6500)
    local scan
    local t0 = uv.hrtime()
    local r = portman.run(function()
      return probe.probe("10.91.0.2", "4000-4020", {proto = "udp", on_batch = function(_, s) scan = s end})
    end)
    local st = scan and scan:stats() or {}
    udp_rows.portman[#udp_rows.portman + 1] = {wall = (uv.hrtime() - t0) / 1e9, states = states_text(r.counts),
      extra = ("%s probes sent, %s retransmitted, pace %s ms"):format(st.sent or "?", st.retransmits or "?",
        st.pace_ms or "?")}
    if nmap_have then
      uv.sleep(6500)
      local out, wall = timed("nmap -sU -n -Pn -p 4000-4020 10.91.0.2 -oG - 2>&1")
      local counts = {}
      for state in (out:match("Ports: ([^\t\n]*)") or ""):gmatch("%d+/([^/]+)/udp") do
        counts[state] = (counts[state] or 0) + 1
      end
      udp_rows.nmap[#udp_rows.nmap + 1] = {wall = wall, states = states_text(counts), extra = ""}
    end
  end
  local function show(name, list)
    if #list == 0 then
      print(("  %-30s not installed"):format(name))
      return
    end
    local walls, seen = {}, {}
    for i, row in ipairs(list) do
      walls[i] = row.wall
      seen[#seen + 1] = row.states
    end
    table.sort(walls)
    print(("  %-30s %6.1f / %6.1f / %6.1f s  found: %s  %s"):format(name, walls[1], walls[(#walls + 1) // 2],
      walls[#walls], table.concat(seen, " | "), list[#list].extra))
  end
  show("nmap -sU (baseline)", udp_rows.nmap)
  show("probe.probe proto udp", udp_rows.portman)
  os.execute("kill " .. echo_pid)
  echo:close()
  run("ip netns del " .. ns)
end
udp_bench()

for _, t in ipairs(handles) do t:close() end
uv.run("nowait")
