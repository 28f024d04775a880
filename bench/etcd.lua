-- Cluster-wide port claims a second through the etcd backend, against a
-- three-member etcd cluster on loopback started for the run (etcd's
-- default fsync, data under /tmp): one node, then two nodes claiming from
-- one range at once. Baselines in the same run: raw gateway puts (no txn,
-- no lease) over the same engine and concurrency, and the file backend
-- (the local state file, one fsync'd rewrite a claim).
package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local async = require "portman.async"
local backend = require "portman.backend"
local http = require "portman.http"
local etcd = require "portman.etcd"
local etcd_cluster = require "support.etcd_cluster"

local N = tonumber(os.getenv("BENCH_CLAIMS") or "2000") // 1
local CONC = tonumber(os.getenv("BENCH_CONCURRENCY") or "8") // 1

local function seconds(t0) return (uv.hrtime() - t0) / 1e9 end

local function report(what, n, secs, extra)
  print(("  %-46s %8.0f /s  (%d in %.2f s%s)"):format(what, n / secs, n, secs, extra or ""))
end

local cluster = etcd_cluster.start{n = 3, fsync = true}
local ok, err = pcall(async.run, function()
  local eps = cluster:endpoints()
  print(("etcd %s, 3 members on loopback, %d claims, %d in flight a node:"):format(
    io.popen("etcd --version"):read("l"):match("[%d.]+$"), N, CONC))

  local function node(name, cluster_name)
    return assert(backend.new{kind = "etcd", endpoints = eps, cluster = cluster_name, node = name, ttl = 60})
  end

  -- one node
  local a = node("a", "one")
  assert(a:claim("ports", "1", {})) -- lease and connections up before timing
  local t0 = uv.hrtime()
  local ports = assert(a:claim_ports{range = {10000, 10000 + N - 1}, count = N, concurrency = CONC})
  report("etcd backend, one node", #ports, seconds(t0))
  t0 = uv.hrtime()
  for i = 1, 200 do assert(a:claim("ports", tostring(20000 + i), {port = 20000 + i})) end
  report("etcd backend, one node, one claim at a time", 200, seconds(t0))
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
    report("etcd backend, two nodes at once, " .. strategy, #results[1][1] + #results[2][1], secs,
      (", %d conflicts"):format(results[1][2].conflicts + results[2][2].conflicts))
    b1:close()
    b2:close()
  end

  -- baseline: raw puts through the gateway, same engine and concurrency
  local client = assert(http.new())
  local sent, finished = 0, 0
  local url = eps:match("^[^,]+") .. "/v3/kv/put"
  local function put_next()
    if sent >= N then return end
    sent = sent + 1
    local body = ('{"key":"%s","value":"eA=="}'):format(etcd.b64encode("/raw/" .. sent))
    client:request({url = url, body = body, timeout = 5000}, function(res, perr)
      assert(res and res.status == 200, perr)
      finished = finished + 1
      put_next()
    end)
  end
  t0 = uv.hrtime()
  for _ = 1, CONC do put_next() end
  while finished < N do async.sleep(2) end
  report("baseline: raw gateway puts (no txn, no lease)", N, seconds(t0))
  client:close()

  -- baseline: the file backend (single machine)
  local dir = io.popen("mktemp -d"):read("l")
  local f = backend.new{path = dir .. "/state.json", node = "f"}
  local n = math.min(N, 500) -- every claim rewrites and fsyncs the whole file
  t0 = uv.hrtime()
  ports = assert(f:claim_ports{range = {10000, 10000 + n - 1}, count = n})
  report("baseline: file backend (state file)", #ports, seconds(t0))
  os.execute("rm -rf " .. dir)
end)
cluster:stop()
if not ok then error(err, 0) end
