-- The STUN codec: RFC 5769's vectors, every attribute, malformed input.
local helpers = require "helpers"

local function hex(s)
  s = s:gsub("%s+", "")
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

-- RFC 5769 section 2 (the padding of 2.1-2.3 is 0x20 on purpose, 2.4's is 0).
local V = {
  request = hex[[
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf]],
  ipv4 = hex[[
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96]],
  ipv6 = hex[[
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c]],
  long_term = hex[[
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66]],
}
local PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
local TID = hex"b7e7a701bc34d686fa87dfae"
local USER = "\xe3\x83\x9e\xe3\x83\x88\xe3\x83\xaa\xe3\x83\x83\xe3\x82\xaf\xe3\x82\xb9" -- マトリックス

describe("portman.stun codec", function()
  local stun

  it("leaves _G alone when required", function()
    local before = helpers.globals()
    stun = require "portman.stun"
    for k in pairs(_G) do assert.is_true(before[k] ~= nil, "new global " .. tostring(k)) end
  end)

  before_each(function() stun = require "portman.stun" end)

  describe("RFC 5769 vectors", function()
    it("2.1: the sample request decodes, verifies and re-encodes byte for byte", function()
      local m = assert(stun.decode(V.request, PASSWORD))
      assert.same({1, "request", TID, "STUN test client", "evtj:h6vY", true, true, true},
        {m.method, m.class, m.transaction_id, m.software, m.username, m.message_integrity,
         m.fingerprint, m.verified})
      -- PRIORITY (required) and ICE-CONTROLLED (optional) are unknown here
      assert.same({[0x0024] = hex"6e0001ff", [0x8029] = hex"932ff9b151263b36"}, m.unknown)
      assert.same({0x0024}, m.unknown_required)
      assert.same({0x8022, 0x0024, 0x8029, 0x0006, 0x0008, 0x8028}, m.attributes)
      assert.equal(V.request, stun.encode(m, PASSWORD, 0x20))
    end)

    it("2.2: the IPv4 response gives 192.0.2.1:32853", function()
      local m = assert(stun.decode(V.ipv4, PASSWORD))
      assert.same({family = 4, ip = "192.0.2.1", port = 32853}, m.xor_mapped_address)
      assert.equal("success", m.class)
      assert.equal("test vector", m.software)
      assert.equal(V.ipv4, stun.encode(m, PASSWORD, 0x20))
    end)

    it("2.3: the IPv6 response gives 2001:db8:1234:5678:11:2233:4455:6677 port 32853", function()
      local m = assert(stun.decode(V.ipv6, PASSWORD))
      assert.same({family = 6, ip = "2001:db8:1234:5678:11:2233:4455:6677", port = 32853},
        m.xor_mapped_address)
      assert.equal(V.ipv6, stun.encode(m, PASSWORD, 0x20))
    end)

    it("2.4: long-term credentials: the MD5 key verifies and the message re-encodes", function()
      local key = stun.long_term_key(USER, "example.org", "TheMatrIX")
      local m = assert(stun.decode(V.long_term, key))
      assert.same({USER, "example.org", "f//499k954d6OL34oL9FSTvy64sA"}, {m.username, m.realm, m.nonce})
      assert.is_nil(m.fingerprint)
      assert.equal(V.long_term, stun.encode(m, key))
    end)

    it("a wrong key is a protocol error, and so is asking to verify a message without integrity", function()
      assert.same({nil, "protocol: MESSAGE-INTEGRITY mismatch", "protocol"},
        {stun.decode(V.request, "wrong")})
      local bare = stun.encode{transaction_id = TID}
      assert.same({nil, "protocol: no MESSAGE-INTEGRITY to check", "protocol"}, {stun.decode(bare, "k")})
    end)

    it("decodes without a key, leaving integrity unchecked", function()
      local m = assert(stun.decode(V.request))
      assert.is_true(m.message_integrity)
      assert.is_nil(m.verified)
    end)
  end)

  describe("attributes", function()
    local every = {
      class = "success", transaction_id = TID, method = 1,
      mapped_address = {family = 4, ip = "192.0.2.7", port = 1},
      xor_mapped_address = {family = 6, ip = "2001:db8::5", port = 65535},
      alternate_server = {family = 6, ip = "::1", port = 9},
      response_origin = {family = 4, ip = "198.51.100.1", port = 3478},
      other_address = {family = 4, ip = "198.51.100.2", port = 3479},
      change_request = {ip = true, port = false},
      error_code = {code = 420, reason = "Unknown Attribute"},
      unknown_attributes = {0x0024, 0x8029},
      username = "user", realm = "example.org", nonce = "n0nce", software = "portman",
      padding = ("\0"):rep(7), response_port = 5000,
      unknown = {[0x8029] = "12345678", [0x0024] = "abcd"},
      message_integrity = true, message_integrity_sha256 = true, fingerprint = true,
    }

    it("every attribute survives encode then decode", function()
      local bytes = stun.encode(every, "secret")
      local m = assert(stun.decode(bytes, "secret"))
      for k, v in pairs(every) do assert.same(v, m[k], k) end
      assert.same({0x0024}, m.unknown_required)
      assert.is_true(stun.is_stun(bytes))
      assert.is_false(stun.is_stun(bytes:sub(1, -2)))
    end)

    it("a flipped bit anywhere fails the fingerprint, the integrity or the format", function()
      local bytes = stun.encode(every, "secret")
      for i = 21, #bytes - 8 do -- up to the FINGERPRINT header (its value: below)
        local b = bytes:sub(1, i - 1) .. string.char(bytes:byte(i) ~ 1) .. bytes:sub(i + 1)
        local m, err, code = stun.decode(b, "secret")
        assert.is_nil(m, "byte " .. i)
        assert.equal("protocol", code)
        assert.matches("^protocol: ", err)
      end
    end)

    it("encodes the method and class bits of RFC 8489 figure 3", function()
      for _, c in ipairs{{0x001, "request", 0x0001}, {0x001, "success", 0x0101},
                         {0x001, "error", 0x0111}, {0x001, "indication", 0x0011},
                         {0xFFF, "error", 0x3FFF}, {0x003, "request", 0x0003}} do
        local b = stun.encode{method = c[1], class = c[2], transaction_id = TID}
        assert.equal(c[3], b:byte(1) << 8 | b:byte(2))
        local m = stun.decode(b)
        assert.same({c[1], c[2]}, {m.method, m.class})
      end
    end)

    it("ignores attributes after MESSAGE-INTEGRITY but for the SHA-256 one and FINGERPRINT", function()
      local signed = stun.encode({transaction_id = TID, message_integrity = true}, "k")
      local extra = hex"80220004" .. "late"
      local b = signed .. extra
      b = b:sub(1, 2) .. string.pack(">I2", #b - 20) .. b:sub(5)
      local m = assert(stun.decode(b, "k"))
      assert.is_nil(m.software)
      assert.same({0x0008}, m.attributes)
    end)

    it("keeps the first of repeated attributes", function()
      local b = stun.encode{transaction_id = TID, software = "one", unknown = {},
                            attributes = {0x8022, 0x8022}}
      assert.equal("one", stun.decode(b).software)
    end)

    it("makes random, distinct transaction ids", function()
      local a, b = stun.transaction_id(), stun.transaction_id()
      assert.equal(12, #a)
      assert.not_equal(a, b)
    end)
  end)

  describe("malformed input gives nil, 'protocol: ...', 'protocol'", function()
    local good = stun.encode{class = "success", transaction_id = TID,
                             xor_mapped_address = {ip = "192.0.2.1", port = 80}, fingerprint = true}
    local function with_len(b) return b:sub(1, 2) .. string.pack(">I2", #b - 20) .. b:sub(5) end
    local function msg(attrs) return with_len(good:sub(1, 20) .. attrs) end
    local cases = {
      {"empty", "", "shorter than the STUN header"},
      {"a header cut short", good:sub(1, 19), "shorter than the STUN header"},
      {"top bits set", "\x80" .. good:sub(2), "top bits"},
      {"a wrong cookie", good:sub(1, 4) .. "\0\0\0\0" .. good:sub(9), "magic cookie"},
      {"a length past the datagram", good:sub(1, -2), "does not match"},
      {"trailing bytes", good .. "\0\0\0\0", "does not match"},
      {"a length not a multiple of 4", msg("\x80\x22\0\1x\0\0"), "multiple of 4"},
      {"an attribute past the end", msg("\x80\x22\0\8abcd"), "runs past"},
      {"padding missing", msg("\x80\x22\0\5abcd"), "runs past"},
      {"a bad fingerprint", good:sub(1, -2) .. string.char(good:byte(-1) ~ 0xFF), "FINGERPRINT mismatch"},
      {"an attribute after FINGERPRINT", with_len(good .. "\x80\x22\0\0"), "after FINGERPRINT"},
      {"an unknown address family", msg("\0\x20\0\8\0\3\0\0\1\2\3\4"), "unknown family"},
      {"an IPv4 address of bad length", msg("\0\x20\0\x0c\0\1\0\0\1\2\3\4\5\6\7\8"), "bad length"},
      {"an IPv6 address of bad length", msg("\0\x20\0\8\0\2\0\0\1\2\3\4"), "bad length"},
      {"a short address", msg("\0\1\0\2\0\1\0\0"), "too short"},
      {"an ERROR-CODE class of 7", msg("\0\9\0\4\0\0\7\0"), "300-699"},
      {"an ERROR-CODE number of 100", msg("\0\9\0\4\0\0\4\100"), "300-699"},
      {"a short ERROR-CODE", msg("\0\9\0\2\0\0\0\0"), "ERROR-CODE"},
      {"MESSAGE-INTEGRITY of 16 bytes", msg("\0\8\0\16" .. ("\0"):rep(16)), "MESSAGE-INTEGRITY"},
      {"MESSAGE-INTEGRITY-SHA256 of 12 bytes", msg("\0\x1c\0\12" .. ("\0"):rep(12)), "SHA256"},
      {"a CHANGE-REQUEST of 8 bytes", msg("\0\3\0\8" .. ("\0"):rep(8)), "bad length"},
      {"an odd UNKNOWN-ATTRIBUTES", msg("\0\10\0\3abc\0"), "odd length"},
      {"a USERNAME of 513 bytes", msg("\0\6\2\1" .. ("u"):rep(516)), "USERNAME too long"},
      {"a SOFTWARE of 764 bytes", msg("\x80\x22\2\xfc" .. ("s"):rep(764)), "too long"},
      {"65 attributes", msg(("\x80\x30\0\0"):rep(65)), "too many attributes"},
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local m, err, code = stun.decode(c[2])
        assert.is_nil(m)
        assert.equal("protocol", code)
        assert.matches("^protocol: ", err)
        if c[3] then assert.truthy(err:find(c[3], 1, true), err) end
      end)
    end

    it("never raises on random or mutated bytes", function()
      local seeds = {V.request, V.ipv4, V.ipv6, V.long_term, good}
      math.randomseed(5769)
      local decoded = 0
      for i = 1, 20000 do
        local s = seeds[i % #seeds + 1]
        local b
        if i % 3 == 0 then
          local t = {}
          for k = 1, math.random(0, 80) do t[k] = string.char(math.random(0, 255)) end
          b = table.concat(t)
        elseif i % 3 == 1 then
          b = s:sub(1, math.random(0, #s))
        else
          local p = math.random(1, #s)
          b = s:sub(1, p - 1) .. string.char(math.random(0, 255)) .. s:sub(p + 1)
        end
        local ok, m = pcall(stun.decode, b, i % 2 == 0 and "k" or nil)
        assert.is_true(ok, m)
        if m then decoded = decoded + 1 end
      end
      assert.is_true(decoded > 0) -- the mutations do not all break the framing
    end)
  end)

  describe("bad arguments", function()
    -- a plain call statement, so that Lua names the function in the message
    local function raises(fn, ...)
      local args = table.pack(...)
      return helpers.raises(function() fn(table.unpack(args, 1, args.n)) end)
    end
    local function decode(...) return raises(function(...) stun.decode(...) end, ...) end
    local function encode(...) return raises(function(...) stun.encode(...) end, ...) end

    it("decode wants a string", function()
      assert.matches("bad argument #1 to 'decode' %(string expected, got nil%)", decode(nil))
      assert.matches("bad argument #2 to 'decode' %(string expected, got table%)", decode(V.ipv4, {}))
    end)

    it("encode names the bad field", function()
      assert.matches("bad argument #1 to 'encode' %(table expected, got nil%)", encode(nil))
      assert.matches("bad argument #1 to 'encode' %(field 'transaction_id': 12%-byte string expected%)",
        encode{transaction_id = "short"})
      assert.matches("field 'transaction_id': string expected", encode{})
      assert.matches("field 'class': request, indication, success or error expected",
        encode{class = "reply", transaction_id = TID})
      assert.matches("field 'method': method: integer in 0%-4095 expected",
        encode{method = 4096, transaction_id = TID})
      assert.matches("field 'xor_mapped_address': ip: not an IP address 'nope'",
        encode{transaction_id = TID, xor_mapped_address = {ip = "nope", port = 1}})
      assert.matches("field 'mapped_address': port: integer in 0%-65535 expected",
        encode{transaction_id = TID, mapped_address = {ip = "::1", port = 70000}})
      assert.matches("field 'error_code': code: integer in 300%-699 expected",
        encode{transaction_id = TID, error_code = {code = 200}})
      assert.matches("field 'software': string expected", encode{transaction_id = TID, attributes = {0x8022}})
      assert.matches("bad argument #2 to 'encode' %(a key is needed for MESSAGE%-INTEGRITY%)",
        encode{transaction_id = TID, message_integrity = true})
      assert.matches("bad argument #3 to 'encode' %(pad byte out of range 0%-255%)",
        encode({transaction_id = TID}, nil, 256))
      assert.matches("no raw value in unknown%[32816%]", encode{transaction_id = TID, attributes = {0x8030}})
      assert.matches("message too large", encode{transaction_id = TID, padding = ("x"):rep(70000)})
    end)
  end)
end)
