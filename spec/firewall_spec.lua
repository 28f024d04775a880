-- portman.firewall and the probe engine on loopback, with listeners this
-- spec opens. The lab spec (spec/lab/probe_lab_spec.lua) adds what needs a
-- namespace: filtered by nftables, ICMP unreachable, whole-range exactness,
-- self-connect.
local helpers = require "helpers"
local uv = require "luv"
local cjson = require "cjson"

-- Runs fn as a portman task until it returns, even while the spec's own
-- listeners keep the loop alive (portman.run would wait for them).
local function run(fn)
  local async = require "portman.async"
  local results
  async.spawn(function()
    results = table.pack(xpcall(fn, debug.traceback))
    uv.stop()
  end)
  if not results then uv.run() end
  assert(results, "the task never finished")
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

-- This process's fds of the kinds the probes, servers and clients here
-- open (sockets and epoll instances; only sockets with kind "socket"),
-- after a collection has closed what garbage held. Pipes and files are left
-- out: libuv's worker threads and the shell commands run here open them on
-- their own schedules.
local function fd_count(kind)
  collectgarbage()
  collectgarbage()
  local p = io.popen("ls -l /proc/" .. helpers.pid() .. "/fd")
  local n = 0
  for line in p:lines() do
    if line:find("-> socket:", 1, true)
       or kind ~= "socket" and line:find("-> anon_inode:[eventpoll]", 1, true) then
      n = n + 1
    end
  end
  p:close()
  return n
end

local function socket_count() return fd_count("socket") end

-- Listening sockets the kernel reports: {[port] = true} for the addresses
-- given (hex as /proc/net/tcp writes them).
local function proc_listeners(file, hexaddrs)
  local want = {}
  for _, a in ipairs(hexaddrs) do want[a] = true end
  local ports = {}
  local f = assert(io.open(file))
  for line in f:lines() do
    local addr, port, st = line:match("^%s*%d+: (%x+):(%x+) %x+:%x+ (%x%x)")
    if addr and st == "0A" and want[addr] then ports[tonumber(port, 16)] = true end
  end
  f:close()
  return ports
end

local V4 = {"0100007F", "00000000"} -- 127.0.0.1, 0.0.0.0
local V6 = {"00000000000000000000000001000000", "00000000000000000000000000000000"} -- ::1, ::

local function listen_tcp(host, n)
  local handles, ports = {}, {}
  for i = 1, n do
    local t = uv.new_tcp()
    assert(t:bind(host, 0))
    assert(t:listen(16, function() end))
    handles[i], ports[i] = t, t:getsockname().port
  end
  return handles, ports
end

-- Ports that were just free: bound then closed (nothing listens there).
local function free_ports(host, n)
  local handles, ports = listen_tcp(host, n)
  for _, h in ipairs(handles) do h:close() end
  uv.run("nowait")
  return ports
end

local function close_all(handles)
  for _, h in ipairs(handles) do if not h:is_closing() then h:close() end end
  uv.run("nowait")
end

