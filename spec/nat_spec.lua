-- portman.nat without a router: argument checks, the engines' life cycle,
-- and NAT-PMP against a responder on 127.0.0.1:5351 that this spec runs
-- (nat.gateway points libnatpmp at it; nothing leaves loopback). UPnP
-- (SSDP multicast) is exercised only in the lab: spec/lab/nat_lab_spec.lua.
local helpers = require "helpers"
local uv = require "luv"

-- A NAT-PMP gateway (RFC 6886) on loopback: answers address and mapping
-- requests with `epoch`; drops the first `drop` requests; records each.
local function responder(opts)
  local r = {epoch = opts.epoch or 1000, drop = opts.drop or 0, seen = {}, result = opts.result or 0,
             taken = opts.taken, garbage = opts.garbage}
  local u = uv.new_udp()
  assert(u:bind("127.0.0.1", 5351))
  r.udp = u
  u:recv_start(function(err, data, addr)
    if err or not data then return end
    local op = data:byte(2)
    r.seen[#r.seen + 1] = {op = op, data = data}
    if r.drop > 0 then
      r.drop = r.drop - 1
      return
    end
    local reply
    if r.garbage then
      reply = r.garbage
    elseif op == 0 then
      reply = string.pack(">BBI2I4BBBB", 0, 128, r.result, r.epoch, 203, 0, 113, 5)
    else
      local internal, external, life = string.unpack(">I2I2I4", data, 5)
      if r.taken == external and life > 0 then external = external + 1 end
      reply = string.pack(">BBI2I4I2I2I4", 0, 128 + op, r.result, r.epoch, internal, external, life)
      r.last = {internal = internal, external = external, lifetime = life, op = op}
    end
    u:send(reply, addr.ip, addr.port)
  end)
  function r.close() if not u:is_closing() then u:close() end end
  return r
end

describe("portman.nat", function()
  local nat

  setup(function()
    local before = helpers.globals()
    nat = require "portman.nat"
    require "portman"
    for k in pairs(_G) do assert.is_true(before[k] ~= nil, "new global " .. tostring(k)) end
  end)

  before_each(function()
    nat.forget()
    nat.gateway = "127.0.0.1"
  end)

  describe("arguments", function()
    local cases = {
      {nil, "bad argument #1 to 'map' (table expected, got nil)"},
      {{}, "bad argument #1 to 'map' (internal_port: integer port expected, got nil)"},
      {{internal_port = 70000}, "bad argument #1 to 'map' (internal_port: port out of range 1-65535)"},
      {{internal_port = 80, external_port = 0}, "bad argument #1 to 'map' (external_port: port out of range 1-65535)"},
      {{internal_port = 80, bogus = 1}, "bad argument #1 to 'map' (unknown option 'bogus')"},
      {{internal_port = 80, proto = "sctp"}, "bad argument #1 to 'map' (unknown proto 'sctp' (tcp, udp))"},
      {{internal_port = 80, method = "pcp"}, "bad argument #1 to 'map' (unknown method 'pcp' (auto, upnp, natpmp))"},
      {{internal_port = 80, lifetime = 0},
       "bad argument #1 to 'map' (lifetime: integer seconds in 1-604800 expected)"},
      {{internal_port = 80, timeout = -1}, "bad argument #1 to 'map' (timeout: positive integer ms expected)"},
      {{internal_port = 80, description = 5}, "bad argument #1 to 'map' (description: string expected)"},
      {{internal_port = 80, on_event = "x"}, "bad argument #1 to 'map' (on_event: function expected)"},
    }
    for i, c in ipairs(cases) do
      it("map rejects bad options (" .. i .. ")", function()
        local err = helpers.raises(nat.map, c[1], function() end)
        assert.equal(c[2], (err:gsub("^[^:]*:%d+: ", "")))
      end)
    end

    it("unmap, mappings and external_address check theirs", function()
      local function msg(...) return (helpers.raises(...):gsub("^[^:]*:%d+: ", "")) end
      assert.equal("bad argument #1 to 'unmap' (external_port: integer port expected, got nil)",
        msg(nat.unmap, {}, function() end))
      assert.equal("bad argument #1 to 'unmap' (unknown method 'x' (auto, upnp, natpmp))",
        msg(nat.unmap, {external_port = 1, method = "x"}, function() end))
      assert.equal("bad argument #1 to 'external_address' (unknown option 'servers')",
        msg(nat.external_address, {servers = {}}, function() end))
      assert.equal("bad argument #1 to 'mappings' (table expected, got string)",
        msg(nat.mappings, "x", function() end))
    end)

    it("needs a callback outside a task", function()
      assert.matches("pass a callback", helpers.raises(nat.map, {internal_port = 80}))
    end)
  end)

  describe("the NAT-PMP engine", function()
    local core = require "portman.core"

    it("closes once, raises after close, and leaves no fd behind", function()
      local before = helpers.fd_count()
      local e, gw, local_ip = core.natpmp_open("127.0.0.1")
      assert.truthy(e, gw)
      assert.equal("127.0.0.1", gw)
      assert.equal("127.0.0.1", local_ip)
      assert.is_true(e:fd() >= 0)
      assert.equal(-1, e:timeout()) -- nothing pending
      e:close()
      e:close()
      assert.matches("attempt to use a closed NAT%-PMP engine", helpers.raises(e.fd, e))
      assert.equal(before, helpers.fd_count())
      assert.matches("bad argument #1 to '[^']*' %(portman.natpmp expected", helpers.raises(e.request, 5))
    end)

    it("rejects a gateway that is no IPv4 address and bad request arguments", function()
      local e, err, code = core.natpmp_open("not-an-address")
      assert.is_nil(e)
      assert.equal("protocol", code, err)
      local ok = core.natpmp_open("127.0.0.1")
      assert.matches("bad argument #2 to '[^']*' %(invalid option 'sctp'%)",
        helpers.raises(ok.request, ok, "sctp", 1))
      assert.matches("bad argument #3 to '[^']*' %(port out of range 1%-65535%)",
        helpers.raises(ok.request, ok, "tcp", 0))
      ok:close()
    end)

    it("a UPnP job refuses unknown operations and bad fields", function()
      assert.matches("bad argument #1 to '[^']*upnp_start' %(invalid option 'x'%)",
        helpers.raises(core.upnp_start, "x", {}))
      assert.matches("proto: \"tcp\" or \"udp\" expected", helpers.raises(core.upnp_start, "add", {proto = "x"}))
      assert.matches("external_port: integer in 0%-65535 expected",
        helpers.raises(core.upnp_start, "add", {external_port = 70000}))
    end)
  end)

  describe("NAT-PMP against a loopback gateway", function()
    local r

    after_each(function()
      if r then r.close() end
      r = nil
      uv.run("nowait")
    end)

    it("maps, reports the gateway's choice of port, renews, notices a reboot, deletes on close", function()
      local before = helpers.fd_count()
      local events = {}
      local m, closed = helpers.loop(function()
        r = responder{taken = 45000}
        local m, err = nat.map{internal_port = 45000, method = "natpmp", lifetime = 2,
          on_event = function(ev) events[#events + 1] = ev.event end}
        assert.truthy(m, err)
        -- renewal at half the lifetime (1 s): wait for the first one
        while #events < 1 do require("portman.async").sleep(50) end
        -- the gateway reboots: its epoch starts again
        r.epoch = 1
        while #events < 2 do require("portman.async").sleep(50) end
        local closed = {m:close()}
        r.close()
        return m, closed
      end)
      assert.same({method = "natpmp", external_ip = "203.0.113.5", external_port = 45001,
                   internal_ip = "127.0.0.1", internal_port = 45000, proto = "tcp", lifetime = 2},
        {method = m.method, external_ip = m.external_ip, external_port = m.external_port,
         internal_ip = m.internal_ip, internal_port = m.internal_port, proto = m.proto, lifetime = m.lifetime})
      assert.same({"renewed", "recreated", "closed"}, events)
      assert.same({true}, closed)
      -- the last request deleted it: lifetime 0 for the internal port
      assert.same({internal = 45000, external = 0, lifetime = 0, op = 2}, r.last)
      assert.is_true(m:closed())
      assert.same({true}, {helpers.loop(function() return m:close() end)}) -- a second close does nothing
      assert.equal(before, helpers.fd_count())
    end)

    it("retries on libnatpmp's schedule until the gateway answers", function()
      local res = helpers.loop(function()
        r = responder{drop = 2}
        -- NAT-PMP only: UPnP's discovery is multicast, kept to the lab
        local res = nat.external_address{timeout = 3000, router = {"natpmp"}}
        r.close()
        return res
      end)
      -- libnatpmp resent twice (250 ms, then 500 ms later); the third try was answered
      assert.same({"natpmp", "203.0.113.5"}, {res.source, res.address})
      assert.equal(3, #r.seen)
    end)

    it("hostile answers end in a code word, never a raise", function()
      local codes = {protocol = true, unsupported = true, timeout = true}
      for _, junk in ipairs{"", "\0", ("\255"):rep(16), "\0\129\0\0", ("\0"):rep(100),
                            string.pack(">BBI2I4", 0, 130, 0, 1)} do
        local m, err, code = helpers.loop(function()
          r = responder{garbage = junk}
          local a, b, c = nat.map{internal_port = 45020, method = "natpmp", timeout = 600}
          r.close()
          return a, b, c
        end)
        assert.is_nil(m)
        assert.is_true(codes[code] == true, tostring(err))
        assert.equal(code, err:match("^(%a+):"))
      end
    end)

    it("a refusal is denied, silence is not_found", function()
      local m, err, code = helpers.loop(function()
        r = responder{result = 2}
        local a, b, c = nat.map{internal_port = 45010, method = "natpmp"}
        r.close()
        return a, b, c
      end)
      assert.is_nil(m)
      assert.equal("denied", code)
      assert.matches("^denied: ", err)
      r = nil
      m, err, code = helpers.loop(function() return nat.map{internal_port = 45010, method = "natpmp"} end)
      assert.is_nil(m)
      assert.equal("not_found", code, err)
    end)
  end)

  describe("in the manager", function()
    local manager = require "portman.manager"

    it("rejects unknown map options", function()
      local m = manager.new()
      local err = helpers.raises(m.add_service, m, {name = "x", port = 45100, listen = false, check = false,
                                                   map = {bogus = 1}})
      assert.matches("bad argument #1 to 'add_service' %(unknown option 'map.bogus'%)", err)
      helpers.loop(function() m:shutdown(0, function() end) end)
    end)

    it("maps a service, lists and records it, deletes it when the service stops", function()
      local r
      local doc, snap, after, last = helpers.loop(function()
        r = responder{}
        local m = manager.new()
        local events = {}
        m:on(function(ev) events[#events + 1] = ev.event end)
        assert(m:add_service{name = "web", port = 45200, check = false, map = {method = "natpmp", lifetime = 600}})
        while not events[2] do require("portman.async").sleep(20) end
        local d, s = m:status(), m:snapshot()
        require("portman.async").await(function(cb) m:stop_service("web", 0, cb) end)
        local a = m:snapshot()
        local l = r.last
        m:shutdown(0, function() end)
        r.close()
        return d, s, a, l
      end)
      assert.same({service = "web", method = "natpmp", external_port = 45200, internal_port = 45200, proto = "tcp",
                   external_ip = "203.0.113.5"},
        {service = doc.mappings[1].service, method = doc.mappings[1].method,
         external_port = doc.mappings[1].external_port, internal_port = doc.mappings[1].internal_port,
         proto = doc.mappings[1].proto, external_ip = doc.mappings[1].external_ip})
      assert.equal(45200, snap.mappings[1].external_port)
      assert.equal("natpmp", snap.mappings[1].method)
      assert.same({}, after.mappings)
      assert.same({internal = 45200, external = 0, lifetime = 0, op = 2}, last)
    end)
  end)

  describe("the CLI", function()
    it("rejects bad usage with exit status 2", function()
      for _, args in ipairs{"map", "map 0", "map 80 --proto sctp", "map 80 --method pcp", "map 80 --lifetime 0",
                            "unmap", "unmap 70000", "unmap 80 --method x"} do
        local code, _, err = helpers.portman(args)
        assert.equal(2, code, args .. ": " .. err)
      end
    end)
  end)
end)
