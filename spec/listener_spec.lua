local helpers = require "helpers"

describe("portman.listener", function()
  local uv, core, listener, allocator, async
  local pid = helpers.pid()
  local tmp -- a private directory for this run's socket files

  setup(function()
    local before = helpers.globals()
    uv = require "luv"
    core = require "portman.core"
    listener = require "portman.listener"
    allocator = require "portman.allocator"
    async = require "portman.async"
    assert.same(before, helpers.globals())
    tmp = os.tmpname()
    os.remove(tmp)
    assert(uv.fs_mkdir(tmp, tonumber("700", 8)))
  end)

  teardown(function()
    os.execute("rm -rf " .. tmp)
  end)

  -- an error message without its "file:line: " position
  local function bare(msg) return (msg:gsub("^[^:]+:%d+: ", "")) end

  local connect = helpers.connect

  -- everything h sends until EOF
  local function read_all(h)
    local chunks = {}
    async.await(function(cb)
      h:read_start(function(err, data)
        if data then chunks[#chunks + 1] = data else cb(err) end
      end)
    end)
    h:close()
    return table.concat(chunks)
  end

  local function echo_once(client)
    client:write("hello\n")
    client:shutdown(function() client:close() end)
  end

  describe("option checks", function()
    local cases = {
      {"x", "bad argument #1 to 'open' (table expected, got string)"},
      {{bogus = 1}, "bad argument #1 to 'open' (unknown option 'bogus')"},
      {{proto = "sctp"}, "bad argument #1 to 'open' (unknown proto 'sctp' (tcp, udp, unix, unixgram))"},
      {{proto = "udp", nodelay = true},
       "bad argument #1 to 'open' (option 'nodelay' does not apply to udp listeners)"},
      {{address = "::1", broadcast = true},
       "bad argument #1 to 'open' (option 'broadcast' does not apply to tcp listeners)"},
      {{proto = "udp", address = "::1", broadcast = true},
       "bad argument #1 to 'open' (option 'broadcast' does not apply to udp listeners)"},
      {{v6only = true, address = "127.0.0.1"},
       "bad argument #1 to 'open' (option 'v6only' does not apply to tcp listeners on IPv4)"},
      {{port = 70000}, "bad argument #1 to 'open' (port: 0-65535 or \"auto\" expected, got 70000)"},
      {{port = 1.5}, "bad argument #1 to 'open' (port: 0-65535 or \"auto\" expected, got 1.5)"},
      {{port = "auto"}, "bad argument #1 to 'open' (port \"auto\" needs allocator)"},
      {{address = "localhost"}, "bad argument #1 to 'open' (address: IP address expected, got 'localhost')"},
      {{address = 7}, "bad argument #1 to 'open' (address: IP address expected, got number)"},
      {{nodelay = 1}, "bad argument #1 to 'open' (option 'nodelay': boolean expected, got number)"},
      {{keepidle = -1},
       "bad argument #1 to 'open' (option 'keepidle': integer 0-2147483647 expected, got number)"},
      {{tos = 256}, "bad argument #1 to 'open' (option 'tos': integer 0-255 expected, got number)"},
      {{linger = true},
       "bad argument #1 to 'open' (option 'linger': integer 0-65535 or false expected, got boolean)"},
      {{bindtodevice = ("x"):rep(16)},
       "bad argument #1 to 'open' (option 'bindtodevice': interface name expected, got string)"},
      {{backlog = -1}, "bad argument #1 to 'open' (backlog: non-negative integer expected)"},
      {{path = "/tmp/x"}, "bad argument #1 to 'open' (path, abstract and mode are for unix listeners)"},
      {{proto = "unix"}, "bad argument #1 to 'open' (unix listeners need exactly one of path, abstract)"},
      {{proto = "unix", path = "/a", abstract = "b"},
       "bad argument #1 to 'open' (unix listeners need exactly one of path, abstract)"},
      {{proto = "unix", path = "/a", port = 1},
       "bad argument #1 to 'open' (unix listeners take path or abstract, not address or port)"},
      {{proto = "unix", path = ("p"):rep(107)},
       "bad argument #1 to 'open' (path: string of 1-106 bytes without NUL expected)"},
      {{proto = "unix", abstract = "a\0b"},
       "bad argument #1 to 'open' (abstract: string of 1-106 bytes without NUL expected)"},
      {{proto = "unix", path = "/a", mode = 4096},
       "bad argument #1 to 'open' (mode: integer 0-4095 (0-07777) expected)"},
    }
    for i, c in ipairs(cases) do
      it("raises for bad options, case " .. i, function()
        assert.equal(c[2], helpers.raises(listener.open, c[1]))
      end)
    end

    it("blames the caller's line", function()
      local err = helpers.raises(function() listener.open{bogus = 1} end)
      assert.matches("listener_spec%.lua:%d+: bad argument", err)
    end)

    it("reports an option this system lacks as unsupported, never as a typo", function()
      local lacking = 0
      for name, info in pairs(listener.SOCKOPTS) do
        if not info.available then
          lacking = lacking + 1
          local s = assert(core.socket_open{host = "127.0.0.1"})
          local v, msg, code = s:getsockopt(name)
          assert.is_nil(v)
          assert.equal("unsupported", code)
          assert.equal(("unsupported: socket option '%s' (%s) is not available on this system")
            :format(name, info.cname), msg)
          local _, msg2, code2 = core.socket_open{host = "127.0.0.1", options = {[name] = 1}}
          assert.equal("unsupported", code2)
          assert.equal(msg, msg2)
          s:close()
        end
      end
      -- IP_LOCAL_PORT_RANGE (Linux 6.3) is missing from Debian 12's glibc headers
      local f = io.open("/usr/include/x86_64-linux-gnu/bits/in.h")
      local has = f and f:read("a"):find("IP_LOCAL_PORT_RANGE", 1, true)
      if f then f:close() end
      if not has then assert.is_true(lacking >= 1) end
    end)

    it("maps the kernel's ENOPROTOOPT to unsupported", function()
      local s = assert(core.socket_open{type = "dgram", host = "127.0.0.1"})
      local v, msg, code = s:getsockopt("nodelay")
      assert.is_nil(v)
      assert.equal("unsupported", code)
      -- ENOPROTOOPT or, on newer kernels, EOPNOTSUPP: both are "unsupported"
      assert.matches("^unsupported: getsockopt TCP_NODELAY: E[NO][OP][PN]%u+: ", msg)
      s:close()
    end)

    it("raises on unknown option names in C too", function()
      local s = assert(core.socket_open{host = "127.0.0.1"})
      assert.equal("bad argument #1 to 'getsockopt' (unknown socket option 'nope')",
        bare(helpers.raises(function() return s:getsockopt("nope") end)))
      assert.matches("unknown socket option 'options.nope'",
        helpers.raises(core.socket_open, {host = "127.0.0.1", options = {nope = true}}))
      s:close()
    end)
  end)

  describe("the open path", function()
    -- the kernel's file flags of fd: /proc/self/fdinfo's "flags" (octal),
    -- O_CLOEXEC included when the fd is close-on-exec
    local O_NONBLOCK, O_CLOEXEC = 2048, 524288 -- 04000, 02000000
    local function fd_flags(fd)
      local f = io.open("/proc/self/fdinfo/" .. fd)
      if not f then return nil end
      local text = f:read("a")
      f:close()
      return tonumber(text:match("flags:%s*(%d+)"), 8)
    end
    local function has(flags, bit) return flags // bit % 2 == 1 end

    -- open fds of this process
    local function fd_count()
      local n = 0
      for _ in io.popen("ls /proc/self/fd"):lines() do n = n + 1 end
      return n - 1 -- the ls pipe's own
    end

    it("makes every kind of socket non-blocking and close-on-exec", function()
      local kinds = {
        {address = "127.0.0.1"},
        {address = "::1", port = helpers.free_port("tcp", "::1")},
        {proto = "udp", address = "127.0.0.1"},
        {proto = "unix", path = ("%s/flags-%d.sock"):format(tmp, pid)},
        {proto = "unix", abstract = "portman-flags-" .. pid},
        {proto = "unixgram", abstract = "portman-flags-dgram-" .. pid},
      }
      for _, opts in ipairs(kinds) do
        local what = (opts.proto or "tcp") .. " " .. tostring(opts.address or opts.path or opts.abstract)
        local l = assert(listener.open(opts))
        local flags = assert(fd_flags(l.fd), what)
        assert.is_true(has(flags, O_NONBLOCK), what .. " non-blocking")
        assert.is_true(has(flags, O_CLOEXEC), what .. " close-on-exec")
        assert.equal(l.fd, l.handle:fileno(), what) -- a stream's handle made here, same fd
        flags = assert(fd_flags(l.fd), what)
        assert.is_true(has(flags, O_NONBLOCK) and has(flags, O_CLOEXEC), what .. " with its handle")
        l:close()
      end
      uv.run("nowait")
    end)

    it("applies the options asked, read back from the socket", function()
      local l = assert(listener.open{address = "127.0.0.1", nodelay = true, keepalive = true,
                                     keepidle = 41, reuseport = true, linger = 3, tos = 0x08})
      for name, want in pairs{nodelay = true, keepalive = true, keepidle = 41, reuseport = true,
                              linger = 3, tos = 0x08} do
        assert.equal(want, core.getsockopt(l.fd, name), name)
      end
      -- and nothing else: a socket libuv made (no bind: luv's sets
      -- SO_REUSEADDR), with no option, reads the same
      local plain = uv.new_tcp("inet")
      for _, name in ipairs{"reuseaddr", "keepintvl", "keepcnt", "fastopen", "freebind", "bindtodevice"} do
        assert.equal(core.getsockopt(plain:fileno(), name), core.getsockopt(l.fd, name), name)
      end
      plain:close()
      l:close()
      -- "::" is dual-stack unless asked: v6only set off, whatever the sysctl says
      local any6 = listener.open{address = "::"}
      if any6 then -- a host without IPv6 has no "::"
        assert.is_false(core.getsockopt(any6.fd, "v6only"))
        any6:close()
      end
      uv.run("nowait")
    end)

    it("binds the kernel's port for port 0 and the given one otherwise", function()
      local l0 = assert(listener.open{address = "127.0.0.1", port = 0})
      local kernel = core.sockinfo(l0.fd) -- getsockname, here in the spec
      assert.is_true(kernel.port > 0)
      assert.same({"127.0.0.1", kernel.port, "127.0.0.1:" .. kernel.port},
                  {l0.host, l0.port, l0.address})
      local port = helpers.free_port("tcp", "127.0.0.1")
      local lp = assert(listener.open{address = "127.0.0.1", port = port})
      assert.same({port, port, "127.0.0.1:" .. port}, {lp.port, core.sockinfo(lp.fd).port, lp.address})
      local port6 = helpers.free_port("tcp", "::1")
      local l6 = assert(listener.open{address = "0:0::1", port = port6})
      assert.same({"::1", port6, "[::1]:" .. port6, port6},
                  {l6.host, l6.port, l6.address, core.sockinfo(l6.fd).port})
      local u = assert(listener.open{proto = "udp", address = "127.0.0.1"})
      assert.equal(core.sockinfo(u.fd).port, u.port)
      for _, l in ipairs{l0, lp, l6, u} do l:close() end
      uv.run("nowait")
    end)

    it("makes a stream's luv handle on first use only", function()
      local l = assert(listener.open{address = "127.0.0.1"})
      assert.is_nil(rawget(l, "handle"))
      assert.is_true(core.sockinfo(l.fd).listening) -- listening already, no handle needed
      local fd = l.fd
      l:close()
      assert.is_nil(fd_flags(fd)) -- closed without a handle
      assert.is_true(l.handle:is_closing()) -- and reads as a closed handle, as before
      helpers.loop(function()
        local s = assert(listener.open{address = "127.0.0.1"})
        assert(s:serve(echo_once)) -- serve makes it
        assert.equal(s.fd, rawget(s, "handle"):fileno())
        assert.equal("hello\n", read_all(assert(connect("127.0.0.1", s.port))))
        s:close()
      end)
    end)

    it("reports a failed step with its argument and code, and keeps no fd", function()
      local a = assert(listener.open{address = "127.0.0.1"})
      local before = fd_count()
      local l, msg, code = listener.open{address = "127.0.0.1", port = a.port}
      assert.is_nil(l)
      assert.equal("conflict", code)
      assert.equal(("conflict: bind 127.0.0.1:%d: EADDRINUSE: Address already in use"):format(a.port), msg)
      l, msg, code = listener.open{address = "127.0.0.1", bindtodevice = "nosuchdev0"}
      assert.is_nil(l)
      assert.equal("ENODEV", code)
      assert.matches("setsockopt SO_BINDTODEVICE", msg, 1, true)
      assert.equal(before, fd_count())
      a:close()
      uv.run("nowait")
    end)
  end)

  describe("TCP", function()
    it("sets every option before bind and reads each back", function()
      local opts = {proto = "tcp", address = "127.0.0.1", port = 0, reuseaddr = true,
                    reuseport = true, nodelay = true, keepalive = true, keepidle = 33,
                    keepintvl = 7, keepcnt = 4, fastopen = 16, defer_accept = 9,
                    rcvbuf = 65536, sndbuf = 65536, freebind = true, bindtodevice = "lo",
                    tos = 0x10, linger = 5, backlog = 64}
      local l = assert(listener.open(opts))
      for _, name in ipairs{"reuseaddr", "reuseport", "nodelay", "keepalive", "keepidle",
                            "keepintvl", "keepcnt", "fastopen", "freebind", "bindtodevice",
                            "tos", "linger"} do
        assert.equal(opts[name], l:getsockopt(name), name)
      end
      -- the kernel doubles buffer sizes for its bookkeeping (socket(7))
      assert.equal(2 * 65536, l:getsockopt("rcvbuf"))
      assert.equal(2 * 65536, l:getsockopt("sndbuf"))
      -- TCP_DEFER_ACCEPT is kept as SYN-ACK retransmits: read back rounded up
      assert.is_true(l:getsockopt("defer_accept") >= 9)
      local all = l:options()
      assert.equal(64, all.backlog)
      assert.equal(true, all.nodelay)
      assert.is_nil(all.broadcast) -- not a TCP option
      local info = l:info()
      assert.same({true, true, true, "stream", "inet"},
                  {info.cloexec, info.nonblock, info.listening, info.type, info.family})
      l:close()
    end)

    it("sets the traffic class on IPv6 through the same 'tos' option", function()
      local l = assert(listener.open{address = "::1", tos = 0x20, keepalive = true})
      assert.equal(0x20, l:getsockopt("tos"))
      assert.equal(0x20, core.getsockopt(l.fd, "tos"))
      assert.is_true(l:getsockopt("v6only")) -- Linux makes a bind to ::1 v6-only
      l:close()
    end)

    it("defaults: no option set, not reused, linger off", function()
      local l = assert(listener.open{address = "127.0.0.1"})
      assert.is_false(l:getsockopt("reuseport"))
      assert.is_false(l:getsockopt("nodelay"))
      assert.is_false(l:getsockopt("linger"))
      assert.is_false(l:getsockopt("bindtodevice"))
      l:setsockopt("nodelay", true)
      assert.is_true(l:getsockopt("nodelay"))
      assert.equal("bad argument #2 to 'setsockopt' (option 'nodelay': boolean expected, got string)",
        bare(helpers.raises(function() l:setsockopt("nodelay", "yes") end)))
      l:close()
    end)

    it("reports the kernel's port for port 0 and accepts real connections", function()
      helpers.loop(function()
        local l = assert(listener.open{address = "127.0.0.1", port = 0})
        assert.is_true(l.port > 0)
        assert.equal(l.port, l.handle:getsockname().port)
        assert(l:serve(echo_once))
        for _ = 1, 3 do
          local c = assert(connect("127.0.0.1", l.port))
          assert.equal("hello\n", read_all(c))
        end
        assert.equal(3, l.accepted)
        l:close()
      end)
    end)

    it("is dual-stack on '::' and refuses IPv4 with v6only", function()
      helpers.loop(function()
        local l = assert(listener.open{address = "::", port = 0})
        assert.is_false(l:getsockopt("v6only"))
        local peer
        assert(l:serve(function(client)
          peer = client:getpeername().ip
          echo_once(client)
        end))
        local c = assert(connect("127.0.0.1", l.port))
        assert.equal("hello\n", read_all(c))
        assert.equal("::ffff:127.0.0.1", peer)
        l:close()

        local l6 = assert(listener.open{address = "::", port = 0, v6only = true})
        assert.is_true(l6:getsockopt("v6only"))
        assert(l6:serve(echo_once))
        local c4, err = connect("127.0.0.1", l6.port)
        assert.is_nil(c4)
        assert.equal("ECONNREFUSED", err)
        local c6 = assert(connect("::1", l6.port))
        assert.equal("hello\n", read_all(c6))
        l6:close()
      end)
    end)

    it("fails with conflict on a taken port, and shares it with reuseport", function()
      local a = assert(listener.open{address = "127.0.0.1"})
      local b, msg, code = listener.open{address = "127.0.0.1", port = a.port}
      assert.is_nil(b)
      assert.equal("conflict", code)
      assert.equal(("conflict: bind 127.0.0.1:%d: EADDRINUSE: Address already in use"):format(a.port), msg)
      -- reuseaddr alone does not let two TCP listeners share a port
      b, msg, code = listener.open{address = "127.0.0.1", port = a.port, reuseaddr = true}
      assert.matches("^conflict: ", msg)
      assert.is_nil(b)
      assert.equal("conflict", code)
      a:close()
      local r1 = assert(listener.open{address = "127.0.0.1", reuseport = true})
      local r2 = assert(listener.open{address = "127.0.0.1", port = r1.port, reuseport = true})
      assert.equal(r1.port, r2.port)
      r1:close()
      r2:close()
    end)

    it("returns errno names for other failures", function()
      local l, msg, code = listener.open{address = "192.0.2.1", port = 0}
      assert.is_nil(l)
      assert.equal("EADDRNOTAVAIL", code)
      assert.equal("EADDRNOTAVAIL: bind 192.0.2.1:0: Cannot assign requested address", msg)
      -- IP_FREEBIND binds an address this host does not have
      l = assert(listener.open{address = "192.0.2.1", port = 0, freebind = true})
      l:close()
      local _, dmsg, dcode = listener.open{address = "127.0.0.1", bindtodevice = "pmno" .. pid % 1000}
      assert.equal("ENODEV", dcode)
      assert.matches("^ENODEV: setsockopt SO_BINDTODEVICE: ", dmsg)
    end)

    it("takes 'auto' ports from a pool, skips ports in use, gives them back", function()
      local a = allocator.new{range = {helpers.free_range(3)}}
      local lo = a:range()
      -- a foreign listener holds the pool's first port: allocate-and-bind moves on
      local squatter = assert(listener.open{address = "127.0.0.1", port = lo})
      local l = assert(listener.open{address = "127.0.0.1", port = "auto", allocator = a})
      assert.equal(lo + 1, l.port)
      assert.is_false(a:is_allocated(lo)) -- the busy port went back to the pool
      assert.is_true(a:is_allocated(l.port))
      assert.equal(1, a:allocated())
      l:close()
      assert.equal(0, a:allocated())
      l:close() -- idempotent: releases once
      assert.equal(0, a:allocated())
      squatter:close()
    end)

    it("returns exhausted when every pool port is taken", function()
      local blocker = assert(listener.open{address = "127.0.0.1"})
      local a = allocator.new{range = {blocker.port, blocker.port}}
      local l, msg, code = listener.open{address = "127.0.0.1", port = "auto", allocator = a}
      assert.is_nil(l)
      assert.equal("exhausted", code)
      assert.equal(("exhausted: no free port in %d-%d"):format(blocker.port, blocker.port), msg)
      assert.equal(0, a:allocated())
      blocker:close()
    end)
  end)

  describe("reuseport groups", function()
    it("checks its count", function()
      assert.equal("bad argument #1 to 'group' (count: positive integer expected)",
        helpers.raises(listener.group, 0, {}))
      assert.equal("bad argument #2 to 'group' (table expected, got nil)",
        helpers.raises(listener.group, 2))
    end)

    it("shares one pool port and gives it back when the last member closes", function()
      local a = allocator.new{range = {helpers.free_range(3, "udp")}}
      local members = assert(listener.group(3, {proto = "udp", address = "127.0.0.1",
                                                port = "auto", allocator = a}))
      assert.equal(3, #members)
      for _, l in ipairs(members) do
        assert.equal(members[1].port, l.port)
        assert.is_true(l:getsockopt("reuseport"))
      end
      assert.equal(1, a:allocated())
      members[1]:close()
      members[2]:close()
      assert.is_true(a:is_allocated(members[3].port))
      members[3]:close()
      assert.equal(0, a:allocated())
    end)

    it("fails as a whole, leaving nothing open", function()
      local before = helpers.fd_count()
      local blocker = assert(listener.open{address = "127.0.0.1"}) -- without SO_REUSEPORT
      local g, msg, code = listener.group(2, {address = "127.0.0.1", port = blocker.port})
      assert.is_nil(g)
      assert.equal("conflict", code)
      assert.matches("^conflict: bind 127%.0%.0%.1:%d+: EADDRINUSE", msg)
      blocker:close()
      uv.run("nowait")
      assert.equal(before, helpers.fd_count())
    end)
  end)

  describe("UDP", function()
    it("receives datagrams, with broadcast and buffers read back", function()
      helpers.loop(function()
        local l = assert(listener.open{proto = "udp", address = "127.0.0.1", broadcast = true,
                                       rcvbuf = 32768, tos = 8})
        assert.is_true(l:getsockopt("broadcast"))
        assert.equal(65536, l:getsockopt("rcvbuf"))
        assert.equal(8, l:getsockopt("tos"))
        local got = {}
        assert(l:serve(function(err, data, addr)
          assert.is_nil(err)
          if data then
            got[#got + 1] = data
            assert.equal("127.0.0.1", addr.ip)
            if #got == 3 then l:close() end
          end
        end))
        local c = uv.new_udp()
        for i = 1, 3 do assert(c:try_send("dgram " .. i, "127.0.0.1", l.port)) end
        async.sleep(0)
        while l.state == "open" do async.sleep(1) end
        c:close()
        assert.same({"dgram 1", "dgram 2", "dgram 3"}, got)
        assert.equal(3, l.accepted)
      end)
    end)

    it("shares a port with reuseaddr and conflicts without it", function()
      local a = assert(listener.open{proto = "udp", address = "::1", reuseaddr = true})
      local b = assert(listener.open{proto = "udp", address = "::1", port = a.port, reuseaddr = true})
      local c, _, code = listener.open{proto = "udp", address = "::1", port = a.port}
      assert.is_nil(c)
      assert.equal("conflict", code)
      a:close()
      b:close()
    end)
  end)

  describe("Unix", function()
    it("listens on a path with a file mode and removes the file on close", function()
      helpers.loop(function()
        local path = ("%s/s-%d.sock"):format(tmp, pid)
        local l = assert(listener.open{proto = "unix", path = path, mode = tonumber("660", 8),
                                       rcvbuf = 65536, linger = 0})
        assert.equal(tonumber("660", 8), l:info().mode)
        assert.equal(path, l.path)
        assert.equal(0, l:getsockopt("linger"))
        assert(l:serve(echo_once))
        local c = uv.new_pipe(false)
        assert.is_nil(async.await(function(cb) c:connect(path, cb) end))
        assert.equal("hello\n", read_all(c))
        l:close()
        assert.is_nil(uv.fs_stat(path))
      end)
    end)

    it("takes over a stale socket file, never a live socket or another file", function()
      local path = ("%s/stale-%d.sock"):format(tmp, pid)
      -- a crashed server: bound, then gone without unlinking
      local dead = assert(core.socket_open{path = path})
      dead:close()
      assert.equal("socket", uv.fs_stat(path).type)
      local l = assert(listener.open{proto = "unix", path = path})
      -- now someone listens: a second listener must not steal the path
      local l2, msg, code = listener.open{proto = "unix", path = path}
      assert.is_nil(l2)
      assert.equal("conflict", code)
      assert.equal(("conflict: bind %s: EADDRINUSE: Address already in use"):format(path), msg)
      assert.is_true(l:info().listening)
      l:close()
      -- a regular file stays
      local f = assert(io.open(path, "w"))
      f:write("keep")
      f:close()
      local l3, _, code3 = listener.open{proto = "unix", path = path}
      assert.is_nil(l3)
      assert.equal("conflict", code3)
      assert.equal("file", uv.fs_stat(path).type)
      os.remove(path)
      -- a stale datagram socket file too
      dead = assert(core.socket_open{path = path, type = "dgram"})
      dead:close()
      local g = assert(listener.open{proto = "unixgram", path = path})
      g:close()
      assert.is_nil(uv.fs_stat(path))
    end)

    it("listens in the abstract namespace", function()
      helpers.loop(function()
        local name = ("portman-spec-%d"):format(pid)
        local l = assert(listener.open{proto = "unix", abstract = name})
        assert.equal(name, l.abstract)
        assert.equal("@" .. name, l.address)
        assert(l:serve(echo_once))
        -- luv's pipe_connect cannot name an abstract socket: connect in C
        local s = assert(core.socket_open{abstract = name, connect = true})
        local c = uv.new_pipe(false)
        assert(c:open(s:release()))
        assert.equal("hello\n", read_all(c))
        local again, _, code = listener.open{proto = "unix", abstract = name}
        assert.is_nil(again)
        assert.equal("conflict", code)
        l:close()
      end)
    end)

    it("receives datagrams on unixgram, by path and abstract name", function()
      helpers.loop(function()
        local path = ("%s/g-%d.sock"):format(tmp, pid)
        local gp = assert(listener.open{proto = "unixgram", path = path})
        local ga = assert(listener.open{proto = "unixgram", abstract = "portman-g-" .. pid})
        local got = {}
        local function handler(err, data, from)
          assert.is_nil(err)
          got[#got + 1] = {data, from}
        end
        assert(gp:serve(handler))
        assert(ga:serve(handler))
        local reply = ("%s/r-%d.sock"):format(tmp, pid)
        local r = assert(core.socket_open{type = "dgram", path = reply})
        assert.equal(5, core.dgram_send(r:fd(), "to-p1", path))
        assert.equal(5, core.dgram_send(r:fd(), "to-ab", "portman-g-" .. pid, true))
        while #got < 2 do async.sleep(1) end
        table.sort(got, function(x, y) return x[1] < y[1] end)
        assert.same({{"to-ab", reply}, {"to-p1", reply}}, got)
        -- and back, from the listener
        assert.equal(4, gp:send("pong", reply))
        assert.equal("pong", (core.dgram_recv(r:fd())))
        r:close()
        os.remove(reply)
        gp:close()
        ga:close()
        assert.is_nil(uv.fs_stat(path))
      end)
    end)
  end)

  describe("objects owning fds", function()
    it("closes twice and raises on use after close", function()
      local before = helpers.fd_count()
      local l = assert(listener.open{address = "127.0.0.1"})
      l:close()
      l:close()
      assert.equal("closed", l.state)
      assert.matches("attempt to use a closed listener", helpers.raises(l.getsockopt, l, "nodelay"))
      assert.matches("attempt to use a closed listener", helpers.raises(l.serve, l, print))
      do
        local scoped <close> = assert(listener.open{proto = "udp", address = "127.0.0.1"})
        assert.equal("open", scoped.state)
      end
      local s = assert(core.socket_open{host = "127.0.0.1"})
      s:close()
      s:close()
      assert.equal("attempt to use a closed socket", helpers.raises(s.fd, s))
      assert.equal("portman.socket (closed)", tostring(s))
      uv.run("nowait")
      assert.equal(before, helpers.fd_count())
    end)

    it("keeps the fd count through 10,000 open/close cycles of every kind", function()
      local a = allocator.new{range = {helpers.free_range(10)}}
      local kinds = {
        {proto = "tcp", address = "127.0.0.1", port = 0, reuseaddr = true, nodelay = true},
        {proto = "udp", address = "::", port = 0},
        {proto = "tcp", address = "127.0.0.1", port = "auto", allocator = a},
        {proto = "unix", abstract = "portman-cycle-" .. pid},
        {proto = "unixgram", path = ("%s/c-%d.sock"):format(tmp, pid)},
      }
      uv.run("nowait")
      local before = helpers.fd_count()
      for i = 1, 10000 do
        local l = assert(listener.open(kinds[i % #kinds + 1]))
        l:close()
        if i % 500 == 0 then uv.run("nowait") end -- luv frees handles in close callbacks
      end
      -- failures must not leak either
      for _ = 1, 1000 do
        assert.is_nil((listener.open{address = "192.0.2.1"}))
      end
      uv.run("nowait")
      assert.equal(before, helpers.fd_count())
      assert.equal(0, a:allocated())
    end)

    it("survives hostile input to the datagram and option functions", function()
      local s = assert(core.socket_open{type = "dgram", host = "127.0.0.1"})
      for _, bad in ipairs{-1, 2^40, 1.5} do
        assert.has_error(function() core.getsockopt(bad, "nodelay") end)
      end
      local v, _, code = core.getsockopt(999999, "nodelay")
      assert.is_nil(v)
      assert.equal("EBADF", code)
      local d, _, rcode = core.dgram_recv(s:fd())
      assert.is_nil(d)
      assert.equal("EAGAIN", rcode)
      assert.has_error(function() core.dgram_send(s:fd(), "x", ("p"):rep(200)) end)
      s:close()
    end)
  end)
end)
