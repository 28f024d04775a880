-- The etcd backend against a real three-member etcd cluster on loopback
-- (Debian's etcd-server): concurrent claims from two processes, a member
-- killed mid-run, a claiming process killed with SIGKILL, quorum lost and
-- regained, a lapsed lease, watch and `portman services`.
local helpers = require "helpers"

-- helpers.fd_count collects garbage first: a file another spec left to
-- the collector does not move the count
local settled_fds = helpers.fd_count
local uv = require "luv"
local cjson = require "cjson"
local async = require "portman.async"
local backend = require "portman.backend"
local etcd = require "portman.etcd"
local etcd_cluster = require "support.etcd_cluster"

local RUN = "r" .. helpers.pid() -- cluster names unique per run

-- portman.run with a watchdog: a spec that waits forever fails instead.
local function run(fn) return helpers.run(fn, {watchdog = 180}) end

-- Starts a child: helpers.lua with args; collects stdout and stderr.
-- on_line(line) is called for each stdout line. Returns a handle with
-- kill(signal), and fields code, out, err once exited.
local function spawn(args, on_line)
  local stdout, stderr = uv.new_pipe(), uv.new_pipe()
  local child = {out = {}, err = {}}
  local guard = uv.new_timer() -- a hung child fails the spec instead of hanging it
  local proc, pid = uv.spawn(helpers.lua, {args = args, stdio = {nil, stdout, stderr}}, function(code, sig)
    child.code, child.signal = code, sig
    guard:close()
  end)
  assert(proc, pid)
  child.pid = pid
  guard:start(120000, 0, function() proc:kill("sigkill") end)
  local partial = ""
  stdout:read_start(function(_, data)
    if not data then return stdout:close() end
    child.out[#child.out + 1] = data
    partial = partial .. data
    for line in partial:gmatch("([^\n]*)\n") do
      if on_line then on_line(line) end
    end
    partial = partial:match("[^\n]*$")
  end)
  stderr:read_start(function(_, data)
    if data then child.err[#child.err + 1] = data else stderr:close() end
  end)
  function child.kill(signal) if not child.code then proc:kill(signal) end end
  function child.wait(ms)
    etcd_cluster.wait_until(function() return child.code ~= nil end, ms or 60000)
    if child.code and not proc:is_closing() then proc:close() end
    return child.code, table.concat(child.out), table.concat(child.err)
  end
  return child
end

local function portman_args(...)
  return {helpers.root .. "/bin/portman", ...}
end

-- The ports of cluster as {port = node}, read with our own client.
local function claimed(b)
  local records = assert(b:list("ports"))
  local out, n = {}, 0
  for _, r in ipairs(records) do
    out[math.tointeger(tonumber(r.key))] = r.node
    n = n + 1
  end
  return out, n
end

describe("etcd cluster #lab", function()
  local cluster, fds

  setup(function()
    cluster = etcd_cluster.start{n = 3}
    -- after the start: libuv opens a reserve fd at its first TCP socket
    fds = settled_fds()
  end)

  teardown(function()
    if cluster then cluster:stop() end
    uv.run("nowait")
    assert.equal(fds, settled_fds())
  end)

  local function new_backend(name, node, extra)
    local opts = {kind = "etcd", endpoints = cluster:endpoints(), cluster = RUN .. name, node = node, ttl = 10}
    for k, v in pairs(extra or {}) do opts[k] = v end
    return assert(backend.new(opts))
  end

  it("two processes claim 500 ports each of one 1,000-port range at once: all 1,000, none twice", function()
    local name = RUN .. "race"
    local function alloc(node)
      return spawn(portman_args("alloc", "--range", "40000-40999", "--count", "500", "--etcd",
        cluster:endpoints(), "--cluster", name, "--node-id", node, "--ttl", "120", "--json"))
    end
    local a, b = alloc("node-a"), alloc("node-b")
    local code_a, out_a, err_a = a.wait()
    local code_b, out_b, err_b = b.wait()
    assert.equal(0, code_a, err_a)
    assert.equal(0, code_b, err_b)
    local doc_a, doc_b = cjson.decode(out_a), cjson.decode(out_b)
    assert.same({40000, 40999}, doc_a.range)
    assert.equal("sequential", doc_a.strategy)
    assert.equal(500, #doc_a.ports)
    assert.equal(500, #doc_b.ports)
    local owner = {}
    for _, p in ipairs(doc_a.ports) do owner[p] = "node-a" end
    for _, p in ipairs(doc_b.ports) do
      assert.is_nil(owner[p], "port " .. p .. " handed to both")
      owner[p] = "node-b"
    end
    for p = 40000, 40999 do assert.truthy(owner[p], "port " .. p .. " not claimed") end
    -- etcd agrees: 1,000 keys, each held by the process that printed it
    run(function()
      local reader = new_backend("race", "reader")
      local held, n = claimed(reader)
      assert.equal(1000, n)
      assert.same(owner, held)
      reader:close()
    end)
  end)

  it("keeps claiming when the member in use is killed mid-run", function()
    local killed
    run(function()
      -- a call may span a leader election on a loaded machine: 15 s to ride it out
      local b = new_backend("failover", "node-f", {timeout = 15000})
      local ports = {}
      for i = 1, 300 do
        if i == 101 then
          local _, current = b:client():endpoints()
          killed = current
          cluster:kill(current, "sigkill")
        end
        local got, err = b:claim_ports{range = {41000, 41999}, count = 1, concurrency = 1}
        assert.truthy(got, err)
        ports[#ports + 1] = got[1]
      end
      local _, current = b:client():endpoints()
      assert.not_equal(killed, current)
      local held, n = claimed(b)
      assert.equal(300, n)
      for _, p in ipairs(ports) do assert.equal("node-f", held[p]) end
      b:close()
    end)
    cluster:start_member(killed)
    assert.truthy(cluster:wait_healthy(20000), cluster:logs())
  end)

  it("drops a SIGKILLed node's registrations and claims after its lease TTL, not before", function()
    local name = RUN .. "kill"
    local ready
    local node = spawn({helpers.root .. "/spec/support/etcd_node.lua", cluster:endpoints(), name,
                        "node-k", "2", "42000-42999", "20"}, function(line) ready = cjson.decode(line) end)
    run(function()
      local watcher = new_backend("kill", "watcher")
      etcd_cluster.wait_until(function() return ready ~= nil or node.code ~= nil end, 30000)
      assert.truthy(ready, table.concat(node.err))
      local deleted = {}
      local w = watcher:watch("services", function(ev)
        if ev.type == "delete" then deleted[#deleted + 1] = ev.key end
      end)
      local m = assert(watcher:mirror("ports"))
      -- alive past three TTLs: its keep-alive holds everything
      async.sleep(6000)
      local held, n = claimed(watcher)
      assert.equal(20, n)
      for _, p in ipairs(ready.ports) do assert.equal("node-k", held[p]) end
      local services = assert(watcher:services())
      assert.equal(1, #services)
      assert.same({name = "svc-node-k", node = "node-k", address = "127.0.0.1", port = ready.ports[1],
                   proto = "tcp"}, services[1])
      node.kill("sigkill")
      assert.truthy(etcd_cluster.wait_until(function() return node.code ~= nil end, 10000))
      assert.equal(9, node.signal)
      assert.truthy(etcd_cluster.wait_until(function()
        local _, left = claimed(watcher)
        return left == 0
      end, 20000, 200), "claims outlived the lease")
      assert.same({}, assert(watcher:services()))
      etcd_cluster.wait_until(function() return #deleted > 0 and next(m.records) == nil end, 5000)
      assert.same({"svc-node-k/node-k"}, deleted)
      assert.is_nil(next(m.records)) -- the ports' mirror emptied too
      m.close()
      w.close()
      watcher:close()
    end)
    node.wait()
  end)

  it("alloc --hold keeps its ports past the TTL and releases them on SIGTERM", function()
    local name = RUN .. "hold"
    local doc
    local child = spawn(portman_args("alloc", "--range", "43000-43099", "--count", "5", "--etcd",
      cluster:endpoints(), "--cluster", name, "--ttl", "1", "--hold", "--json"),
      function(line) doc = cjson.decode(line) end)
    run(function()
      local reader = new_backend("hold", "reader")
      etcd_cluster.wait_until(function() return doc ~= nil or child.code ~= nil end, 30000)
      assert.truthy(doc, table.concat(child.err))
      assert.same({43000, 43001, 43002, 43003, 43004}, doc.ports)
      async.sleep(3000) -- three TTLs
      local _, n = claimed(reader)
      assert.equal(5, n)
      child.kill("sigterm")
      etcd_cluster.wait_until(function() return child.code ~= nil end, 10000)
      local _, left = claimed(reader)
      assert.equal(0, left) -- revoked at once, not after the TTL
      reader:close()
    end)
    local code, _, err = child.wait()
    assert.equal(0, code, err)
  end)

  it("fails clearly without quorum, double-claims nothing, and recovers when members return", function()
    local a, b
    local before_a
    run(function()
      a = new_backend("quorum", "node-a", {timeout = 2000, attempt_timeout = 700})
      b = new_backend("quorum", "node-b", {timeout = 2000, attempt_timeout = 700})
      before_a = assert(a:claim_ports{range = {44000, 44099}, count = 10})
      assert(b:claim_ports{range = {44000, 44099}, count = 10})
    end)
    cluster:kill(2, "sigkill")
    cluster:kill(3, "sigkill")
    run(function()
      for _, be in ipairs({a, b}) do
        local ports, err, code = be:claim_ports{range = {44000, 44099}, count = 5}
        assert.is_nil(ports)
        assert.truthy(code == "timeout" or code == "unreachable", err)
        assert.equal(code, err:match("^([%a_]+): "))
      end
      local ok, err, code = a:claim("ports", "44099", {port = 44099})
      assert.is_nil(ok)
      assert.truthy(code == "timeout" or code == "unreachable", err)
      local info, rerr, rcode = a:renew()
      assert.is_nil(info)
      assert.truthy(rcode == "timeout" or rcode == "unreachable", rerr)
      local list, lerr, lcode = a:list("ports")
      assert.is_nil(list)
      assert.truthy(lcode == "timeout" or lcode == "unreachable", lerr)
    end)
    cluster:start_member(2)
    cluster:start_member(3)
    assert.truthy(cluster:wait_healthy(20000), cluster:logs())
    run(function()
      assert.truthy(a:renew())
      local got = {}
      for _, be in ipairs({a, b}) do
        be:claim_ports({range = {44000, 44099}, count = 20}, function(ports, err)
          got[#got + 1] = assert(ports, err)
        end)
      end
      etcd_cluster.wait_until(function() return #got == 2 end, 20000)
      assert.equal(2, #got)
      local held, n = claimed(a)
      local seen = {}
      for _, p in ipairs(before_a) do seen[p] = true end
      for _, list in ipairs(got) do
        for _, p in ipairs(list) do
          assert.is_nil(seen[p], "port " .. p .. " handed out twice")
          seen[p] = true
        end
      end
      -- 10 + 10 before, 20 + 20 after: nothing lost, nothing twice; a
      -- claim that timed out during the outage may have landed (a leak
      -- until its lease ends, never a second owner)
      assert.truthy(n >= 60, n)
      for _, p in ipairs(before_a) do assert.equal("node-a", held[p]) end
      a:close()
      b:close()
    end)
  end)

  it("grants a new lease when the old one lapsed and writes its records again, losing none held meanwhile", function()
    run(function()
      local a = new_backend("lapse", "node-a", {ttl = 1})
      local other = new_backend("lapse", "node-o")
      local ports = assert(a:claim_ports{range = {45000, 45009}, count = 3})
      assert(a:register{name = "web", address = "127.0.0.1", port = ports[1]})
      local old = a:lease()
      -- no keep-alive: the lease lapses and etcd drops the keys
      assert.truthy(etcd_cluster.wait_until(function()
        local _, n = claimed(other)
        return n == 0
      end, 15000, 200))
      -- meanwhile another node takes one of them
      assert.truthy(other:claim("ports", tostring(ports[2]), {port = ports[2]}))
      local info = assert(a:renew())
      assert.is_true(info.regranted)
      assert.not_equal(old, a:lease())
      assert.same({"ports/" .. ports[2]}, info.lost)
      local held = claimed(other)
      assert.equal("node-a", held[ports[1]])
      assert.equal("node-o", held[ports[2]])
      assert.equal("node-a", held[ports[3]])
      assert.equal(1, #assert(other:services()))
      -- the old lease stays dead: keep-alive on it says 0
      local client = assert(etcd.new{endpoints = cluster:endpoints()})
      assert.equal(0, client:keepalive(old))
      client:close()
      a:close()
      other:close()
    end)
  end)

  -- The ports of range lo-hi as claim_many's records.
  local function recs(lo, hi)
    local out = {}
    for p = lo, hi do out[tostring(p)] = {port = p} end
    return out
  end

  local function key_list(lo, hi)
    local out = {}
    for p = lo, hi do out[#out + 1] = tostring(p) end
    table.sort(out)
    return out
  end

  it("claims several keys in one txn: every free one, none another node holds, naming its holder", function()
    run(function()
      local a, b = new_backend("many", "node-a"), new_backend("many", "node-b")
      assert(a:claim("ports", "1", {})) -- the lease: granting one moves no revision
      local _, before = assert(a:list("ports"))
      local got, held = assert(a:claim_many("ports", recs(46000, 46009)))
      local records, after = assert(a:list("ports"))
      assert.equal(math.tointeger(before) + 1, math.tointeger(after)) -- one txn for ten keys
      assert.same(key_list(46000, 46009), got)
      assert.same({}, held)
      assert.equal(11, #records)
      for _, r in ipairs(records) do
        assert.equal("node-a", r.node)
        assert.equal(a:lease(), r.lease)
      end
      -- one of b's keys is a's: b gets exactly the free ones, and learns who holds the other
      got, held = assert(b:claim_many("ports", recs(46009, 46011)))
      assert.same({"46010", "46011"}, got)
      assert.same({["46009"] = "node-a"}, held)
      assert.is_false(b:holds("ports", "46009"))
      assert.is_true(b:holds("ports", "46010"))
      local owners = claimed(a)
      assert.equal("node-a", owners[46009])
      assert.equal("node-b", owners[46010])
      assert.equal("node-b", owners[46011])
      -- a's own key is its own again, b's stays b's: nothing is written
      _, before = assert(a:list("ports"))
      got, held = assert(a:claim_many("ports", {["46000"] = {port = 46000}, ["46010"] = {port = 46010}}))
      assert.same({"46000"}, got)
      assert.same({["46010"] = "node-b"}, held)
      _, after = assert(a:list("ports"))
      assert.equal(before, after)
      -- more keys than etcd takes in one txn (128): three txns
      before = after
      got, held = assert(a:claim_many("ports", recs(47000, 47299)))
      _, after = assert(a:list("ports"))
      assert.equal(300, #got)
      assert.same({}, held)
      assert.equal(math.tointeger(before) + 3, math.tointeger(after))
      -- closing revokes the lease: every key a claimed goes at once
      assert.is_true(async.await(a.close, a))
      local _, n = claimed(b)
      assert.equal(2, n)
      b:close()
    end)
  end)

  it("claims several keys after its lease lapsed: a new lease, its records written again but one taken", function()
    run(function()
      local a = new_backend("many-lapse", "node-a", {ttl = 1})
      local other = new_backend("many-lapse", "node-o")
      assert.equal(200, #assert(a:claim_many("ports", recs(48000, 48199))))
      local old = a:lease()
      -- no keep-alive: the lease lapses and etcd drops the keys
      assert.truthy(etcd_cluster.wait_until(function()
        local _, n = claimed(other)
        return n == 0
      end, 15000, 200))
      assert.truthy(other:claim("ports", "48100", {port = 48100})) -- taken meanwhile
      -- the claim finds the lease gone: a new one, the 200 written again (in
      -- two txns) but the one taken, then the claim itself
      assert.same({"48200", "48201"}, assert(a:claim_many("ports", recs(48200, 48201))))
      assert.not_equal(old, a:lease())
      assert.is_false(a:holds("ports", "48100"))
      assert.is_true(a:holds("ports", "48099"))
      local owners, n = claimed(other)
      assert.equal(202, n)
      for p = 48000, 48201 do assert.equal(p == 48100 and "node-o" or "node-a", owners[p]) end
      a:close()
      other:close()
    end)
  end)

  it("registers 150 services in two txns, and replaces a registered one", function()
    run(function()
      local a = new_backend("many-svc", "node-a")
      local recs_ = {}
      for i = 1, 150 do recs_[i] = {name = ("svc%03d"):format(i), address = "127.0.0.1", port = 20000 + i} end
      assert(a:claim("ports", "1", {})) -- the lease: granting one moves no revision
      local _, before = assert(a:list("services"))
      local names, failed = assert(a:register_many(recs_))
      local _, after = assert(a:list("services"))
      assert.equal(150, #names)
      assert.same({}, failed)
      assert.equal(math.tointeger(before) + 2, math.tointeger(after))
      local list = assert(a:services())
      assert.equal(150, #list)
      assert.same({name = "svc150", node = "node-a", address = "127.0.0.1", port = 20150, proto = "tcp"}, list[150])
      names, failed = assert(a:register_many{{name = "svc001", address = "127.0.0.1", port = 30001},
                                             {name = "svc151", address = "127.0.0.1", port = 20151}})
      assert.same({"svc001", "svc151"}, names)
      assert.same({}, failed)
      local ports = {}
      for _, svc in ipairs(assert(a:lookup("svc001"))) do ports[#ports + 1] = svc.port end
      assert.same({30001}, ports)
      assert.equal(151, #assert(a:services()))
      a:close()
    end)
  end)

  it("leaves out a registration another writer put in the wrong shape", function()
    run(function()
      local a = new_backend("hostile-svc", "node-a")
      assert(a:register{name = "db", address = "10.0.0.5", port = 5432})
      local raw = a:client()
      local prefix = "/portman/" .. RUN .. "hostile-svc/services/"
      assert(raw:put(prefix .. "db/evil", '{"name":"db","node":"evil","address":"x","port":"99999","proto":"tcp"}'))
      assert(raw:put(prefix .. "junk/evil", "not json"))
      local list = assert(a:services())
      assert.equal(1, #list)
      assert.equal("node-a", list[1].node)
      assert.equal(1, #assert(a:lookup("db")))
      a:close()
    end)
  end)

  it("watches other nodes' registrations and lists them with portman services", function()
    local name = RUN .. "svc"
    run(function()
      local a = new_backend("svc", "node-a")
      local b = new_backend("svc", "node-b")
      assert(a:register{name = "cache", address = "10.1.0.9", port = 6379})
      local m = assert(b:mirror("services")) -- read, then follow from that revision
      assert.same({"cache/node-a"}, (function()
        local keys = {}
        for k in pairs(m.records) do keys[#keys + 1] = k end
        return keys
      end)())
      local events = {}
      local _, rev = assert(b:list("services")) -- follow from here: nothing missed
      local w = b:watch("services", function(ev) events[#events + 1] = ev end, rev)
      assert(a:deregister("cache"))
      assert(a:register{name = "db", address = "10.1.0.1", port = 5432, metadata = {role = "primary"}})
      assert(b:register{name = "db", address = "10.1.0.2", port = 5432})
      assert(a:register{name = "db", address = "10.1.0.1", port = 5433}) -- moved
      etcd_cluster.wait_until(function() return #events >= 5 end, 5000)
      assert.same({"delete", "put", "put", "delete", "put"},
        {events[1].type, events[2].type, events[3].type, events[4].type, events[5].type})
      assert.equal("cache/node-a", events[1].key)
      assert.same({name = "db", node = "node-a", address = "10.1.0.1", port = 5432, proto = "tcp",
                   metadata = {role = "primary"}}, events[2].value)
      assert.equal("db/node-b", events[3].key)
      assert.equal(5433, events[5].value.port)
      w.close()
      -- the mirror followed the same changes on its own watch, which may
      -- deliver the last one a moment after w did: where does db run?
      etcd_cluster.wait_until(function()
        local r = m.records["db/node-a"]
        return r ~= nil and r.value.port == 5433 and m.records["db/node-b"] ~= nil
      end, 5000)
      assert.is_nil(m.records["cache/node-a"])
      assert.equal(5433, m.records["db/node-a"].value.port)
      assert.equal("10.1.0.2", m.records["db/node-b"].value.address)
      m.close()
      local where = assert(b:lookup("db"))
      assert.same({"node-a", "node-b"}, {where[1].node, where[2].node})
      assert.same({}, assert(b:lookup("cache")))
      local status, out, err = helpers.portman(("services --etcd %s --cluster %s --json")
        :format(cluster:endpoints(), name))
      assert.equal(0, status, err)
      local doc = cjson.decode(out)
      assert.equal(name, doc.cluster)
      assert.same({{name = "db", node = "node-a", address = "10.1.0.1", port = 5433, proto = "tcp"},
                   {name = "db", node = "node-b", address = "10.1.0.2", port = 5432, proto = "tcp"}},
        doc.services)
      assert(a:deregister("db"))
      a:close()
      b:close()
    end)
  end)
end)

describe("etcd over TLS with etcd's auth #lab", function()
  local cluster, fds

  setup(function()
    cluster = etcd_cluster.start{n = 1, tls = true}
    local out, ok = cluster:etcdctl("user add root:pw")
    assert(ok, out)
    out, ok = cluster:etcdctl("auth enable")
    assert(ok, out)
    fds = settled_fds()
  end)

  teardown(function()
    if cluster then cluster:stop() end
    uv.run("nowait")
    assert.equal(fds, settled_fds())
  end)

  local function new_backend(node, extra)
    local opts = {kind = "etcd", endpoints = cluster:endpoints(), cluster = RUN .. "tls", node = node,
                  cacert = cluster.cert, user = "root", password = "pw", timeout = 2000}
    for k, v in pairs(extra or {}) do opts[k] = v end
    return assert(backend.new(opts))
  end

  it("claims, registers and watches with the CA and a token", function()
    run(function()
      local a, b = new_backend("node-a"), new_backend("node-b")
      local events = {}
      -- from the revision read now: no change is missed however long the
      -- stream takes to set up (TLS on a loaded machine)
      local _, rev = assert(b:list("services"))
      local w = b:watch("services", function(ev) events[#events + 1] = ev end, rev)
      assert.same({46000, 46001, 46002}, assert(a:claim_ports{range = {46000, 46099}, count = 3}))
      assert(a:register{name = "api", address = "127.0.0.1", port = 46000})
      assert.equal("node-a", assert(b:services())[1].node)
      etcd_cluster.wait_until(function() return #events > 0 end, 10000)
      assert.equal("api/node-a", events[1] and events[1].key)
      w.close()
      a:close()
      b:close()
    end)
    local status, out, err = helpers.portman(("alloc --range 46000-46099 --count 2 --etcd %s --cluster %s "
      .. "--cacert %s --user root --json"):format(cluster:endpoints(), RUN .. "tls", cluster.cert),
      "PORTMAN_ETCD_PASSWORD=pw")
    assert.equal(0, status, err)
    assert.same({46000, 46001}, cjson.decode(out).ports)
  end)

  local refusals = {
    {"a wrong password", {password = "nope"}, "^denied: etcd refused user 'root': .*authentication failed"},
    {"no user", {user = false, password = false}, "^denied: .*user name is empty"},
    {"a server certificate it cannot verify", {cacert = false}, "^denied: SSL certificate problem"},
  }
  for _, case in ipairs(refusals) do
    it("fails with denied on " .. case[1] .. ", without retrying for the whole timeout", function()
      run(function()
        local extra = {}
        for k, v in pairs(case[2]) do extra[k] = v or nil end
        local opts = {kind = "etcd", endpoints = cluster:endpoints(), cluster = RUN .. "tls", node = "x",
                      cacert = cluster.cert, user = "root", password = "pw", timeout = 60000}
        for k in pairs(case[2]) do opts[k] = extra[k] end
        local b = assert(backend.new(opts))
        local ports, err, code = b:claim_ports{range = {46100, 46199}, count = 1}
        assert.is_nil(ports)
        assert.equal("denied", code)
        assert.matches(case[3], err)
        b:close()
      end)
    end)
  end
end)

describe("etcd with client certificates #lab", function()
  local cluster

  setup(function()
    cluster = etcd_cluster.start{n = 1, tls = true, client_cert_auth = true}
  end)
  teardown(function()
    if cluster then cluster:stop() end
    uv.run("nowait")
  end)

  local function claim(extra)
    return run(function()
      local opts = {kind = "etcd", endpoints = cluster:endpoints(), cluster = RUN .. "mtls", node = "n",
                    cacert = cluster.cert, cert = cluster.cert, key = cluster.key, timeout = 5000}
      for k, v in pairs(extra or {}) do opts[k] = v end
      local b = assert(backend.new(opts))
      local ports, err, code = b:claim_ports{range = {46200, 46299}, count = 1}
      b:close()
      return ports, err, code
    end)
  end

  it("claims with a client certificate while etcd's auth is off", function()
    local ports, err = claim()
    assert.same({46200}, ports, err)
  end)

  it("says which combination etcd's gateway cannot serve: a client certificate with etcd's auth on", function()
    local out, ok = cluster:etcdctl("user add root:pw")
    assert(ok, out)
    out, ok = cluster:etcdctl("auth enable")
    assert(ok, out)
    local ports, err, code = claim{user = "root", password = "pw"}
    assert.is_nil(ports)
    assert.equal("unsupported", code)
    assert.matches("refuses a client certificate while etcd's auth is on", err)
    assert.matches("user and password with the CA", err)
  end)
end)
