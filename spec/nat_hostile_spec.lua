-- Hostile and broken routers: a NAT-PMP gateway that answers junk (run
-- on 127.0.0.1:5351 in a network namespace this spec creates, as
-- nat_spec's), and a UPnP IGD whose SOAP answers carry junk values (an
-- HTTP server on an ephemeral loopback port, the IGD given to the job so
-- that no discovery runs). Every bad answer must end in a code word, and
-- nothing of it may reach a mapping or the state file. Needs root.
local helpers = require "helpers"

-- The chunk's prelude in the namespace: a gateway whose answers
-- answer(req, n) builds (req: {op, internal, external, lifetime}; n: the
-- count of requests so far), and the answers' encoders.
local CHILD = [[
local uv = require "luv"
local helpers = require "helpers"
local async = require "portman.async"
local nat = require "portman.nat"
nat.gateway = "127.0.0.1"

local EPOCH = 1000
local function addr(a, b, c, d) return string.pack(">BBI2I4BBBB", 0, 128, 0, EPOCH, a, b, c, d) end
-- a mapping answer to req, with the fields in f changed
local function mapping(req, f)
  f = f or {}
  return string.pack(">BBI2I4I2I2I4", f.version or 0, f.opcode or 128 + req.op, f.result or 0, EPOCH,
    f.internal or req.internal, f.external or req.external, f.lifetime or req.lifetime)
end

local function gateway(answer)
  local u = uv.new_udp()
  assert(u:bind("127.0.0.1", 5351))
  local g = {n = 0}
  u:recv_start(function(err, data, from)
    if err or not data or #data < 2 then return end
    g.n = g.n + 1
    local req = {op = data:byte(2)}
    if req.op ~= 0 then req.internal, req.external, req.lifetime = string.unpack(">I2I2I4", data, 5) end
    for _, reply in ipairs(answer(req, g.n)) do u:send(reply, from.ip, from.port) end
  end)
  function g.close() if not u:is_closing() then u:close() end end
  return g
end

-- a gateway that answers the address request well and the mapping
-- request with mapping(req, f) (or what f is, when a string)
local function bad_mapping(f)
  return gateway(function(req)
    if req.op == 0 then return {addr(203, 0, 113, 5)} end
    return {type(f) == "string" and f or mapping(req, f)}
  end)
end
]]

