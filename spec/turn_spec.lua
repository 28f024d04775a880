-- TURN's codec (RFC 8656, RFC 6062) byte by byte, and the client's checks
-- of the server's answers against a scripted server on loopback (the
-- misbehaviour coturn never shows: forged integrity, missing attributes,
-- a wrong password, a stale nonce). The client against coturn itself is
-- spec/lab/turn_lab_spec.lua.
local helpers = require "helpers"
local uv = require "luv"
local core = require "portman.core"
local async = require "portman.async"
local portman = require "portman"
local turn = require "portman.turn"

local TID = "\1\2\3\4\5\6\7\8\9\10\11\12"
local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
local function unhex(h) return (h:gsub("%s", ""):gsub("..", function(x) return string.char(tonumber(x, 16)) end)) end
-- The attributes of an encoded message (its bytes after the header).
local function body(bytes) return hex(bytes:sub(21)) end

describe("TURN codec", function()
  it("writes an Allocate request as RFC 8656 lays it out", function()
    local b = core.stun_encode{method = turn.ALLOCATE, transaction_id = TID, requested_transport = turn.UDP,
      lifetime = 600, dont_fragment = true, attributes = {0x0019, 0x000D, 0x001A}}
    assert.equal("0003" .. "0014" .. "2112a442" .. hex(TID), hex(b:sub(1, 20)))
    -- REQUESTED-TRANSPORT: protocol 17 then 3 RFFU bytes; LIFETIME 600; DONT-FRAGMENT empty
    assert.equal("0019000411000000" .. "000d000400000258" .. "001a0000", body(b))
  end)

  it("encodes the TURN methods and classes in the message type", function()
    local types = {
      [turn.REFRESH] = {"request", "0004"}, [turn.SEND] = {"indication", "0016"},
      [turn.DATA] = {"indication", "0017"}, [turn.CREATE_PERMISSION] = {"success", "0108"},
      [turn.CHANNEL_BIND] = {"error", "0119"}, [turn.CONNECT] = {"request", "000a"},
      [turn.CONNECTION_BIND] = {"success", "010b"}, [turn.CONNECTION_ATTEMPT] = {"indication", "001c"},
    }
    for method, t in pairs(types) do
      local b = core.stun_encode{method = method, class = t[1], transaction_id = TID}
      assert.equal(t[2], hex(b:sub(1, 2)))
      local m = core.stun_decode(b)
      assert.equal(method, m.method)
      assert.equal(t[1], m.class)
    end
  end)

  it("XORs the peer and relayed addresses like XOR-MAPPED-ADDRESS (RFC 5769's vector)", function()
    -- RFC 5769 section 2.2: 192.0.2.1:32853 is 0001 a147 e112a643
    for _, t in ipairs{{"xor_peer_address", "0012"}, {"xor_relayed_address", "0016"}} do
      local b = core.stun_encode{transaction_id = TID, [t[1]] = {ip = "192.0.2.1", port = 32853}}
      assert.equal(t[2] .. "0008" .. "0001a147e112a643", body(b))
      assert.same({family = 4, ip = "192.0.2.1", port = 32853}, core.stun_decode(b)[t[1]])
    end
    -- IPv6: the address is XORed with the cookie and the transaction id
    local b = core.stun_encode{transaction_id = TID, xor_relayed_address = {ip = "2001:db8::1", port = 1}}
    local want = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
    local key = "\x21\x12\xa4\x42" .. TID
    local xored = {}
    for i = 1, 16 do xored[i] = string.char(want[i] ~ key:byte(i)) end
    assert.equal("00160014" .. "0002" .. "2113" .. hex(table.concat(xored)), body(b))
    assert.equal("2001:db8::1", core.stun_decode(b).xor_relayed_address.ip)
  end)

  it("writes CHANNEL-NUMBER, CONNECTION-ID, DATA and the rest, and reads them back", function()
    local msg = {method = turn.CHANNEL_BIND, transaction_id = TID, channel_number = 0x4001, connection_id = 0x12345678,
      data = "hello", even_port = true, reservation_token = "ABCDEFGH", requested_address_family = 6,
      attributes = {0x000C, 0x002A, 0x0013, 0x0018, 0x0022, 0x0017}}
    local b = core.stun_encode(msg)
    assert.equal("000c000440010000" .. "002a000412345678" .. "00130005" .. hex("hello") .. "000000"
      .. "0018000180000000" .. "00220008" .. hex("ABCDEFGH") .. "0017000402000000", body(b))
    local m = core.stun_decode(b)
    for _, f in ipairs{"channel_number", "connection_id", "data", "even_port", "reservation_token",
                       "requested_address_family"} do
      assert.equal(msg[f], m[f], f)
    end
    assert.equal(b, core.stun_encode(m)) -- a decoded message re-encodes as it was
  end)

  it("refuses TURN attributes of the wrong size or out of range", function()
    local head = function(attrs) return unhex("0003" .. ("%04x"):format(#attrs // 2) .. "2112a442") .. TID .. unhex(attrs) end
    local bad = {
      ["000c000400000000"] = "CHANNEL%-NUMBER out of range", -- channel 0
      ["000c000450000000"] = "CHANNEL%-NUMBER out of range", -- 0x5000: reserved
      ["000c000240000000"] = "CHANNEL%-NUMBER has a bad length",
      ["000d000300000000"] = "bad length",                   -- LIFETIME of 3 bytes
      ["002a000800000000" .. "00000000"] = "bad length",     -- CONNECTION-ID of 8
      ["0017000403000000"] = "unknown family",               -- REQUESTED-ADDRESS-FAMILY 3
      ["0018000200000000"] = "EVEN%-PORT has a bad length",
      ["001a000400000000"] = "DONT%-FRAGMENT has a value",
      ["0022000400000000"] = "RESERVATION%-TOKEN has a bad length",
      ["0016000800030001" .. "00000000"] = "unknown family", -- XOR-RELAYED-ADDRESS family 3
      ["00120004" .. "00010001"] = "bad length",             -- XOR-PEER-ADDRESS with no address
    }
    for attrs, why in pairs(bad) do
      local m, err, code = core.stun_decode(head(attrs))
      assert.is_nil(m, attrs)
      assert.equal("protocol", code)
      assert.matches(why, err)
    end
    assert.has_error(function() core.stun_encode{transaction_id = TID, channel_number = 0x3FFF} end,
      "bad argument #1 to 'stun_encode' (field 'channel_number': channel_number: integer in 16384-20479 expected)")
  end)

  describe("ChannelData", function()
    it("frames data behind a 4-byte header, padded to 4 on a stream only", function()
      assert.equal("40010005" .. hex("hello"), hex(core.turn_channel_encode(0x4001, "hello")))
      assert.equal("40010005" .. hex("hello") .. "000000", hex(core.turn_channel_encode(0x4001, "hello", true)))
      assert.equal("4fff0000", hex(core.turn_channel_encode(0x4FFF, "", true)))
      assert.equal("40000004" .. hex("abcd"), hex(core.turn_channel_encode(0x4000, "abcd", true)))
      assert.has_error(function() core.turn_channel_encode(0x3FFF, "x") end)
      assert.has_error(function() core.turn_channel_encode(0x5000, "x") end)
      assert.has_error(function() core.turn_channel_encode(0x4000, ("x"):rep(65536)) end)
    end)

    it("reads a datagram with or without its padding, a stream frame only whole", function()
      local ch, data = core.turn_channel_decode(unhex("40010005") .. "hello")
      assert.equal(0x4001, ch)
      assert.equal("hello", data)
      assert.equal("hello", select(2, core.turn_channel_decode(unhex("40010005") .. "hello\0\0\0")))
      assert.equal("hello", select(2, core.turn_channel_decode(unhex("40010005") .. "hello\0\0\0", true)))
      local refused = {
        {unhex("40010005") .. "hello\0\0\0\0", false, "past its padding"},
        {unhex("40010005") .. "hello", true, "past its padding"}, -- a stream frame must be padded
        {unhex("40010006") .. "hello", false, "runs past"},
        {unhex("50010000"), false, "out of range"},
        {unhex("3fff0000"), false, "out of range"},
        {unhex("4001"), false, "shorter than its header"},
      }
      for _, r in ipairs(refused) do
        local c, err, code = core.turn_channel_decode(r[1], r[2])
        assert.is_nil(c)
        assert.equal("protocol", code)
        assert.matches(r[3], err)
      end
    end)

    it("delimits STUN and ChannelData messages on a stream", function()
      local stun = core.stun_encode{method = turn.ALLOCATE, transaction_id = TID, lifetime = 1}
      assert.equal(#stun, core.turn_frame_length(stun .. "more"))
      assert.equal(12, core.turn_frame_length(unhex("40000005")))
      assert.equal(4, core.turn_frame_length(unhex("40000000")))
      assert.is_false(core.turn_frame_length("\0\1\0"))
      local n, err, code = core.turn_frame_length(unhex("80000000"))
      assert.is_nil(n)
      assert.equal("protocol", code)
      assert.matches("neither STUN nor ChannelData", err)
      assert.is_nil(core.turn_frame_length(unhex("00010002"))) -- a STUN length not a multiple of 4
      assert.is_nil(core.turn_frame_length(unhex("5fff0000"))) -- a reserved channel
    end)
  end)
end)

-- A scripted TURN server on 127.0.0.1: answer(msg, n) returns the answer
-- to the n-th request (a table to encode with `key`, or raw bytes), or nil
-- to stay silent.
local function server(answer)
  local udp = uv.new_udp()
  assert(udp:bind("127.0.0.1", 0))
  local self = {udp = udp, port = udp:getsockname().port, requests = {}}
  udp:recv_start(function(err, data, addr)
    if err or not data then return end
    local msg = core.stun_decode(data)
    if not msg or msg.class ~= "request" then return end
    self.requests[#self.requests + 1] = msg
    local a, key = answer(msg, #self.requests)
    if type(a) == "table" then
      local copy = {}
      for k, v in pairs(a) do copy[k] = v end
      a = copy
      a.transaction_id = a.transaction_id or msg.transaction_id
      a.method = a.method or msg.method
      a = core.stun_encode(a, key)
    end
    if a then udp:send(a, addr.ip, addr.port) end
  end)
  function self.close() udp:close() end
  return self
end

describe("TURN client's checks of the server's answers", function()
  local KEY = core.stun_long_term_key("u", "realm", "pw")
  local UNAUTH = {class = "error", error_code = {code = 401, reason = "Unauthorized"}, realm = "realm",
                  nonce = "nonce1"}
  local function allocated()
    return {class = "success", xor_relayed_address = {ip = "192.0.2.7", port = 50000}, lifetime = 600,
            message_integrity = true}, KEY
  end

  local function allocate(answer, opts)
    local s = server(answer)
    local o = {ip = "127.0.0.1", port = s.port, family = "inet", user = "u", password = "pw", timeout = 1500}
    for k, v in pairs(opts or {}) do o[k] = v end
    local c = turn.Client.new(o)
    local a, err, code = portman.run(function()
      local a, err, code = async.await(c.allocate, c)
      async.await(c.close, c)
      s.close() -- the loop ends when nothing is left open
      return a, err, code
    end)
    return a, err, code, s.requests
  end

  it("answers a 401 with the long-term key, and takes a verified allocation", function()
    local a, err, _, reqs = allocate(function(_, n)
      if n == 1 then return UNAUTH end
      return allocated()
    end)
    assert.is_table(a, err)
    assert.same({relayed_ip = "192.0.2.7", relayed_port = 50000, lifetime = 600}, a)
    assert.is_nil(reqs[1].username)
    assert.equal("u", reqs[2].username)
    assert.equal("realm", reqs[2].realm)
    assert.equal("nonce1", reqs[2].nonce)
    assert.is_true(core.stun_decode(core.stun_encode(reqs[2], KEY), KEY).verified)
    assert.equal(17, reqs[2].requested_transport)
  end)

  it("retries a 438 stale nonce with the new nonce", function()
    local a, err, _, reqs = allocate(function(_, n)
      if n == 1 then return UNAUTH end
      if n == 2 then return {class = "error", error_code = {code = 438, reason = "Stale Nonce"}, realm = "realm",
                             nonce = "nonce2"} end
      return allocated()
    end)
    assert.is_table(a, err)
    assert.equal("nonce2", reqs[3].nonce)
  end)

  it("reports a 401 to its credentials as denied, without the password", function()
    local a, err, code = allocate(function() return UNAUTH end)
    assert.is_nil(a)
    assert.equal("denied", code)
    assert.matches("401 Unauthorized", err)
    assert.falsy(err:find("pw", 1, true))
  end)

  it("refuses a success signed with another key, or not signed", function()
    local other = core.stun_long_term_key("u", "realm", "other")
    local a, err, code = allocate(function(_, n)
      if n == 1 then return UNAUTH end
      local m = allocated()
      return m, other
    end)
    assert.is_nil(a)
    assert.equal("protocol", code)
    assert.matches("MESSAGE%-INTEGRITY mismatch", err)
    a, err, code = allocate(function(_, n)
      if n == 1 then return UNAUTH end
      local m = allocated()
      m.message_integrity = nil
      return m
    end)
    assert.is_nil(a)
    assert.equal("protocol", code)
    assert.matches("no MESSAGE%-INTEGRITY", err)
  end)

  it("refuses an allocation without XOR-RELAYED-ADDRESS", function()
    local a, err, code = allocate(function(_, n)
      if n == 1 then return UNAUTH end
      local m, k = allocated()
      m.xor_relayed_address = nil
      return m, k
    end)
    assert.is_nil(a)
    assert.equal("protocol", code)
    assert.matches("without XOR%-RELAYED%-ADDRESS", err)
  end)

  it("ignores answers to another transaction, and times out", function()
    local a, _, code = allocate(function(_, n)
      if n == 1 then return UNAUTH end
      local m, k = allocated()
      m.transaction_id = ("x"):rep(12)
      return m, k
    end, {timeout = 300})
    assert.is_nil(a)
    assert.equal("timeout", code)
  end)

  it("refuses a server whose realm is not the one asked for", function()
    local a, err, code = allocate(function() return UNAUTH end, {realm = "elsewhere"})
    assert.is_nil(a)
    assert.equal("denied", code)
    assert.matches("realm", err)
  end)

  it("maps TURN's error codes to portman's words", function()
    for ecode, word in pairs{[486] = "exhausted", [442] = "unsupported", [437] = "conflict", [403] = "denied"} do
      local a, err, code = allocate(function(_, n)
        if n == 1 then return UNAUTH end
        return {class = "error", error_code = {code = ecode, reason = "No"}, message_integrity = true}, KEY
      end)
      assert.is_nil(a)
      assert.equal(word, code)
      assert.matches(tostring(ecode), err)
    end
  end)
end)

describe("portman relay's command line", function()
  local cjson = require "cjson"
  local SECRET = "do-not-print-me-7"
  local dir, pwfile

  setup(function()
    dir = helpers.tmpdir()
    pwfile = dir .. "/pw"
    helpers.write(pwfile, SECRET .. "\n")
  end)

  local function relay(args, env)
    return helpers.portman("relay " .. args, "env -u PORTMAN_TURN_PASSWORD " .. (env or ""))
  end

  it("takes no password in argv, and needs one from a file or the environment", function()
    local status, _, err = relay("7000 --server 127.0.0.1 --user u --allow 192.0.2.1 --password x")
    assert.equal(2, status)
    assert.matches("unknown option %-%-password", err)
    status, _, err = relay("7000 --server 127.0.0.1 --user u --allow 192.0.2.1")
    assert.equal(2, status)
    assert.matches("give %-%-password%-file FILE or set PORTMAN_TURN_PASSWORD", err)
    status, _, err = relay("7000 --server 127.0.0.1 --user u --allow 192.0.2.1 --password-file " .. dir .. "/none")
    assert.equal(1, status)
    assert.matches("^portman relay: not_found: %-%-password%-file", err)
  end)

  it("refuses bad usage, naming the flag", function()
    local cases = {
      ["7000 --server 127.0.0.1 --user u"] = "%-%-allow PEER_IP is required",
      ["7000 --server 127.0.0.1 --user u --allow nope"] = "%-%-allow: IP address expected, got 'nope'",
      ["7000 --server 127.0.0.1 --user u --allow 192.0.2.1 --proto sctp"] = "%-%-proto: udp, tcp expected",
      ["7000 --user u --allow 192.0.2.1"] = "%-%-server: HOST:PORT expected",
      ["7000 --server 127.0.0.1 --allow 192.0.2.1"] = "%-%-user NAME is required",
      ["70000 --server 127.0.0.1 --user u --allow 192.0.2.1"] = "PORT: port 1%-65535 expected",
      ["7000 --server 127.0.0.1 --user u --allow 192.0.2.1 --lifetime 0"] = "%-%-lifetime: at least 1",
    }
    for args, want in pairs(cases) do
      local status, _, err = relay(args .. " --password-file " .. pwfile)
      assert.equal(2, status, args)
      assert.matches(want, err)
    end
  end)

  it("reports a server that refuses, in JSON, without the password", function()
    local port = helpers.free_port("udp", "127.0.0.1") -- nothing listens there: ICMP port unreachable
    local status, out, err = relay(("7000 --server 127.0.0.1:%d --user u --allow 127.0.0.1 --json --timeout 2000")
      :format(port), "PORTMAN_TURN_PASSWORD=" .. SECRET)
    assert.equal(1, status)
    local doc = cjson.decode(out)
    assert.equal("refused", doc.code, err)
    assert.falsy((out .. err):find(SECRET, 1, true))
  end)
end)

describe("a policy service's relay", function()
  local function why(conf)
    local ok, err = pcall(turn.check_service, "add_service", 1, conf)
    assert.is_false(ok)
    return tostring(err)
  end
  local GOOD = {server = "turn.example.net:3478", user = "u", password = "secret-pw", allow = {"192.0.2.1"}}
  local function with(k, v) return helpers.with(GOOD, k, v) end

  it("takes a server, a user, one password source and the peers to allow", function()
    turn.check_service("add_service", 1, GOOD)
    turn.check_service("add_service", 1,
      {server = "192.0.2.9", user = "u", password_env = "X", allow = {"2001:db8::1"}, lifetime = 600})
  end)

  it("refuses a bad one naming the field, never showing the password", function()
    assert.matches("unknown option 'relay.pasword'", why(with("pasword", "x")))
    assert.matches("relay.server: \"host:port\" expected", why(with("server", "turn.example.net:0")))
    assert.matches("relay.user: string expected", why(with("user", 7)))
    assert.matches("one of password, password_file, password_env", why(with("password_file", "/f")))
    assert.matches("one of password, password_file, password_env", why(with("password", nil)))
    assert.matches("relay.allow: a list of peer IPs", why(with("allow", {})))
    assert.matches("relay.allow%[1%]: IP address expected", why(with("allow", {"example.net"})))
    assert.matches("relay.lifetime: positive integer", why(with("lifetime", 0)))
    assert.matches("relay: table expected", why("turn.example.net"))
    for _, conf in ipairs{with("pasword", "x"), with("allow", {})} do
      assert.falsy(why(conf):find("secret-pw", 1, true))
    end
  end)

  it("is refused by the manager before anything starts", function()
    local manager = require "portman.manager"
    local m = manager.new{}
    local port = require("helpers").free_port("tcp", "127.0.0.1")
    local ok, err = pcall(m.add_service, m, {name = "s", port = port, relay = with("allow", nil)})
    assert.is_false(ok)
    assert.matches("relay.allow", err)
  end)
end)

describe("TURN client's timers (an injected clock)", function()
  local KEY = core.stun_long_term_key("u", "realm", "pw")

  it("refreshes at half the lifetime, retries a stale nonce, and deallocates on close", function()
    local timers = {}
    local clock = {after = function(ms, fn)
      local t = {ms = ms, fn = fn}
      t.stop = function() t.stopped = true end
      timers[#timers + 1] = t
      return t
    end}
    local stale_sent = false
    local s = server(function(msg)
      if not msg.username then
        return {class = "error", error_code = {code = 401, reason = "Unauthorized"}, realm = "realm", nonce = "n1"}
      end
      if msg.method == turn.REFRESH and msg.nonce == "n1" and not stale_sent then
        stale_sent = true
        return {class = "error", error_code = {code = 438, reason = "Stale Nonce"}, realm = "realm", nonce = "n2"}
      end
      return {class = "success", xor_relayed_address = {ip = "192.0.2.7", port = 50000}, lifetime = 600,
              message_integrity = true}, KEY
    end)
    local events = {}
    local on_refreshed
    local c = turn.Client.new{ip = "127.0.0.1", port = s.port, family = "inet", user = "u", password = "pw",
      clock = clock, on_event = function(name, f)
        events[#events + 1] = name
        if name == "refreshed" and on_refreshed then on_refreshed(f) end
      end}
    local refreshed, closed = portman.run(function()
      assert(async.await(c.allocate, c))
      local due
      for _, t in ipairs(timers) do if t.ms == 300000 and not t.stopped then due = t end end
      assert(due, "no refresh timer at half of 600 s")
      local f = async.await(function(cb) on_refreshed = cb; due.fn() end)
      local ok = async.await(c.close, c)
      s.close()
      return f, ok
    end)
    assert.same({lifetime = 600}, refreshed)
    assert.is_true(closed)
    local methods, last = {}, s.requests[#s.requests]
    for i, r in ipairs(s.requests) do methods[i] = turn.method_name(r.method) .. "/" .. (r.nonce or "-") end
    -- Allocate (401), Allocate, Refresh (438), Refresh with the new nonce, Refresh 0
    assert.same({"Allocate/-", "Allocate/n1", "Refresh/n1", "Refresh/n2", "Refresh/n2"}, methods)
    assert.equal(0, last.lifetime)
    assert.same({"nonce", "nonce", "refreshed"}, events)
  end)
end)
