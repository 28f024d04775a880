local helpers = require "helpers"
local uv = require "luv"
local cjson = require "cjson"

describe("portman.registry", function()
  local registry

  setup(function()
    local before = helpers.globals()
    registry = require "portman.registry"
    require "portman.netaddr"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)

  local unused_port = helpers.free_port

  it("registers with type defaults and returns copies", function()
    local reg = registry.new{check_host = false}
    local e = assert(reg:register{name = "pg", type = "database", metadata = {role = "primary"}})
    assert.same({name = "pg", type = "database", proto = "tcp", address = "0.0.0.0", port = 5432,
                 metadata = {role = "primary"}}, e)
    e.port = 1
    assert.equal(5432, reg:get("pg").port)
    for t, p in pairs({cluster = 5433, replication = 5434, admin = 8080, api = 8081}) do
      assert.equal(p, reg:register{name = t, type = t, address = "10.0.0." .. p % 250}.port)
    end
    assert.equal(5, reg:count())
  end)

  it("lists by name and unregisters", function()
    local reg = registry.new{check_host = false}
    reg:register{name = "b", port = 20001}
    reg:register{name = "a", port = 20002}
    local names = {}
    for i, s in ipairs(reg:list()) do names[i] = s.name end
    assert.same({"a", "b"}, names)
    assert.is_true(reg:unregister("a"))
    assert.is_false(reg:unregister("a"))
    assert.is_nil(reg:get("a"))
  end)

  describe("conflicts", function()
    local reg
    before_each(function() reg = registry.new{check_host = false} end)

    it("refuses a second service of the same name", function()
      reg:register{name = "x", port = 20000}
      assert.same({nil, "conflict: service 'x' is already registered", "conflict"},
        {reg:register{name = "x", port = 20001}})
    end)

    it("refuses the same port and proto on overlapping addresses", function()
      reg:register{name = "a", port = 20000, address = "127.0.0.1"}
      assert.same({nil, "conflict: port 20000/tcp is registered to 'a'", "conflict"},
        {reg:register{name = "b", port = 20000}})
      assert.equal("conflict", select(3, reg:register{name = "c", port = 20000, address = "::"}))
      assert.equal("conflict", select(3, reg:register{name = "d", port = 20000, address = "127.0.0.1"}))
    end)

    it("allows the same port on another proto or a disjoint address", function()
      reg:register{name = "a", port = 20000, address = "127.0.0.1"}
      assert.truthy(reg:register{name = "b", port = 20000, proto = "udp"})
      assert.truthy(reg:register{name = "c", port = 20000, address = "127.0.0.2"})
      assert.truthy(reg:register{name = "d", port = 20000, address = "::1"})
    end)

    it("normalizes addresses before comparing them", function()
      reg:register{name = "a", port = 20000, address = "0:0:0:0:0:0:0:1"}
      assert.equal("::1", reg:get("a").address)
      assert.equal("conflict", select(3, reg:register{name = "b", port = 20000, address = "::1"}))
    end)
  end)

  describe("ports bound on the host", function()
    -- Another process listening on 127.0.0.1:port: it prints "up" once the
    -- socket listens and lives until its stdin closes.
    local function listener_process(port)
      local stdin, stdout = uv.new_pipe(), uv.new_pipe()
      local code = ("local uv = require 'luv' local t = uv.new_tcp() assert(t:bind('127.0.0.1', %d)) " ..
        "assert(t:listen(1, function() end)) io.write('up\\n') io.stdout:flush() io.read('a')"):format(port)
      local proc = uv.spawn("lua5.4", {args = {"-e", code}, stdio = {stdin, stdout, 2}}, function() end)
      local up = false
      stdout:read_start(function(_, data)
        if data and data:find("up") then up = true; stdout:read_stop() end
      end)
      while not up and uv.run("once") do end
      return function()
        stdin:close(); stdout:close(); proc:close()
        uv.run("nowait")
      end
    end

    it("refuses a TCP port another process listens on", function()
      local port = unused_port()
      local stop = listener_process(port)
      local reg = registry.new()
      local ok, err, code = reg:register{name = "web", port = port}
      local other_address = reg:register{name = "web", port = port, address = "127.0.0.2"}
      stop()
      assert.is_nil(ok)
      assert.equal("conflict", code)
      assert.equal(("conflict: port %d/tcp is already bound on this host (127.0.0.1)"):format(port), err)
      assert.truthy(other_address)
    end)

    it("refuses a UDP port bound here and accepts it once closed", function()
      local u = uv.new_udp()
      assert(u:bind("127.0.0.1", 0))
      local port = u:getsockname().port
      local reg = registry.new()
      assert.equal("conflict", select(3, reg:register{name = "dns", proto = "udp", port = port}))
      u:close()
      uv.run("nowait")
      assert.truthy(reg:register{name = "dns", proto = "udp", port = port})
    end)

    it("reads IPv6 listeners from /proc/net/tcp6", function()
      local t = uv.new_tcp()
      assert(t:bind("::1", 0))
      assert(t:listen(1, function() end))
      local port = t:getsockname().port
      local found
      for _, b in ipairs(require("portman.netaddr").bound("tcp")) do
        if b.port == port then found = b.address end
      end
      t:close()
      uv.run("nowait")
      assert.equal("::1", found)
    end)
  end)

  describe("export and import", function()
    it("round-trips", function()
      local reg = registry.new{check_host = false}
      reg:register{name = "pg", type = "database", metadata = {zone = "a", n = 3}}
      reg:register{name = "dns", type = "custom", proto = "udp", port = 20053, address = "::"}
      local doc = reg:export()
      assert.equal(2, #cjson.decode(doc).services)
      local other = registry.new{check_host = false}
      assert.equal(2, other:import(doc))
      assert.same(reg:list(), other:list())
    end)

    it("imports all or nothing", function()
      local reg = registry.new{check_host = false}
      reg:register{name = "b", port = 20002}
      local doc = cjson.encode({version = 1, services = {{name = "a", port = 20001}, {name = "c", port = 20002}}})
      assert.same({nil, "conflict: port 20002/tcp is registered to 'b'", "conflict"}, {reg:import(doc)})
      assert.is_nil(reg:get("a"))
    end)

    local bad = {
      {"not JSON", "{", "protocol: registry document is not JSON"},
      {"another document", '{"version":2,"services":[]}', "protocol: not a portman registry document"},
      {"a bad entry", '{"version":1,"services":[{"name":"a","port":70000}]}',
       "protocol: services[1]: port: port out of range 1-65535"},
      {"an unknown field", '{"version":1,"services":[{"name":"a","port":1,"prt":2}]}',
       "protocol: services[1]: unknown option 'prt'"},
    }
    for _, case in ipairs(bad) do
      it("returns protocol for " .. case[1], function()
        assert.same({nil, case[3], "protocol"}, {registry.new():import(case[2])})
      end)
    end

    it("restores a snapshot without checking the host", function()
      local reg = registry.new{check_host = false}
      reg:register{name = "a", port = 20001}
      local copy = assert(registry.restore(cjson.decode(cjson.encode(reg:snapshot()))))
      assert.same(reg:list(), copy:list())
    end)
  end)

  describe("bad arguments", function()
    local cases = {
      {{port = 1}, "name: non-empty string expected"},
      {{name = "a"}, "port: required for type 'custom'"},
      {{name = "a", port = 0}, "port: port out of range 1-65535"},
      {{name = "a", port = 1, proto = "sctp"}, "unknown proto 'sctp' (tcp, udp)"},
      {{name = "a", port = 1, address = "localhost"}, "address: IP address expected, got localhost"},
      {{name = "a", port = 1, metadata = "x"}, "metadata: table expected"},
      {{name = "a", port = 1, colour = "red"}, "unknown option 'colour'"},
    }
    for _, case in ipairs(cases) do
      it("raises on " .. case[2], function()
        local reg = registry.new()
        assert.matches("registry_spec.lua:%d+: bad argument #1 to 'register' %(" .. case[2]:gsub("%p", "%%%0") .. "%)",
          helpers.raises(function() reg:register(case[1]) end))
      end)
    end

    it("raises on an unknown option to new", function()
      assert.matches("bad argument #1 to 'new' %(unknown option 'chek_host'%)",
        helpers.raises(registry.new, {chek_host = true}))
    end)
  end)
end)