describe("hostile routers", function()
  describe("a NAT-PMP gateway", function()
    it("answering junk gets no mapping: each bad field is a protocol error, a result code its word", function()
      local results = helpers.in_netns(CHILD .. [[
        local cases = {
          {"external port 0", {external = 0}},
          {"another internal port", {internal = 45021}},
          {"lifetime 2^32-1", {lifetime = 0xffffffff}},
          {"lifetime 0", {lifetime = 0}},
          {"lifetime over a week", {lifetime = 604801}},
          {"another opcode", {opcode = 129}},
          {"version 1", {version = 1}},
          {"short", string.pack(">BBI2I4", 0, 130, 0, EPOCH)},
          {"empty", ""},
          {"refused", {result = 2}},
          {"network failure", {result = 3}},
          {"out of resources", {result = 4}},
          {"unsupported opcode", {result = 5}},
          {"undefined result code", {result = 99}},
        }
        local out = {}
        for _, c in ipairs(cases) do
          out[#out + 1] = {c[1], helpers.loop(function()
            local g = bad_mapping(c[2])
            local m, err, code = nat.map{internal_port = 45020, method = "natpmp", timeout = 3000}
            g.close()
            return m == nil, err, code
          end)}
        end
        return out
      ]])
      local want = {refused = "denied", ["network failure"] = "unreachable", ["out of resources"] = "exhausted",
                    ["unsupported opcode"] = "unsupported"}
      local why = {["external port 0"] = "external port 0", ["another internal port"] = "internal port 45021",
                   ["lifetime 2^32-1"] = "lifetime 4294967295 s", ["lifetime 0"] = "lifetime 0 s",
                   ["another opcode"] = "opcode 129 answering opcode 2", ["version 1"] = "version 1",
                   short = "answer of 8 bytes, 16 expected", empty = "answer of 0 bytes",
                   ["undefined result code"] = "undefined result code 99"}
      assert.equal(14, #results)
      for _, r in ipairs(results) do
        local name, no_mapping, err, code = r[1], r[2], r[3], r[4]
        assert.is_true(no_mapping, name)
        assert.equal(want[name] or "protocol", code, name .. ": " .. tostring(err))
        if why[name] then assert.truthy(err:find(why[name], 1, true), name .. ": " .. err) end
      end
    end)

    it("answering a bad external address gets no address and no mapping", function()
      local results = helpers.in_netns(CHILD .. [[
        local out = {}
        for _, a in ipairs{{0, 0, 0, 0}, {127, 0, 0, 1}, {255, 255, 255, 255}, {224, 0, 0, 1}} do
          out[#out + 1] = {helpers.loop(function()
            local g = gateway(function(req)
              if req.op == 0 then return {addr(table.unpack(a))} end
              return {mapping(req)}
            end)
            local m, err, code = nat.map{internal_port = 45030, method = "natpmp", timeout = 3000}
            local x, xerr, xcode = nat.external_address{router = {"natpmp"}, timeout = 3000}
            g.close()
            return m == nil, code, x == nil, xcode, err
          end)}
        end
        return out
      ]])
      assert.equal(4, #results)
      for _, r in ipairs(results) do
        assert.same({true, "protocol", true, "protocol"}, {r[1], r[2], r[3], r[4]}, r[5])
        assert.matches("external address %d+%.%d+%.%d+%.%d+", r[5])
      end
    end)

    it("ignores a late copy of the address answer while it waits for the mapping", function()
      local m = helpers.in_netns(CHILD .. [[
        return helpers.loop(function()
          -- every answer twice: the second address answer comes while
          -- the mapping request waits for its own
          local g = gateway(function(req)
            local a = req.op == 0 and addr(203, 0, 113, 5) or mapping(req)
            return {a, a}
          end)
          local m, err = nat.map{internal_port = 45040, method = "natpmp", lifetime = 600}
          assert(m, err)
          m:detach()
          g.close()
          return {external_ip = m.external_ip, external_port = m.external_port, lifetime = m.lifetime}
        end)
      ]])
      assert.same({external_ip = "203.0.113.5", external_port = 45040, lifetime = 600}, m)
    end)

    it("in the manager: a bad answer is never saved, a bad renewal keeps the saved mapping", function()
      local failed, after_fail, renewed, after_renew = helpers.in_netns(CHILD .. [[
        local json = require "portman.json"
        local dir = helpers.tmpdir()
        local file = dir .. "/state.json"
        local function saved() return json.decode(assert(helpers.read(file))).mappings end
        local function run(answer, until_event)
          return helpers.loop(function()
            local g = gateway(answer)
            local m = require("portman.manager").new{state_file = file}
            local events = {}
            m:on(function(ev) events[#events + 1] = ev end)
            assert(m:add_service{name = "web", port = 45200, check = false,
                                 map = {method = "natpmp", lifetime = 2, timeout = 3000}})
            local function seen()
              for _, ev in ipairs(events) do if ev.event == until_event then return ev end end
            end
            while not seen() do async.sleep(20) end
            assert(m:save())
            local list = saved()
            async.await(function(cb) m:shutdown(0, cb) end)
            g.close()
            return seen(), list
          end)
        end
        -- a first answer with lifetime 2^32-1: no mapping at all
        local f, fl = run(function(req)
          if req.op == 0 then return {addr(203, 0, 113, 5)} end
          return {mapping(req, {lifetime = 0xffffffff})}
        end, "mapping_failed")
        -- a good first answer (lifetime 2: renewal after 1 s), then a
        -- renewal answered with external port 0
        local r, rl = run(function(req, n)
          if req.op == 0 then return {addr(203, 0, 113, 5)} end
          if n <= 2 or req.lifetime == 0 then return {mapping(req)} end
          return {mapping(req, {external = 0})}
        end, "mapping_renew_failed")
        os.remove(file)
        os.remove(dir)
        return {code = f.code, error = f.error}, #fl, {error = r.error},
          {n = #rl, external_port = rl[1] and rl[1].external_port, internal_port = rl[1] and rl[1].internal_port,
           method = rl[1] and rl[1].method, external_ip = rl[1] and rl[1].external_ip}
      ]])
      assert.equal("protocol", failed.code, failed.error)
      assert.matches("lifetime 4294967295 s", failed.error)
      assert.equal(0, after_fail)
      assert.matches("external port 0", renewed.error)
      assert.same({n = 1, external_port = 45200, internal_port = 45200, method = "natpmp",
                   external_ip = "203.0.113.5"}, after_renew)
    end)
  end)

  describe("a UPnP IGD", function()
    local uv = require "luv"
    local async = require "portman.async"
    local core = require "portman.core"
    local http_server = require "support.http_server"
    local soap = require "support.soap"
    local ST = "urn:schemas-upnp-org:service:WANIPConnection:2"
    local http = soap.http
    local function answer(action, fields) return soap.answer(ST, action, fields) end
    local FAULT_713 = soap.fault(713, "SpecifiedArrayIndexInvalid")

    -- An IGD whose answers are the fields of `entry` (a generic entry, the
    -- specific entry, the reserved port, the external address).
    local function igd(entry)
      return http_server.start(function(req)
        local action = (req.headers.soapaction or ""):match("#(%w+)")
        if action == "GetGenericPortMappingEntry" then
          if req.body:match("<NewPortMappingIndex>(%d+)<") ~= "0" then return {raw = FAULT_713} end
          return {raw = answer(action, {{"NewRemoteHost", ""}, {"NewExternalPort", entry.ext},
            {"NewProtocol", entry.proto}, {"NewInternalPort", entry.int}, {"NewInternalClient", entry.client},
            {"NewEnabled", entry.enabled}, {"NewPortMappingDescription", "web"},
            {"NewLeaseDuration", entry.lease}})}
        elseif action == "GetSpecificPortMappingEntry" then
          return {raw = answer(action, {{"NewInternalPort", entry.int}, {"NewInternalClient", entry.client},
            {"NewEnabled", entry.enabled}, {"NewPortMappingDescription", "web"},
            {"NewLeaseDuration", entry.lease}})}
        elseif action == "AddAnyPortMapping" then
          return {raw = answer(action, {{"NewReservedPort", entry.ext}})}
        elseif action == "GetExternalIPAddress" then
          return {raw = answer(action, {{"NewExternalIPAddress", entry.ip}})}
        end
        return {raw = http(500, "")}
      end)
    end

    -- Runs one job against the IGD; its result, err, code.
    local function job(op, server, extra)
      local args = {timeout = 3000, external_port = 45300, internal_port = 45300,
                    igd = {control_url = ("http://127.0.0.1:%d/ctl"):format(server.port), service_type = ST,
                           lan_addr = "127.0.0.1"}}
      for k, v in pairs(extra or {}) do args[k] = v end
      local j = assert(core.upnp_start(op, args))
      local res = table.pack(async.await(function(cb)
        local p = uv.new_poll(j:fd())
        p:start("r", function()
          local r, err, code = j:result()
          if r == false then return end
          p:close()
          cb(r, err, code)
        end)
      end))
      j:close()
      return table.unpack(res, 1, 3)
    end

    local GOOD = {ext = "45300", proto = "TCP", int = "45300", client = "192.168.1.10", enabled = "1",
                  lease = "3600", ip = "203.0.113.9"}

    local function with(changes) return helpers.merged(GOOD, changes) end

    it("a good IGD's values come through", function()
      local got = helpers.loop(function()
        local s = igd(GOOD)
        local listed = job("entry", s)
        local one = job("get", s)
        local any = job("add_any", s)
        local ip = job("external_ip", s)
        s.close()
        return {list = {listed.entry}, entry = one.entry, port = any.external_port, ip = ip.external_ip}
      end)
      local entry = {external_port = 45300, internal_port = 45300, internal_ip = "192.168.1.10", proto = "tcp",
                     description = "web", lifetime = 3600, enabled = true}
      assert.same({list = {entry}, entry = entry, port = 45300, ip = "203.0.113.9"}, got)
    end)

    local BAD = {
      {"external port 0", {ext = "0"}, {"entry", "add_any"}},
      {"external port 65536", {ext = "65536"}, {"entry", "add_any"}},
      {"external port with junk", {ext = "80x"}, {"entry", "add_any"}},
      {"signed external port", {ext = "+80"}, {"entry", "add_any"}},
      {"internal port 0", {int = "0"}, {"entry", "get"}},
      {"internal port with a space", {int = " 80"}, {"entry", "get"}},
      {"lease 2^32-1", {lease = "4294967295"}, {"entry", "get"}},
      {"negative lease", {lease = "-1"}, {"entry", "get"}},
      {"enabled 2", {enabled = "2"}, {"entry", "get"}},
      {"protocol SCTP", {proto = "SCTP"}, {"entry"}},
      {"client no address", {client = "router.lan"}, {"entry", "get"}},
      {"client a short quad", {client = "1.2.3"}, {"entry", "get"}},
      {"external address 0.0.0.0", {ip = "0.0.0.0"}, {"external_ip"}},
      {"external address loopback", {ip = "127.0.0.1"}, {"external_ip"}},
      {"external address out of range", {ip = "999.1.1.1"}, {"external_ip"}},
    }
    for _, c in ipairs(BAD) do
      it("a bad value (" .. c[1] .. ") is a protocol error", function()
        local results = helpers.loop(function()
          local s = igd(with(c[2]))
          local out = {}
          for _, op in ipairs(c[3]) do out[op] = {job(op, s)} end
          s.close()
          return out
        end)
        for _, op in ipairs(c[3]) do
          local r = results[op]
          assert.is_nil(r[1], op)
          assert.equal("protocol", r[3], op .. ": " .. tostring(r[2]))
          assert.matches("^protocol: .*IGD's answer", r[2])
        end
      end)
    end
  end)
end)
