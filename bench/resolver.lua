-- portman.resolver: cached resolves a second from Lua, and 10,000 distinct
-- uncached names against a local dnsmasq, each beside luv's uv.getaddrinfo
-- (glibc's getaddrinfo on libuv's thread pool) in the same run.
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
local uv = require "luv"

local COUNT = 10000
local CACHED_ITERATIONS = 1000000
local GLIBC_ITERATIONS = 2000

local function name_of(i) return ("n%05d.bench.test"):format(i) end
local function address_of(i) return ("10.%d.%d.%d"):format(i // 65536, i // 256 % 256, i % 256) end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true
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
    assert(sh(("ip netns add %s && ip netns exec %s ip link set lo up"):format(ns, ns)))
    assert(sh(("ip netns exec %s dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --no-poll "
      .. "--port=53 --listen-address=127.0.0.1 --bind-interfaces --local=/bench.test/ "
      .. "--addn-hosts=%s/hosts --local-ttl=3600 --pid-file=%s/pid --user=root")
      :format(ns, dir, dir)), "dnsmasq did not start")
    assert(sh(("ip netns exec %s env PM_BENCH_NS=%s %s %s"):format(ns, ns, arg[-1], arg[0])),
      "the inner run failed")
  end)
  sh(("[ -f %s/pid ] && kill $(cat %s/pid) 2>/dev/null"):format(dir, dir))
  sh(("ip netns del %s 2>/dev/null; rm -rf %s %s"):format(ns, dir, etc))
  if not had_netns then sh("rmdir /etc/netns 2>/dev/null") end -- only if empty
  if not ok then error(err, 0) end
end

local function rate(n, ns)
  return n / (ns / 1e9)
end

local function cached(resolver)
  local r = resolver.new{}
  local name = "cached.bench.test"
  local warm
  r:resolve(name, {family = "inet"}, function(records) warm = records end)
  uv.run()
  assert(warm and warm[1].address == "10.255.0.1", "warm-up failed")
  local got = 0
  local function cb(records) if records then got = got + 1 end end
  local opts = {family = "inet"}
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
  r:close()
  -- baseline: glibc, which keeps no cache, asked synchronously each time
  t0 = uv.hrtime()
  for _ = 1, GLIBC_ITERATIONS do
    assert(uv.getaddrinfo(name, nil, {family = "inet", socktype = "stream"}))
  end
  local t_glibc = uv.hrtime() - t0
  print(("cached resolve, callback:   %10.0f resolves/s (%d in %.3f s)")
    :format(rate(CACHED_ITERATIONS, t_cb), CACHED_ITERATIONS, t_cb / 1e9))
  print(("cached resolve, coroutine:  %10.0f resolves/s (%d in %.3f s)")
    :format(rate(CACHED_ITERATIONS, t_co), CACHED_ITERATIONS, t_co / 1e9))
  print(("baseline uv.getaddrinfo, synchronous (glibc, no cache): %10.0f resolves/s (%d in %.3f s)")
    :format(rate(GLIBC_ITERATIONS, t_glibc), GLIBC_ITERATIONS, t_glibc / 1e9))
end

local function check_answer(i, address, failures)
  if address ~= address_of(i) then failures[#failures + 1] = name_of(i) end
end

-- All COUNT names at once through the portman resolver; returns ns, failures.
local function uncached_portman(resolver, family)
  local r = resolver.new{}
  local failures, done = {}, 0
  local t0 = uv.hrtime()
  for i = 1, COUNT do
    r:resolve(name_of(i), {family = family}, function(records)
      done = done + 1
      local a
      for _, rec in ipairs(records or {}) do if rec.family == "inet" then a = rec.address end end
      check_answer(i, a, failures)
    end)
  end
  uv.run()
  local t = uv.hrtime() - t0
  local stats = r:stats()
  r:close()
  assert(done == COUNT)
  return t, failures, stats.queries
end

local function uncached_luv(family)
  local failures, done = {}, 0
  local t0 = uv.hrtime()
  for i = 1, COUNT do
    assert(uv.getaddrinfo(name_of(i), nil, {family = family, socktype = "stream"}, function(err, res)
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

local function inner()
  local resolver = require "portman.resolver"
  print(("namespace %s, dnsmasq on 127.0.0.1:53; libuv thread pool: %s threads")
    :format(os.getenv("PM_BENCH_NS"), os.getenv("UV_THREADPOOL_SIZE") or "4 (default)"))
  cached(resolver)
  for _, case in ipairs{{"inet", "inet", "A"}, {"any", "unspec", "A+AAAA"}} do
    local t_pm, f_pm, queries = uncached_portman(resolver, case[1])
    local t_uv, f_uv = uncached_luv(case[2])
    print(("%d distinct names (%s), all at once:"):format(COUNT, case[3]))
    print(("  portman.resolver:  %8.0f names/s (%.3f s, %d queries, %d failed)")
      :format(rate(COUNT, t_pm), t_pm / 1e9, queries, #f_pm))
    print(("  uv.getaddrinfo:    %8.0f names/s (%.3f s, %d failed)")
      :format(rate(COUNT, t_uv), t_uv / 1e9, #f_uv))
  end
end

if os.getenv("PM_BENCH_NS") then inner() else outer() end
