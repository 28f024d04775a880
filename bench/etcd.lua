-- Cluster-wide port claims a second through the etcd backend, against a
-- three-member etcd cluster on loopback started for the run (etcd's
-- default fsync, data under /tmp). Each repetition measures, one after
-- the other, the baseline (raw puts through the gateway: no txn, no
-- lease, the same engine and concurrency), one-key create txns on a lease
-- through portman.etcd (the floor under a claim), one node's claim_ports with
-- one key a txn, and with several keys a txn (claim_many); each figure is
-- printed min/median/max over the repetitions, and as a ratio to the
-- baseline of its own repetition. Then a node registering many services
-- (one register each, all at once, or one register_many), two nodes
-- claiming from one range at once, and the file backend (the local state file, one fsync'd
-- rewrite a claim).
package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local async = require "portman.async"
local backend = require "portman.backend"
local http = require "portman.http"
local etcd = require "portman.etcd"
local etcd_cluster = require "support.etcd_cluster"

local N = tonumber(os.getenv("BENCH_CLAIMS") or "2000") // 1
local CONC = tonumber(os.getenv("BENCH_CONCURRENCY") or "8") // 1
local REPS = tonumber(os.getenv("BENCH_REPS") or "5") // 1
-- A tree without claim_many (before batching) claims one key a txn only.
local BATCHED = backend.new{path = "/nonexistent/state.json", node = "probe"}.claim_many ~= nil

local function seconds(t0) return (uv.hrtime() - t0) / 1e9 end

local function stats(list)
  local s = {table.unpack(list)}
  table.sort(s)
  local n = #s
  local med = n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
  return s[1], med, s[n]
end

local function report(what, rates, ratios)
  local lo, med, hi = stats(rates)
  local line = ("  %-44s %8.0f %8.0f %8.0f /s"):format(what, lo, med, hi)
  if ratios then
    local rlo, rmed, rhi = stats(ratios)
    line = line .. ("   x baseline %.2f %.2f %.2f"):format(rlo, rmed, rhi)
  end
  print(line)
end

-- Runs N operations with CONC in flight: start(i, done) begins the i-th
-- and calls done() when it has ended. Returns operations/s.
local function pump(start)
  local sent, finished = 0, 0
  local function next_one()
    if sent >= N then return end
    sent = sent + 1
    start(sent, function()
      finished = finished + 1
      next_one()
    end)
  end
  local t0 = uv.hrtime()
  for _ = 1, CONC do next_one() end
  while finished < N do async.sleep(2) end
  return N / seconds(t0)
end

-- Raw puts through the gateway: N keys, CONC in flight; returns puts/s.
local function raw_puts(url, tag)
  local client = assert(http.new())
  local rate = pump(function(i, done)
    local body = ('{"key":"%s","value":"eA=="}'):format(etcd.b64encode("/raw/" .. tag .. "/" .. i))
    client:request({url = url, body = body, timeout = 5000}, function(res, perr)
      assert(res and res.status == 200, perr)
      done()
    end)
  end)
  client:close()
  return rate
end

-- One-key create txns on a lease through portman.etcd, without the
-- backend: the floor under a claim of one key a txn (N txns, CONC in
-- flight); returns txns/s.
local function raw_txns(eps, tag)
  local c = assert(etcd.new{endpoints = eps})
  local lease = assert(c:grant(60)).id
  local value = '{"node":"a","value":{"port":10000}}'
  local rate = pump(function(i, done)
    c:create("/txn/" .. tag .. "/" .. i, value, lease, function(created, cerr)
      assert(created, cerr)
      done()
    end)
  end)
  c:close()
  return rate
end

