-- portman.resolver against a real dnsmasq on loopback (spec/dnsmasq.lua),
-- plus the selection policies.
local helpers = require "helpers"
local dnsmasq = require "dnsmasq"
local uv = require "luv"
local cjson = require "cjson"

local SRV_NAME = "_sip._udp.pm.test"

describe("portman.resolver", function()
  local resolver, portman
  local server -- the main dnsmasq
  local resolvers = {}
  local fds_before

  -- The fewest fds of three counts: now and then a count here sees one fd
  -- more than the same listing shows (seen at setup, never after), so one
  -- sample could blame a leak that is not there; a real leak shows in all.
  local function fd_count()
    local n = math.huge
    for _ = 1, 3 do n = math.min(n, helpers.fd_count()) end
    return n
  end

  -- A resolver closed in teardown even when a spec fails.
  local function new(opts)
    local r = resolver.new(opts)
    resolvers[#resolvers + 1] = r
    return r
  end

  local function run(fn)
    return portman.run(fn)
  end

  setup(function()
    collectgarbage() -- a file handle left for the collector is not ours
    collectgarbage()
    fds_before = fd_count()
    local before = helpers.globals()
    resolver = require "portman.resolver"
    portman = require "portman"
    for k in pairs(helpers.globals()) do
      assert(before[k], "require wrote global " .. k)
    end
    server = dnsmasq.start{
      "--local=/pm.test/",
      "--local-ttl=42",
      "--host-record=web.pm.test,10.0.0.1,300",
      "--host-record=v6.pm.test,fd00::66,120",
      "--host-record=dual.pm.test,10.0.0.2,fd00::2,90",
      "--host-record=short.pm.test,10.0.0.3,1",
      "--host-record=coal.pm.test,10.0.0.4,300",
      "--host-record=clamp.pm.test,10.0.0.5,77",
      "--host-record=target.pm.test,10.0.0.7,100",
      "--host-record=xn--bcher-kva.pm.test,10.0.0.9,300", -- bücher.pm.test
      "--srv-host=_sip._udp.xn--bcher-kva.pm.test,sip1.pm.test,5060,10,60",
      "--cname=alias.pm.test,target.pm.test,5",
      "--srv-host=" .. SRV_NAME .. ",sip1.pm.test,5060,10,60",
      "--srv-host=" .. SRV_NAME .. ",sip2.pm.test,5061,10,40",
      "--srv-host=" .. SRV_NAME .. ",sip3.pm.test,5062,20,0",
      "--srv-host=_none._tcp.pm.test", -- target ".": decidedly not available
      "--host-record=many0.pm.test,10.1.0.0,300", "--host-record=many1.pm.test,10.1.0.1,300",
      "--host-record=many2.pm.test,10.1.0.2,300", "--host-record=many3.pm.test,10.1.0.3,300",
      "--host-record=many4.pm.test,10.1.0.4,300", "--host-record=many5.pm.test,10.1.0.5,300",
      "--host-record=many6.pm.test,10.1.0.6,300", "--host-record=many7.pm.test,10.1.0.7,300",
      "--host-record=many8.pm.test,10.1.0.8,300", "--host-record=many9.pm.test,10.1.0.9,300",
    }
  end)

  teardown(function()
    for _, r in ipairs(resolvers) do r:close() end
    if server then server.stop() end
  end)

  describe("module", function()
    it("loads through portman's submodule table", function()
      assert.equal(resolver, portman.resolver)
    end)
  end)

  describe("new", function()
    it("raises on bad options, naming them", function()
      assert.equal("bad argument #1 to 'new' (table expected, got string)",
        helpers.raises(resolver.new, "x"):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (unknown option 'server')",
        helpers.raises(resolver.new, {server = "127.0.0.1"}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (servers[1]: IP[:PORT] expected, got 'dns.example')",
        helpers.raises(resolver.new, {servers = {"dns.example"}}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (servers[2]: IP[:PORT] expected, got '127.0.0.1:70000')",
        helpers.raises(resolver.new, {servers = {"127.0.0.1", "127.0.0.1:70000"}}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (servers: at least one server expected)",
        helpers.raises(resolver.new, {servers = {}}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (min_ttl 10 > max_ttl 5)",
        helpers.raises(resolver.new, {min_ttl = 10, max_ttl = 5}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (negative_ttl: number >= 0 expected, got -1)",
        helpers.raises(resolver.new, {negative_ttl = -1}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (cache: boolean expected, got string)",
        helpers.raises(resolver.new, {cache = "yes"}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (hosts: path or false expected, got number)",
        helpers.raises(resolver.new, {hosts = 1}):match("bad argument.*"))
      assert.equal("bad argument #1 to 'new' (clock: function expected, got number)",
        helpers.raises(resolver.new, {clock = 1}):match("bad argument.*"))
    end)

    it("takes IPv4 and IPv6 servers with and without ports", function()
      local r = new{servers = {"127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353"}}
      assert.equal("portman.resolver (127.0.0.1:53,127.0.0.1:5353,[::1]:53,[::1]:5353)", tostring(r))
    end)
  end)

  describe("resolve", function()
    local r
    before_each(function()
      r = new{servers = {server.address}, hosts = false}
    end)

    it("raises on a malformed name or options", function()
      assert.equal("bad argument #1 to 'resolve' (string expected, got nil)",
        helpers.raises(r.resolve, r, nil, function() end):match("bad argument.*"))
      assert.equal("bad argument #1 to 'resolve' (invalid domain name 'a..b')",
        helpers.raises(r.resolve, r, "a..b", function() end):match("bad argument.*"))
      assert.equal("bad argument #2 to 'resolve' (unknown family 'ipx' (inet, inet6, any))",
        helpers.raises(r.resolve, r, "web.pm.test", {family = "ipx"}, function() end):match("bad argument.*"))
      assert.equal("bad argument #2 to 'resolve' (unknown option 'famly')",
        helpers.raises(r.resolve, r, "web.pm.test", {famly = "inet"}, function() end):match("bad argument.*"))
      assert.equal("bad argument #3 to 'resolve' (function expected, got number)",
        helpers.raises(r.resolve, r, "web.pm.test", {}, 1):match("bad argument.*"))
      assert.truthy(helpers.raises(r.resolve, r, "web.pm.test")
        :find("not inside portman.run or portman.spawn: pass a callback", 1, true))
      -- an option table is walked for unknown keys once; its family is
      -- checked on every call
      local opts = {family = "inet"}
      r:resolve("10.0.0.1", opts, function() end)
      opts.family = "ipx"
      assert.equal("bad argument #2 to 'resolve' (unknown family 'ipx' (inet, inet6, any))",
        helpers.raises(r.resolve, r, "10.0.0.1", opts, function() end):match("bad argument.*"))
    end)

    it("raises, and never crashes, on hostile names", function()
      local hostile = {"", ".", "a b", "a\0b", ("a"):rep(64) .. ".test", ("a."):rep(130) .. "test",
                       "-\n-", "\255\254", "..", "a/b", "%s%d"}
      for _, name in ipairs(hostile) do
        assert.truthy(helpers.raises(r.resolve, r, name, function() end)
          :find("bad argument #1 to 'resolve' (invalid domain name", 1, true), name)
        assert.truthy(helpers.raises(r.srv, r, name, function() end)
          :find("bad argument #1 to 'srv' (invalid domain name", 1, true), name)
      end
    end)

    it("gives A records with their TTL", function()
      local records, err = run(function() return r:resolve("web.pm.test", {family = "inet"}) end)
      assert.is_nil(err)
      assert.same({{address = "10.0.0.1", family = "inet", ttl = 300}}, records)
    end)

    it("gives AAAA records with their TTL", function()
      local records = run(function() return r:resolve("v6.pm.test", {family = "inet6"}) end)
      assert.same({{address = "fd00::66", family = "inet6", ttl = 120}}, records)
    end)

    it("gives both families for 'any', IPv6 first", function()
      local records = run(function() return r:resolve("dual.pm.test") end)
      assert.same({{address = "fd00::2", family = "inet6", ttl = 90},
                   {address = "10.0.0.2", family = "inet", ttl = 90}}, records)
      -- one family missing is still an answer
      records = run(function() return r:resolve("web.pm.test", {family = "any"}) end)
      assert.same({{address = "10.0.0.1", family = "inet", ttl = 300}}, records)
    end)

    it("takes the smallest TTL over the CNAME chain", function()
      local records = run(function() return r:resolve("alias.pm.test", {family = "inet"}) end)
      assert.same({{address = "10.0.0.7", family = "inet", ttl = 5}}, records)
    end)

    it("calls back with the records when given a callback", function()
      local got
      r:resolve("web.pm.test", {family = "inet"}, function(...) got = table.pack(...) end)
      uv.run()
      assert.same({{address = "10.0.0.1", family = "inet", ttl = 300}}, got[1])
    end)

    it("fails with not_found on NXDOMAIN and on no data", function()
      local records, err, code = run(function() return r:resolve("nx.pm.test", {family = "inet"}) end)
      assert.is_nil(records)
      assert.equal("not_found", code)
      assert.equal("not_found: nx.pm.test: no such name (NXDOMAIN)", err)
      records, err, code = run(function() return r:resolve("web.pm.test", {family = "inet6"}) end)
      assert.is_nil(records)
      assert.equal("not_found", code)
      assert.equal("not_found: web.pm.test: no record of that type", err)
      records, err, code = run(function() return r:resolve("nx.pm.test") end)
      assert.is_nil(records)
      assert.equal("not_found", code, err)
    end)

    it("fails with refused when the server refuses", function()
      -- dnsmasq has no upstream: a name outside pm.test is REFUSED
      local records, err, code = run(function() return r:resolve("elsewhere.example", {family = "inet"}) end)
      assert.is_nil(records)
      assert.equal("refused", code)
      assert.truthy(err:find("^refused: elsewhere.example: "), err)
    end)

    it("fails with refused when nothing listens on the server's port", function()
      local s = uv.new_udp()
      assert(s:bind("127.0.0.1", 0))
      local port = s:getsockname().port
      s:close()
      local closed = new{servers = {"127.0.0.1:" .. port}, hosts = false, timeout = 1000, tries = 1}
      local records, err, code = run(function() return closed:resolve("web.pm.test", {family = "inet"}) end)
      assert.is_nil(records)
      assert.equal("refused", code, err)
    end)

    it("fails with timeout when the server never answers", function()
      local silent = uv.new_udp() -- bound, never read: no answer ever comes
      assert(silent:bind("127.0.0.1", 0))
      local port = silent:getsockname().port
      local r2 = new{servers = {"127.0.0.1:" .. port}, hosts = false, timeout = 100, tries = 2}
      local ok, records, err, code = pcall(run, function() return r2:resolve("web.pm.test") end)
      assert.is_true(ok, records)
      assert.is_nil(records)
      assert.equal("timeout", code)
      assert.equal("timeout: web.pm.test: no answer before the timeout", err)
      records, err, code = run(function() return r2:srv(SRV_NAME) end)
      silent:close()
      assert.is_nil(records)
      assert.equal("timeout", code, err)
    end)

    it("answers literal addresses without a query", function()
      assert.same({{address = "192.0.2.7", family = "inet", ttl = 0}},
        run(function() return r:resolve("192.0.2.7") end))
      assert.same({{address = "2001:db8::1", family = "inet6", ttl = 0}},
        run(function() return r:resolve("[2001:DB8:0::1]") end))
      local records, err, code = run(function() return r:resolve("192.0.2.7", {family = "inet6"}) end)
      assert.is_nil(records)
      assert.equal("not_found", code)
      assert.equal("not_found: 192.0.2.7: no inet6 address", err)
      assert.equal(0, r:stats().queries)
    end)

    it("answers names in the hosts file without a query", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write("# comment\n10.9.9.9 hostsonly.pm.test alias-h # trailing\n",
              "fd00::99 hostsonly.pm.test\nnot-an-ip bogus.pm.test\n")
      f:close()
      local rh = new{servers = {server.address}, hosts = path}
      local records = run(function() return rh:resolve("HostsOnly.pm.test") end)
      assert.same({{address = "10.9.9.9", family = "inet", ttl = 0},
                   {address = "fd00::99", family = "inet6", ttl = 0}}, records)
      assert.same({{address = "10.9.9.9", family = "inet", ttl = 0}},
        run(function() return rh:resolve("alias-h", {family = "inet"}) end))
      os.remove(path)
      assert.equal(0, server.count("A", "hostsonly.pm.test") + server.count("AAAA", "hostsonly.pm.test"))
      assert.equal(0, rh:stats().queries)
    end)

    it("reads the hosts file again when it changes, looking no more than once a second by its clock", function()
      local path = os.tmpname()
      helpers.write(path, "10.9.9.1 moving.pm.test\n")
      local now = 0
      local rh = new{servers = {server.address}, hosts = path, clock = function() return now end}
      local function address()
        return run(function() return rh:resolve("moving.pm.test", {family = "inet"}) end)[1].address
      end
      assert.equal("10.9.9.1", address())
      helpers.write(path, "10.9.9.2 moving.pm.test # a longer line, so the size differs too\n")
      now = 999
      assert.equal("10.9.9.1", address()) -- not looked at again yet
      now = 1000
      assert.equal("10.9.9.2", address())
      os.remove(path)
      now = 2000 -- gone: the name is no longer there, and DNS has no such name
      local records, _, code = run(function() return rh:resolve("moving.pm.test", {family = "inet"}) end)
      assert.is_nil(records)
      assert.equal("not_found", code)
    end)

    it("asks for an internationalized name in its IDNA ASCII form", function()
      local base = server.count("A", "xn--bcher-kva.pm.test")
      local records = run(function() return r:resolve("bücher.pm.test", {family = "inet"}) end)
      assert.same({{address = "10.0.0.9", family = "inet", ttl = 300}}, records)
      assert.equal(base + 1, server.count("A", "xn--bcher-kva.pm.test"))
      -- the same name in upper case, or already in ASCII, is the same cache entry
      for _, name in ipairs{"BÜCHER.PM.TEST", "xn--bcher-kva.pm.test"} do
        assert.equal("10.0.0.9", run(function() return r:resolve(name, {family = "inet"}) end)[1].address)
      end
      assert.equal(base + 1, server.count("A", "xn--bcher-kva.pm.test"))
      assert.equal("10.0.0.9", r:cached("bücher.pm.test")[1].address)
      local srv = run(function() return r:srv("_sip._udp.bücher.pm.test") end)
      assert.same({{target = "sip1.pm.test", port = 5060, priority = 10, weight = 60, ttl = 42}}, srv)
      assert.equal("bad argument #1 to 'resolve' (invalid domain name '\255x' (IDNA: name is not valid UTF-8))",
        helpers.raises(r.resolve, r, "\255x", function() end):match("bad argument.*"))
      assert.equal("bad argument #1 to 'resolve' (invalid domain name 'a b.ü' ('a b.xn--tda'))",
        helpers.raises(r.resolve, r, "a b.ü", function() end):match("bad argument.*"))
    end)

    it("answers names under .invalid with not_found, without a query (RFC 6761)", function()
      for _, name in ipairs{"x.invalid", "invalid.", "A.B.INVALID"} do
        local records, err, code = run(function() return r:resolve(name, {family = "inet"}) end)
        assert.is_nil(records)
        assert.equal("not_found", code)
        assert.equal("not_found: " .. name:lower() .. ": no such name (.invalid, RFC 6761)", err)
      end
      assert.equal("not_found", select(3, run(function() return r:srv("_x._tcp.invalid") end)))
      assert.equal(0, r:stats().queries)
    end)

    it("queries many names at once", function()
      local got, names = {}, {}
      local r2 = new{servers = {server.address}, hosts = false, max_inflight = 3}
      for i = 0, 9 do names[#names + 1] = "many" .. i .. ".pm.test" end
      for _, name in ipairs(names) do
        r2:resolve(name, {family = "inet"}, function(records, err) got[name] = records or err end)
      end
      uv.run()
      for i, name in ipairs(names) do
        assert.same({{address = "10.1.0." .. (i - 1), family = "inet", ttl = 300}}, got[name])
      end
      assert.equal(10, r2:stats().queries)
    end)

    it("answers names queued while the queue's head has moved on", function()
      local r2 = new{servers = {server.address}, hosts = false, max_inflight = 2, cache = false}
      local got = {}
      local function ask(i)
        r2:resolve("many" .. i .. ".pm.test", {family = "inet"}, function(records, err)
          got[i] = records and records[1].address or err
          if i < 5 then ask(i + 5) end -- joins the queue behind what is left of it
        end)
      end
      for i = 0, 4 do ask(i) end
      uv.run()
      for i = 0, 9 do assert.equal("10.1.0." .. i, got[i]) end
      assert.equal(10, r2:stats().queries)
    end)
  end)

  describe("a hostile server", function()
    -- A UDP server on loopback that answers every query with reply(query).
    local function hostile(reply)
      local sock = uv.new_udp()
      assert(sock:bind("127.0.0.1", 0))
      sock:recv_start(function(err, data, addr)
        if err or not data then return end
        local out = reply(data)
        if out then sock:send(out, addr.ip, addr.port, function() end) end
      end)
      return sock, "127.0.0.1:" .. sock:getsockname().port
    end

    -- The query's id and question section (EDNS's OPT record follows it).
    local function question(query)
      local pos = 13
      while query:byte(pos) and query:byte(pos) ~= 0 do pos = pos + query:byte(pos) + 1 end
      return query:sub(1, 2), query:sub(13, pos + 4), string.unpack(">I2", query, pos + 1)
    end

    -- An answer whose one record has RDATA of the wrong length for its type.
    local function bad_rdata(query)
      local id, q, qtype = question(query)
      local rdata = "\1\2\3" -- 3 bytes: no A (4), AAAA (16) or SRV (7+) is that short
      return id .. "\129\128\0\1\0\1\0\0\0\0" .. q
        .. string.pack(">I2I2I2I4s2", 0xC00C, qtype, 1, 60, rdata)
    end

    -- A header that promises five answers and then ends.
    local function truncated(query)
      local id, q = question(query)
      return id .. "\129\128\0\1\0\5\0\0\0\0" .. q
    end

    local function garbage(query)
      local out = {}
      for i = 1, math.random(0, 64) do out[i] = string.char(math.random(0, 255)) end
      -- sometimes with the right id, so that the resolver reads it
      if math.random() < 0.5 then return query:sub(1, 2) .. table.concat(out) end
      return table.concat(out)
    end

    for name, reply in pairs{bad_rdata = bad_rdata, truncated = truncated, garbage = garbage} do
      it("never raises on " .. name .. " answers, and fails with a code word", function()
        local sock, address = hostile(reply)
        local r = new{servers = {address}, hosts = false, timeout = 300, tries = 1}
        local results = {}
        local ok, err = pcall(run, function()
          local done, e = pcall(function()
            for _, fam in ipairs{"inet", "inet6"} do
              results[#results + 1] = table.pack(r:resolve("web.pm.test", {family = fam}))
            end
            results[#results + 1] = table.pack(r:srv(SRV_NAME))
          end)
          sock:close() -- else the loop, and run, would never end
          assert(done, e)
        end)
        if not sock:is_closing() then sock:close() end
        assert.is_true(ok, err)
        assert.equal(3, #results)
        for _, res in ipairs(results) do
          assert.is_nil(res[1])
          assert.truthy(res[3] == "protocol" or res[3] == "timeout" or res[3] == "not_found", res[2])
          assert.equal(res[3] .. ": ", res[2]:sub(1, #res[3] + 2))
        end
        if name == "truncated" then
          for _, res in ipairs(results) do assert.equal("protocol", res[3], res[2]) end
        elseif name == "bad_rdata" then
          -- c-ares skips an address record of the wrong length: no data
          assert.equal("not_found", results[1][3])
          assert.equal("protocol", results[3][3], results[3][2])
        end
      end)
    end
  end)

  describe("srv", function()
    it("gives SRV records with their TTL", function()
      local r = new{servers = {server.address}}
      local records, err = run(function() return r:srv(SRV_NAME) end)
      assert.is_nil(err)
      table.sort(records, function(a, b) return a.port < b.port end)
      assert.same({
        {target = "sip1.pm.test", port = 5060, priority = 10, weight = 60, ttl = 42},
        {target = "sip2.pm.test", port = 5061, priority = 10, weight = 40, ttl = 42},
        {target = "sip3.pm.test", port = 5062, priority = 20, weight = 0, ttl = 42},
      }, records)
      local _, err2, code = run(function() return r:srv("_nx._tcp.pm.test") end)
      assert.equal("not_found", code, err2)
      local none, err3, code3 = run(function() return r:srv("_none._tcp.pm.test") end)
      assert.is_nil(none)
      assert.equal("not_found", code3)
      assert.equal("not_found: _none._tcp.pm.test: service not available (SRV target '.')", err3)
      assert.equal("bad argument #1 to 'srv' (SRV name expected, got an address)",
        helpers.raises(r.srv, r, "10.0.0.1", function() end):match("bad argument.*"))
    end)
  end)

  describe("cache", function()
    -- Each expiry is proven by the resolver's clock moved past the TTL (a
    -- fake clock: no waiting); each hit by a TTL far longer than the spec
    -- can take, so a slow machine cannot fail it.
    local function fake_clock()
      local clock = {now = 1000000}
      function clock.read() return clock.now end
      function clock.advance(ms) clock.now = clock.now + ms end
      return clock
    end

    it("answers from the cache while the TTL lasts", function()
      local r = new{servers = {server.address}, hosts = false}
      local base = server.count("A", "clamp.pm.test")
      local first = run(function() return r:resolve("clamp.pm.test", {family = "inet"}) end)
      assert.equal(77, first[1].ttl)
      for _ = 1, 3 do
        local again = run(function() return r:resolve("clamp.pm.test", {family = "inet"}) end)
        assert.equal("10.0.0.5", again[1].address)
        assert.is_true(again[1].ttl <= 77 and again[1].ttl > 0)
      end
      assert.equal(base + 1, server.count("A", "clamp.pm.test"))
      assert.equal(3, r:stats().hits)
      assert.equal("10.0.0.5", r:cached("clamp.pm.test")[1].address)
      assert.is_nil(r:cached("clamp.pm.test", "inet6"))
      assert.equal("bad argument #2 to 'cached' (unknown kind 'mx' (inet, inet6, srv))",
        helpers.raises(r.cached, r, "clamp.pm.test", "mx"):match("bad argument.*"))
    end)

    it("asks again once the TTL has expired", function()
      local clock = fake_clock()
      local r = new{servers = {server.address}, hosts = false, clock = clock.read}
      local base = server.count("A", "short.pm.test")
      local first = run(function() return r:resolve("short.pm.test", {family = "inet"}) end)
      assert.equal(1, first[1].ttl)
      assert.equal(base + 1, server.count("A", "short.pm.test"))
      clock.advance(999) -- still within the 1 s TTL
      assert.equal("10.0.0.3", run(function() return r:resolve("short.pm.test", {family = "inet"}) end)[1].address)
      assert.equal(base + 1, server.count("A", "short.pm.test"))
      assert.equal(1, r:stats().hits)
      clock.advance(1) -- past it
      local again = run(function() return r:resolve("short.pm.test", {family = "inet"}) end)
      assert.equal("10.0.0.3", again[1].address)
      assert.equal(base + 2, server.count("A", "short.pm.test"))
      assert.equal(1, r:stats().hits)
    end)

    it("hands out cached records that a caller's changes do not reach the next caller with", function()
      local clock = fake_clock()
      local r = new{servers = {server.address}, hosts = false, clock = clock.read}
      local function get(name, family)
        return run(function() return r:resolve(name, {family = family}) end)
      end
      local web = {{address = "10.0.0.1", family = "inet", ttl = 300}}
      assert.same(web, get("web.pm.test", "inet")) -- from the wire
      local base = server.count("A", "web.pm.test")
      local vandals = {
        function(rs) rs[1].address = "192.0.2.66" end,
        function(rs) rs[1].ttl = 1 end,
        function(rs) rs[1].family = nil end,
        function(rs) rs[1] = {address = "192.0.2.66", family = "inet", ttl = 300} end,
        function(rs) rs[2] = {address = "192.0.2.67", family = "inet", ttl = 300} end,
        function(rs) table.remove(rs, 1) end,
        function(rs) rs.stale = true end,
      }
      for _, vandal in ipairs(vandals) do
        vandal(get("web.pm.test", "inet"))
        assert.same(web, get("web.pm.test", "inet"))
        assert.same(web, r:cached("web.pm.test"))
      end
      -- SRV records, and "any" (whose list is new, its records the cache's)
      local srv = run(function() return r:srv(SRV_NAME) end)
      local srv_want = cjson.decode(cjson.encode(srv))
      srv = run(function() return r:srv(SRV_NAME) end)
      srv[1].target, srv[2].port, srv[1].weight = "evil.test", 1, 0
      assert.same(srv_want, run(function() return r:srv(SRV_NAME) end))
      local dual = get("dual.pm.test", "any")
      local dual_want = cjson.decode(cjson.encode(dual))
      dual = get("dual.pm.test", "any")
      dual[1].address, dual[2].address = "::66", "192.0.2.66"
      assert.same(dual_want, get("dual.pm.test", "any"))
      assert.equal(base, server.count("A", "web.pm.test")) -- every one a hit
      -- the TTL left still counts down by the resolver's clock
      clock.advance(1500)
      assert.same({{address = "10.0.0.1", family = "inet", ttl = 299}}, get("web.pm.test", "inet"))
      clock.advance(298500) -- expired: asked again, and the new answer is served
      assert.same(web, get("web.pm.test", "inet"))
      assert.equal(base + 1, server.count("A", "web.pm.test"))
      clock.advance(1000)
      assert.same({{address = "10.0.0.1", family = "inet", ttl = 299}}, get("web.pm.test", "inet"))
    end)

    it("clamps TTLs to min_ttl and max_ttl", function()
      local lo = new{servers = {server.address}, hosts = false, min_ttl = 3600}
      assert.equal(3600, run(function() return lo:resolve("clamp.pm.test", {family = "inet"}) end)[1].ttl)
      local hi = new{servers = {server.address}, hosts = false, max_ttl = 10}
      assert.equal(10, run(function() return hi:resolve("clamp.pm.test", {family = "inet"}) end)[1].ttl)
      local base = server.count("A", "short.pm.test")
      local clock = fake_clock()
      local held = new{servers = {server.address}, hosts = false, min_ttl = 60, clock = clock.read}
      run(function() return held:resolve("short.pm.test", {family = "inet"}) end)
      clock.advance(59000) -- past the record's 1 s, within min_ttl's 60
      assert.equal(1, held:cached("short.pm.test")[1].ttl)
      local again = run(function() return held:resolve("short.pm.test", {family = "inet"}) end)
      assert.equal("10.0.0.3", again[1].address)
      assert.equal(base + 1, server.count("A", "short.pm.test"))
    end)

    it("caches not_found for negative_ttl", function()
      local r = new{servers = {server.address}, hosts = false, negative_ttl = 3600}
      local name = "neg" .. helpers.pid() .. ".pm.test"
      for _ = 1, 3 do
        local records, _, code = run(function() return r:resolve(name, {family = "inet"}) end)
        assert.is_nil(records)
        assert.equal("not_found", code)
      end
      assert.equal(1, server.count("A", name))
      assert.equal(2, r:stats().negative_hits)
    end)

    it("asks again once negative_ttl has passed", function()
      local clock = fake_clock()
      local r = new{servers = {server.address}, hosts = false, negative_ttl = 1, clock = clock.read}
      local name = "neg-expiry" .. helpers.pid() .. ".pm.test"
      local _, _, code = run(function() return r:resolve(name, {family = "inet"}) end)
      assert.equal("not_found", code)
      assert.equal(1, server.count("A", name))
      clock.advance(999)
      _, _, code = run(function() return r:resolve(name, {family = "inet"}) end)
      assert.equal("not_found", code)
      assert.equal(1, server.count("A", name))
      assert.equal(1, r:stats().negative_hits)
      clock.advance(1)
      _, _, code = run(function() return r:resolve(name, {family = "inet"}) end)
      assert.equal("not_found", code)
      assert.equal(2, server.count("A", name))
      assert.equal(1, r:stats().negative_hits)
    end)

    it("keeps at most cache_size entries", function()
      local r = new{servers = {server.address}, hosts = false, cache_size = 4}
      for i = 0, 9 do
        assert.truthy(run(function() return r:resolve("many" .. i .. ".pm.test", {family = "inet"}) end))
        assert.is_true(r:stats().cached <= 4)
      end
      assert.truthy(r:cached("many9.pm.test")) -- the newest answer is kept
    end)

    it("coalesces 100 concurrent lookups of one name into one query", function()
      local r = new{servers = {server.address}, hosts = false, cache = false}
      local base = server.count("A", "coal.pm.test")
      local answers = {}
      for i = 1, 100 do
        r:resolve("coal.pm.test", {family = "inet"}, function(records) answers[i] = records end)
      end
      uv.run()
      for i = 1, 100 do
        assert.same({{address = "10.0.0.4", family = "inet", ttl = 300}}, answers[i])
      end
      assert.equal(base + 1, server.count("A", "coal.pm.test"))
      assert.equal(99, r:stats().coalesced)
      -- not a cache: the next lookup asks again
      run(function() return r:resolve("coal.pm.test", {family = "inet"}) end)
      assert.equal(base + 2, server.count("A", "coal.pm.test"))
    end)

    it("serves a stale answer for stale_ttl when the server fails", function()
      local flaky = dnsmasq.start{"--local=/pm.test/", "--host-record=stale.pm.test,10.0.0.8,1"}
      local ok, e = pcall(function()
        local clock = fake_clock()
        local stale = new{servers = {flaky.address}, hosts = false, stale_ttl = 60, timeout = 1000, tries = 2,
                          clock = clock.read}
        local strict = new{servers = {flaky.address}, hosts = false, timeout = 1000, tries = 2, clock = clock.read}
        assert.equal(1, run(function() return stale:resolve("stale.pm.test", {family = "inet"}) end)[1].ttl)
        assert.equal(1, run(function() return strict:resolve("stale.pm.test", {family = "inet"}) end)[1].ttl)
        flaky.stop()
        clock.advance(1100)
        local records, err = run(function() return stale:resolve("stale.pm.test", {family = "inet"}) end)
        assert.same({{address = "10.0.0.8", family = "inet", ttl = 0}, stale = true}, records, err)
        assert.equal(1, stale:stats().stale)
        local none, _, code = run(function() return strict:resolve("stale.pm.test", {family = "inet"}) end)
        assert.is_nil(none)
        assert.equal("refused", code)
        clock.advance(60000) -- past the stale window: the failure stands
        none, _, code = run(function() return stale:resolve("stale.pm.test", {family = "inet"}) end)
        assert.is_nil(none)
        assert.equal("refused", code)
        assert.equal(1, stale:stats().stale)
      end)
      flaky.stop()
      assert(ok, e)
    end)
  end)

  describe("lookup and the default resolver", function()
    after_each(function() resolver.set_default(nil) end)

    -- luv handles not closing, in the whole loop
    local function handles()
      local n = 0
      uv.walk(function(h) if not h:is_closing() then n = n + 1 end end)
      return n
    end

    it("answers a literal address at once, with its family", function()
      local got = {}
      resolver.lookup("192.0.2.1", function(...) got[#got + 1] = table.pack(...) end)
      resolver.lookup("[2001:DB8::1]", nil, function(...) got[#got + 1] = table.pack(...) end)
      resolver.lookup("::1", "inet", function(...) got[#got + 1] = table.pack(...) end)
      assert.equal(3, #got) -- before any turn of the loop
      assert.same({"192.0.2.1", "inet"}, {got[1][1], got[1][2]})
      assert.same({"2001:db8::1", "inet6"}, {got[2][1], got[2][2]})
      assert.same({nil, "not_found: ::1: no inet address", "not_found"}, {got[3][1], got[3][2], got[3][3]})
      assert.same({"192.0.2.1", "inet"}, {run(function() return resolver.lookup("192.0.2.1") end)})
    end)

    it("resolves names through the default resolver, sharing its cache", function()
      resolver.set_default{servers = {server.address}, hosts = false}
      local base = server.count("A", "web.pm.test")
      for _ = 1, 3 do
        assert.same({"10.0.0.1", "inet"}, {run(function() return resolver.lookup("web.pm.test") end)})
      end
      assert.equal(base + 1, server.count("A", "web.pm.test"))
      assert.equal("10.0.0.1", resolver.default():cached("web.pm.test")[1].address)
      -- both families: IPv4 first unless asked for IPv6
      assert.same({"10.0.0.2", "inet"}, {run(function() return resolver.lookup("dual.pm.test") end)})
      assert.same({"fd00::2", "inet6"}, {run(function() return resolver.lookup("dual.pm.test", "inet6") end)})
      assert.same({"fd00::66", "inet6"}, {run(function() return resolver.lookup("v6.pm.test") end)})
      assert.same({"10.0.0.9", "inet"}, {run(function() return resolver.lookup("bücher.pm.test") end)})
      local r = new{servers = {server.address}, hosts = false}
      assert.same({"10.0.0.1", "inet"}, {run(function() return r:lookup("web.pm.test") end)})
    end)

    it("fails with a code word, never raising on a bad name", function()
      resolver.set_default{servers = {server.address}, hosts = false}
      local function lookup(...)
        local args = table.pack(...)
        return run(function() return resolver.lookup(table.unpack(args, 1, args.n)) end)
      end
      assert.same({nil, "not_found: nx.pm.test: no such name (NXDOMAIN)", "not_found"}, {lookup("nx.pm.test")})
      assert.same({nil, "not_found: invalid domain name 'a b'", "not_found"}, {lookup("a b")})
      local function code_of(...) return select(3, lookup(...)) end
      assert.equal("not_found", code_of("\255"))
      assert.equal("refused", code_of("elsewhere.example"))
      assert.equal("not_found", code_of("no.invalid"))
    end)

    it("raises on misuse", function()
      assert.equal("bad argument #1 to 'lookup' (string expected, got number)",
        helpers.raises(resolver.lookup, 1, function() end):match("bad argument.*"))
      assert.equal("bad argument #2 to 'lookup' (unknown family 'any' (inet, inet6))",
        helpers.raises(resolver.lookup, "x.pm.test", "any", function() end):match("bad argument.*"))
      assert.truthy(helpers.raises(resolver.lookup, "x.pm.test")
        :find("not inside portman.run or portman.spawn: pass a callback", 1, true))
      assert.equal("bad argument #1 to 'set_default' (resolver, options or nil expected, got string)",
        helpers.raises(resolver.set_default, "x"):match("bad argument.*"))
    end)

    it("holds no fd or handle while idle, so the loop ends and nothing is left open", function()
      resolver.set_default{servers = {server.address}, hosts = false}
      collectgarbage()
      uv.run("nowait")
      local fds, open = fd_count(), handles()
      -- helpers.loop fails when the task leaves a luv handle open
      assert.same({"10.0.0.4", "inet"}, {helpers.loop(function() return resolver.lookup("coal.pm.test") end, 10)})
      local none, _, code = helpers.loop(function() return resolver.lookup("nx.pm.test", "inet6") end, 10)
      assert.same({nil, "not_found"}, {none, code})
      uv.run("nowait")
      assert.equal(open, handles())
      assert.equal(fds, fd_count())
      assert.equal(0, resolver.default():stats().inflight)
    end)

    it("is made once from resolv.conf, and replaced by set_default", function()
      local d = resolver.default() -- no query: resolv.conf's server is not ours to ask
      assert.equal(d, resolver.default())
      assert.equal("portman.resolver (resolv.conf)", tostring(d))
      local mine = new{servers = {server.address}, hosts = false}
      assert.is_nil(resolver.set_default(mine)) -- the one made here is closed
      assert.equal("portman.resolver (closed)", tostring(d))
      assert.equal(mine, resolver.default())
      assert.equal(mine, resolver.set_default(nil)) -- the one given is handed back, still open
      assert.equal(("portman.resolver (%s)"):format(server.address), tostring(mine))
      assert.are_not.equal(mine, resolver.default())
    end)
  end)

  describe("lifetime", function()
    it("closes idempotently, fails queries in flight, raises on use after close", function()
      local silent = uv.new_udp()
      assert(silent:bind("127.0.0.1", 0))
      local r = resolver.new{servers = {"127.0.0.1:" .. silent:getsockname().port}, hosts = false}
      local got
      r:resolve("web.pm.test", {family = "inet"}, function(...) got = table.pack(...) end)
      r:close()
      r:close()
      silent:close()
      uv.run()
      assert.equal("closed", got[3])
      assert.equal("closed: web.pm.test: resolver closed", got[2])
      assert.truthy(helpers.raises(r.resolve, r, "web.pm.test", function() end)
        :find("attempt to use a closed portman.resolver", 1, true))
      assert.truthy(helpers.raises(r.srv, r, SRV_NAME, function() end)
        :find("attempt to use a closed portman.resolver", 1, true))
      assert.equal("portman.resolver (closed)", tostring(r))
    end)

    it("may be closed from a callback while other lookups are in flight", function()
      local r = resolver.new{servers = {server.address}, hosts = false}
      local calls = {0, 0, 0}
      local outcome = {}
      local function done(i)
        return function(records, _, code)
          calls[i] = calls[i] + 1
          outcome[i] = records and "answered" or code
          r:close()
        end
      end
      r:resolve("many0.pm.test", {family = "inet"}, done(1))
      r:resolve("many1.pm.test", {family = "inet"}, done(2))
      r:srv(SRV_NAME, done(3))
      uv.run()
      assert.same({1, 1, 1}, calls)
      local answered, closed = 0, 0
      for i = 1, 3 do
        if outcome[i] == "closed" then closed = closed + 1 else answered = answered + 1 end
      end
      assert.equal(1, answered) -- the first to finish closed the rest
      assert.equal(2, closed)
    end)

    it("works as a to-be-closed variable", function()
      local r
      do
        local rr <close> = resolver.new{servers = {server.address}, hosts = false}
        r = rr
        assert.truthy(run(function() return rr:resolve("web.pm.test", {family = "inet"}) end))
      end
      assert.equal("portman.resolver (closed)", tostring(r))
    end)

    it("the engine raises on use after close and closes twice", function()
      local core = require "portman.core"
      local d = assert(core.dns_new("127.0.0.1:53", 100, 1))
      assert.equal("integer", math.type(d:fd()))
      assert.is_nil(d:timeout())
      d:close()
      d:close()
      assert.equal("portman.dns (closed)", tostring(d))
      assert.truthy(helpers.raises(d.fd, d):find("attempt to use a closed portman.dns", 1, true))
      assert.truthy(helpers.raises(d.step, d):find("attempt to use a closed portman.dns", 1, true))
      assert.equal("bad argument #2 to 'resolve' (invalid option 'ipx')",
        helpers.raises(function()
          local e = assert(core.dns_new(nil, 100, 1))
          local ok, err = pcall(function() return e:resolve("x.test", "ipx", 1) end)
          e:close()
          if not ok then error(err, 0) end
        end):match("bad argument.*"))
      local _, err, code = core.dns_new("not a server", 100, 1)
      assert.equal("unreachable", code)
      assert.truthy(err:find("servers 'not a server'", 1, true), err)
    end)

    -- Drives engine d on the loop until it has nothing pending, giving each
    -- result of its flat batches (four slots each) to on_result, then
    -- calls on_done.
    local function drive_engine(d, on_result, on_done)
      local engine = require "portman.engine"
      local driver
      driver = engine.drive(d, {on_batch = function(batch)
        assert.equal(0, #batch % 4)
        for i = 1, #batch, 4 do on_result(batch[i], batch[i + 1], batch[i + 2], batch[i + 3]) end
        if d:pending() == 0 then
          driver:close()
          if on_done then on_done() end
        end
      end})
      driver:arm()
      uv.run()
    end

    it("the engine keeps max_inflight queries on the wire and the rest waiting their turn", function()
      local core = require "portman.core"
      local sock = uv.new_udp() -- a server that never answers: each query ends in a timeout
      assert(sock:bind("127.0.0.1", 0))
      local received, finished, most = 0, {}, 0
      sock:recv_start(function(err, data)
        if err or not data then return end
        received = received + 1
        -- answers leave the engine in the step that sends the next queries
        most = math.max(most, received - #finished)
      end)
      local d = assert(core.dns_new("127.0.0.1:" .. sock:getsockname().port, 100, 1, 2))
      for i = 1, 5 do assert(d:resolve("m" .. i .. ".pm.test.", "inet", i)) end
      assert.equal(5, d:pending())
      drive_engine(d, function(id, records, code, reason) finished[#finished + 1] = {id, records, code, reason} end,
        function() sock:close() end)
      if not sock:is_closing() then sock:close() end
      d:close()
      assert.equal(5, received)
      assert.equal(2, most)
      table.sort(finished, function(a, b) return a[1] < b[1] end)
      for i, f in ipairs(finished) do assert.same({i, false, "timeout", "no answer before the timeout"}, f) end
    end)

    it("the engine answers 'any' with both families, and one family with its records", function()
      local core = require "portman.core"
      local d = assert(core.dns_new(server.address, 1000, 2, 10))
      assert(d:resolve("dual.pm.test", "any", 1))
      assert(d:resolve("DUAL.pm.test", "inet6", 2))
      assert(d:resolve("alias.pm.test", "inet", 3))
      local got = {}
      local least = {}
      drive_engine(d, function(id, records, ttl, last)
        assert.is_false(last)
        table.sort(records, function(a, b) return a.address < b.address end)
        got[id], least[id] = records, ttl
      end)
      d:close()
      assert.same({{address = "10.0.0.2", family = "inet", ttl = 90}, {address = "fd00::2", family = "inet6", ttl = 90}},
        got[1])
      assert.same({{address = "fd00::2", family = "inet6", ttl = 90}}, got[2])
      assert.same({{address = "10.0.0.7", family = "inet", ttl = 5}}, got[3])
      assert.same({90, 90, 5}, least)
    end)

    it("leaves no fd open", function()
      for _, r in ipairs(resolvers) do r:close() end
      collectgarbage()
      collectgarbage()
      uv.run("nowait")
      assert.equal(fds_before, fd_count())
    end)
  end)

  describe("command line", function()
    it("resolves A and SRV records as JSON", function()
      local status, out, err =
        helpers.portman(("resolve web.pm.test --type A --server %s --json"):format(server.address))
      assert.equal(0, status, err)
      assert.same({name = "web.pm.test", type = "A", records = {{address = "10.0.0.1", type = "A", ttl = 300}}},
        cjson.decode(out))
      status, out, err =
        helpers.portman(("resolve %s --type SRV --server %s --json"):format(SRV_NAME, server.address))
      assert.equal(0, status, err)
      local doc = cjson.decode(out)
      assert.equal("SRV", doc.type)
      assert.equal(3, #doc.records)
      for i = 2, #doc.records do -- RFC 2782 order: priority first
        assert.is_true(doc.records[i - 1].priority <= doc.records[i].priority)
      end
      table.sort(doc.records, function(a, b) return a.port < b.port end)
      assert.same({target = "sip1.pm.test", port = 5060, priority = 10, weight = 60, ttl = 42},
        doc.records[1])
      status, out = helpers.portman(("resolve v6.pm.test --type aaaa --server [::1]:%d -H"):format(server.port))
      assert.equal(0, status)
      assert.equal("fd00::66  AAAA  120\n", out)
    end)

    it("exits 1 on a failed lookup and 2 on bad usage", function()
      local status, out, err = helpers.portman(("resolve nx.pm.test --server %s"):format(server.address))
      assert.equal(1, status)
      assert.equal("", out)
      assert.equal("portman resolve: not_found: nx.pm.test: no such name (NXDOMAIN)\n", err)
      local _
      status, _, err = helpers.portman("resolve web.pm.test --type MX --server 127.0.0.1")
      assert.equal(2, status)
      assert.truthy(err:find("--type: A, AAAA or SRV expected, got 'MX'", 1, true), err)
      status, _, err = helpers.portman("resolve web.pm.test --server dns.example")
      assert.equal(2, status)
      assert.truthy(err:find("--server: IP[:PORT] expected, got 'dns.example'", 1, true), err)
      status, _, err = helpers.portman("resolve 'a..b' --server 127.0.0.1")
      assert.equal(2, status)
      assert.truthy(err:find("invalid domain name 'a..b'", 1, true), err)
      status = helpers.portman("resolve")
      assert.equal(2, status)
      -- a literal needs no server at all
      status, out = helpers.portman("resolve 192.0.2.1 --json")
      assert.equal(0, status)
      assert.same({name = "192.0.2.1", type = "A,AAAA", records = {{address = "192.0.2.1", type = "A", ttl = 0}}},
        cjson.decode(out))
    end)
  end)
end)

describe("portman.resolver selection", function()
  local resolver = require "portman.resolver"

  -- These draws run for seconds without a turn of the loop; bring the
  -- loop's clock (uv.now) up to date for whatever runs next.
  teardown(function() uv.update_time() end)

  -- Pearson's chi-square statistic of counts against probabilities.
  local function chi_square(counts, probs, n)
    local x = 0
    for i, p in ipairs(probs) do
      local e = n * p
      x = x + ((counts[i] or 0) - e) ^ 2 / e
    end
    return x
  end

  -- The chi-square survival function for 3 degrees of freedom, in closed
  -- form: P(X >= x) = erfc(sqrt(x/2)) + sqrt(2x/pi) * exp(-x/2).
  local function erfc(z) -- Numerical Recipes' erfcc: relative error < 1.2e-7
    local t = 1 / (1 + 0.5 * math.abs(z))
    local r = t * math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
      t * (-0.82215223 + t * 0.17087277)))))))))
    return z >= 0 and r or 2 - r
  end
  local function p_value3(x)
    return erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
  end

  -- RFC 2782 within one priority: weight 0 first; random r in [0, 100];
  -- P(weight w) = w / 101 and P(weight 0) = 1 / 101.
  local SRV = {
    {target = "a", port = 1, priority = 1, weight = 10},
    {target = "b", port = 2, priority = 1, weight = 0},
    {target = "c", port = 3, priority = 1, weight = 70},
    {target = "d", port = 4, priority = 1, weight = 20},
    {target = "z", port = 9, priority = 2, weight = 1000}, -- never first: a higher priority value
  }
  local EXPECTED = {10 / 101, 1 / 101, 70 / 101, 20 / 101}
  local N = 250000
  local ALPHA = 1e-6 -- a correct picker fails this test once in a million runs
  local CRITICAL = 30.66 -- P(X >= 30.66) = 1e-6 for 3 degrees of freedom

  local function draw(pick)
    local counts, index = {0, 0, 0, 0}, {a = 1, b = 2, c = 3, d = 4}
    for _ = 1, N do
      local rec = pick(SRV)
      local i = index[rec.target]
      assert(i, "picked outside the lowest priority: " .. rec.target)
      counts[i] = counts[i] + 1
    end
    return counts
  end

  it("knows its critical value", function()
    assert.is_true(math.abs(p_value3(CRITICAL) - ALPHA) < 0.01 * ALPHA, p_value3(CRITICAL))
  end)

  it("the test has the power to reject wrong distributions", function()
    -- Under a mistake q the statistic is a noncentral chi-square with
    -- lambda = N * sum((q - p)^2 / p), mean 3 + lambda, variance
    -- 2 * (3 + 2 * lambda): its mean must sit more than 5 standard
    -- deviations above the critical value, so that a wrong picker passes
    -- by chance less than once in a million runs.
    local mistakes = {
      proportional = {10 / 100, 0, 70 / 100, 20 / 100}, -- weight 0 never chosen
      uniform = {0.25, 0.25, 0.25, 0.25},
      plus_one = {11 / 104, 1 / 104, 71 / 104, 21 / 104}, -- weights taken as w + 1
    }
    for name, q in pairs(mistakes) do
      local lambda = 0
      for i, p in ipairs(EXPECTED) do lambda = lambda + N * (q[i] - p) ^ 2 / p end
      assert.is_true(3 + lambda - CRITICAL > 5 * math.sqrt(2 * (3 + 2 * lambda)), name .. " " .. lambda)
    end
    -- and empirically: a proportional picker (weight 0 never first) fails
    local weighted = resolver.picker("weighted")
    local counts = draw(function(list)
      local group = {}
      for _, rec in ipairs(list) do if rec.priority == 1 then group[#group + 1] = rec end end
      return weighted:pick(group)
    end)
    assert.is_true(p_value3(chi_square(counts, EXPECTED, N)) < ALPHA)
  end)

  it("picks SRV records with RFC 2782's weighted distribution", function()
    local picker = resolver.picker("srv")
    local counts = draw(function(list) return picker:pick(list) end)
    local x = chi_square(counts, EXPECTED, N)
    assert.is_true(p_value3(x) > ALPHA, ("chi-square %.2f, counts %s"):format(x, table.concat(counts, " ")))
  end)

  it("srv_order gives RFC 2782's first choice and keeps priorities in order", function()
    local index = {a = 1, b = 2, c = 3, d = 4}
    local counts = {0, 0, 0, 0}
    for _ = 1, N // 5 do
      local order = resolver.srv_order(SRV)
      assert.equal(5, #order)
      assert.equal("z", order[5].target)
      counts[index[order[1].target]] = counts[index[order[1].target]] + 1
    end
    assert.is_true(p_value3(chi_square(counts, EXPECTED, N // 5)) > ALPHA)
  end)

  it("round_robin takes each in turn", function()
    local p = resolver.picker("round_robin")
    local list = {{address = "a"}, {address = "b"}, {address = "c"}}
    local seen = {}
    for i = 1, 6 do seen[i] = p:pick(list).address end
    assert.same({"a", "b", "c", "a", "b", "c"}, seen)
    assert.is_nil(p:pick({}))
  end)

  it("weighted picks in proportion to weight", function()
    local p = resolver.picker("weighted")
    local list = {{address = "a", weight = 1}, {address = "b", weight = 3}, {address = "c", weight = 0},
                  {address = "d", weight = 4}}
    local counts = {a = 0, b = 0, c = 0, d = 0}
    for _ = 1, N do
      local rec = p:pick(list)
      counts[rec.address] = counts[rec.address] + 1
    end
    assert.equal(0, counts.c)
    local x = chi_square({counts.a, counts.b, counts.d}, {1 / 8, 3 / 8, 4 / 8}, N)
    assert.is_true(x < 27.6, x) -- 2 degrees of freedom: P(X >= 27.6) = 1e-6
  end)

  it("priority takes the lowest value, weighted within", function()
    local p = resolver.picker("priority")
    local list = {{address = "hi", priority = 5, weight = 100}, {address = "a", priority = 1, weight = 1},
                  {address = "b", priority = 1, weight = 3}}
    local counts = {a = 0, b = 0}
    for _ = 1, N do
      local rec = p:pick(list)
      assert.are_not.equal("hi", rec.address)
      counts[rec.address] = counts[rec.address] + 1
    end
    local x = chi_square({counts.a, counts.b}, {1 / 4, 3 / 4}, N)
    assert.is_true(x < 23.9, x) -- 1 degree of freedom: P(X >= 23.9) = 1e-6
  end)

  it("raises on an unknown policy", function()
    assert.equal(
      "bad argument #1 to 'picker' (unknown policy 'random' (round_robin, weighted, priority, srv))",
      helpers.raises(resolver.picker, "random"):match("bad argument.*"))
  end)

  it("interleaves families as RFC 8305 section 4 says", function()
    local function A(n) return {address = "10.0.0." .. n, family = "inet"} end
    local function AAAA(n) return {address = "fd00::" .. n, family = "inet6"} end
    local function names(list)
      local out = {}
      for i, rec in ipairs(list) do out[i] = rec.address end
      return table.concat(out, " ")
    end
    local list = {A(1), A(2), A(3), AAAA(1), AAAA(2)}
    assert.equal("fd00::1 10.0.0.1 fd00::2 10.0.0.2 10.0.0.3", names(resolver.interleave(list)))
    assert.equal("fd00::1 fd00::2 10.0.0.1 10.0.0.2 10.0.0.3",
      names(resolver.interleave(list, {first_family_count = 2})))
    assert.equal("10.0.0.1 fd00::1 10.0.0.2 fd00::2 10.0.0.3",
      names(resolver.interleave(list, {prefer = "inet"})))
    assert.equal("10.0.0.1 10.0.0.2", names(resolver.interleave({A(1), A(2)})))
    assert.equal("", names(resolver.interleave({})))
    assert.equal("bad argument #2 to 'interleave' (first_family_count: integer >= 1 expected)",
      helpers.raises(resolver.interleave, list, {first_family_count = 0}):match("bad argument.*"))
  end)
end)
