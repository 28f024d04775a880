-- portman.probe and the probe engine on loopback, with listeners this
-- spec opens. The lab spec (spec/lab/probe_lab_spec.lua) adds what needs a
-- namespace: filtered by nftables, ICMP unreachable, whole-range exactness,
-- self-connect.
local helpers = require "helpers"
local uv = require "luv"
local cjson = require "cjson"
local engine = require "portman.engine"
local probe_pair = require "lab.probe_pair"

-- This process's fds of the kinds the probes, servers and clients here
-- open (sockets and epoll instances; only sockets with kind "socket"),
-- after a collection has closed what garbage held. Pipes and files are left
-- out: libuv's worker threads and the shell commands run here open them on
-- their own schedules. (helpers.fd_count counts every kind.)
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

-- n listeners on host, unreferenced: helpers.loop runs a task until the
-- loop is idle, and they must not keep it busy.
local function listen_tcp(host, n)
  local handles, ports = {}, {}
  for i = 1, n do
    local t = uv.new_tcp()
    assert(t:bind(host, 0))
    assert(t:listen(16, function() end))
    t:unref()
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

-- Drives a core probe on the loop like probe.probe does; on_batch may
-- Drives a core probe on the loop with portman.engine, as portman.probe
-- does; on_batch may return true to cancel; setup(arm) may arrange more
-- before the loop runs. Returns the results in the order they came, and the
-- final stats.
local function drive(eng, on_batch, setup)
  local states, stats, driver = {}, nil, nil
  driver = engine.drive(eng, {name = "probe spec",
    on_batch = function(batch)
      for i = 1, batch.n do
        states[#states + 1] = {port = batch.port[i], state = batch.state[i], error = batch.error[i]}
      end
      if batch.n > 0 and on_batch and on_batch(batch) then eng:cancel() end
    end,
    on_idle = function()
      stats = eng:stats()
      driver:close()
    end})
  if setup then setup(function() driver:arm() end) end
  driver:arm()
  assert(helpers.run_until(function() return stats ~= nil end, 30000), "the probe did not finish")
  return states, stats
end

describe("portman.probe", function()
  local probe, core

  it("leaves _G alone when required", function()
    local before = helpers.globals()
    probe = require "portman.probe"
    core = require "portman.core"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], k) end
    assert.equals(probe, require("portman").probe)
  end)

  describe("parse_ports", function()
    it("takes ranges and lists, sorted, each port once", function()
      assert.same({22, 80, 8000, 8001, 8002}, probe.parse_ports("8000-8002,80,22,8001"))
      assert.same({1, 2, 65535}, probe.parse_ports({65535, 2, 1, 2.0}))
      assert.equals(65535, #probe.parse_ports("1-65535"))
    end)

    it("rejects bad lists with the port named", function()
      local function err(spec)
        return helpers.raises(probe.parse_ports, spec):gsub("^[^:]*:%d+: ", "")
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
      return helpers.raises(probe.probe, ...)
    end

    it("raise in Lua's words, blaming the caller", function()
      local msg = helpers.raises(function() probe.probe(nil, "80", cb) end)
      assert.matches("^spec/probe_spec%.lua:%d+: ", msg)
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
      local r, msg, code = helpers.loop(function() return probe.probe("no-such-host.invalid", "80") end)
      assert.is_nil(r)
      assert.equals("not_found", code)
      assert.matches("^not_found: no%-such%-host%.invalid: no such name", msg)
    end)

    it("takes a literal address as it is, in the family asked for only", function()
      local r, msg, code = helpers.loop(function()
        return probe.probe("127.0.0.1", "1", {family = "inet6", timeout = 100})
      end)
      assert.is_nil(r)
      assert.equals("not_found", code)
      assert.equals("not_found: 127.0.0.1: no inet6 address", msg)
      r = helpers.loop(function() return probe.probe("[::1]", "1", {family = "inet6", timeout = 100}) end)
      assert.equals("::1", r.address)
      assert.equals("inet6", r.family)
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
      local r4, r6 = helpers.loop(function()
        return probe.probe("127.0.0.1", ports4, {timeout = 2000}),
               probe.probe("::1", ports6, {timeout = 2000})
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
      local r = helpers.loop(function()
        -- 127.83.0.1: loopback, where only wildcard listeners answer
        return probe.probe("127.83.0.1", "1-65535", {on_batch = function(batch, scan)
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

    it("gives a scan only its documented methods", function()
      local names
      local r = helpers.loop(function()
        return require("portman.async").await(function(cb)
          local scan = probe.start("127.83.0.1", "1-10", {timeout = 100}, cb)
          names = {}
          for k in pairs(getmetatable(scan).__index) do
            if not k:match("^__") then names[#names + 1] = k end
          end
          table.sort(names)
          assert.equals(10, scan:result().total)
          scan:cancel()
        end)
      end)
      assert.same({"cancel", "result", "stats"}, names)
      assert.is_true(r.cancelled)
    end)

    it("ends the scan, cancelled, when on_batch raises", function()
      local log = require "portman.log"
      local lines = {}
      local out = log.out
      log.out = {write = function(_, ...) lines[#lines + 1] = table.concat({...}) end, flush = function() end}
      local ports = free_ports("::1", 5)
      local r = helpers.loop(function()
        return probe.probe("[::1]", ports, {on_batch = function() error("boom") end})
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
      local eng = core.probe_new("tcp", {"127.0.0.1"}, targets, 60, 8)
      local sockets = socket_count()
      local most, samples = 0, 0
      local sampler = uv.new_timer()
      sampler:start(0, 7, function()
        most, samples = math.max(most, socket_count() - sockets), samples + 1
      end)
      local states, stats = drive(eng, function()
        most = math.max(most, socket_count() - sockets)
        if eng:done() then sampler:close() end
      end)
      assert.equals(40, #states)
      for _, r in ipairs(states) do assert.equals("filtered", r.state) end
      assert.equals(8, stats.peak)
      assert.equals(8, stats.concurrency)
      assert.is_true(samples >= 3)
      assert.equals(8, most) -- sockets in flight at the fullest
      assert.equals(sockets, socket_count())
      eng:close()
      stop()
      assert.equals(fds, fd_count())
    end)

    -- A probe that timed out hands its socket to the next port (connect()
    -- with AF_UNSPEC, then the new connect()): the ports after it must come
    -- out as if on fresh sockets.
    it("probes the ports after a timeout right on the sockets it frees", function()
      local fds = fd_count()
      local port, stop = full_listener()
      local h, open = listen_tcp("127.0.0.1", 6)
      local closed = free_ports("127.0.0.1", 6)
      local targets = {}
      for i = 1, 4 do targets[i] = port end
      for i = 1, 6 do targets[#targets + 1], targets[#targets + 2] = open[i], closed[i] end
      local eng = core.probe_new("tcp", {"127.0.0.1"}, targets, 60, 4)
      local states, stats = drive(eng)
      eng:close()
      local found = {}
      for _, r in ipairs(states) do
        if r.port ~= port then found[r.port] = r.state end
      end
      for i = 1, 6 do
        assert.equals("open", found[open[i]], "port " .. open[i])
        assert.equals("closed", found[closed[i]], "port " .. closed[i])
      end
      assert.equals(16, #states)
      assert.equals(4, stats.peak)
      close_all(h)
      stop()
      assert.equals(fds, fd_count())
    end)

    it("closes the sockets in flight when cancelled", function()
      local fds = fd_count()
      local port, stop = full_listener()
      local eng = core.probe_new("tcp", {"127.0.0.1"}, {port, port, port, port, port, port}, 10000, 4)
      local sockets = socket_count()
      local t = uv.new_timer()
      local inflight
      local states, stats = drive(eng, nil, function(arm)
        t:start(20, 0, function()
          t:close()
          inflight = socket_count() - sockets
          eng:cancel()
          arm()
        end)
      end)
      assert.equals(4, inflight)
      assert.equals(0, #states)
      assert.equals(0, stats.inflight)
      assert.is_true(eng:done())
      assert.equals(sockets, socket_count())
      eng:close()
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
        echo:unref() -- as listen_tcp's
        silent:unref()
        local ports = {echo = echo:getsockname().port, silent = silent:getsockname().port,
                       gone = gone:getsockname().port}
        gone:close()
        handles[#handles + 1], handles[#handles + 2] = echo, silent
        cases[host] = ports
      end
      local results = {}
      helpers.loop(function()
        for host, ports in pairs(cases) do
          results[host] = probe.probe(host, {ports.echo, ports.silent, ports.gone},
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

  -- Linux answers a closed UDP port with an ICMP port unreachable, but sends
  -- a burst of 6 and then one a second to each host (net.ipv4.icmp_ratelimit,
  -- 1000 ms; loopback is exempt, so the target is a namespace of its own,
  -- joined to the client's by a veth pair). The probes run in the client
  -- namespace, in a child (this run's interpreter, the sanitizers' under
  -- asan). Needs root; both namespaces are deleted in teardown.
  describe("UDP against a host with the kernel's default ICMP rate limit", function()
    local HOST, OPEN, SILENT = "10.89.0.2", 4010, "4100-4109"
    local pair -- the client and target namespaces (spec/lab/probe_pair.lua)

    local function read_sysctl(name)
      return pair:read("target", "sysctl -n " .. name):match("[^\n]*")
    end

    -- Runs probe.probe in the client namespace; returns the result's port
    -- lists and counts, and the scan's stats.
    local function probe_udp(ports, opts)
      local chunk = ([[
        local portman, probe, cjson = require "portman", require "portman.probe", require "cjson"
        local opts = require("portman.json").decode(%q) -- integers stay integers
        local scan
        opts.on_batch = function(_, s) scan = s end
        local r = assert(portman.run(function() return probe.probe(%q, %q, opts) end))
        io.write("\n", cjson.encode({counts = r.counts, open = r.open, closed = r.closed,
          open_filtered = r.open_filtered, stats = scan:stats()}), "\n")
      ]]):format(cjson.encode(opts), HOST, ports)
      local out, ok = helpers.lua_child(chunk, pair:netns("client"))
      assert(ok, out)
      return cjson.decode(out:match("([^\n]*)\n?$"))
    end

    setup(function()
      -- the kernel's ICMP rate limits left as they are; an echo on OPEN,
      -- SILENT bound but never answering
      local silent = {}
      for port = 4100, 4109 do silent[#silent + 1] = port end
      pair = probe_pair.new{name = "pm-udp", v4 = {"10.89.0.1", HOST}, listen = {udp_echo = {OPEN}, udp_silent = silent}}
    end)
    teardown(function() if pair then pair:close() end end)

    it("finds 20 closed ports closed and the open one open, as nmap -sU does", function()
      -- the kernel's defaults, untouched: the limit is what this is about
      assert.equals("1000", read_sysctl("net.ipv4.icmp_ratelimit"))
      assert.equals("1000", read_sysctl("net.ipv4.icmp_msgs_per_sec"))
      local r = probe_udp("4000-4020", {proto = "udp", payload = "ping"})
      local closed = {}
      for port = 4000, 4020 do if port ~= OPEN then closed[#closed + 1] = port end end
      assert.same({OPEN}, r.open)
      assert.same(closed, r.closed)
      assert.same({}, r.open_filtered)
      assert.same({open = 1, closed = 20, filtered = 0, unreachable = 0, error = 0, ["open|filtered"] = 0},
                  r.counts)
      -- the limit hid answers, the retransmissions found them, the pace grew
      assert.is_true(r.stats.retransmits > 0)
      assert.equals(r.stats.sent, 21 + r.stats.retransmits)
      assert.is_true(r.stats.pace_ms > 0)
    end)

    it("without retries, the limit hides closed ports (what the retries are for)", function()
      local r = probe_udp("4000-4020", {proto = "udp", payload = "ping", retries = 0, timeout = 300})
      assert.equals(0, r.stats.retransmits)
      assert.equals(21, r.stats.sent)
      assert.is_true(r.counts.closed < 20)
      assert.equals(21, r.counts.closed + r.counts["open|filtered"] + r.counts.open)
    end)

    it("gives a port of a host that never answers two tries, not retries + 1", function()
      local r = probe_udp(SILENT, {proto = "udp", payload = "ping", timeout = 200})
      assert.equals(10, #r.open_filtered)
      assert.equals(10, r.stats.retransmits)
      assert.equals(20, r.stats.sent)
      assert.equals(0, r.stats.pace_ms)
    end)
  end)

  describe("select_port", function()
    it("takes the first open port in priority order", function()
      local h, open = listen_tcp("127.0.0.1", 2)
      local closed = free_ports("127.0.0.1", 2)
      local port, r = helpers.loop(function()
        return probe.select_port("127.0.0.1", {closed[1], open[2], closed[2], open[1]}, {timeout = 500})
      end)
      assert.equals(open[2], port)
      assert.equals("closed", r.ports[closed[1]])
      close_all(h)
    end)

    it("falls back on 443, 80, 8080, 8443, or says unreachable", function()
      local closed = free_ports("127.0.0.1", 1)
      local listening = proc_listeners("/proc/net/tcp", V4)
      local expect
      for _, p in ipairs(probe.FRIENDLY_PORTS) do
        if listening[p] then expect = p break end
      end
      local port, msg, code = helpers.loop(function()
        return probe.select_port("127.0.0.1", closed, {timeout = 500})
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
                     helpers.raises(probe.select_port, "127.0.0.1", {0}, function() end), 1, true)
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
      assert.same({"counts", "elapsed_ms", "filtered", "host", "method", "open", "scanned", "unreachable"}, keys)
      assert.equals("connect", doc.method) -- the default
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

    it("probes UDP with --proto udp: closed, open|filtered, in the table and the JSON", function()
      local silent = uv.new_udp() -- bound, never read: no answer
      assert(silent:bind("127.0.0.1", 0))
      local quiet = silent:getsockname().port
      local closed = free_ports("127.0.0.1", 1)[1] -- a TCP port just free; UDP as well, almost surely
      local function free_udp(p)
        local u = uv.new_udp()
        local ok = u:bind("127.0.0.1", p) == 0
        u:close()
        uv.run("nowait")
        return ok
      end
      assert.is_true(free_udp(closed))
      local args = ("probe 127.0.0.1 %d,%d --proto udp --timeout 100 --retries 1"):format(closed, quiet)
      local status, out, err = helpers.portman(args .. " --json")
      assert.equals(0, status, err)
      local doc = cjson.decode(out)
      assert.same({open = 0, closed = 1, ["open|filtered"] = 1, filtered = 0, unreachable = 0, error = 0},
                  doc.counts)
      assert.same({quiet}, doc.open_filtered)
      assert.same({}, doc.open)
      status, out = helpers.portman(args)
      assert.equals(0, status)
      assert.matches(("\n%d/udp%%s+open|filtered\n"):format(quiet), out)
      assert.matches(": 2 ports in %d+ ms: open 0, closed 1, open|filtered 1, filtered 0, unreachable 0, "
                     .. "error 0\n$", out)
      close_all({silent})
    end)

    it("exits 2 on bad usage and 1 on failure", function()
      local cases = {
        {"probe", "missing HOST"}, {"probe 127.0.0.1", "missing PORTS"},
        {"probe 127.0.0.1 0-5", "PORTS: '0' in '0-5' is not a port in 1-65535"},
        {"probe 127.0.0.1 80 --timeout 0", "--timeout: at least 1"},
        {"probe 127.0.0.1 80 --concurrency 0", "--concurrency: at least 1"},
        {"probe 127.0.0.1 80 --udp", "unknown option --udp"},
        {"probe 127.0.0.1 80 --proto sctp", "--proto: tcp, udp expected, got 'sctp'"},
        {"probe 127.0.0.1 80 --proto udp --retries -1", "--retries: at least 0"},
        {"probe 127.0.0.1 80 --proto udp --retries 51", "--retries: at most 50"},
        {"probe 127.0.0.1 80 --method fin", "--method: connect, syn, auto expected, got 'fin'"},
        {"probe 127.0.0.1 80 --proto udp --method syn", "--method syn: TCP only"},
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
      assert.matches("^portman probe: not_found: no%-such%-host%.invalid: no such name", err)
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
