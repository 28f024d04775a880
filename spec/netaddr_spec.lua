-- portman.netaddr: canonical address text, families, overlapping bind
-- addresses, and the kernel's tables of bound sockets (read here against
-- sockets this spec opens, and in a network namespace of its own, root).
local helpers = require "helpers"
local uv = require "luv"

describe("portman.netaddr", function()
  local netaddr

  setup(function()
    local before = helpers.globals()
    netaddr = require "portman.netaddr"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], "new global " .. k) end
    assert.equal(netaddr, require("portman").netaddr)
  end)

  describe("normalize", function()
    it("keeps a dotted quad", function()
      for _, a in ipairs{"1.2.3.4", "0.0.0.0", "255.255.255.255", "127.0.0.1"} do
        assert.equal(a, netaddr.normalize(a))
      end
    end)

    it("writes IPv6 as RFC 5952 does: lower case, no leading zeros, the longest zero run as ::", function()
      local cases = {
        {"::", "::"}, {"::1", "::1"}, {"0:0:0:0:0:0:0:0", "::"}, {"0:0:0:0:0:0:0:1", "::1"},
        {"2001:DB8:0:0:0:0:0:1", "2001:db8::1"}, {"2001:0db8:0000::0001", "2001:db8::1"},
        {"2001:db8::", "2001:db8::"}, {"FE80::AbCd", "fe80::abcd"},
        -- the longest run wins; of two as long, the first
        {"1:0:0:1:0:0:0:1", "1:0:0:1::1"}, {"1:0:0:0:1:0:0:1", "1::1:0:0:1"},
        {"0:0:1:0:0:0:0:0", "0:0:1::"},
        -- one zero group is never ::
        {"1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7:0"}, {"1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"},
        {"1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"},
        {"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"}, {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
          "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
      }
      for _, c in ipairs(cases) do assert.equal(c[2], netaddr.normalize(c[1]), c[1]) end
    end)

    it("is nil for what is no address", function()
      for _, a in ipairs{"", "localhost", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4", "1.2.3.4 ", " 1.2.3.4",
                         "1..2.3", "a.b.c.d", "::g", "12345::", "1::2::3", "1:2:3:4:5:6:7:8:9",
                         "1:2:3:4:5:6:7", "0x1::", "fe80::1%eth0", "[::1]", "1.2.3.4:80",
                         ("9"):rep(400) .. ".1.1.1"} do
        assert.is_nil(netaddr.normalize(a), a)
      end
      for _, v in ipairs{5, true, {}, print} do assert.is_nil(netaddr.normalize(v)) end
      assert.is_nil(netaddr.normalize(nil))
    end)

    -- Lua's tonumber(g, 16) takes a sign and spaces: "-1::" once came back as
    -- "ffffffffffffffff::", an address of 16 hex digits a group.
    it("refuses groups with a sign or spaces", function()
      for _, a in ipairs{"-1::", " 1::", "1:: ", "+1::", "::- 1", "1:2:3:4:5:6:7:-0"} do
        assert.is_nil(netaddr.normalize(a), a)
      end
    end)

    -- Empty groups were once dropped before counting: a stray colon, or a
    -- "::" that stands for no group at all, passed.
    it("refuses stray colons and a :: that stands for no group", function()
      for _, a in ipairs{":::", "1::2:", ":1::2", "1:2:3:4:5:6:7:8:", ":1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8::",
                         "::1:2:3:4:5:6:7:8", "1:2:3:4::5:6:7:8"} do
        assert.is_nil(netaddr.normalize(a), a)
      end
    end)
  end)

  describe("family", function()
    it("is 6 for text with a colon and 4 otherwise", function()
      assert.equal(4, netaddr.family("10.0.0.1"))
      assert.equal(4, netaddr.family("0.0.0.0"))
      assert.equal(6, netaddr.family("::"))
      assert.equal(6, netaddr.family("fe80::1"))
    end)
  end)

  describe("overlap", function()
    it("is true for one address and for the wildcards of its family; :: is dual-stack", function()
      local yes = {{"127.0.0.1", "127.0.0.1"}, {"0.0.0.0", "10.0.0.1"}, {"0.0.0.0", "0.0.0.0"},
                   {"::", "::1"}, {"::", "10.0.0.1"}, {"::", "0.0.0.0"}, {"::1", "::1"}}
      for _, c in ipairs(yes) do
        assert.is_true(netaddr.overlap(c[1], c[2]), c[1] .. " " .. c[2])
        assert.is_true(netaddr.overlap(c[2], c[1]), c[2] .. " " .. c[1])
      end
    end)

    it("is false for two addresses, or an IPv4 wildcard and IPv6", function()
      local no = {{"127.0.0.1", "127.0.0.2"}, {"0.0.0.0", "::1"}, {"0.0.0.0", "fe80::1"}, {"::1", "127.0.0.1"},
                  {"::1", "::2"}}
      for _, c in ipairs(no) do
        assert.is_false(netaddr.overlap(c[1], c[2]), c[1] .. " " .. c[2])
        assert.is_false(netaddr.overlap(c[2], c[1]), c[2] .. " " .. c[1])
      end
    end)
  end)

  describe("bound", function()
    local function find(list, port)
      local found = {}
      for _, b in ipairs(list) do
        if b.port == port then found[#found + 1] = b.address end
      end
      table.sort(found)
      return found
    end

    local function close(...)
      for _, h in ipairs{...} do h:close() end
      uv.run("nowait")
    end

    it("lists listening TCP sockets with their address in the right byte order, not bound ones", function()
      -- 127.1.2.3: four different bytes show the order
      local l = uv.new_tcp()
      assert(l:bind("127.1.2.3", 0))
      assert(l:listen(1, function() end))
      local port = l:getsockname().port
      local l6 = uv.new_tcp()
      assert(l6:bind("::1", port))
      assert(l6:listen(1, function() end))
      local idle = uv.new_tcp() -- bound, not listening
      assert(idle:bind("127.0.0.1", 0))
      local idle_port = idle:getsockname().port
      local list = netaddr.bound("tcp")
      close(l, l6, idle)
      assert.same({"127.1.2.3", "::1"}, find(list, port))
      assert.same({}, find(list, idle_port))
      for _, b in ipairs(list) do
        assert.equal("integer", math.type(b.port))
        assert.equal(b.address, netaddr.normalize(b.address))
      end
      assert.same({}, find(netaddr.bound("tcp"), port)) -- gone once closed
    end)

    it("lists every bound UDP socket, wildcards too", function()
      local u, u6 = uv.new_udp(), uv.new_udp()
      assert(u:bind("0.0.0.0", 0))
      local port = u:getsockname().port
      assert(u6:bind("::1", port))
      local list = netaddr.bound("udp")
      close(u, u6)
      assert.same({"0.0.0.0", "::1"}, find(list, port))
      assert.same({}, find(netaddr.bound("udp"), port))
    end)

    it("is empty for a protocol the kernel has no table for", function()
      assert.same({}, netaddr.bound("nonesuch"))
    end)

    it("reads exactly the sockets of its own network namespace, IPv6 words in order", function()
      local list = helpers.in_netns([[
        os.execute("ip -6 addr add 2001:db8:1:2:3:4:5:6/128 dev lo nodad")
        local uv = require "luv"
        local netaddr = require "portman.netaddr"
        local a, b = uv.new_tcp(), uv.new_tcp()
        assert(a:bind("2001:db8:1:2:3:4:5:6", 4242))
        assert(a:listen(1, function() end))
        assert(b:bind("0.0.0.0", 4243))
        assert(b:listen(1, function() end))
        local list = netaddr.bound("tcp")
        a:close()
        b:close()
        uv.run()
        return list
      ]])
      table.sort(list, function(x, y) return x.port < y.port end)
      for _, b in ipairs(list) do
        assert.is_true(math.type(b.inode) == "integer" and b.inode > 0) -- the socket's, for netaddr.holder
        b.inode = nil
      end
      assert.same({{address = "2001:db8:1:2:3:4:5:6", port = 4242}, {address = "0.0.0.0", port = 4243}}, list)
    end)
  end)
end)
