-- portman.resolver: cached resolves a second from Lua, and 10,000 distinct
-- uncached names against a local dnsmasq, each beside baselines measured in
-- the same run: luv's uv.getaddrinfo (glibc's getaddrinfo on libuv's thread
-- pool), and for the uncached names dnsperf (the server's own capacity: the
-- same names and record types sent to the same dnsmasq by the tool made to
-- load a DNS server, with as many queries outstanding as portman's
-- max_inflight). Every figure is min/median/max over PM_BENCH_REPS
-- repetitions (default 5), the cases interleaved so that a load spike on a
-- shared machine hits them alike. dnsmasq's own CPU time per run is shown
-- too: the rate it could serve were it never waiting for a client.
--
-- Fairness: glibc cannot be pointed at a port, only at /etc/resolv.conf's
-- nameservers on port 53. So the benchmark makes a private network
-- namespace with only a loopback, starts dnsmasq there on 127.0.0.1:53
-- answering the names from its own hosts file (no upstream: nothing leaves
-- the namespace), and reruns itself under `ip netns exec`, which
-- bind-mounts /etc/netns/NS/resolv.conf ("nameserver 127.0.0.1") over
-- /etc/resolv.conf. Both resolvers then read the same resolv.conf, ask the
-- same server over the same loopback for the same names and record types,
-- with all 10,000 lookups started at once. glibc reads /etc/hosts first and
-- finds none of the names there; the portman resolver reads it too.
-- Needs root (network namespaces); without it, says so and stops.
--
-- PM_BENCH_CALLGRIND=1: instead, user-space instructions per uncached name
-- (load-independent, unlike the rates): the portman case alone runs under
-- callgrind for 2,000 and for 10,000 names, each family, and the
-- difference over the 8,000 names between them is reported (the start-up
-- and the loading of modules cancel out). PM_BENCH_CALLGRIND_KEEP=DIR keeps
-- the output files there.
local uv = require "luv"

local COUNT = math.tointeger(tonumber(os.getenv("PM_BENCH_COUNT") or 10000)) or 10000
local CACHED_ITERATIONS = 1000000
local GLIBC_ITERATIONS = 500
local REPS = math.tointeger(tonumber(os.getenv("PM_BENCH_REPS") or 5)) or 5
local INFLIGHT = 100 -- portman's max_inflight default; dnsperf's -q