local cluster = etcd_cluster.start{n = 3, fsync = true}
local ok, err = pcall(async.run, function()
  local eps = cluster:endpoints()
  local url = eps:match("^[^,]+") .. "/v3/kv/put"
  print(("etcd %s, 3 members on loopback, %d claims a figure, %d in flight a node, %d repetitions%s:")
    :format(io.popen("etcd --version"):read("l"):match("[%d.]+$"), N, CONC, REPS,
      BATCHED and "" or " (no claim_many in this tree: one key a txn only)"))
  print(("  %-44s %8s %8s %8s"):format("", "min", "median", "max"))

  local function node(name, cluster_name)
    return assert(backend.new{kind = "etcd", endpoints = eps, cluster = cluster_name, node = name, ttl = 60})
  end

  -- claim_ports on one node, its lease and connections up before timing
  local function claims(tag, batch)
    local a = node("a", tag)
    assert(a:claim("ports", "1", {}))
    local opts = {range = {10000, 10000 + N - 1}, count = N, concurrency = CONC, batch = batch}
    local t0 = uv.hrtime()
    local ports = assert(a:claim_ports(opts))
    local secs = seconds(t0)
    assert(#ports == N)
    a:close()
    return N / secs
  end

  local raw, txns, single, batched = {}, {}, {}, {}
  local txns_x, single_x, batched_x = {}, {}, {}
  for rep = 1, REPS do
    raw[rep] = raw_puts(url, rep)
    txns[rep] = raw_txns(eps, rep)
    txns_x[rep] = txns[rep] / raw[rep]
    single[rep] = claims("single" .. rep, BATCHED and 1 or nil)
    single_x[rep] = single[rep] / raw[rep]
    if BATCHED then
      batched[rep] = claims("batched" .. rep)
      batched_x[rep] = batched[rep] / raw[rep]
    end
  end
  report("baseline: raw gateway puts", raw)
  report("one-key create txns, no backend", txns, txns_x)
  report("claim_ports, one key a txn", single, single_x)
  if BATCHED then report("claim_ports, several keys a txn", batched, batched_x) end

  -- a daemon joining the cluster with S services: each registered on its
  -- own, all at once (as the manager did), or in one register_many; a
  -- registration that fails (etcd swamped: timeout) is counted
  local S = math.min(N, 1000)
  local function services(tag, many)
    local b = node("a", tag)
    assert(b:claim("ports", "1", {}))
    local recs = {}
    for i = 1, S do recs[i] = {name = "svc" .. i, address = "127.0.0.1", port = 20000 + i} end
    local t0, failed = uv.hrtime(), 0
    if many then
      local names = b:register_many(recs)
      failed = S - (names and #names or 0)
    else
      local left = S
      for _, rec in ipairs(recs) do
        b:register(rec, function(ok)
          if not ok then failed = failed + 1 end
          left = left - 1
        end)
      end
      while left > 0 do async.sleep(2) end
    end
    local secs = seconds(t0)
    b:close()
    return S / secs, failed
  end
  local one, many, one_failed, many_failed = {}, {}, 0, 0
  for rep = 1, 3 do
    local rate, failed = services("svc-one" .. rep)
    one[rep], one_failed = rate, one_failed + failed
    if BATCHED then
      rate, failed = services("svc-many" .. rep, true)
      many[rep], many_failed = rate, many_failed + failed
    end
  end
  report(("%d services, one register each (%d failed)"):format(S, one_failed), one)
  if BATCHED then report(("%d services, one register_many (%d failed)"):format(S, many_failed), many) end

  -- one node, one claim at a time (latency-bound)
  local a = node("a", "serial")
  assert(a:claim("ports", "1", {}))
  local t0 = uv.hrtime()
  for i = 1, 200 do assert(a:claim("ports", tostring(20000 + i), {port = 20000 + i})) end
  report("one node, one claim at a time", {200 / seconds(t0)})
  a:close()

  -- two nodes, one range, at once: both from the range's start (sequential),
  -- or each from its own hash of the node id (hash)
  for _, strategy in ipairs({"sequential", "hash"}) do
    local name = "two-" .. strategy
    local b1, b2 = node("b1", name), node("b2", name)
    assert(b1:claim("ports", "1", {}))
    assert(b2:claim("ports", "2", {}))
    local done, results = 0, {}
    t0 = uv.hrtime()
    for i, b in ipairs({b1, b2}) do
      b:claim_ports({range = {10000, 10000 + N - 1}, count = N // 2, concurrency = CONC, strategy = strategy},
        function(p, info)
          results[i] = {assert(p), info}
          done = done + 1
        end)
    end
    while done < 2 do async.sleep(5) end
    local secs = seconds(t0)
    print(("  two nodes at once, %-10s %8.0f /s  (%d conflicts)"):format(strategy,
      (#results[1][1] + #results[2][1]) / secs, results[1][2].conflicts + results[2][2].conflicts))
    b1:close()
    b2:close()
  end

  -- baseline: the file backend (single machine)
  local dir = io.popen("mktemp -d"):read("l")
  local f = backend.new{path = dir .. "/state.json", node = "f"}
  local n = math.min(N, 500) -- every claim rewrites and fsyncs the whole file
  t0 = uv.hrtime()
  local ports = assert(f:claim_ports{range = {10000, 10000 + n - 1}, count = n, batch = BATCHED and 1 or nil})
  report("file backend, one key a write", {#ports / seconds(t0)})
  if BATCHED then
    t0 = uv.hrtime()
    ports = assert(f:claim_ports{range = {20000, 20000 + n - 1}, count = n})
    report("file backend, several keys a write", {#ports / seconds(t0)})
  end
  os.execute("rm -rf " .. dir)
end)
cluster:stop()
if not ok then error(err, 0) end
