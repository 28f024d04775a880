-- Internationalized names: core.idna_to_ascii (csrc/lua_idna.c, libidn2),
-- resolver.to_ascii over it, and `portman resolve` asking a real dnsmasq
-- (spec/dnsmasq.lua) for the ASCII form.
local helpers = require "helpers"
local dnsmasq = require "dnsmasq"
local cjson = require "cjson"

describe("IDNA", function()
  local core, resolver

  setup(function()
    core = require "portman.core"
    resolver = require "portman.resolver"
  end)

  describe("core.idna_to_ascii", function()
    it("converts internationalized names to their A-labels", function()
      local known = {
        ["bücher.example"] = "xn--bcher-kva.example",
        ["münchen.de"] = "xn--mnchen-3ya.de",
        ["日本語.jp"] = "xn--wgv71a119e.jp",
        ["пример.рф"] = "xn--e1afmkfd.xn--p1ai",
        ["faß.de"] = "xn--fa-hia.de", -- non-transitional: ß stays ß
        ["_sip._udp.bücher.example"] = "_sip._udp.xn--bcher-kva.example",
        ["bücher.example."] = "xn--bcher-kva.example.",
        ["example.com"] = "example.com",
      }
      for name, ascii in pairs(known) do
        assert.equal(ascii, core.idna_to_ascii(name), name)
      end
    end)

    it("maps upper case to lower (UTS #46)", function()
      assert.equal("xn--bcher-kva.example", core.idna_to_ascii("BÜCHER.Example"))
      assert.equal("xn--e1afmkfd.xn--p1ai", core.idna_to_ascii("ПРИМЕР.РФ"))
    end)

    it("fails with protocol on bytes that are not UTF-8", function()
      local bad = {
        "\255\254", "\128abc", -- no lead byte
        "b\195.example", -- a lead byte without its continuation
        "\192\175.example", "\224\128\175.example", -- overlong forms of '/'
        "\237\160\128.example", -- a UTF-16 surrogate (U+D800)
        "\244\144\128\128.example", -- past U+10FFFF
      }
      for _, name in ipairs(bad) do
        local ascii, err, code = core.idna_to_ascii(name)
        assert.is_nil(ascii)
        assert.equal("protocol", code)
        assert.equal("protocol: IDNA: name is not valid UTF-8", err)
      end
      assert.same({nil, "protocol: IDNA: name holds a NUL byte", "protocol"}, {core.idna_to_ascii("b\0ü")})
      assert.same({nil, "protocol: IDNA: empty name", "protocol"}, {core.idna_to_ascii("")})
    end)

    it("fails with protocol on a label too long once encoded, and on invalid IDNs", function()
      -- "ü" and 55 letters is an A-label of 63 characters, the most a label holds
      local longest = core.idna_to_ascii("ü" .. ("a"):rep(55) .. ".example")
      assert.equal(63, #longest:match("^[^.]+"))
      local ascii, err, code = core.idna_to_ascii("ü" .. ("a"):rep(56) .. ".example")
      assert.is_nil(ascii)
      assert.equal("protocol", code)
      -- libidn2 words it as the punycode being too large, or the label too long
      assert.truthy(err:find("^protocol: IDNA: .*too large") or err:find("^protocol: IDNA: .*longer than 63"), err)
      ascii, err, code = core.idna_to_ascii(("ü"):rep(600))
      assert.same({nil, "protocol"}, {ascii, code})
      assert.equal("protocol: IDNA: name of 1200 bytes is too long", err)
      for _, name in ipairs{"-ü.example", "ab--ü.example", "\u{200D}ü.example"} do
        ascii, err, code = core.idna_to_ascii(name)
        assert.is_nil(ascii, name)
        assert.equal("protocol", code)
        assert.truthy(err:find("^protocol: IDNA: "), err)
      end
    end)

    it("never raises on 10,000 random byte strings", function()
      local seed = os.time()
      math.randomseed(seed)
      -- half raw bytes, half random code points (well-formed UTF-8 that
      -- libidn2 itself has to judge), with dots among them
      local function random_name()
        local parts = {}
        local utf8_only = math.random() < 0.5
        for i = 1, math.random(0, 40) do
          if math.random() < 0.1 then
            parts[i] = "."
          elseif utf8_only then
            local cp = math.random() < 0.5 and math.random(0x20, 0x7FF) or math.random(0x800, 0x10FFFF)
            if cp >= 0xD800 and cp <= 0xDFFF then cp = 0xFFFD end
            parts[i] = utf8.char(cp)
          else
            parts[i] = string.char(math.random(0, 255))
          end
        end
        return table.concat(parts)
      end
      local converted = 0
      for _ = 1, 10000 do
        local name = random_name()
        local ok, ascii, err, code = pcall(core.idna_to_ascii, name)
        assert(ok, ("seed %d: raised on %q: %s"):format(seed, name, tostring(ascii)))
        if ascii then
          assert(type(ascii) == "string" and not ascii:find("[\128-\255]"), ("seed %d: %q"):format(seed, name))
          converted = converted + 1
        else
          assert(code == "protocol" and err:sub(1, 10) == "protocol: ", ("seed %d: %q: %s"):format(seed, name, err))
        end
      end
      assert.is_true(converted > 0) -- some random names are valid IDNs
    end)
  end)

  describe("resolver.to_ascii", function()
    it("returns ASCII names as they are and converts the others", function()
      assert.equal("Web.Example", resolver.to_ascii("Web.Example"))
      assert.equal("ab--cd.example", resolver.to_ascii("ab--cd.example")) -- no IDNA rules for ASCII names
      assert.equal("xn--bcher-kva.example", resolver.to_ascii("Bücher.example"))
    end)

    it("fails with protocol, naming the name and the reason", function()
      assert.same({nil, "protocol: invalid internationalized name '\255' (IDNA: name is not valid UTF-8)",
                   "protocol"}, {resolver.to_ascii("\255")})
      assert.same({nil, "protocol: string expected, got nil", "protocol"}, {resolver.to_ascii(nil)})
    end)
  end)

  describe("portman resolve against dnsmasq", function()
    local server

    setup(function()
      server = dnsmasq.start{
        "--local=/pm.test/",
        "--host-record=xn--bcher-kva.pm.test,10.0.1.9,300",
        "--host-record=both.pm.test,10.0.1.2,fd00::1:2,90",
      }
    end)

    teardown(function()
      if server then server.stop() end
    end)

    it("asks for an internationalized name in its ASCII form", function()
      local status, out, err = helpers.portman(("resolve bücher.pm.test --type A --server %s --json")
        :format(server.address))
      assert.equal(0, status, err)
      assert.same({name = "xn--bcher-kva.pm.test", type = "A",
                   records = {{address = "10.0.1.9", type = "A", ttl = 300}}}, cjson.decode(out))
      assert.equal(1, server.count("A", "xn--bcher-kva.pm.test"))
      status, out = helpers.portman(("resolve BÜCHER.pm.test --type A --server %s -H"):format(server.address))
      assert.equal(0, status)
      assert.equal("10.0.1.9  A  300\n", out)
    end)

    it("gives both A and AAAA records without --type", function()
      local status, out, err = helpers.portman(("resolve both.pm.test --server %s --json"):format(server.address))
      assert.equal(0, status, err)
      assert.same({name = "both.pm.test", type = "A,AAAA", records = {
        {address = "fd00::1:2", type = "AAAA", ttl = 90}, {address = "10.0.1.2", type = "A", ttl = 90}}},
        cjson.decode(out))
      assert.equal(1, server.count("A", "both.pm.test"))
      assert.equal(1, server.count("AAAA", "both.pm.test"))
    end)

    it("fails with protocol on a name that is no IDN", function()
      local status, out, err = helpers.portman(("resolve $(printf 'b\\377.pm.test') --server %s"):format(server.address))
      assert.equal(1, status)
      assert.equal("", out)
      assert.truthy(err:find("protocol: invalid internationalized name", 1, true), err)
    end)
  end)
end)
