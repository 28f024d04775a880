-- PCP (RFC 6887): the codec from Lua (core.pcp_encode and pcp_decode, no
-- socket), then nat.map{method = "pcp"} against a fake PCP server on
-- 127.0.0.1:5351 in a network namespace this spec creates (as
-- nat_hostile_spec's NAT-PMP gateway), which answers well or with junk.
-- Every bad answer must end in a code word and never in a mapping. The
-- server is the spec's own: miniupnpd's PCP is in spec/lab/pcp_lab_spec.
-- The namespace part needs root.
local helpers = require "helpers"
local core = require "portman.core"
local nat = require "portman.nat"

local NONCE = "0102030405060708090a0b0c"
local NONCE_BYTES = "\1\2\3\4\5\6\7\8\9\10\11\12"

local function mapped(a, b, c, d) return ("\0"):rep(10) .. "\255\255" .. string.char(a, b, c, d) end

-- An answer as RFC 6887 7.2 and 11.1 lay it out, with the fields in f changed
local function answer(f)
  f = f or {}
  local head = string.pack(">BBBBI4I4", f.version or 2, f.opcode or 0x81, 0, f.result or 0, f.lifetime or 3600,
    f.epoch or 1000) .. ("\0"):rep(12)
  if f.header_only then return head end
  return head .. (f.nonce or NONCE_BYTES) .. string.pack(">BBBBI2I2", f.protocol or 6, 0, 0, 0,
    f.internal or 45000, f.external or 45000) .. (f.address or mapped(203, 0, 113, 5)) .. (f.tail or "")
end

local REQ = {op = "map", proto = "tcp", internal_port = 45000, external_port = 45000, lifetime = 3600,
             nonce = NONCE, client = "192.168.1.10", gateway = "192.168.1.1"}

local with = helpers.merged

describe("PCP", function()
  describe("the codec", function()
    it("encodes a MAP request in RFC 6887's layout", function()
      local bytes, nonce = core.pcp_encode(with(REQ, {proto = "udp", external_port = 45001,
        external_ip = "203.0.113.5", lifetime = 7200}))
      -- 7.1: version 2, R = 0 and opcode 1, reserved, lifetime, client
      -- address; 11.1: nonce, protocol 17, reserved, internal port,
      -- suggested external port and address
      local want = string.pack(">BBI2I4", 2, 1, 0, 7200) .. mapped(192, 168, 1, 10)
        .. NONCE_BYTES .. string.pack(">BBBBI2I2", 17, 0, 0, 0, 45000, 45001) .. mapped(203, 0, 113, 5)
      assert.equal(60, #bytes)
      assert.equal(want, bytes)
      assert.equal(NONCE, nonce)
    end)

    it("encodes TCP as protocol 6, no suggestion as ::ffff:0.0.0.0 and port 0, a delete as lifetime 0", function()
      local bytes = core.pcp_encode(with(REQ, {external_port = 0, lifetime = 0}))
      assert.equal(string.pack(">BBI2I4", 2, 1, 0, 0) .. mapped(192, 168, 1, 10) .. NONCE_BYTES
        .. string.pack(">BBBBI2I2", 6, 0, 0, 0, 45000, 0) .. mapped(0, 0, 0, 0), bytes)
    end)

    it("encodes ANNOUNCE as the bare header with lifetime 0", function()
      local bytes = core.pcp_encode{op = "announce", client = "10.0.0.7"}
      assert.equal(string.pack(">BBI2I4", 2, 0, 0, 0) .. mapped(10, 0, 0, 7), bytes)
    end)

    it("draws a random nonce when none is given", function()
      local req = with(REQ)
      req.nonce = nil
      local a, na = core.pcp_encode(req)
      local b, nb = core.pcp_encode(req)
      assert.matches("^%x+$", na)
      assert.equal(24, #na)
      assert.are_not.equal(na, nb)
      assert.equal(na, (a:sub(25, 36):gsub(".", function(c) return ("%02x"):format(c:byte()) end)))
      assert.are_not.equal(a, b)
    end)

    it("raises on bad request fields, naming them", function()
      local function msg(...) return (helpers.raises(...):gsub("^[^:]*:%d+: ", "")) end
      assert.matches("nonce: 24 hex digits expected", msg(core.pcp_encode, with(REQ, {nonce = "xyz"})))
      assert.matches("internal_port: integer in 1%-65535 expected",
        msg(core.pcp_encode, with(REQ, {internal_port = 0})))
      assert.matches("proto: \"tcp\" or \"udp\" expected", msg(core.pcp_encode, with(REQ, {proto = "sctp"})))
      assert.matches("external_ip: IPv4 address expected", msg(core.pcp_encode, with(REQ, {external_ip = "::1"})))
      assert.matches("invalid option 'peer'", msg(core.pcp_encode, with(REQ, {op = "peer"})))
    end)

    it("decodes a good MAP answer and the answer to a delete", function()
      local a = core.pcp_decode(answer{external = 45001, epoch = 77}, REQ)
      assert.same({op = "map", epoch = 77, lifetime = 3600, internal_port = 45000, external_port = 45001,
                   external_ip = "203.0.113.5", nonce = NONCE}, a)
      -- options after the MAP data are walked over
      local opt = string.pack(">BBI2", 128, 0, 5) .. "abcde\0\0\0"
      assert.equal(45000, core.pcp_decode(answer{tail = opt}, REQ).external_port)
      local d = core.pcp_decode(answer{lifetime = 0, external = 0, address = mapped(0, 0, 0, 0)},
        with(REQ, {lifetime = 0}))
      assert.same({op = "map", epoch = 1000, lifetime = 0, internal_port = 45000, nonce = NONCE}, d)
      local ann = core.pcp_decode(answer{opcode = 0x80, lifetime = 0, header_only = true, epoch = 5},
        {op = "announce"})
      assert.same({op = "announce", epoch = 5}, ann)
    end)

    it("ignores a late copy of the answer to the request before", function()
      local late = answer{opcode = 0x80, header_only = true}
      assert.is_false(core.pcp_decode(late, REQ, 0))
      -- without that request before, it is an answer to the wrong opcode
      assert.is_nil(core.pcp_decode(late, REQ))
    end)

    local BAD = {
      {"empty", "", "answer of 0 bytes"},
      {"3 bytes", "\2\129\0", "answer of 3 bytes"},
      {"a short header", answer():sub(1, 20), "answer of 20 bytes"},
      {"not a multiple of 4", answer() .. "\0\0", "answer of 62 bytes"},
      {"over 1100 bytes", answer() .. ("\0"):rep(1044), "answer of 1104 bytes"},
      {"a MAP answer of the header only", answer{header_only = true}, "MAP answer of 24 bytes, 60 expected"},
      {"version 1", answer{version = 1}, "version 1 answer"},
      {"version 3", answer{version = 3}, "version 3 answer"},
      {"the R bit clear", answer{opcode = 1}, "a request (opcode 1), not an answer"},
      {"opcode PEER", answer{opcode = 0x82}, "opcode 2 answering opcode 1"},
      {"another nonce", answer{nonce = ("\0"):rep(12)}, "nonce of another request"},
      {"protocol UDP", answer{protocol = 17}, "protocol 17 answering protocol 6"},
      {"another internal port", answer{internal = 45021}, "internal port 45021 in the answer, 45000 asked"},
      {"external port 0", answer{external = 0}, "external port 0"},
      {"lifetime 0", answer{lifetime = 0}, "lifetime 0 s"},
      {"lifetime 2^32-1", answer{lifetime = 0xffffffff}, "lifetime 4294967295 s"},
      {"lifetime over a week", answer{lifetime = 604801}, "lifetime 604801 s"},
      {"an IPv6 external address", answer{address = "\32\1\13\184" .. ("\0"):rep(11) .. "\1"},
       "external address 2001:db8::1 is not IPv4-mapped"},
      {"external address 0.0.0.0", answer{address = mapped(0, 0, 0, 0)}, "external address 0.0.0.0"},
      {"a loopback external address", answer{address = mapped(127, 0, 0, 1)}, "external address 127.0.0.1"},
      {"a multicast external address", answer{address = mapped(224, 0, 0, 1)}, "external address 224.0.0.1"},
      {"the gateway's own address", answer{address = mapped(192, 168, 1, 1)}, "external address 192.168.1.1"},
      {"an option cut short", answer{tail = "\128\0"}, "answer of 62 bytes"},
      {"an option past the end", answer{tail = string.pack(">BBI2", 128, 0, 40) .. ("\0"):rep(8)},
       "option 128 of 40 bytes past the end"},
    }
    for _, c in ipairs(BAD) do
      it("refuses " .. c[1] .. " as a protocol error", function()
        local a, err, code = core.pcp_decode(c[2], REQ)
        assert.is_nil(a)
        assert.equal("protocol", code, err)
        assert.truthy(err:find(c[3], 1, true), err)
        assert.matches("^protocol: PCP answer: ", err)
      end)
    end

    it("refuses a lifetime answering a delete", function()
      local _, err, code = core.pcp_decode(answer{lifetime = 60}, with(REQ, {lifetime = 0}))
      assert.equal("protocol", code)
      assert.matches("lifetime 60 s answering a delete", err)
    end)

    it("maps each result code to its code word", function()
      local want = {"unsupported", "denied", "protocol", "unsupported", "unsupported", "protocol", "unreachable",
                    "exhausted", "unsupported", "exhausted", "conflict", "protocol", "exhausted"}
      local names = {"UNSUPP_VERSION", "NOT_AUTHORIZED", "MALFORMED_REQUEST", "UNSUPP_OPCODE", "UNSUPP_OPTION",
                     "MALFORMED_OPTION", "NETWORK_FAILURE", "NO_RESOURCES", "UNSUPP_PROTOCOL", "USER_EX_QUOTA",
                     "CANNOT_PROVIDE_EXTERNAL", "ADDRESS_MISMATCH", "EXCESSIVE_REMOTE_PEERS"}
      for rc = 1, 13 do
        -- an error answer need not carry the MAP data
        local a, err, code = core.pcp_decode(answer{result = rc, header_only = rc % 2 == 0}, REQ)
        assert.is_nil(a)
        assert.equal(want[rc], code, err)
        assert.truthy(err:find(names[rc] .. " (result code " .. rc .. ")", 1, true), err)
      end
      local _, err, code = core.pcp_decode(answer{result = 99}, REQ)
      assert.same({"protocol", true}, {code, err:find("undefined result code 99", 1, true) ~= nil})
    end)

    it("takes a NAT-PMP gateway's unsupported version answer for unsupported", function()
      local _, err, code = core.pcp_decode(string.pack(">BBI2I4", 0, 0x81, 1, 1000), REQ)
      assert.equal("unsupported", code)
      assert.matches("the gateway speaks NAT%-PMP only", err)
      -- any other NAT-PMP answer is junk
      _, err, code = core.pcp_decode(string.pack(">BBI2I4", 0, 0x82, 0, 1000) .. ("\0"):rep(8), REQ)
      assert.same({"protocol", "version 0 answer"}, {code, err:match("version 0 answer")})
    end)
  end)

  describe("the epoch check (RFC 6887 8.5)", function()
    local cases = {
      {"grew as the time that passed", 1000, 1600, 600, false},
      {"grew a little slower (within 1/16 and 2 s)", 1000, 1565, 600, false},
      {"went back (a restart)", 1000, 5, 600, true},
      {"went back a second (rounding)", 1000, 999, 0, false},
      {"grew much less than the time that passed (a restart since)", 1000, 1100, 600, true},
      {"grew much more than the time that passed", 1000, 3000, 600, true},
    }
    for _, c in ipairs(cases) do
      it("an epoch that " .. c[1] .. (c[5] and " means lost state" or " is kept"), function()
        assert.equal(c[5], nat._pcp_lost(c[2], c[3], c[4]))
      end)
    end
  end)

  describe("against a fake PCP server in a namespace", function()
    -- The chunk's prelude in the namespace: a server whose answers
    -- answer(req, n) builds (req: the request's fields; n: the count of
    -- requests so far), and the answer encoder above.
    local CHILD = [[
local uv = require "luv"
local helpers = require "helpers"
local async = require "portman.async"
local nat = require "portman.nat"
nat.gateway = "127.0.0.1"

local function mapped(a, b, c, d) return ("\0"):rep(10) .. "\255\255" .. string.char(a, b, c, d) end
-- the answer to req, with the fields in f changed
local function reply(req, f)
  f = f or {}
  local head = string.pack(">BBBBI4I4", f.version or 2, f.opcode or (0x80 | req.op), 0, f.result or 0,
    f.lifetime or req.lifetime, f.epoch or 1000) .. ("\0"):rep(12)
  if req.op == 0 or f.header_only then return head end
  return head .. (f.nonce or req.nonce) .. string.pack(">BBBBI2I2", f.protocol or req.protocol, 0, 0, 0,
    f.internal or req.internal, f.external or (req.external ~= 0 and req.external or req.internal))
    .. (f.address or mapped(203, 0, 113, 5))
end

local function server(answer)
  local u = uv.new_udp()
  assert(u:bind("127.0.0.1", 5351))
  local s = {n = 0, requests = {}}
  u:recv_start(function(err, data, from)
    if err or not data or #data < 24 then return end
    s.n = s.n + 1
    local req = {version = data:byte(1), op = data:byte(2), lifetime = string.unpack(">I4", data, 5),
                 client = data:sub(9, 24)}
    if req.op == 1 then
      req.nonce = data:sub(25, 36)
      req.protocol, req.internal, req.external = string.unpack(">BxxxI2I2", data, 37)
      req.suggested = data:sub(45, 60)
    end
    s.requests[#s.requests + 1] = req
    for _, r in ipairs(answer(req, s.n)) do u:send(r, from.ip, from.port) end
  end)
  function s.close() if not u:is_closing() then u:close() end end
  return s
end
]]

    it("the engine: ANNOUNCE answers the epoch; a closed engine raises", function()
      local ann, gw, local_ip, closed = helpers.in_netns(CHILD .. [[
        local core = require "portman.core"
        return helpers.loop(function()
          local s = server(function(req) return {reply(req, {epoch = 4242})} end)
          local e, gw, local_ip = assert(core.pcp_open("127.0.0.1"))
          assert(e:request{op = "announce", timeout = 2000})
          local res = async.await(function(cb)
            local p = uv.new_poll(e:fd())
            p:start("r", function()
              local r = e:step()
              if r == false then return end
              p:close()
              cb(r)
            end)
          end)
          e:close()
          local ok, err = pcall(e.fd, e)
          s.close()
          return {res, s.requests[1].op, s.requests[1].lifetime, #s.requests}, gw, local_ip, not ok and err
        end)
      ]])
      assert.same({{op = "announce", epoch = 4242}, 0, 0, 1}, ann)
      assert.same({"127.0.0.1", "127.0.0.1"}, {gw, local_ip})
      assert.matches("attempt to use a closed PCP engine", closed)
    end)

    it("maps, renews at half the lifetime with the same nonce, and deletes", function()
      local fields, events, n, first, renewal, delete = helpers.in_netns(CHILD .. [[
        return helpers.loop(function()
          local s = server(function(req) return {reply(req, {external = req.lifetime == 0 and 0 or nil})} end)
          local events = {}
          local m, err = nat.map{internal_port = 45000, external_port = 45001, method = "pcp", lifetime = 2,
                                 on_event = function(ev) events[#events + 1] = ev.event end}
          assert(m, err)
          while #events == 0 do async.sleep(20) end
          local fields = {method = m.method, external_ip = m.external_ip, external_port = m.external_port,
                          internal_ip = m.internal_ip, internal_port = m.internal_port, lifetime = m.lifetime}
          assert(m:close())
          s.close()
          local r = s.requests
          return fields, events, #r, {r[1].version, r[1].op, r[1].protocol, r[1].internal, r[1].external,
            r[1].lifetime, r[1].client == ("\0"):rep(10) .. "\255\255\127\0\0\1"},
            {r[2].external, r[2].suggested == mapped(203, 0, 113, 5), r[2].nonce == r[1].nonce},
            {r[#r].lifetime, r[#r].nonce == r[1].nonce}
        end)
      ]])
      assert.same({method = "pcp", external_ip = "203.0.113.5", external_port = 45001, internal_ip = "127.0.0.1",
                   internal_port = 45000, lifetime = 2}, fields)
      assert.equal("renewed", events[1])
      assert.equal("closed", events[#events])
      assert.is_true(n >= 3)
      -- version 2, MAP, TCP, 45000 -> 45001 asked for 2 s, from 127.0.0.1
      assert.same({2, 1, 6, 45000, 45001, 2, true}, first)
      -- the renewal suggests what was assigned, with the mapping's nonce
      assert.same({45001, true, true}, renewal)
      assert.same({0, true}, delete)
    end)

    it("resends until the server answers, and gives up with not_found when it never does", function()
      local answered, silent = helpers.in_netns(CHILD .. [[
        return helpers.loop(function()
          local s = server(function(req, n) if n >= 3 then return {reply(req)} end return {} end)
          local m, err = nat.map{internal_port = 45010, method = "pcp", timeout = 4000}
          assert(m, err)
          m:detach()
          local tries = s.n
          s.close()
          local quiet = server(function() return {} end)
          local x, xerr, xcode = nat.map{internal_port = 45011, method = "pcp", timeout = 1000}
          quiet.close()
          return {tries, m.external_port}, {x == nil, xcode, xerr, quiet.n}
        end)
      ]])
      -- the third copy of the request was answered
      assert.same({3, 45010}, answered)
      assert.same({true, "not_found"}, {silent[1], silent[2]}, silent[3])
      assert.matches("no PCP answer from the gateway %(%d+ tries%)", silent[3])
      assert.is_true(silent[4] >= 2, "resent: " .. silent[4])
    end)

    it("answering junk gets no mapping: each bad answer is its code word", function()
      local results = helpers.in_netns(CHILD .. [[
        local cases = {
          {"another nonce", {nonce = ("\0"):rep(12)}},
          {"another opcode", {opcode = 0x82}},
          {"a short packet", function(req) return reply(req):sub(1, 20) end},
          {"a short MAP answer", {header_only = true}},
          {"external port 0", {external = 0}},
          {"lifetime 2^32-1", {lifetime = 0xffffffff}},
          {"another protocol", {protocol = 17}},
          {"another internal port", {internal = 45021}},
          {"an IPv6 address", {address = ("\32\1\13\184") .. ("\0"):rep(11) .. "\1"}},
          {"NAT-PMP only", function() return string.pack(">BBI2I4", 0, 0x81, 1, 1000) end},
          {"NOT_AUTHORIZED", {result = 2, header_only = true}},
          {"NO_RESOURCES", {result = 8}},
          {"USER_EX_QUOTA", {result = 10}},
          {"UNSUPP_PROTOCOL", {result = 9}},
          {"NETWORK_FAILURE", {result = 7}},
          {"CANNOT_PROVIDE_EXTERNAL", {result = 11}},
          {"ADDRESS_MISMATCH", {result = 12}},
        }
        local out = {}
        for _, c in ipairs(cases) do
          out[#out + 1] = {c[1], helpers.loop(function()
            local s = server(function(req)
              return {type(c[2]) == "function" and c[2](req) or reply(req, c[2])}
            end)
            local m, err, code = nat.map{internal_port = 45020, method = "pcp", timeout = 3000}
            s.close()
            return m == nil, err, code, s.n
          end)}
        end
        return out
      ]])
      local want = {["NAT-PMP only"] = "unsupported", NOT_AUTHORIZED = "denied", NO_RESOURCES = "exhausted",
                    USER_EX_QUOTA = "exhausted", UNSUPP_PROTOCOL = "unsupported", NETWORK_FAILURE = "unreachable",
                    CANNOT_PROVIDE_EXTERNAL = "conflict"}
      local why = {["another nonce"] = "nonce of another request", ["another opcode"] = "opcode 2 answering opcode 1",
                   ["a short packet"] = "answer of 20 bytes", ["a short MAP answer"] = "MAP answer of 24 bytes",
                   ["external port 0"] = "external port 0", ["lifetime 2^32-1"] = "lifetime 4294967295 s",
                   ["another protocol"] = "protocol 17 answering protocol 6",
                   ["another internal port"] = "internal port 45021",
                   ["an IPv6 address"] = "is not IPv4-mapped", ["NAT-PMP only"] = "speaks NAT-PMP only",
                   ADDRESS_MISMATCH = "ADDRESS_MISMATCH (result code 12)"}
      assert.equal(17, #results)
      for _, r in ipairs(results) do
        local name, no_mapping, err, code, n = r[1], r[2], r[3], r[4], r[5]
        assert.is_true(no_mapping, name)
        assert.equal(want[name] or "protocol", code, name .. ": " .. tostring(err))
        assert.truthy(err:find(why[name] or name, 1, true), name .. ": " .. err)
        assert.equal(1, n, name) -- the answer ended the request: no resend
      end
    end)

    it("re-creates on an epoch that went back, and a bad renewal keeps the mapping", function()
      local events, last = helpers.in_netns(CHILD .. [[
        return helpers.loop(function()
          -- 1: mapped (epoch 1000); 2: renewed, epoch gone back to 3 (the
          -- server restarted); 3: a renewal answered with external port 0
          local s = server(function(req, n)
            if req.lifetime == 0 then return {reply(req)} end
            if n == 1 then return {reply(req, {epoch = 1000})} end
            if n == 2 then return {reply(req, {epoch = 3})} end
            return {reply(req, {epoch = 4, external = 0})}
          end)
          local events = {}
          local m = assert(nat.map{internal_port = 45030, method = "pcp", lifetime = 2,
            on_event = function(ev) events[#events + 1] = {ev.event, ev.error} end})
          while #events < 2 do async.sleep(20) end
          local fields = {m.external_port, m.external_ip, m:closed()}
          m:detach()
          s.close()
          return events, fields
        end)
      ]])
      assert.equal("recreated", events[1][1])
      assert.equal("renew_failed", events[2][1])
      assert.matches("external port 0", events[2][2])
      assert.same({45030, "203.0.113.5", false}, last)
    end)

    it("auto takes PCP where the gateway speaks it, and sends no NAT-PMP request then", function()
      local method, versions = helpers.in_netns(CHILD .. [[
        return helpers.loop(function()
          local s = server(function(req) return {reply(req)} end)
          local m, err = nat.map{internal_port = 45040, timeout = 1000}
          assert(m, err)
          m:detach()
          async.sleep(1200) -- UPnP's discovery, asked at the same time, ends (it finds no IGD here)
          s.close()
          local v = {}
          for _, r in ipairs(s.requests) do v[#v + 1] = r.version end
          return m.method, v
        end)
      ]])
      assert.equal("pcp", method)
      assert.same({2}, versions)
    end)

    it("auto falls back to NAT-PMP where the gateway answers PCP with NAT-PMP's unsupported version", function()
      local m, versions = helpers.in_netns(CHILD .. [[
        return helpers.loop(function()
          -- a NAT-PMP-only gateway (RFC 6886 3.5 and RFC 6887 9)
          local u = uv.new_udp()
          assert(u:bind("127.0.0.1", 5351))
          local versions = {}
          u:recv_start(function(err, data, from)
            if err or not data or #data < 2 then return end
            versions[#versions + 1] = data:byte(1)
            local op = data:byte(2)
            local out
            if data:byte(1) ~= 0 then out = string.pack(">BBI2I4", 0, 128 + op, 1, 50)
            elseif op == 0 then out = string.pack(">BBI2I4BBBB", 0, 128, 0, 50, 203, 0, 113, 9)
            else
              local int, ext, life = string.unpack(">I2I2I4", data, 5)
              out = string.pack(">BBI2I4I2I2I4", 0, 128 + op, 0, 50, int, ext, life)
            end
            u:send(out, from.ip, from.port)
          end)
          local m, err = nat.map{internal_port = 45050, timeout = 1000}
          assert(m, err)
          m:detach()
          async.sleep(1200) -- UPnP's discovery ends
          u:close()
          return {method = m.method, external_ip = m.external_ip, external_port = m.external_port}, versions
        end)
      ]])
      assert.same({method = "natpmp", external_ip = "203.0.113.9", external_port = 45050}, m)
      assert.same({2, 0, 0}, versions)
    end)

    it("in the manager: a service mapped with pcp is saved with its method", function()
      local saved = helpers.in_netns(CHILD .. [[
        local json = require "portman.json"
        local dir = helpers.tmpdir()
        local file = dir .. "/state.json"
        local list = helpers.loop(function()
          local s = server(function(req) return {reply(req)} end)
          local m = require("portman.manager").new{state_file = file}
          local added
          m:on(function(ev) if ev.event == "mapping_added" then added = true end end)
          assert(m:add_service{name = "web", port = 45200, check = false,
                               map = {method = "pcp", lifetime = 600, timeout = 3000}})
          while not added do async.sleep(20) end
          assert(m:save())
          local l = json.decode(assert(helpers.read(file))).mappings
          async.await(function(cb) m:shutdown(0, cb) end)
          s.close()
          return l
        end)
        os.remove(file)
        os.remove(dir)
        return list
      ]])
      assert.equal(1, #saved)
      assert.same({service = "web", method = "pcp", external_port = 45200, internal_port = 45200,
                   external_ip = "203.0.113.5"}, {service = saved[1].service, method = saved[1].method,
                   external_port = saved[1].external_port, internal_port = saved[1].internal_port,
                   external_ip = saved[1].external_ip})
    end)
  end)
end)
