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
    local list = reg:names()
    assert.same({"a", "b"}, list)
    list[1] = "changed by the caller"
    assert.same({"a", "b"}, reg:names())
    reg:register{name = "aa", port = 20003}
    assert.same({"a", "aa", "b"}, reg:names())
    assert.is_true(reg:unregister("aa"))
    assert.same({"a", "b"}, reg:names())
    assert.is_true(reg:unregister("a"))
    assert.is_false(reg:unregister("a"))
    assert.is_nil(reg:get("a"))
  end)

  it("writes every field out of get, list, snapshot and export, the defaults too", function()
    local reg = registry.new{check_host = false}
    reg:register{name = "d", port = 20001}
    reg:register{name = "u", port = 20002, type = "api", proto = "udp", address = "::1", metadata = {x = 1}}
    local d = {name = "d", type = "custom", proto = "tcp", address = "0.0.0.0", port = 20001, metadata = {}}
    local u = {name = "u", type = "api", proto = "udp", address = "::1", port = 20002, metadata = {x = 1}}
    assert.same(d, reg:get("d"))
    assert.same(u, reg:get("u"))
    assert.same({d, u}, reg:list())
    assert.same({d, u}, reg:snapshot().services)
    -- what the state file holds: plain JSON, every field written
    local doc = cjson.decode(reg:export())
    assert.same({"0.0.0.0", "custom", "tcp"}, {doc.services[1].address, doc.services[1].type, doc.services[1].proto})
    assert.equal("udp", doc.services[2].proto)
    -- peek reads the defaults too
    assert.equal("tcp", reg:peek("d").proto)
    assert.equal("0.0.0.0", reg:peek("d").address)
  end)

  it("keeps a shared registration's metadata itself and returns its own entry", function()
    local reg = registry.new{check_host = false}
    local meta = {role = "primary"}
    local e = assert(reg:register({name = "s", port = 20001, metadata = meta}, {shared = true}))
    assert.equal(reg:peek("s"), e)
    assert.equal(meta, reg:peek("s").metadata)
    -- get and list still copy it
    local got = reg:get("s")
    assert.not_equal(meta, got.metadata)
    got.metadata.role = "changed by the caller"
    assert.equal("primary", meta.role)
    -- an ordinary registration copies it
    local other = {role = "replica"}
    reg:register{name = "o", port = 20002, metadata = other}
    assert.not_equal(other, reg:peek("o").metadata)
    assert.same(other, reg:peek("o").metadata)
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

    it("keeps the port's entries right as they come and go, a service called 'name' among them", function()
      assert.truthy(reg:register{name = "name", port = 20000, address = "127.0.0.1"})
      assert.truthy(reg:register{name = "b", port = 20000, address = "127.0.0.2"})
      assert.truthy(reg:register{name = "c", port = 20000, address = "::1"})
      assert.equal("conflict: port 20000/tcp is registered to 'b'",
        select(2, reg:register{name = "d", port = 20000, address = "127.0.0.2"}))
      assert.is_true(reg:unregister("b"))
      assert.truthy(reg:register{name = "d", port = 20000, address = "127.0.0.2"})
      assert.is_true(reg:unregister("name"))
      assert.is_true(reg:unregister("c"))
      assert.equal("conflict: port 20000/tcp is registered to 'd'", select(2, reg:register{name = "e", port = 20000}))
      assert.is_true(reg:unregister("d"))
      assert.truthy(reg:register{name = "e", port = 20000})
      assert.truthy(reg:register{name = "f", port = 20000, proto = "udp"})
      assert.same({"e", "f"}, reg:names())
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

  describe("10,000 registrations", function()
    -- The conflicts as a naive reference sees them: every candidate is
    -- compared with every entry accepted before it and every socket bound
    -- on the host, by name first, then the registered ports, then the
    -- host's (the registry's order). Addresses are written in canonical
    -- form here, so plain comparison is the reference's overlap.
    local function v4(a) return not a:find(":", 1, true) end
    local function overlap(a, b)
      if a == b or a == "::" or b == "::" then return true end
      if a == "0.0.0.0" then return v4(b) end
      if b == "0.0.0.0" then return v4(a) end
      return false
    end

    -- what may be said of candidate c: {kind, set of names or addresses it may name}
    local function reference(c, accepted, host)
      local owners, same_name = {}, false
      for _, o in ipairs(accepted) do
        if o.name == c.name then same_name = true end
        if o.port == c.port and o.proto == c.proto and overlap(o.address, c.address) then owners[o.name] = true end
      end
      if same_name then return {kind = "name"} end
      if next(owners) then return {kind = "port", may_name = owners} end
      local bound = {}
      for _, b in ipairs(host[c.proto]) do
        if b.port == c.port and overlap(b.address, c.address) then bound[b.address] = true end
      end
      if next(bound) then return {kind = "host", may_name = bound} end
      return nil
    end

    local function kind_of(err, c)
      if err == ("conflict: service '%s' is already registered"):format(c.name) then return "name" end
      local owner = err:match(("^conflict: port %d/%s is registered to '(.*)'$"):format(c.port, c.proto))
      if owner then return "port", owner end
      local addr = err:match(("^conflict: port %d/%s is already bound on this host %%((.*)%%)$"):format(c.port, c.proto))
      if addr then return "host", addr end
      return "unexpected: " .. err
    end

    -- The host's sockets, as the reference sees them.
    local function host_view()
      local netaddr = require "portman.netaddr"
      return {tcp = netaddr.bound("tcp"), udp = netaddr.bound("udp")}
    end

    local function same_view(a, b)
      local function key(list)
        local out = {}
        for i, x in ipairs(list) do out[i] = x.address .. "/" .. x.port end
        table.sort(out)
        return table.concat(out, " ")
      end
      return key(a.tcp) == key(b.tcp) and key(a.udp) == key(b.udp)
    end

    -- 10,000 candidates, mostly on ports of their own below the kernel's
    -- ephemeral range, with deliberate conflicts: a name again, a
    -- proto/port again on an overlapping address (and on a disjoint one,
    -- which is no conflict), the ports of sockets this spec holds.
    local function candidates(held_tcp, held_udp)
      local addresses = {"0.0.0.0", "127.0.0.1", "::1", "::", "127.0.0.2"}
      local list = {}
      for i = 1, 10000 do
        local c = {name = "s" .. i, port = 20000 + i, proto = i % 3 == 0 and "udp" or "tcp",
                   address = addresses[i % #addresses + 1]}
        if i % 97 == 0 then c.name = "s" .. (i - 50) end                   -- a name again
        if i % 89 == 0 then                                                 -- a port again
          local earlier = list[i - 7]
          c.port, c.proto = earlier.port, earlier.proto
          c.address = ({"0.0.0.0", "::", earlier.address, "127.0.0.3"})[i % 4 + 1]
        end
        if i % 1000 == 500 then c.port, c.proto, c.address = held_tcp, "tcp", "0.0.0.0" end
        if i % 1000 == 501 then c.port, c.proto, c.address = held_udp, "udp", "::" end
        if i % 1000 == 502 then c.port, c.proto, c.address = held_tcp, "tcp", "127.0.0.2" end -- disjoint: none
        if i % 1000 == 503 then c.port, c.proto, c.address = held_tcp, "udp", "127.0.0.9" end
        list[i] = c
      end
      return list
    end

    local function round(list)
      uv.sleep(2)
      uv.update_time() -- a new loop time: the registry reads the host's sockets anew
      local before = host_view()
      local reg = registry.new()
      local got = {}
      for i, c in ipairs(list) do
        local e, err, code = reg:register(c)
        got[i] = e and true or {err, code}
      end
      return reg, got, before, host_view()
    end

    it("are refused exactly where a naive scan finds a conflict", function()
      local t = uv.new_tcp()
      assert(t:bind("127.0.0.1", 0))
      assert(t:listen(1, function() end))
      local u = uv.new_udp()
      assert(u:bind("127.0.0.1", 0))
      local list = candidates(t:getsockname().port, u:getsockname().port)
      -- another process may bind or close a port meanwhile: a round counts
      -- when the host's sockets were the same before and after it
      local reg, got, host
      for _ = 1, 5 do
        local before, after
        reg, got, before, after = round(list)
        host = before
        if same_view(before, after) then break end
        host = nil
      end
      t:close()
      u:close()
      uv.run("nowait")
      assert.truthy(host, "the host's sockets kept changing")
      local accepted, kinds = {}, {name = 0, port = 0, host = 0}
      for i, c in ipairs(list) do
        local want = reference(c, accepted, host)
        if not want then
          assert.equal(true, got[i], ("%s %d/%s %s refused: %s"):format(c.name, c.port, c.proto, c.address,
            type(got[i]) == "table" and tostring(got[i][1]) or ""))
          accepted[#accepted + 1] = c
        else
          assert.is_table(got[i], c.name .. " was registered despite a " .. want.kind .. " conflict")
          assert.equal("conflict", got[i][2])
          local kind, named = kind_of(got[i][1], c)
          assert.equal(want.kind, kind, got[i][1])
          if want.may_name then assert.is_true(want.may_name[named] == true, got[i][1]) end
          kinds[kind] = kinds[kind] + 1
        end
      end
      -- every kind of conflict was there, and what was kept is what the scan kept
      assert.is_true(kinds.name >= 100 and kinds.port >= 100 and kinds.host >= 2, cjson.encode(kinds))
      assert.equal(#accepted, reg:count())
      local names = {}
      for i, c in ipairs(accepted) do names[i] = c.name end
      table.sort(names)
      assert.same(names, reg:names())
      local listed = reg:list()
      assert.equal(#accepted, #listed)
      for i, e in ipairs(listed) do assert.equal(names[i], e.name) end
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