-- Names and addresses made once, before any timing: what is measured is
-- the resolvers, not string.format.
-- (Always 10,000 of them, so that runs of fewer names under callgrind
-- make as many, and the making cancels out.)
local NAMES, ADDRESSES = {}, {}
for i = 1, math.max(COUNT, 10000) do
  NAMES[i] = ("n%05d.bench.test"):format(i)
  ADDRESSES[i] = ("10.%d.%d.%d"):format(i // 65536, i // 256 % 256, i % 256)
end
local function name_of(i) return NAMES[i] end
local function address_of(i) return ADDRESSES[i] end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true
end

-- Callgrind's total instructions in one output file.
local function callgrind_total(path)
  local f = assert(io.open(path))
  local total
  for line in f:lines() do total = tonumber(line:match("^totals:%s*(%d+)")) or total end
  f:close()
  return assert(total, "no totals in " .. path)
end

-- The inner run under callgrind for two counts of names, each family:
-- instructions per name from the difference.
local function callgrind(ns, dir)
  local small, large = 2000, COUNT
  print(("callgrind, user-space instructions per uncached name (runs of %d and %d names)"):format(small, large))
  for _, family in ipairs{"inet", "any"} do
    local totals = {}
    for _, n in ipairs{small, large} do
      local out = ("%s/cg-%s-%d"):format(dir, family, n)
      assert(sh(("ip netns exec %s env PM_BENCH_NS=%s PM_BENCH_DIR=%s PM_BENCH_COUNT=%d PM_BENCH_ONLY=%s "
        .. "valgrind --tool=callgrind --callgrind-out-file=%s %s %s 2>/dev/null")
        :format(ns, ns, dir, n, family, out, arg[-1], arg[0])), "the callgrind run failed")
      totals[#totals + 1] = callgrind_total(out)
      local keep = os.getenv("PM_BENCH_CALLGRIND_KEEP") -- a directory for callgrind_annotate
      if keep then sh(("cp %s %s/"):format(out, keep)) end
    end
    print(("  family %-4s  %8.0f instructions a name"):format(family, (totals[2] - totals[1]) / (large - small)))
  end
end

-- The outer run: namespace, dnsmasq, inner run, teardown.
local function outer()
  local p = io.popen("id -u")
  local uid = p:read("l")
  p:close()
  if uid ~= "0" then
    print("resolver bench: needs root to make a network namespace; not run")
    return
  end
  local pidf = io.open("/proc/self/stat")
  local pid = pidf:read("a"):match("^(%d+)")
  pidf:close()
  local ns = "pmbench-" .. pid
  local dir = "/tmp/" .. ns
  local etc = "/etc/netns/" .. ns
  local had_netns = sh("[ -d /etc/netns ]")
  local ok, err = pcall(function()
    assert(sh(("mkdir -p %s %s"):format(dir, etc)))
    local f = assert(io.open(etc .. "/resolv.conf", "w"))
    f:write("nameserver 127.0.0.1\n")
    f:close()
    f = assert(io.open(dir .. "/hosts", "w"))
    for i = 1, COUNT do f:write(address_of(i), " ", name_of(i), "\n") end
    f:write("10.255.0.1 cached.bench.test\n")
    f:close()
    for _, q in ipairs{{"A", {"A"}}, {"A+AAAA", {"A", "AAAA"}}} do -- dnsperf's input
      f = assert(io.open(("%s/queries-%s"):format(dir, q[1]), "w"))
      for i = 1, COUNT do
        for _, t in ipairs(q[2]) do f:write(name_of(i), " ", t, "\n") end
      end
      f:close()
    end
    assert(sh(("ip netns add %s && ip netns exec %s ip link set lo up"):format(ns, ns)))
    assert(sh(("ip netns exec %s dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --no-poll "
      .. "--port=53 --listen-address=127.0.0.1 --bind-interfaces --local=/bench.test/ "
      .. "--addn-hosts=%s/hosts --local-ttl=3600 --pid-file=%s/pid --user=root")
      :format(ns, dir, dir)), "dnsmasq did not start")
    if os.getenv("PM_BENCH_CALLGRIND") then
      callgrind(ns, dir)
    else
      assert(sh(("ip netns exec %s env PM_BENCH_NS=%s PM_BENCH_DIR=%s %s %s"):format(ns, ns, dir, arg[-1], arg[0])),
        "the inner run failed")
    end
  end)
  sh(("[ -f %s/pid ] && kill $(cat %s/pid) 2>/dev/null"):format(dir, dir))
  sh(("ip netns del %s 2>/dev/null; rm -rf %s %s"):format(ns, dir, etc))
  if not had_netns then sh("rmdir /etc/netns 2>/dev/null") end -- only if empty
  if not ok then error(err, 0) end
end

local function rate(n, ns)
  return n / (ns / 1e9)
end

-- "min / median / max" of a list of rates.
local function spread(list)
  local sorted = table.move(list, 1, #list, 1, {})
  table.sort(sorted)
  local n = #sorted
  local median = n % 2 == 1 and sorted[(n + 1) // 2] or (sorted[n // 2] + sorted[n // 2 + 1]) / 2
  return ("%9.0f / %9.0f / %9.0f"):format(sorted[1], median, sorted[n]), median
end

-- One cached-resolve round: callback and coroutine rates, and the floor
-- (a loop that indexes a table and calls the same callback: what no
-- resolver can beat, and a gauge of how fast this machine is right now).
local function cached_round(r, name, opts)
  local got = 0
  local function cb(records) if records then got = got + 1 end end
  local t0 = uv.hrtime()
  for _ = 1, CACHED_ITERATIONS do r:resolve(name, opts, cb) end
  local t_cb = uv.hrtime() - t0
  assert(got == CACHED_ITERATIONS)
  -- the same from a coroutine (portman.run): no yield on a cache hit
  local t_co = require("portman").run(function()
    local t = uv.hrtime()
    for _ = 1, CACHED_ITERATIONS do assert(r:resolve(name, opts)) end
    return uv.hrtime() - t
  end)
  local map = {[name] = {{address = "10.255.0.1", family = "inet", ttl = 3600}}}
  t0 = uv.hrtime()
  for _ = 1, CACHED_ITERATIONS do cb(map[name]) end
  local t_floor = uv.hrtime() - t0
  -- glibc keeps no cache: it asks dnsmasq each time, synchronously
  t0 = uv.hrtime()
  for _ = 1, GLIBC_ITERATIONS do
    assert(uv.getaddrinfo(name, nil, {family = "inet", socktype = "stream"}))
  end
  local t_glibc = uv.hrtime() - t0
  return rate(CACHED_ITERATIONS, t_cb), rate(CACHED_ITERATIONS, t_co), rate(CACHED_ITERATIONS, t_floor),
    rate(GLIBC_ITERATIONS, t_glibc)
end

local function cached(resolver)
  local r = resolver.new{}
  local name = "cached.bench.test"
  local warm
  r:resolve(name, {family = "inet"}, function(records) warm = records end)
  uv.run()
  assert(warm and warm[1].address == "10.255.0.1", "warm-up failed")
  local cb, co, floor, glibc, cb_ratio, co_ratio = {}, {}, {}, {}, {}, {}
  for i = 1, REPS do
    cb[i], co[i], floor[i], glibc[i] = cached_round(r, name, {family = "inet"})
    cb_ratio[i], co_ratio[i] = cb[i] / floor[i], co[i] / floor[i]
  end
  r:close()
  print(("cached resolve (%d a round, %d rounds), resolves/s   min / median / max"):format(CACHED_ITERATIONS, REPS))
  -- each round's rate over the floor's in that round: a load spike moves both
  print(("  portman, callback:                     %s   (%.3f of the floor, median a round)")
    :format(spread(cb), select(2, spread(cb_ratio))))
  print(("  portman, coroutine:                    %s   (%.3f of the floor, median a round)")
    :format(spread(co), select(2, spread(co_ratio))))
  print(("  floor: table index + callback:         %s"):format(spread(floor)))
  print(("  baseline uv.getaddrinfo, synchronous:  %s   (glibc, no cache)"):format(spread(glibc)))
end

local function check_answer(i, address, failures)
  if address ~= address_of(i) then failures[#failures + 1] = name_of(i) end
end

-- All COUNT names at once through the portman resolver; returns ns,
-- failures, queries sent, CPU seconds.
local function uncached_portman(resolver, family)
  local r = resolver.new{max_inflight = INFLIGHT}
  local failures, done = {}, 0
  local opts = {family = family}
  local ru = uv.getrusage()
  local t0 = uv.hrtime()
  for i = 1, COUNT do
    r:resolve(name_of(i), opts, function(records)
      done = done + 1
      local a
      for _, rec in ipairs(records or {}) do if rec.family == "inet" then a = rec.address end end
      check_answer(i, a, failures)
    end)
  end
  uv.run()
  local t = uv.hrtime() - t0
  local ru2 = uv.getrusage()
  local cpu = ru2.utime.sec + ru2.utime.usec / 1e6 + ru2.stime.sec + ru2.stime.usec / 1e6
    - (ru.utime.sec + ru.utime.usec / 1e6 + ru.stime.sec + ru.stime.usec / 1e6)
  local stats = r:stats()
  r:close()
  assert(done == COUNT)
  return t, failures, stats.queries, cpu
end

local function uncached_luv(family)
  local failures, done = {}, 0
  local hints = {family = family, socktype = "stream"}
  local t0 = uv.hrtime()
  for i = 1, COUNT do
    assert(uv.getaddrinfo(name_of(i), nil, hints, function(err, res)
      done = done + 1
      local a
      for _, rec in ipairs(not err and res or {}) do if rec.family == "inet" then a = rec.addr end end
      check_answer(i, a, failures)
    end))
  end
  uv.run()
  assert(done == COUNT)
  return uv.hrtime() - t0, failures
end

local function have_dnsperf()
  return sh("command -v dnsperf >/dev/null 2>&1")
end

-- dnsperf over the query file for qtype ("A", or "A+AAAA": both for each
-- name): queries/s, and how many of them completed.
local function uncached_dnsperf(qtype)
  local p = io.popen(("dnsperf -s 127.0.0.1 -d %s/queries-%s -n 1 -q %d -t 5 2>&1")
    :format(os.getenv("PM_BENCH_DIR"), qtype, INFLIGHT))
  local out = p:read("a")
  p:close()
  local qps = tonumber(out:match("Queries per second:%s*([%d%.]+)"))
  local completed = tonumber(out:match("Queries completed:%s*(%d+)"))
  assert(qps and completed, "dnsperf: " .. out)
  return qps, completed
end

-- dnsmasq's CPU seconds so far (user + system).
local DNSMASQ_PID
local function dnsmasq_cpu()
  if not DNSMASQ_PID then
    local f = assert(io.open(os.getenv("PM_BENCH_DIR") .. "/pid"))
    DNSMASQ_PID = f:read("l")
    f:close()
  end
  local f = io.open("/proc/" .. DNSMASQ_PID .. "/stat")
  if not f then return 0 end
  local fields = {}
  for w in f:read("a"):gsub("^.*%) ", ""):gmatch("%S+") do fields[#fields + 1] = w end
  f:close()
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime: clock ticks (USER_HZ 100)
end

-- Runs f, returning its results followed by dnsmasq's CPU seconds meanwhile.
local function with_server_cpu(f, ...)
  local before = dnsmasq_cpu()
  local res = table.pack(f(...))
  res[res.n + 1] = dnsmasq_cpu() - before
  return table.unpack(res, 1, res.n + 1)
end

local function uncached_case(resolver, case)
  local family, luv_family, label, qtype, per_name = table.unpack(case)
  local pm, pm_cpu, luv, dp, dp_q, srv_pm, srv_dp = {}, {}, {}, {}, {}, {}, {}
  local failed, queries, lost = 0, 0, 0
  local dnsperf = have_dnsperf()
  for i = 1, REPS do
    local t_pm, f_pm, q, cpu, s_pm = with_server_cpu(uncached_portman, resolver, family)
    pm[i], pm_cpu[i], srv_pm[i] = rate(COUNT, t_pm), COUNT / cpu, COUNT * per_name / math.max(s_pm, 0.01)
    failed, queries = failed + #f_pm, q
    local t_uv, f_uv = uncached_luv(luv_family)
    luv[i] = rate(COUNT, t_uv)
    failed = failed + #f_uv
    if dnsperf then
      local qps, completed, s_dp = with_server_cpu(uncached_dnsperf, qtype)
      dp[i], dp_q[i], srv_dp[i] = qps / per_name, qps, COUNT * per_name / math.max(s_dp, 0.01)
      lost = lost + COUNT * per_name - completed
    end
  end
  print(("%d distinct names (%s), all at once, names/s   min / median / max"):format(COUNT, label))
  local s_pm, m_pm = spread(pm)
  print(("  portman.resolver:        %s   (%d queries a round, %d failed in all)"):format(s_pm, queries, failed))
  print(("    names per CPU second it used: %s"):format(spread(pm_cpu)))
  print(("    dnsmasq meanwhile, queries per CPU second it used: %s"):format(spread(srv_pm)))
  local s_uv, m_uv = spread(luv)
  print(("  uv.getaddrinfo:          %s   (portman %.2fx)"):format(s_uv, m_pm / m_uv))
  if not dnsperf then
    print("  dnsperf: not installed (scripts/deps bench); the server's capacity not measured")
    return
  end
  local s_dp, m_dp = spread(dp)
  print(("  dnsperf -q %d:           %s   (portman %.2f of it; %d lost in all)")
    :format(INFLIGHT, s_dp, m_pm / m_dp, lost))
  print(("    as queries/s (%d a name): %s"):format(per_name, spread(dp_q)))
  print(("    dnsmasq meanwhile, queries per CPU second it used: %s"):format(spread(srv_dp)))
end

local function inner()
  local resolver = require "portman.resolver"
  local only = os.getenv("PM_BENCH_ONLY") -- a family: that uncached case once (callgrind)
  if only then
    local _, failures = uncached_portman(resolver, only)
    assert(#failures == 0, #failures .. " names failed")
    return
  end
  print(("namespace %s, dnsmasq on 127.0.0.1:53; libuv thread pool: %s threads")
    :format(os.getenv("PM_BENCH_NS"), os.getenv("UV_THREADPOOL_SIZE") or "4 (default)"))
  cached(resolver)
  for _, case in ipairs{{"inet", "inet", "A", "A", 1}, {"any", "unspec", "A+AAAA", "A+AAAA", 2}} do
    uncached_case(resolver, case)
  end
end

if os.getenv("PM_BENCH_NS") then inner() else outer() end
