-- portman.backend: the file kind in full, the interface both kinds share,
-- and the etcd kind's option checks, failure words and records against a
-- fake gateway (the etcd kind against a real cluster is in
-- spec/lab/etcd_spec.lua).
local helpers = require "helpers"

-- helpers.fd_count collects garbage first: a file another spec left to
-- the collector does not move the count
local settled_fds = helpers.fd_count
local uv = require "luv"
local cjson = require "cjson"
local async = require "portman.async"
local etcd = require "portman.etcd"
local http_server = require "support.http_server"

local write = helpers.write

describe("portman.backend", function()
  local backend, dir, fds

  setup(function()
    http_server.closed_port() -- libuv keeps a reserve fd after its first TCP socket
    uv.run("nowait")
  end)
  before_each(function()
    backend = require "portman.backend"
    dir = helpers.tmpdir()
    fds = settled_fds()
  end)
  after_each(function()
    uv.run("nowait")
    assert.equal(fds, settled_fds())
    os.execute("rm -rf " .. dir)
  end)

  local function file(node)
    return backend.new{path = dir .. "/state.json", node = node}
  end

  it("leaves _G alone", function()
    local before = helpers.globals()
    package.loaded["portman.backend"] = nil
    require "portman.backend"
    assert.same(before, helpers.globals())
  end)

  -- The methods of a backend object, through its class and what that indexes.
  local function methods(b)
    local names, seen = {}, {}
    local class = getmetatable(b).__index
    while class do
      for k in pairs(class) do
        if not seen[k] and not k:match("^__") then names[#names + 1], seen[k] = k, true end
      end
      class = getmetatable(class) and getmetatable(class).__index
    end
    table.sort(names)
    return names
  end

  it("gives both kinds the one interface, with no internal methods", function()
    local shared = {"claim", "claim_many", "claim_ports", "close", "deregister", "detach", "holds", "list", "lookup",
                    "mirror", "node", "register", "register_many", "release", "renew", "services", "start", "watch"}
    local f = backend.new{path = dir .. "/state.json"}
    assert.same(shared, methods(f))
    local e = assert(backend.new{kind = "etcd", endpoints = "http://127.0.0.1:1", cluster = "c"})
    local etcd_only = {"client", "lease"}
    local want = {table.unpack(shared)}
    for _, m in ipairs(etcd_only) do want[#want + 1] = m end
    table.sort(want)
    assert.same(want, methods(e))
    e:close()
    f:close()
  end)

  it("blames the caller's line for a bad argument, whichever file of the backend checks it", function()
    local b = backend.new{path = dir .. "/state.json"}
    assert.matches("^spec/backend_spec%.lua:%d+: bad argument #1 to 'new' %(unknown kind",
      helpers.raises(function() local x = backend.new{kind = "zk"} return x end))
    assert.matches("^spec/backend_spec%.lua:%d+: bad argument #1 to 'new' %(path: string expected%)",
      helpers.raises(function() local x = backend.new{path = 1} return x end))
    assert.matches("^spec/backend_spec%.lua:%d+: bad argument #1 to 'claim' %(ns: ",
      helpers.raises(function() local x = b:claim("a/b", "k", {}, function() end) return x end))
    b:close()
  end)

  describe("file", function()
    it("claims a record once: another node gets conflict, the holder may claim again", function()
      local a, b = file("a"), file("b")
      assert.is_true(a:claim("ports", "20000", {port = 20000}, function(ok) assert.is_true(ok) end) == nil)
      async.run(function()
        assert.is_true(a:claim("ports", "20000", {port = 20000}))
        local ok, err, code = b:claim("ports", "20000", {port = 20000})
        assert.is_nil(ok)
        assert.equal("conflict", code)
        assert.equal("conflict: ports/20000 is held by node a", err)
        assert.is_true(a:holds("ports", "20000"))
        assert.is_false(b:holds("ports", "20000"))
      end)
    end)

    it("claims several records in one write: every free one, none another node holds", function()
      async.run(function()
        local a, b = file("a"), file("b")
        local puts = {}
        local w = b:watch("ports", function(ev) puts[#puts + 1] = ev.key end)
        assert(a:claim("ports", "20011", {port = 20011}))
        local got, held = assert(b:claim_many("ports", {["20010"] = {port = 20010}, ["20011"] = {port = 20011},
                                                        ["20012"] = {port = 20012}}))
        assert.same({"20010", "20012"}, got)
        assert.same({["20011"] = "a"}, held)
        assert.same({"20010", "20012"}, puts)
        local owners = {}
        for _, r in ipairs(assert(a:list("ports"))) do owners[r.key] = r.node end
        assert.same({["20010"] = "b", ["20011"] = "a", ["20012"] = "b"}, owners)
        -- what the node holds already is its own again, with no write
        got, held = assert(b:claim_many("ports", {["20010"] = {port = 20010}}))
        assert.same({"20010"}, got)
        assert.same({}, held)
        assert.equal(2, #puts)
        assert.same({{}, {}}, {assert(a:claim_many("ports", {}))})
        w.close()
      end)
    end)

    it("keeps records in the state file beside other state, atomically", function()
      write(dir .. "/state.json", '{"services":[{"name":"x"}]}')
      async.run(function()
        local a = file("a")
        assert(a:claim("ports", "20001", {port = 20001}))
        a:close()
      end)
      local f = assert(io.open(dir .. "/state.json"))
      local doc = cjson.decode(f:read("a"))
      f:close()
      assert.same({{name = "x"}}, doc.services)
      assert.same({ports = {["20001"] = {node = "a", value = {port = 20001}}}}, doc.records)
      async.run(function() -- the records outlive the process: this machine's state
        assert.same({{key = "20001", node = "a", value = {port = 20001}}}, assert(file("b"):list("ports")))
      end)
    end)

    it("releases only what the node holds", function()
      async.run(function()
        local a, b = file("a"), file("b")
        assert(a:claim("ports", "20002", {port = 20002}))
        local ok, err, code = b:release("ports", "20002")
        assert.is_nil(ok)
        assert.equal("not_found", code)
        assert.equal("not_found: node b holds no ports/20002", err)
        assert.is_true(a:release("ports", "20002"))
        assert.same({}, assert(a:list("ports")))
        assert.equal("not_found", select(3, a:release("ports", "20002")))
      end)
    end)

    it("renews as a no-op: nothing in the file expires", function()
      async.run(function()
        assert.same({regranted = false, lost = {}}, assert(file("a"):renew()))
      end)
    end)

    it("registers, replaces, lists and deregisters services, and watches them", function()
      async.run(function()
        local a, b = file("a"), file("b")
        local events = {}
        local w = a:watch("services", function(ev) events[#events + 1] = ev.type .. " " .. ev.key end)
        assert(a:register{name = "web", address = "10.0.0.1", port = 8080})
        assert(b:register{name = "web", address = "10.0.0.2", port = 8080, proto = "udp", metadata = {z = 1}})
        assert(a:register{name = "web", address = "10.0.0.1", port = 8081})
        assert.same({{name = "web", node = "a", address = "10.0.0.1", port = 8081, proto = "tcp"},
                     {name = "web", node = "b", address = "10.0.0.2", port = 8080, proto = "udp",
                      metadata = {z = 1}}}, assert(b:services()))
        assert(a:deregister("web"))
        assert.equal(1, #assert(a:services()))
        assert.equal("not_found", select(3, a:deregister("web")))
        w.close()
        assert(a:register{name = "db", port = 5432})
        -- a's own changes (the file has one writer); b's are another object's
        assert.same({"put web/a", "delete web/a", "put web/a", "delete web/a"}, events)
      end)
    end)

    it("registers where a service is reached from outside (a mapping or a relay), checked", function()
      async.run(function()
        local a = file("a")
        assert(a:register{name = "db", address = "192.168.1.5", port = 5432,
                          external = {address = "11.22.33.1", port = 15432, method = "pcp"}})
        assert.same({address = "11.22.33.1", port = 15432, method = "pcp"}, assert(a:lookup("db"))[1].external)
        assert.matches("external.port", helpers.raises(a.register, a, {name = "x", port = 1,
          external = {address = "11.22.33.1", port = 0, method = "upnp"}}))
      end)
    end)

    it("registers several services at once, replacing the ones the node has registered", function()
      async.run(function()
        local a = file("a")
        local events = {}
        local w = a:watch("services", function(ev) events[#events + 1] = ev.type .. " " .. ev.key end)
        assert(a:register{name = "web", address = "10.0.0.1", port = 8080})
        local names, failed = assert(a:register_many{{name = "web", address = "10.0.0.1", port = 8081},
          {name = "db", port = 5432}, {name = "cache", port = 6379, proto = "udp"}})
        assert.same({"cache", "db", "web"}, names)
        assert.same({}, failed)
        assert.same({{name = "cache", node = "a", address = "", port = 6379, proto = "udp"},
                     {name = "db", node = "a", address = "", port = 5432, proto = "tcp"},
                     {name = "web", node = "a", address = "10.0.0.1", port = 8081, proto = "tcp"}},
          assert(a:services()))
        table.sort(events)
        assert.same({"delete web/a", "put cache/a", "put db/a", "put web/a", "put web/a"}, events)
        assert.same({{}, {}}, {assert(a:register_many{})})
        w.close()
      end)
    end)

    it("mirrors a namespace and looks services up", function()
      async.run(function()
        local a = file("a")
        assert(a:register{name = "web", address = "10.0.0.1", port = 8080})
        local changes = 0
        local m = assert(a:mirror("services", {on_change = function() changes = changes + 1 end}))
        assert.equal(8080, m.records["web/a"].value.port)
        assert(a:register{name = "db", address = "10.0.0.1", port = 5432})
        assert(a:deregister("web"))
        assert.is_nil(m.records["web/a"])
        assert.equal("a", m.records["db/a"].node)
        assert.equal(2, changes)
        m.close()
        assert.same({{name = "db", node = "a", address = "10.0.0.1", port = 5432, proto = "tcp"}},
          assert(a:lookup("db")))
        assert(a:deregister("db"))
        assert.equal(2, changes) -- closed: no more changes
        assert.same({}, assert(a:lookup("db")))
      end)
    end)

    it("claims ports from a range with the allocator's strategies, skipping claimed ones", function()
      async.run(function()
        local a, b = file("a"), file("b")
        assert.same({21000, 21001, 21002}, assert(a:claim_ports{range = {21000, 21009}, count = 3}))
        local ports, info = b:claim_ports{range = {21000, 21009}, count = 7, concurrency = 3}
        assert.same({21003, 21004, 21005, 21006, 21007, 21008, 21009}, ports)
        assert.equal(0, info.conflicts)
        local none, err, code = b:claim_ports{range = {21000, 21009}, count = 1}
        assert.is_nil(none)
        assert.equal("exhausted", code)
        assert.equal("exhausted: 0 of 1 ports claimed, no free port left in 21000-21009", err)
        -- one port a call, or several: the same ports
        local c = file("c")
        assert.same({21100, 21101, 21102, 21103}, assert(c:claim_ports{range = {21100, 21199}, count = 4, batch = 1}))
        assert.same({21104, 21105, 21106, 21107}, assert(c:claim_ports{range = {21100, 21199}, count = 4, batch = 3}))
        local h = assert(a:claim_ports{range = {22000, 22999}, count = 1, strategy = "hash", node_id = "n1"})
        assert.same({require("portman.allocator").hash_start("n1", 22000, 22999)}, h)
      end)
    end)

    it("gives back what it claimed when a range runs out part way", function()
      async.run(function()
        local a = file("a")
        local ports, err, code = a:claim_ports{range = {23000, 23004}, count = 6}
        assert.is_nil(ports)
        assert.equal("exhausted", code)
        assert.matches("^exhausted: 5 of 6 ports claimed", err)
        assert.same({}, assert(a:list("ports")))
      end)
    end)

    it("fails with protocol on a state file that is not JSON, or whose records are not an object", function()
      async.run(function()
        write(dir .. "/state.json", "{nope")
        local a = file("a")
        local ok, err, code = a:claim("ports", "1", {})
        assert.is_nil(ok)
        assert.equal("protocol", code)
        assert.matches("is not a JSON state document", err)
        write(dir .. "/state.json", '{"records":5}')
        assert.equal("protocol", select(3, a:list("ports")))
      end)
    end)

    it("raises on bad arguments and on use after close", function()
      local a = file("a")
      local cb = function() end
      assert.matches("bad argument #1 to 'claim' %(ns: name of letters, digits, '_' or '%-' expected%)",
        helpers.raises(a.claim, a, "a/b", "k", {}, cb))
      assert.matches("bad argument #2 to 'claim' %(key: non%-empty string expected%)",
        helpers.raises(a.claim, a, "ports", "", {}, cb))
      assert.matches("bad argument #3 to 'claim' %(table expected, got string%)",
        helpers.raises(a.claim, a, "ports", "1", "v", cb))
      assert.matches("bad argument #3 to 'claim' %(value not JSON%-able",
        helpers.raises(a.claim, a, "ports", "1", {f = print}, cb))
      assert.matches("bad argument #2 to 'claim_many' %(table of key = value expected%)",
        helpers.raises(a.claim_many, a, "ports", "k", cb))
      assert.matches("bad argument #2 to 'claim_many' %(keys: non%-empty strings expected%)",
        helpers.raises(a.claim_many, a, "ports", {[""] = {}}, cb))
      assert.matches("bad argument #2 to 'claim_many' %(value of k: table expected, got number%)",
        helpers.raises(a.claim_many, a, "ports", {k = 1}, cb))
      assert.matches("bad argument #2 to 'claim_many' %(value not JSON%-able",
        helpers.raises(a.claim_many, a, "ports", {k = {f = print}}, cb))
      assert.matches("bad argument #1 to 'claim_many' %(ns: ", helpers.raises(a.claim_many, a, "a/b", {}, cb))
      assert.matches("bad argument #1 to 'claim_ports' %(batch: positive integer expected%)",
        helpers.raises(a.claim_ports, a, {range = {1024, 2000}, batch = 0}, cb))
      assert.matches("bad argument #1 to 'register_many' %(recs%[2%]: web given twice%)",
        helpers.raises(a.register_many, a, {{name = "web", port = 1}, {name = "web", port = 2}}, cb))
      assert.matches("bad argument #1 to 'register_many' %(port: port out of range",
        helpers.raises(a.register_many, a, {{name = "web", port = 0}}, cb))
      assert.matches("bad argument #1 to 'register' %(unknown option 'nam'%)",
        helpers.raises(a.register, a, {nam = "x"}, cb))
      assert.matches("bad argument #1 to 'register' %(port: port out of range 1%-65535%)",
        helpers.raises(a.register, a, {name = "x", port = 70000}, cb))
      assert.matches("bad argument #1 to 'claim_ports' %(count: positive integer expected%)",
        helpers.raises(a.claim_ports, a, {range = {1024, 2000}, count = 0}, cb))
      assert.matches("bad argument #1 to 'claim_ports' %(unknown option 'cnt'%)",
        helpers.raises(a.claim_ports, a, {range = {1024, 2000}, cnt = 1}, cb))
      assert.matches("bad argument #2 to 'watch' %(function expected%)", helpers.raises(a.watch, a, "ports"))
      a:close()
      a:close()
      assert.matches("attempt to use a closed portman.backend %(file%)", helpers.raises(a.list, a, "ports", cb))
    end)
  end)

  describe("etcd", function()
    local function new(extra)
      local opts = {kind = "etcd", endpoints = "http://127.0.0.1:" .. http_server.closed_port(), cluster = "c",
                    node = "n", timeout = 200}
      for k, v in pairs(extra or {}) do opts[k] = v end
      return backend.new(opts)
    end

    it("raises on bad options, naming them", function()
      assert.matches("bad argument #1 to 'new' %(unknown kind 'zk' %(file, etcd%)%)",
        helpers.raises(backend.new, {kind = "zk"}))
      assert.matches("bad argument #1 to 'new' %(cluster: name of letters", helpers.raises(new, {cluster = "a/b"}))
      assert.matches("bad argument #1 to 'new' %(ttl: positive integer expected%)", helpers.raises(new, {ttl = 0}))
      assert.matches("bad argument #1 to 'new' %(node: letters", helpers.raises(new, {node = "a b"}))
      assert.matches("bad argument #1 to 'new' %(unknown option 'path'%)", helpers.raises(new, {path = "/x"}))
      assert.matches("bad argument #1 to 'new' %(unknown option 'cluster'%)",
        helpers.raises(backend.new, {path = "/x", cluster = "c"}))
    end)

    it("fails with unreachable, never falling back to local state, when etcd is down", function()
      async.run(function()
        local b = new()
        for _, call in ipairs({
          function() return b:claim("ports", "20000", {port = 20000}) end,
          function() return b:claim_ports{range = {20000, 20009}, count = 2} end,
          function() return b:list("ports") end,
          function() return b:services() end,
          function() return b:register{name = "x", port = 1} end,
        }) do
          local ok, err, code = call()
          assert.is_nil(ok)
          assert.equal("unreachable", code)
          assert.matches("^unreachable: no etcd member answered", err)
        end
        assert.is_false(b:holds("ports", "20000"))
        b:close()
      end)
    end)

    it("reads records from the gateway's JSON with integral numbers as integers", function()
      local value = '{"node":"n2","value":{"name":"web","node":"n2","address":"10.0.0.2","port":8080,'
        .. '"proto":"tcp","metadata":{}}}'
      local gateway = http_server.start(function()
        return {body = cjson.encode({header = {revision = "9"}, count = "1",
          kvs = {{key = etcd.b64encode("/portman/c/services/web/n2"), value = etcd.b64encode(value),
                  create_revision = "5", mod_revision = "6", version = "1", lease = "77"}}})}
      end)
      async.run(function()
        local b = new{endpoints = "http://127.0.0.1:" .. gateway.port}
        local records, revision = assert(b:list("services"))
        assert.equal("9", revision)
        assert.same({{key = "web/n2", node = "n2", lease = "77", value = {name = "web", node = "n2",
          address = "10.0.0.2", port = 8080, proto = "tcp", metadata = {}}}}, records)
        local list = assert(b:lookup("web"))
        assert.equal(8080, list[1].port)
        assert.equal("integer", math.type(list[1].port))
        b:close()
      end)
      gateway.close()
    end)

    it("fails claim_many with protocol, not a loop, when a failed txn reads every key free", function()
      local txns = 0
      local gateway = http_server.start(function(req)
        if req.path == "/v3/lease/grant" then return {body = '{"ID":"5","TTL":"10"}'} end
        if req.path == "/v3/kv/txn" then
          txns = txns + 1
          return {body = '{"succeeded":false,"responses":[{"response_range":{}},{"response_range":{}}]}'}
        end
        return {body = "{}"}
      end)
      async.run(function()
        local b = new{endpoints = "http://127.0.0.1:" .. gateway.port}
        local got, err, code = b:claim_many("ports", {["1"] = {}, ["2"] = {}})
        assert.is_nil(got)
        assert.equal("protocol", code)
        assert.equal("protocol: etcd refused a txn of free keys under /portman/c/ports", err)
        assert.equal(1, txns)
        assert.is_false(b:holds("ports", "1"))
        b:close()
      end)
      gateway.close()
    end)

    it("closes twice and raises on use after close", function()
      local b = new()
      b:close()
      b:close()
      assert.matches("attempt to use a closed portman.backend %(etcd%)",
        helpers.raises(b.claim, b, "ports", "1", {}, function() end))
    end)
  end)

  describe("records from the cluster", function()
    local good = {name = "db", node = "n1", address = "10.0.0.5", port = 5432, proto = "tcp"}
    local function with(k, v) return helpers.with(good, k, v) end

    it("takes a registration of the shape register writes", function()
      assert.same(good, backend.service_of(with("metadata", nil)))
      assert.equal(443, backend.service_of(with("port", 443.0)).port)
    end)

    local bad = {
      {"not an object", 5, "not an object"}, {"a port that is a string", with("port", "x"), "port"},
      {"port 0", with("port", 0), "port"}, {"port 99999", with("port", 99999), "port"},
      {"a name with a space", with("name", "a b"), "name"}, {"no node", with("node", nil), "node"},
      {"proto sctp", with("proto", "sctp"), "proto"}, {"an address table", with("address", {}), "address"},
      {"metadata a string", with("metadata", "m"), "metadata"},
      {"an external port 0", with("external", {address = "1.2.3.4", port = 0, method = "upnp"}), "external"},
    }
    for _, case in ipairs(bad) do
      it("leaves out " .. case[1], function()
        local v, why = backend.service_of(case[2])
        assert.is_nil(v)
        assert.equal(case[3], why)
      end)
    end
  end)

  describe("command line", function()
    it("requires --cluster with --etcd, and --etcd with --cluster", function()
      local status, _, err = helpers.portman("alloc --range 20000-20009 --etcd http://127.0.0.1:1")
      assert.equal(2, status)
      assert.matches("%-%-cluster is required with %-%-etcd", err)
      status, _, err = helpers.portman("alloc --range 20000-20009 --cluster c")
      assert.equal(2, status)
      assert.matches("%-%-cluster needs %-%-etcd", err)
      status, _, err = helpers.portman("services --cluster c")
      assert.equal(2, status)
      assert.matches("%-%-etcd is required", err)
    end)

    it("exits 1 with unreachable when etcd is down", function()
      local url = "http://127.0.0.1:" .. http_server.closed_port()
      local status, out, err = helpers.portman("alloc --range 20000-20009 --etcd " .. url
        .. " --cluster c --timeout 200 --json")
      assert.equal(1, status)
      assert.equal("unreachable", cjson.decode(out).code)
      assert.matches("^portman alloc: unreachable: ", err)
      status, out, err = helpers.portman("services --etcd " .. url .. " --cluster c --timeout 200")
      assert.equal(1, status)
      assert.matches("^portman services: unreachable: ", err)
      assert.equal("", out)
    end)
  end)
end)
