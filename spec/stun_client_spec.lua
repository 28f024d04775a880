-- The STUN client against responders on loopback that this spec runs:
-- retransmission, spoofing, silence, fall-through, caching, RFC 5780.
local helpers = require "helpers"
local uv = require "luv"
local cjson = require "cjson"

describe("portman.stun client", function()
  local stun, responder
  local open = {}

  setup(function()
    local before = helpers.globals()
    require "portman"
    stun = require "portman.stun"
    for k in pairs(_G) do assert.is_true(before[k] ~= nil, "new global " .. tostring(k)) end
    responder = require "stun_responder"
  end)

  local function start(opts)
    local r = responder.start(opts)
    open[#open + 1] = r
    return r
  end

  after_each(function()
    for _, r in ipairs(open) do r:close() end
    open = {}
    uv.run() -- let the closed handles go
    stun.flush_cache()
  end)

  -- A port where nothing listens: bound, then closed again.
  local function dead_port() return helpers.free_port("udp") end

  local run = helpers.run

  describe("query", function()
    it("returns the address the server saw, and what it took", function()
      local fds = helpers.fd_count()
      local r = start()
      local res = assert(run(function() return stun.query{servers = {r:server()}} end))
      assert.equal("127.0.0.1", res.external_ip)
      assert.equal(r.seen[1].from.port, res.external_port)
      assert.equal(res.external_port, res.local_port)
      assert.equal("127.0.0.1", res.local_ip)
      assert.equal(r:server(), res.server)
      assert.is_true(res.rtt_ms >= 0)
      r:close()
      uv.run()
      assert.equal(fds, helpers.fd_count())
    end)

    it("takes a callback outside a task", function()
      local r = start()
      local got
      stun.query({servers = {r:server()}}, function(res, err) got = res or err end)
      uv.run()
      assert.equal("127.0.0.1", got.external_ip)
    end)

    it("recovers lost requests by retransmitting", function()
      local r = start{drop = 3}
      local res = assert(run(function() return stun.query{servers = {r:server()}, rto = 10} end))
      assert.equal(4, r.requests)
      assert.equal(r.seen[4].from.port, res.external_port)
    end)

    it("sends at most Rc = 7 requests, then gives up with a timeout", function()
      local r = start{silent = true}
      local res, err, code = run(function()
        return stun.query{servers = {r:server()}, rto = 5, timeout = 60000}
      end)
      assert.is_nil(res)
      assert.equal("timeout", code)
      assert.matches("^timeout: no answer from 127%.0%.0%.1:%d+ after %d+ ms$", err)
      assert.equal(7, r.requests)
    end)

    it("stops at the timeout even while retransmissions remain", function()
      local r = start{silent = true}
      local res, err, code = run(function()
        return stun.query{servers = {r:server()}, rto = 1000, timeout = 50}
      end)
      assert.same({nil, "timeout"}, {res, code})
      assert.matches("^timeout:", err)
      assert.equal(1, r.requests)
    end)

    it("ignores answers with a wrong transaction id, from a wrong source, or not STUN", function()
      local r = start{spoof = true}
      local res = assert(run(function() return stun.query{servers = {r:server()}} end))
      assert.equal("127.0.0.1", res.external_ip) -- not the forged 6.6.6.6:666
      assert.not_equal(666, res.external_port)
    end)

    it("falls through a refusing server and a silent one to the next", function()
      local silent, good = start{silent = true}, start()
      local servers = {"127.0.0.1:" .. dead_port(), silent:server(), good:server()}
      local res = assert(run(function()
        return stun.query{servers = servers, timeout = 100, rto = 20}
      end))
      assert.equal(good:server(), res.server)
      assert.is_true(silent.requests >= 1)
    end)

    it("reports the last failure when every server fails", function()
      local res, err, code = run(function()
        return stun.query{servers = {"127.0.0.1:" .. dead_port()}, timeout = 2000}
      end)
      assert.same({nil, "refused"}, {res, code})
      assert.matches("^refused: 127%.0%.0%.1:%d+ %(ECONNREFUSED", err)
    end)

    it("turns an error response into refused", function()
      local r = start{error_code = 403}
      local res, err, code = run(function() return stun.query{servers = {r:server()}} end)
      assert.same({nil, "refused"}, {res, code})
      assert.equal("refused: " .. r:server() .. " answered 403 Go away", err)
    end)

    it("caches an answer for cache_ttl, and not at all with 0", function()
      local r = start()
      local opts = {servers = {r:server()}}
      local a = assert(run(function() return stun.query(opts) end))
      local b = assert(run(function() return stun.query(opts) end))
      assert.equal(1, r.requests)
      assert.same(a, b)
      opts.cache_ttl = 0
      assert(run(function() return stun.query(opts) end))
      assert.equal(2, r.requests)
    end)

    it("binds local_port when asked", function()
      local port = dead_port()
      local r = start()
      local res = assert(run(function() return stun.query{servers = {r:server()}, local_port = port} end))
      assert.equal(port, res.local_port)
      assert.equal(port, res.external_port)
    end)

    it("reports a local port in use as a conflict, naming the errno", function()
      local u = uv.new_udp()
      u:bind("0.0.0.0", 0)
      local port = u:getsockname().port
      local r = start()
      local res, err, code = run(function() return stun.query{servers = {r:server()}, local_port = port} end)
      u:close()
      assert.same({nil, "conflict"}, {res, code})
      assert.matches("^conflict: bind 0%.0%.0%.0:" .. port .. ": EADDRINUSE", err)
    end)

    it("speaks IPv6 and resolves host names", function()
      local r6 = start{ip = "::1"}
      local res = assert(run(function() return stun.query{servers = {("[::1]:%d"):format(r6.port)}} end))
      assert.equal("::1", res.external_ip)
      assert.equal("::1", res.local_ip)
      local r = start()
      res = assert(run(function() return stun.query{servers = {"localhost:" .. r.port}} end))
      assert.matches("^127%.0%.0%.1$", res.external_ip)
      -- a label of 64 octets is no DNS name: the resolver fails before it
      -- would send a query off this host
      local bad = ("x"):rep(64) .. ".invalid"
      local _, err, code = run(function()
        return stun.query{servers = {bad .. ":3478"}}
      end)
      assert.equal("not_found", code)
      assert.equal(("not_found: cannot resolve '%s' (not_found: invalid domain name '%s')"):format(bad, bad), err)
    end)

    it("resolves server names through the default resolver", function()
      local resolver = require "portman.resolver"
      local path = os.tmpname()
      helpers.write(path, "127.0.0.1 stun.pm.test\n")
      -- a hosts file of this spec's, and no server but a dead loopback port
      resolver.set_default{hosts = path, servers = {"127.0.0.1:" .. dead_port()}, timeout = 200, tries = 1}
      local r = start()
      local res, err = run(function() return stun.query{servers = {"stun.pm.test:" .. r.port}, cache_ttl = 0} end)
      local _, err2, code2 = run(function() return stun.query{servers = {"nx.pm.test:" .. r.port}} end)
      resolver.set_default(nil)
      os.remove(path)
      assert.equal("127.0.0.1", (res or {}).external_ip, err)
      -- the resolver's own failure (the dead server refuses or stays silent), not a generic not_found
      assert.truthy(code2 == "timeout" or code2 == "refused", err2)
      assert.matches("^" .. code2 .. ": cannot resolve 'nx%.pm%.test' %(", err2)
    end)

    it("raises on bad options, naming them", function()
      local function q(opts) return helpers.raises(function() stun.query(opts, function() end) end) end
      assert.matches("bad argument #1 to 'query' %(table expected, got nil%)", q(nil))
      assert.matches("bad argument #1 to 'query' %(servers: non%-empty list", q{})
      assert.matches("servers: non%-empty list", q{servers = {}})
      assert.matches("servers%[2%]: \"host:port\" expected, got 'a:b'", q{servers = {"x", "a:b"}})
      assert.matches("servers%[1%]: \"host:port\" expected, got number", q{servers = {5}})
      assert.matches("unknown option 'sever'", q{servers = {"x"}, sever = 1})
      assert.matches("timeout: positive integer expected", q{servers = {"x"}, timeout = 0})
      assert.matches("cache_ttl: non%-negative integer expected", q{servers = {"x"}, cache_ttl = -1})
      assert.matches("local_port: port out of range 1%-65535", q{servers = {"x"}, local_port = 70000})
      assert.matches("spec/stun_client_spec.lua", q{})
    end)

    it("parses server names", function()
      assert.same({"1.2.3.4", 99}, {stun.parse_server("1.2.3.4:99")})
      assert.same({"1.2.3.4", 3478}, {stun.parse_server("1.2.3.4")})
      assert.same({"::1", 3479}, {stun.parse_server("[::1]:3479")})
      assert.same({"2001:db8::1", 3478}, {stun.parse_server("2001:db8::1")})
      assert.same({"stun.example", 3478}, {stun.parse_server("stun.example")})
      assert.is_nil(stun.parse_server("host:0"))
      assert.is_nil(stun.parse_server("host:99999"))
      assert.is_nil(stun.parse_server(""))
      assert.is_nil(stun.parse_server("[::1]:x"))
    end)
  end)

  describe("nat_type", function()
    it("finds no NAT on loopback: endpoint-independent mapping and filtering", function()
      local fds = helpers.fd_count()
      local r = start{alt_ip = "127.0.0.2"}
      -- every test is answered here, so the timeout costs nothing; 500 ms
      -- ran out once in CI under ASan on a loaded machine
      local res = assert(run(function()
        return stun.nat_type{server = r:server(), timeout = 3000, rto = 20}
      end))
      assert.same({mapping = "endpoint-independent", filtering = "endpoint-independent",
                   external_ip = "127.0.0.1", hairpinning = true}, res)
      -- test I, II (to the other address) and the filtering tests with CHANGE-REQUEST
      local to, changes = {}, {}
      for _, s in ipairs(r.seen) do
        to[s.to] = true
        if s.change then changes[#changes + 1] = s.change end
      end
      assert.is_true(to.pp and to.ap)
      assert.same({ip = true, port = true}, changes[1])
      r:close()
      uv.run()
      assert.equal(fds, helpers.fd_count())
    end)

    it("reads lost CHANGE-REQUEST answers as filtering, spoofed ones never count", function()
      local r = start{alt_ip = "127.0.0.2", spoof = true}
      r.opts.ignore_change = true
      local res = assert(run(function()
        return stun.nat_type{server = r:server(), timeout = 150, rto = 20}
      end))
      assert.equal("address-and-port-dependent", res.filtering)
      assert.equal("endpoint-independent", res.mapping)
    end)

    it("returns unsupported for a server without RFC 5780", function()
      local r = start()
      local res, err, code = run(function() return stun.nat_type{server = r:server(), rto = 20} end)
      assert.same({nil, "unsupported", "unsupported: the server sends no OTHER-ADDRESS (RFC 5780)"},
        {res, code, err})
    end)

    it("times out against a silent server", function()
      local r = start{silent = true}
      local res, err, code = run(function()
        return stun.nat_type{server = r:server(), timeout = 100, rto = 20}
      end)
      assert.same({nil, "timeout"}, {res, code})
      assert.matches("^timeout:", err)
    end)

    it("raises on bad options", function()
      local function n(opts) return helpers.raises(function() stun.nat_type(opts, function() end) end) end
      assert.matches("bad argument #1 to 'nat_type' %(table expected, got string%)", n("x"))
      assert.matches("bad argument #1 to 'nat_type' %(server: \"host:port\" expected%)", n{})
      assert.matches("unknown option 'servers'", n{server = "x", servers = {}})
      assert.matches("rto: positive integer expected", n{server = "x", rto = 1.5})
    end)
  end)

  describe("command line", function()
    -- Runs bin/portman without blocking the loop, so responders answer.
    local function cli(args, env)
      local out, err = {}, {}
      local stdout, stderr = uv.new_pipe(), uv.new_pipe()
      local status
      env = env or {}
      for _, k in ipairs{"PATH", "PORTMAN_BUILD", "ASAN_OPTIONS", "UBSAN_OPTIONS"} do
        if os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
      end
      local handle
      handle = uv.spawn(helpers.lua, {args = {helpers.root .. "/bin/portman", table.unpack(args)},
        stdio = {nil, stdout, stderr}, env = env}, function(code)
        status = code
        handle:close()
      end)
      assert(handle, "spawn failed")
      for pipe, acc in pairs{[stdout] = out, [stderr] = err} do
        pipe:read_start(function(_, d)
          if d then acc[#acc + 1] = d else pipe:close() end
        end)
      end
      uv.run()
      return status, table.concat(out), table.concat(err)
    end

    it("portman stun --json prints the document of docs/design.md, \"The command line\"", function()
      local r = start()
      local status, out = cli{"stun", "--server", r:server(), "--json"}
      assert.equal(0, status)
      local doc = cjson.decode(out)
      local keys = {}
      for k in pairs(doc) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({"external_ip", "external_port", "local_ip", "local_port", "rtt_ms", "server"}, keys)
      assert.equal("127.0.0.1", doc.external_ip)
      assert.equal(r.seen[1].from.port, doc.external_port)
    end)

    it("portman stun prints a line by default and falls through --server flags", function()
      local r = start()
      local status, out = cli{"stun", "--server", "127.0.0.1:" .. dead_port(), "--server", r:server()}
      assert.equal(0, status)
      assert.matches("^127%.0%.0%.1:%d+ %(local 127%.0%.0%.1:%d+ via 127%.0%.0%.1:%d+, [%d.]+ ms%)\n$", out)
    end)

    it("portman stun exits 1 with the message when no server answers", function()
      local r = start{silent = true}
      local status, out, err = cli{"stun", "--server", r:server(), "--timeout", "100"}
      assert.same({1, ""}, {status, out})
      assert.matches("^portman stun: timeout: no answer from", err)
    end)

    it("portman stun without --server asks PORTMAN_STUN_SERVERS", function()
      local r = start()
      local status, out = cli({"stun", "--json"}, {"PORTMAN_STUN_SERVERS=127.0.0.1:" .. dead_port()
        .. ", " .. r:server()})
      assert.equal(0, status)
      assert.equal(r:server(), cjson.decode(out).server)
    end)

    it("exits 2 without any server (no public default)", function()
      local status, out, err = cli({"stun"}, {"PORTMAN_STUN_SERVERS="})
      assert.same({2, ""}, {status, out})
      assert.matches("no STUN server: give %-%-server HOST:PORT or set PORTMAN_STUN_SERVERS", err)
    end)

    it("exits 2 on bad usage", function()
      local status, _, err = cli({"stun"}, {"PORTMAN_STUN_SERVERS=bad:name"})
      assert.equal(2, status)
      assert.matches("%-%-server: HOST:PORT expected, got 'bad:name'", err)
      status, _, err = cli{"stun", "--server", "x:y"}
      assert.equal(2, status)
      assert.matches("%-%-server: HOST:PORT expected, got 'x:y'", err)
      status = cli{"stun", "--server", "1.2.3.4", "--timeout", "0"}
      assert.equal(2, status)
      status, _, err = cli{"nat-type"}
      assert.equal(2, status)
      assert.matches("usage: portman nat%-type %-%-server HOST:PORT %[options%]", err)
    end)

    it("portman nat-type --json prints the document of docs/design.md, \"The command line\"", function()
      local r = start{alt_ip = "127.0.0.2"}
      local status, out = cli{"nat-type", "--server", r:server(), "--json"}
      assert.equal(0, status)
      assert.same({mapping = "endpoint-independent", filtering = "endpoint-independent",
                   external_ip = "127.0.0.1", hairpinning = true}, cjson.decode(out))
      status, out = cli{"nat-type", "--server", r:server()}
      assert.equal(0, status)
      assert.equal("mapping: endpoint-independent\nfiltering: endpoint-independent\n"
        .. "external ip: 127.0.0.1\nhairpinning: yes\n", out)
    end)
  end)
end)
