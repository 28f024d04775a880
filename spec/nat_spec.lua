-- portman.nat without a router: argument checks, the engines' life cycle,
-- and NAT-PMP against a responder on 127.0.0.1:5351 that this spec runs in
-- a network namespace of its own (nat.gateway points libnatpmp at it;
-- nothing leaves that namespace's loopback; needs root). UPnP (SSDP
-- multicast) is exercised only in the lab: spec/lab/nat_lab_spec.lua.
local helpers = require "helpers"

-- The specs against the loopback gateway (spec/support/natpmp_responder.lua)
-- run in a child in a network namespace of its own (helpers.in_netns):
-- the gateway's port, 5351, is fixed by the protocol, and so never bound
-- on this host. CHILD is the prelude of each such chunk.
local CHILD = [[
local helpers = require "helpers"
local async = require "portman.async"
local nat = require "portman.nat"
local responder = require "support.natpmp_responder"
nat.gateway = "127.0.0.1"
]]

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
      {{internal_port = 80, method = "x"}, "bad argument #1 to 'map' (unknown method 'x' (auto, upnp, natpmp, pcp))"},
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
      assert.equal("bad argument #1 to 'unmap' (unknown method 'x' (auto, upnp, natpmp, pcp))",
        msg(nat.unmap, {external_port = 1, method = "x"}, function() end))
      assert.equal("bad argument #1 to 'unmap' (nonce: 24 hex digits expected)",
        msg(nat.unmap, {external_port = 1, method = "pcp", nonce = "0102"}, function() end))
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
    it("maps, reports the gateway's choice of port, renews, notices a reboot, deletes on close", function()
      local m, events, closed, last, closed_after, again, fds = helpers.in_netns(CHILD .. [[
        local before = helpers.fd_count()
        local events, r = {}, nil
        local m, closed = helpers.loop(function()
          r = responder.start{taken = 45000}
          local m, err = nat.map{internal_port = 45000, method = "natpmp", lifetime = 2,
            on_event = function(ev) events[#events + 1] = ev.event end}
          assert(m, err)
          -- renewal at half the lifetime (1 s): wait for the first one
          while #events < 1 do async.sleep(50) end
          -- the gateway reboots: its epoch starts again
          r.epoch = 1
          while #events < 2 do async.sleep(50) end
          local closed = {m:close()}
          r.close()
          return m, closed
        end)
        local fields = {method = m.method, external_ip = m.external_ip, external_port = m.external_port,
          internal_ip = m.internal_ip, internal_port = m.internal_port, proto = m.proto, lifetime = m.lifetime}
        local again = {helpers.loop(function() return m:close() end)} -- a second close does nothing
        return fields, events, closed, r.last, m:closed(), again, {before, helpers.fd_count()}
      ]])
      assert.same({method = "natpmp", external_ip = "203.0.113.5", external_port = 45001,
                   internal_ip = "127.0.0.1", internal_port = 45000, proto = "tcp", lifetime = 2}, m)
      assert.same({"renewed", "recreated", "closed"}, events)
      assert.same({true}, closed)
      -- the last request deleted it: lifetime 0 for the internal port
      assert.same({internal = 45000, external = 0, lifetime = 0, op = 2}, last)
      assert.is_true(closed_after)
      assert.same({true}, again)
      assert.equal(fds[1], fds[2])
    end)

    it("retries on libnatpmp's schedule until the gateway answers", function()
      local res, seen = helpers.in_netns(CHILD .. [[
        local r
        local res = helpers.loop(function()
          r = responder.start{drop = 2}
          -- NAT-PMP only: UPnP's discovery is multicast, kept to the lab
          local res = nat.external_address{timeout = 3000, router = {"natpmp"}}
          r.close()
          return res
        end)
        return {res.source, res.address}, #r.seen
      ]])
      -- libnatpmp resent twice (250 ms, then 500 ms later); the third try was answered
      assert.same({"natpmp", "203.0.113.5"}, res)
      assert.equal(3, seen)
    end)

    it("hostile answers end in a code word, never a raise", function()
      local codes = {protocol = true, unsupported = true, timeout = true}
      local results = helpers.in_netns(CHILD .. [[
        local results = {}
        for _, junk in ipairs{"", "\0", ("\255"):rep(16), "\0\129\0\0", ("\0"):rep(100),
                              string.pack(">BBI2I4", 0, 130, 0, 1)} do
          results[#results + 1] = {helpers.loop(function()
            local r = responder.start{garbage = junk}
            local a, b, c = nat.map{internal_port = 45020, method = "natpmp", timeout = 600}
            r.close()
            return a == nil, b, c
          end)}
        end
        return results
      ]])
      assert.equal(6, #results)
      for _, res in ipairs(results) do
        local no_mapping, err, code = res[1], res[2], res[3]
        assert.is_true(no_mapping)
        assert.is_true(codes[code] == true, tostring(err))
        assert.equal(code, err:match("^(%a+):"))
      end
    end)

    it("a refusal is denied, silence is not_found", function()
      local refused, silence = helpers.in_netns(CHILD .. [[
        local refused = {helpers.loop(function()
          local r = responder.start{result = 2}
          local a, b, c = nat.map{internal_port = 45010, method = "natpmp"}
          r.close()
          return a == nil, b, c
        end)}
        local silence = {helpers.loop(function()
          local a, b, c = nat.map{internal_port = 45010, method = "natpmp"}
          return a == nil, b, c
        end)}
        return refused, silence
      ]])
      assert.is_true(refused[1])
      assert.equal("denied", refused[3])
      assert.matches("^denied: ", refused[2])
      assert.is_true(silence[1])
      assert.equal("not_found", silence[3], silence[2])
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
      local doc, snap, after, last = helpers.in_netns(CHILD .. [[
        local r
        local d, s, a, l = helpers.loop(function()
          r = responder.start{}
          local m = require("portman.manager").new()
          local events = {}
          m:on(function(ev) events[#events + 1] = ev.event end)
          assert(m:add_service{name = "web", port = 45200, check = false, map = {method = "natpmp", lifetime = 600}})
          while not events[2] do async.sleep(20) end
          local d, s = m:status(), m:snapshot()
          async.await(function(cb) m:stop_service("web", 0, cb) end)
          local a = m:snapshot()
          local l = r.last
          m:shutdown(0, function() end)
          r.close()
          return d, s, a, l
        end)
        local m1 = d.mappings[1]
        return {service = m1.service, method = m1.method, external_port = m1.external_port,
                internal_port = m1.internal_port, proto = m1.proto, external_ip = m1.external_ip},
          {external_port = s.mappings[1].external_port, method = s.mappings[1].method, n = #s.mappings},
          #a.mappings, l
      ]])
      assert.same({service = "web", method = "natpmp", external_port = 45200, internal_port = 45200, proto = "tcp",
                   external_ip = "203.0.113.5"}, doc)
      assert.same({external_port = 45200, method = "natpmp", n = 1}, snap)
      assert.equal(0, after)
      assert.same({internal = 45200, external = 0, lifetime = 0, op = 2}, last)
    end)
  end)

  describe("the CLI", function()
    it("rejects bad usage with exit status 2", function()
      for _, args in ipairs{"map", "map 0", "map 80 --proto sctp", "map 80 --method x", "map 80 --lifetime 0",
                            "unmap", "unmap 70000", "unmap 80 --method x",
                            "unmap 80 --nonce xyz"} do
        local code, _, err = helpers.portman(args)
        assert.equal(2, code, args .. ": " .. err)
      end
    end)
  end)
end)