local function concat(...)
  local out = {}
  for _, l in ipairs({...}) do for _, v in ipairs(l) do out[#out + 1] = v end end
  return out
end

-- Drives a core probe on the loop like firewall.probe does; on_batch may
-- return true to cancel; setup(pump) may arrange more before the loop runs.
-- Returns the results in the order they came, and the final stats.
local function drive(probe, on_batch, setup)
  local states, poll, timer = {}, uv.new_poll(probe:fd()), uv.new_timer()
  local stats
  local function pump()
    if stats then return end
    local batch = probe:step()
    for i = 1, batch.n do
      states[#states + 1] = {port = batch.port[i], state = batch.state[i], error = batch.error[i]}
    end
    if batch.n > 0 and on_batch and on_batch(batch) then probe:cancel() end
    local ms = probe:timeout()
    if not ms then
      stats = probe:stats()
      poll:close()
      timer:close()
      return uv.stop()
    end
    timer:start(ms, 0, pump)
  end
  poll:start("r", pump)
  if setup then setup(pump) end
  pump()
  uv.run()
  return states, stats
end

describe("portman.firewall", function()
  local firewall, core

  it("leaves _G alone when required", function()
    local before = helpers.globals()
    firewall = require "portman.firewall"
    core = require "portman.core"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], k) end
    assert.equals(firewall, require("portman").firewall)
  end)

  describe("parse_ports", function()
    it("takes ranges and lists, sorted, each port once", function()
      assert.same({22, 80, 8000, 8001, 8002}, firewall.parse_ports("8000-8002,80,22,8001"))
      assert.same({1, 2, 65535}, firewall.parse_ports({65535, 2, 1, 2.0}))
      assert.equals(65535, #firewall.parse_ports("1-65535"))
    end)

    it("rejects bad lists with the port named", function()
      local function err(spec)
        return helpers.raises(firewall.parse_ports, spec):gsub("^[^:]*:%d+: ", "")
      end
      assert.equals("bad argument #1 to 'parse_ports' (ports: '0' in '0-5' is not a port in 1-65535)",
                    err("0-5"))
      assert.equals("bad argument #1 to 'parse_ports' (ports: '65536' in '80,65536' is not a port in "
                    .. "1-65535)", err("80,65536"))
      assert.equals("bad argument #1 to 'parse_ports' (ports: range '10-5' runs backwards)", err("10-5"))
      assert.equals("bad argument #1 to 'parse_ports' (ports: 'x' in '22,x' is not a port in 1-65535)",
                    err("22,x"))
      assert.equals("bad argument #1 to 'parse_ports' (ports: '' in '' is not a port in 1-65535)", err(""))
      assert.equals("bad argument #1 to 'parse_ports' (ports: '1-2-3' in '1-2-3' is not a port in 1-65535)",
                    err("1-2-3"))
      assert.equals("bad argument #1 to 'parse_ports' (ports[2]: integer port expected, got string)",
                    err({1, "x"}))
      assert.equals("bad argument #1 to 'parse_ports' (ports[1]: integer port expected, got 1.5)", err({1.5}))
      assert.equals("bad argument #1 to 'parse_ports' (ports: empty list)", err({}))
      assert.equals("bad argument #1 to 'parse_ports' (ports: string or table expected, got number)", err(5))
    end)
  end)

  describe("probe arguments", function()
    local cb = function() end
    local function err(...)
      return helpers.raises(firewall.probe, ...)
    end

    it("raise in Lua's words, blaming the caller", function()
      local msg = helpers.raises(function() firewall.probe(nil, "80", cb) end)
      assert.matches("^spec/firewall_spec%.lua:%d+: ", msg)
      assert.matches("bad argument #1 to 'probe' (host: non-empty string expected, got nil)", msg, 1, true)
      assert.matches("bad argument #2 to 'probe' (ports: '0' in '0' is not a port in 1-65535)",
                     err("127.0.0.1", "0", cb), 1, true)
      assert.matches("bad argument #3 to 'probe' (unknown option 'bogus')",
                     err("127.0.0.1", "80", {bogus = 1}, cb), 1, true)
      assert.matches("bad argument #3 to 'probe' (timeout: integer milliseconds in 1-3600000 expected)",
                     err("127.0.0.1", "80", {timeout = 0}, cb), 1, true)
      assert.matches("bad argument #3 to 'probe' (concurrency: integer in 0-1048576 expected "
                     .. "(0: the default))", err("127.0.0.1", "80", {concurrency = -1}, cb), 1, true)
      assert.matches("bad argument #3 to 'probe' (unknown proto 'sctp' (tcp, udp))",
                     err("127.0.0.1", "80", {proto = "sctp"}, cb), 1, true)
      assert.matches("bad argument #3 to 'probe' (on_batch: function expected, got string)",
                     err("127.0.0.1", "80", {on_batch = "x"}, cb), 1, true)
      assert.matches("not inside portman.run or portman.spawn: pass a callback", err("127.0.0.1", "80"),
                     1, true)
    end)

    it("a name that does not resolve gives not_found", function()
      local r, msg, code = run(function() return firewall.probe("no-such-host.invalid", "80") end)
      assert.is_nil(r)
      assert.equals("not_found", code)
      assert.matches("^not_found: cannot resolve no%-such%-host%.invalid", msg)
    end)
  end)

  describe("core.probe_new", function()
    it("checks its arguments", function()
      local function err(...) return helpers.raises(core.probe_new, ...) end
      assert.matches("bad argument #1 to 'portman.core.probe_new' (invalid option 'sctp')",
                     err("sctp", {"127.0.0.1"}, {80}, 100, 0), 1, true)
      assert.matches("bad argument #2 to 'portman.core.probe_new' (address 1: numeric IP address expected)",
                     err("tcp", {"localhost"}, {80}, 100, 0), 1, true)
      assert.matches("bad argument #2 to 'portman.core.probe_new' (address 2: numeric IP address expected)",
                     err("tcp", {"127.0.0.1", 7}, {80}, 100, 0), 1, true)
      assert.matches("bad argument #2 to 'portman.core.probe_new' (at least one address expected)",
                     err("tcp", {}, {80}, 100, 0), 1, true)
      assert.matches("bad argument #3 to 'portman.core.probe_new' (port 2: integer in 1-65535 expected)",
                     err("tcp", {"127.0.0.1"}, {80, 0}, 100, 0), 1, true)
      assert.matches("bad argument #3 to 'portman.core.probe_new' (port 1: integer in 1-65535 expected)",
                     err("tcp", {"127.0.0.1"}, {"x"}, 100, 0), 1, true)
      assert.matches("bad argument #4 to 'portman.core.probe_new' (timeout out of range 1-3600000 ms)",
                     err("tcp", {"127.0.0.1"}, {80}, 0, 0), 1, true)
      assert.matches("bad argument #5 to 'portman.core.probe_new' (concurrency out of range 0-1048576)",
                     err("tcp", {"127.0.0.1"}, {80}, 100, -1), 1, true)
    end)

    it("never runs above RLIMIT_NOFILE", function()
      local sh = io.popen("sh -c 'ulimit -n'")
      local rlimit = math.tointeger(tonumber(sh:read("l")))
      sh:close()
      local max = core.probe_max_concurrency()
      local p <close> = core.probe_new("tcp", {"127.0.0.1"}, {80}, 100, 1048576)
      assert.is_true(max > 0 and max < rlimit - helpers.fd_count())
      assert.equals(max, p:stats().concurrency)
      assert.is_true(core.probe_default_concurrency() <= max)
      local q <close> = core.probe_new("tcp", {"127.0.0.1"}, {80}, 100, 0)
      assert.equals(core.probe_default_concurrency(), q:stats().concurrency)
    end)

    it("splits a large run over two cores, whatever the batch size", function()
      local sh = io.popen("nproc")
      local cores = math.tointeger(tonumber(sh:read("l")))
      sh:close()
      local ports = {}
      for i = 1, 3000 do ports[i] = i end
      -- 127.83.0.1: loopback, where only wildcard listeners answer
      local p <close> = core.probe_new("tcp", {"127.83.0.1"}, ports, 1000, 0)
      assert.equals(0, p:stats().shards)
      local seen, steps = {}, 0
      while not p:done() do
        local b = p:step(1)
        steps = steps + 1
        for i = 1, b.n do seen[#seen + 1] = b.port[i] end
      end
      assert.equals(cores >= 2 and 2 or 1, p:stats().shards)
      assert.equals(3000, #seen)
      table.sort(seen)
      assert.same(ports, seen)
      assert.is_nil(p:timeout())
      assert.equals(0, p:step().n)
    end)

    it("closes once, refuses use after close, and leaves no fd behind", function()
      local fds = fd_count()
      local p = core.probe_new("tcp", {"127.0.0.1"}, {80}, 100, 4)
      assert.equals(fds + 1, fd_count())
      assert.matches("^portman.probe %(0 of 1 reported, 0 in flight%)$", tostring(p))
      p:close()
      p:close()
      assert.equals("portman.probe (closed)", tostring(p))
      for _, m in ipairs({"fd", "step", "timeout", "done", "cancel", "stats"}) do
        assert.matches("attempt to use a closed probe", helpers.raises(p[m], p), 1, true)
      end
      do local _ <close> = core.probe_new("tcp", {"127.0.0.1"}, {80}, 100, 4) end
      core.probe_new("tcp", {"127.0.0.1"}, {80}, 100, 4) -- left to __gc
      assert.equals(fds, fd_count())
      assert.matches("bad argument #1 to 'step' (portman.probe expected, got table)",
                     helpers.raises(function() return p.step({}) end), 1, true)
    end)
  end)

  describe("TCP on loopback", function()
    it("finds open and closed exactly as the kernel lists them, IPv4 and IPv6", function()
      local fds = fd_count()
      local h4, open4 = listen_tcp("127.0.0.1", 40)
      local h6, open6 = listen_tcp("::1", 20)
      local closed4, closed6 = free_ports("127.0.0.1", 40), free_ports("::1", 20)
      local ports4, ports6 = concat(open4, closed4), concat(open6, closed6)
      local before4, before6 = proc_listeners("/proc/net/tcp", V4), proc_listeners("/proc/net/tcp6", V6)
      local r4, r6 = run(function()
        return firewall.probe("127.0.0.1", ports4, {timeout = 2000}),
               firewall.probe("::1", ports6, {timeout = 2000})
      end)
      local after4, after6 = proc_listeners("/proc/net/tcp", V4), proc_listeners("/proc/net/tcp6", V6)
      local cases = {{r4, ports4, before4, after4, "inet"}, {r6, ports6, before6, after6, "inet6"}}
      for _, case in ipairs(cases) do
        local r, ports, before, after, family = table.unpack(case)
        assert.equals(#ports, r.scanned)
        assert.equals(family, r.family)
        assert.is_false(r.cancelled)
        local checked = 0
        for _, p in ipairs(ports) do
          if before[p] == after[p] then -- a port another process took meanwhile proves nothing
            assert.equals(before[p] and "open" or "closed", r.ports[p], "port " .. p)
            checked = checked + 1
          end
        end
        assert.is_true(checked >= #ports - 2)
      end
      table.sort(open4)
      assert.same(open4, r4.open)
      assert.equals(40, r4.counts.open)
      assert.equals(20, r6.counts.open)
      assert.equals(0, r4.counts.filtered + r4.counts.unreachable + r4.counts.error)
      close_all(h4)
      close_all(h6)
      assert.equals(fds, fd_count())
    end)

    it("streams batches and cancels on request", function()
      local fds = fd_count()
      local batches = 0
      local r = run(function()
        -- 127.83.0.1: loopback, where only wildcard listeners answer
        return firewall.probe("127.83.0.1", "1-65535", {on_batch = function(batch, scan)
          batches = batches + 1
          assert.equals(4096, batch.n)
          assert.equals(4096, #batch.port)
          assert.equals(4096, #batch.state)
          scan:cancel()
          scan:cancel()
        end})
      end)
      assert.equals(1, batches)
      assert.is_true(r.cancelled)
      assert.equals(4096, r.scanned)
      assert.equals(65535, r.total)
      assert.equals(fds, fd_count())
    end)

    it("ends the scan, cancelled, when on_batch raises", function()
      local log = require "portman.log"
      local lines = {}
      local out = log.out
      log.out = {write = function(_, ...) lines[#lines + 1] = table.concat({...}) end, flush = function() end}
      local ports = free_ports("::1", 5)
      local r = run(function()
        return firewall.probe("[::1]", ports, {on_batch = function() error("boom") end})
      end)
      log.out = out
      assert.is_true(r.cancelled)
      assert.equals("::1", r.address) -- brackets as URLs write them are accepted
      assert.equals(5, r.scanned)
      assert.matches("callback_failed", lines[1], 1, true)
      assert.matches("boom", lines[1], 1, true)
    end)

    -- A listener with backlog 0 whose queue is full drops SYNs: the probes
    -- wait until their timeout, which keeps sockets in flight on loopback.
    -- It lives in a child that never runs its loop (so never accepts), so
    -- that this process's sockets are the probe's alone. Returns port, stop().
    local function full_listener()
      local child = io.popen([[exec env -u LD_PRELOAD lua5.4 -e '
        local uv = require "luv"
        local l = uv.new_tcp()
        assert(l:bind("127.0.0.1", 0))
        assert(l:listen(0, function() end))
        local f = io.open("/proc/self/stat")
        io.write(l:getsockname().port, " ", f:read("a"):match("^%d+"), "\n")
        io.flush()
        uv.sleep(60000)']])
      local port, pid = child:read("l"):match("^(%d+) (%d+)$")
      port = math.tointeger(tonumber(port))
      local function stop()
        os.execute("kill " .. pid .. " 2>/dev/null")
        child:close()
      end
      local states = drive(core.probe_new("tcp", {"127.0.0.1"}, {port, port}, 50, 2))
      if states[1].state ~= "open" or states[2].state ~= "filtered" then
        stop()
        error("the listen queue did not fill: " .. states[1].state .. ", " .. states[2].state)
      end
      return port, stop
    end

    it("keeps at most `concurrency` sockets open, counted during the run", function()
      local fds = fd_count()
      local port, stop = full_listener()
      local targets = {}
      for i = 1, 40 do targets[i] = port end
      local probe = core.probe_new("tcp", {"127.0.0.1"}, targets, 60, 8)
      local sockets = socket_count()
      local most, samples = 0, 0
      local sampler = uv.new_timer()
      sampler:start(0, 7, function()
        most, samples = math.max(most, socket_count() - sockets), samples + 1
      end)
      local states, stats = drive(probe, function()
        most = math.max(most, socket_count() - sockets)
        if probe:done() then sampler:close() end
      end)
      assert.equals(40, #states)
      for _, r in ipairs(states) do assert.equals("filtered", r.state) end
      assert.equals(8, stats.peak)
      assert.equals(8, stats.concurrency)
      assert.is_true(samples >= 3)
      assert.equals(8, most) -- sockets in flight at the fullest
      assert.equals(sockets, socket_count())
      probe:close()
      stop()
      assert.equals(fds, fd_count())
    end)

    it("closes the sockets in flight when cancelled", function()
      local fds = fd_count()
      local port, stop = full_listener()
      local probe = core.probe_new("tcp", {"127.0.0.1"}, {port, port, port, port, port, port}, 10000, 4)
      local sockets = socket_count()
      local t = uv.new_timer()
      local inflight
      local states, stats = drive(probe, nil, function(pump)
        t:start(20, 0, function()
          t:close()
          inflight = socket_count() - sockets
          probe:cancel()
          pump()
        end)
      end)
      assert.equals(4, inflight)
      assert.equals(0, #states)
      assert.equals(0, stats.inflight)
      assert.is_true(probe:done())
      assert.equals(sockets, socket_count())
      probe:close()
      stop()
      assert.equals(fds, fd_count())
    end)
  end)

  describe("UDP on loopback", function()
    it("tells open, closed and open|filtered apart, IPv4 and IPv6", function()
      local fds = fd_count()
      local handles, cases = {}, {}
      for _, host in ipairs({"127.0.0.1", "::1"}) do
        local echo, silent, gone = uv.new_udp(), uv.new_udp(), uv.new_udp()
        assert(echo:bind(host, 0))
        assert(silent:bind(host, 0))
        assert(gone:bind(host, 0))
        echo:recv_start(function(err, data, addr)
          if not err and data then echo:send("pong", addr.ip, addr.port) end
        end)
        silent:recv_start(function() end)
        local ports = {echo = echo:getsockname().port, silent = silent:getsockname().port,
                       gone = gone:getsockname().port}
        gone:close()
        handles[#handles + 1], handles[#handles + 2] = echo, silent
        cases[host] = ports
      end
      local results = {}
      run(function()
        for host, ports in pairs(cases) do
          results[host] = firewall.probe(host, {ports.echo, ports.silent, ports.gone},
                                         {proto = "udp", payload = "ping", timeout = 150})
        end
      end)
      for host, ports in pairs(cases) do
        local r = results[host]
        assert.equals("udp", r.proto)
        assert.equals("open", r.ports[ports.echo], host)
        assert.equals("open|filtered", r.ports[ports.silent], host)
        assert.equals("closed", r.ports[ports.gone], host)
        assert.same({ports.silent}, r.open_filtered)
      end
      close_all(handles)
      assert.equals(fds, fd_count())
    end)
  end)

  describe("select_port", function()
    it("takes the first open port in priority order", function()
      local h, open = listen_tcp("127.0.0.1", 2)
      local closed = free_ports("127.0.0.1", 2)
      local port, r = run(function()
        return firewall.select_port("127.0.0.1", {closed[1], open[2], closed[2], open[1]}, {timeout = 500})
      end)
      assert.equals(open[2], port)
      assert.equals("closed", r.ports[closed[1]])
      close_all(h)
    end)

    it("falls back on 443, 80, 8080, 8443, or says unreachable", function()
      local closed = free_ports("127.0.0.1", 1)
      local listening = proc_listeners("/proc/net/tcp", V4)
      local expect
      for _, p in ipairs(firewall.FRIENDLY_PORTS) do
        if listening[p] then expect = p break end
      end
      local port, msg, code = run(function()
        return firewall.select_port("127.0.0.1", closed, {timeout = 500})
      end)
      if expect then
        assert.equals(expect, port)
      else
        assert.is_nil(port)
        assert.equals("unreachable", code)
        assert.equals(("unreachable: no port of %d, 443, 80, 8080, 8443 is open on 127.0.0.1")
                      :format(closed[1]), msg)
      end
      assert.matches("bad argument #2 to 'select_port' (preferred[1]: port out of range 1-65535)",
                     helpers.raises(firewall.select_port, "127.0.0.1", {0}, function() end), 1, true)
    end)
  end)

  describe("WebSocket and CONNECT helpers", function()
    it("hashes and encodes as RFC 3174, RFC 4648 and RFC 6455 say", function()
      local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
      assert.equals("da39a3ee5e6b4b0d3255bfef95601890afd80709", hex(firewall.sha1("")))
      assert.equals("a9993e364706816aba3e25717850c26c9cd0d89d", hex(firewall.sha1("abc")))
      assert.equals("84983e441c3bd26ebaae4aa1f95129e5e54670f1",
                    hex(firewall.sha1("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
      local b64 = {[""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", fooba = "Zm9vYmE=",
                   foobar = "Zm9vYmFy"}
      for k, v in pairs(b64) do assert.equals(v, firewall.base64(k)) end
      -- RFC 6455 section 1.3's example
      assert.equals("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", firewall.websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="))
    end)

    it("agrees with openssl on every padding boundary", function()
      for _, n in ipairs({1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 200}) do
        local s = ("x"):rep(n - 1) .. string.char(n % 256)
        local path = os.tmpname()
        local f = assert(io.open(path, "wb"))
        f:write(s)
        f:close()
        local p = io.popen("env -u LD_PRELOAD openssl sha1 -binary < " .. path
                           .. " | env -u LD_PRELOAD openssl base64")
        local want = p:read("l")
        p:close()
        os.remove(path)
        assert.equals(want, firewall.base64(firewall.sha1(s)), "length " .. n)
      end
    end)

    it("builds and validates a WebSocket upgrade", function()
      local req, key = firewall.websocket_request("::1", 8080, "/chat", {origin = "http://example.test"})
      assert.equals(24, #key)
      assert.equals(16, #(key:gsub("=", "")) * 3 // 4)
      assert.equals("GET /chat HTTP/1.1\r\nHost: [::1]:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    .. "Sec-WebSocket-Key: " .. key .. "\r\nSec-WebSocket-Version: 13\r\n"
                    .. "Origin: http://example.test\r\n\r\n", req)
      assert.not_equals(key, select(2, firewall.websocket_request("h", 80)))
      local accept = firewall.websocket_accept(key)
      local good = "HTTP/1.1 101 Switching Protocols\r\nUPGRADE: WebSocket\r\n"
                   .. "connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: " .. accept .. "\r\n\r\n"
      assert.is_true((firewall.websocket_validate(good, key)))
      local function bad(text, protocols)
        local ok, msg, code = firewall.websocket_validate(text, key, protocols)
        assert.is_nil(ok)
        assert.equals("protocol", code)
        return msg
      end
      local with_proto = good:gsub("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
      assert.equals("protocol: Sec-WebSocket-Accept mismatch",
                    bad((good:gsub(accept:gsub("%p", "%%%0"), "x" .. accept))))
      assert.equals("protocol: status 200, not 101", bad((good:gsub("101 Switching Protocols", "200 OK"))))
      assert.equals("protocol: no 'Upgrade: websocket'", bad((good:gsub("WebSocket", "h2c"))))
      assert.equals("protocol: no 'Connection: Upgrade'", bad((good:gsub("keep%-alive, Upgrade", "close"))))
      assert.equals("protocol: subprotocol 'chat' was not asked for", bad(with_proto, {"superchat"}))
      assert.is_true((firewall.websocket_validate(with_proto, key, {"chat"})))
      assert.equals("protocol: an extension nobody asked for",
                    bad((good:gsub("\r\n\r\n", "\r\nSec-WebSocket-Extensions: x\r\n\r\n"))))
      assert.equals("protocol: incomplete response head", bad("HTTP/1.1 101 OK\r\n"))
      assert.equals("protocol: not an HTTP/1.x status line", bad("SSH-2.0-OpenSSH\r\n\r\n"))
      assert.equals("protocol: malformed header line", bad("HTTP/1.1 101 OK\r\nno colon\r\n\r\n"))
    end)

    it("builds and checks CONNECT", function()
      assert.equals("CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
                    firewall.connect_request("example.test", 443))
      assert.equals("CONNECT [2001:db8::1]:80 HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n"
                    .. "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
                    firewall.connect_request("2001:db8::1", 80, {user = "user", password = "pass"}))
      assert.is_true((firewall.connect_validate("HTTP/1.1 200 Connection established\r\n\r\n")))
      local cases = {[407] = "denied", [403] = "denied", [502] = "unreachable", [503] = "unreachable",
                     [504] = "timeout", [500] = "refused", [301] = "refused"}
      for status, want in pairs(cases) do
        local ok, msg, code = firewall.connect_validate(("HTTP/1.0 %d Nope\r\n\r\n"):format(status))
        assert.is_nil(ok)
        assert.equals(want, code)
        assert.equals(("%s: proxy answered %d Nope"):format(want, status), msg)
      end
      assert.matches("bad argument #1 to 'connect_request' (host: string without spaces expected)",
                     helpers.raises(firewall.connect_request, "a b", 80), 1, true)
      assert.matches("bad argument #2 to 'connect_request' (port: port out of range 1-65535)",
                     helpers.raises(firewall.connect_request, "a", 0), 1, true)
    end)

    it("never raises on hostile response bytes", function()
      local seed = {"HTTP/1.1 101 OK\r\n", "\r\n", ":", "Upgrade: websocket\r\n", "\0", "\255",
                    "HTTP/1.0 200 ", "Sec-WebSocket-Accept: ", " ", "\n"}
      math.randomseed(helpers.pid())
      for _ = 1, 3000 do
        local parts = {}
        for i = 1, math.random(0, 12) do
          parts[i] = math.random() < 0.7 and seed[math.random(#seed)] or string.char(math.random(0, 255))
        end
        local text = table.concat(parts)
        local head, off = firewall.parse_response(text)
        assert.is_true(head == nil or type(head) == "table" and math.type(off) == "integer")
        local ok, _, code = firewall.websocket_validate(text, "key")
        assert.is_true(ok == true or code == "protocol")
        ok, _, code = firewall.connect_validate(text)
        assert.is_true(ok == true or code ~= nil)
      end
      assert.equals("protocol", select(3, firewall.parse_response(("x"):rep(20000))))
    end)
  end)

  describe("check_proxy through a loopback HTTP proxy", function()
    -- An HTTP CONNECT proxy (answers `status` when given one) and a
    -- WebSocket server whose Sec-WebSocket-Accept comes from openssl, not
    -- from the code under test.
    local servers
    local function openssl_accept(key)
      local p = io.popen(("printf '%%s' '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' | env -u LD_PRELOAD "
                          .. "openssl sha1 -binary | env -u LD_PRELOAD openssl base64"):format(key))
      local v = p:read("l")
      p:close()
      return v
    end

    local function serve(on_conn)
      local s = uv.new_tcp()
      assert(s:bind("127.0.0.1", 0))
      assert(s:listen(16, function()
        local c = uv.new_tcp()
        s:accept(c)
        servers[#servers + 1] = c
        on_conn(c)
      end))
      servers[#servers + 1] = s
      return s:getsockname().port
    end

    local function read_head(c, cb)
      local buf = ""
      c:read_start(function(err, data)
        if err or not data then return c:close() end
        buf = buf .. data
        local stop = buf:find("\r\n\r\n", 1, true)
        if stop then
          c:read_stop()
          cb(buf:sub(1, stop + 3))
        end
      end)
    end

    local function websocket_server(bad)
      return serve(function(c)
        read_head(c, function(head)
          local key = head:match("Sec%-WebSocket%-Key: ([^\r]+)")
          local accept = bad and "bogus" or openssl_accept(key)
          c:write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  .. "Sec-WebSocket-Accept: " .. accept .. "\r\n\r\n")
        end)
      end)
    end

    local function proxy(behaviour)
      return serve(function(c)
        if behaviour == "silent" then return c:read_start(function() end) end
        if behaviour == "hangup" then return c:close() end
        read_head(c, function(head)
          if type(behaviour) == "number" then
            return c:write(("HTTP/1.1 %d Nope\r\n\r\n"):format(behaviour))
          end
          local host, port = head:match("^CONNECT ([^ ]+):(%d+) HTTP/1%.1\r\n")
          local up = uv.new_tcp()
          servers[#servers + 1] = up
          up:connect(host, tonumber(port), function(err)
            if err then return c:write("HTTP/1.1 502 Bad Gateway\r\n\r\n") end
            c:write("HTTP/1.1 200 Connection established\r\n\r\n")
            c:read_start(function(e, data) if data and not e then up:write(data) end end)
            up:read_start(function(e, data) if data and not e then c:write(data) end end)
          end)
        end)
      end)
    end

    it("reaches a WebSocket server through the tunnel, and names each failure", function()
      local fds = fd_count()
      servers = {}
      local ws, ws_bad = websocket_server(false), websocket_server(true)
      local good, denied, silent, hangup = proxy("tunnel"), proxy(407), proxy("silent"), proxy("hangup")
      local nothing = free_ports("127.0.0.1", 2)
      local results = {}
      run(function()
        local function try(name, ...) results[name] = table.pack(firewall.check_proxy(...)) end
        try("ws", "127.0.0.1:" .. good, {host = "127.0.0.1", port = ws}, {websocket = "/", timeout = 2000})
        try("plain", {host = "127.0.0.1", port = good}, "127.0.0.1:" .. ws, {timeout = 2000})
        try("bad_accept", "127.0.0.1:" .. good, "127.0.0.1:" .. ws_bad, {websocket = "/x", timeout = 2000})
        try("denied", "127.0.0.1:" .. denied, "127.0.0.1:" .. ws, {timeout = 2000})
        try("gateway", "127.0.0.1:" .. good, "127.0.0.1:" .. nothing[1], {timeout = 2000})
        try("refused", "127.0.0.1:" .. nothing[2], "127.0.0.1:" .. ws, {timeout = 2000})
        try("timeout", "127.0.0.1:" .. silent, "127.0.0.1:" .. ws, {timeout = 100})
        try("closed", "127.0.0.1:" .. hangup, "127.0.0.1:" .. ws, {timeout = 2000})
        for _, h in ipairs(servers) do if not h:is_closing() then h:close() end end
      end)
      local ok = results.ws[1]
      assert.is_table(ok, tostring(results.ws[2]))
      assert.is_true(ok.websocket)
      assert.equals(200, ok.status)
      assert.equals("127.0.0.1:" .. ws, ok.target)
      assert.is_false(results.plain[1].websocket)
      local function code(name) return results[name][3] end
      assert.equals("protocol", code("bad_accept"))
      assert.equals("protocol: Sec-WebSocket-Accept mismatch", results.bad_accept[2])
      assert.equals("denied", code("denied"))
      assert.equals("denied: proxy answered 407 Nope", results.denied[2])
      assert.equals("unreachable", code("gateway"))
      assert.equals("refused", code("refused"))
      assert.equals("timeout", code("timeout"))
      assert.equals("closed", code("closed"))
      uv.run("nowait")
      assert.equals(fds, fd_count())
    end)
  end)

  describe("portman probe", function()
    local function lua_env()
      local pre = os.getenv("LD_PRELOAD")
      return pre and ("env LD_PRELOAD='%s' "):format(pre) or ""
    end

    it("prints its JSON document with --json", function()
      local h, open = listen_tcp("127.0.0.1", 3)
      local closed = free_ports("127.0.0.1", 2)
      local status, out, err = helpers.portman(("probe 127.0.0.1 %d,%d,%d,%d,%d --json --timeout 2000")
        :format(open[1], open[2], open[3], closed[1], closed[2]))
      assert.equals(0, status, err)
      assert.equals("", err)
      local doc = cjson.decode(out)
      local keys = {}
      for k in pairs(doc) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({"counts", "elapsed_ms", "filtered", "host", "open", "scanned", "unreachable"}, keys)
      table.sort(open)
      assert.same(open, doc.open)
      assert.equals("127.0.0.1", doc.host)
      assert.equals(5, doc.scanned)
      assert.same({open = 3, closed = 2, filtered = 0, unreachable = 0, error = 0}, doc.counts)
      assert.matches('"filtered":[]', out, 1, true)
      assert.matches('"unreachable":[]', out, 1, true)
      assert.equals("number", type(doc.elapsed_ms))
      status, out = helpers.portman(("probe 127.0.0.1 %d,%d"):format(open[1], closed[1]))
      assert.equals(0, status)
      assert.matches(("\n%d/tcp%%s+open\n"):format(open[1]), out)
      assert.matches(": 2 ports in %d+ ms: open 1, closed 1, filtered 0, unreachable 0, error 0\n$", out)
      close_all(h)
    end)

    it("exits 2 on bad usage and 1 on failure", function()
      local cases = {
        {"probe", "missing HOST"}, {"probe 127.0.0.1", "missing PORTS"},
        {"probe 127.0.0.1 0-5", "PORTS: '0' in '0-5' is not a port in 1-65535"},
        {"probe 127.0.0.1 80 --timeout 0", "--timeout: at least 1"},
        {"probe 127.0.0.1 80 --concurrency 0", "--concurrency: at least 1"},
        {"probe 127.0.0.1 80 --udp", "unknown option --udp"},
      }
      for _, c in ipairs(cases) do
        local status, out, err = helpers.portman(c[1])
        assert.equals(2, status, c[1])
        assert.equals("", out)
        assert.matches("portman probe: " .. c[2], err, 1, true)
        assert.matches("usage: portman probe HOST PORTS [options]", err, 1, true)
      end
      local status, _, err = helpers.portman("probe no-such-host.invalid 80")
      assert.equals(1, status)
      assert.matches("^portman probe: not_found: cannot resolve no%-such%-host%.invalid", err)
    end)

    it("draws a progress bar on a terminal's stderr only, never with --json", function()
      local function on_tty(args)
        local out = os.tmpname()
        local lua = os.getenv("PORTMAN_LUA") or "lua5.4"
        local cmd = ("%s%s %s/bin/portman probe %s > %s"):format(lua_env(), lua, helpers.root, args, out)
        local p = io.popen(("env -u LD_PRELOAD script -qec %q /dev/null"):format(cmd))
        local tty = p:read("a")
        p:close()
        local f = assert(io.open(out))
        local stdout = f:read("a")
        f:close()
        os.remove(out)
        return tty, stdout
      end
      -- 127.83.0.1: loopback, where only wildcard listeners answer
      local tty, stdout = on_tty("127.83.0.1 1-20000")
      assert.matches("\r%[##############################%] 20000/20000  %d+ open", tty)
      assert.matches("%[#*%.+%] 4096/20000", tty)
      assert.matches("\r\27[K", tty, 1, true)
      assert.matches("20000 ports in", stdout, 1, true)
      tty, stdout = on_tty("127.83.0.1 1-20000 --json")
      assert.equals("", tty)
      assert.equals(20000, cjson.decode(stdout).scanned)
      local _, _, err = helpers.portman("probe 127.83.0.1 1-20000")
      assert.equals("", err) -- stderr is a file here
    end)
  end)
end)
