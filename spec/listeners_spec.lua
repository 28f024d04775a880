local helpers = require "helpers"
-- the interpreter for portman's own children (the sanitizer run may name one)
local LUA = helpers.lua or os.getenv("PORTMAN_LUA") or "lua5.4"

describe("portman.listeners", function()
  local uv, core, manager, allocator, async, cjson
  local pid = helpers.pid()

  setup(function()
    local before = helpers.globals()
    uv = require "luv"
    core = require "portman.core"
    manager = require "portman.listeners"
    allocator = require "portman.allocator"
    async = require "portman.async"
    assert.same(before, helpers.globals())
    cjson = require "cjson"
  end)

  local connect = helpers.connect

  -- waits (on loop turns, not wall time) until pred() holds
  local function until_true(pred)
    while not pred() do async.sleep(1) end
  end

  -- a handler that keeps each connection until the client closes it
  local function hold(client)
    client:read_start(function(_, data)
      if not data then client:close() end
    end)
  end

  describe("argument checks", function()
    it("raises in the caller's words", function()
      local m = manager.new{activation = false}
      local cases = {
        {function() manager.new{bogus = true} end, "bad argument #1 to 'new' (unknown option 'bogus')"},
        {function() m:open("x") end, "bad argument #1 to 'open' (table expected, got string)"},
        {function() m:open{{proto = "tcp"}} end,
         "bad argument #1 to 'open' (listener names must be non-empty strings)"},
        {function() m:open{web = 5} end, "bad argument #1 to 'open' (entry 'web': table expected)"},
        {function() m:open{web = {count = 0}} end,
         "bad argument #1 to 'open' (entry 'web': count: positive integer expected)"},
        {function() m:open{web = {handler = "f"}} end,
         "bad argument #1 to 'open' (entry 'web': handler: function expected)"},
        {function() m:open{web = {proto = "tcp", bogus = 1}} end,
         "bad argument #1 to 'open' (unknown option 'bogus')"},
        {function() m:stop("web", {grace = -1}, print) end,
         "bad argument #2 to 'stop' (grace: non-negative integer (ms) expected)"},
        {function() m:stop_all({later = 1}, print) end,
         "bad argument #2 to 'stop_all' (unknown option 'later')"},
      }
      for _, c in ipairs(cases) do
        assert.equal(c[2], (helpers.raises(c[1]):gsub("^[^:]+:%d+: ", "")))
      end
    end)

    it("refuses a name already open, and stop of an unknown name is not_found", function()
      helpers.loop(function()
        local m = manager.new{activation = false}
        assert(m:open{web = {address = "127.0.0.1"}})
        assert.matches("listener 'web' is already open",
          helpers.raises(function() m:open{web = {address = "127.0.0.1"}} end))
        local r, msg, code = m:stop("nope")
        assert.is_nil(r)
        assert.equal("not_found", code)
        assert.equal("not_found: no listener 'nope'", msg)
        assert.equal(0, m:stop_all())
      end)
    end)
  end)

  it("opens a set, lists options and connection counts, drains on stop", function()
    collectgarbage()
    uv.run("nowait")
    local before = helpers.fd_count()
    helpers.loop(function()
      local m = manager.new{activation = false}
      assert(m:open{
        web = {address = "127.0.0.1", nodelay = true, keepalive = true, backlog = 128, handler = hold},
        dns = {proto = "udp", address = "::", handler = function() end},
        ctl = {proto = "unix", abstract = "portman-mgr-" .. pid, handler = hold},
      })
      local list = m:list()
      assert.same({"ctl", "dns", "web"}, {list[1].name, list[2].name, list[3].name})
      local web = list[3]
      assert.is_true(web.port > 0)
      assert.same({true, true, 128, false}, {web.options.nodelay, web.options.keepalive,
                                            web.options.backlog, web.options.reuseport})
      assert.equal("udp", list[2].proto)
      assert.is_false(list[2].options.v6only) -- dual-stack on "::" unless asked
      assert.equal("portman-mgr-" .. pid, list[1].abstract)

      local c1 = assert(connect("127.0.0.1", web.port))
      local c2 = assert(connect("127.0.0.1", web.port))
      until_true(function() return m:list()[3].connections == 2 end)
      assert.equal(2, m:list()[3].accepted)

      -- stop drains: no new connections, the open ones may finish
      local forced
      local member = m:get("web")[1]
      async.spawn(function() forced = m:stop("web", {grace = 30000}) end)
      assert.equal("draining", member.state)
      assert.is_nil(m:get("web"))
      local late, err = connect("127.0.0.1", web.port)
      assert.is_nil(late)
      assert.equal("ECONNREFUSED", err)
      c1:close()
      c2:close()
      until_true(function() return forced ~= nil end)
      assert.equal(0, forced) -- both finished on their own, long before the grace period
      assert.same({"ctl", "dns"}, {m:list()[1].name, m:list()[2].name})
      assert.equal(0, m:stop_all())
      assert.same({}, m:list())
    end)
    uv.run("nowait")
    assert.equal(before, helpers.fd_count())
  end)

  it("closes connections still open when the grace period ends", function()
    helpers.loop(function()
      local m = manager.new{activation = false}
      assert(m:open{web = {address = "127.0.0.1", handler = hold}})
      local port = m:list()[1].port
      local c = assert(connect("127.0.0.1", port))
      until_true(function() return m:list()[1].connections == 1 end)
      local eof = false
      c:read_start(function(_, data) if not data then eof = true end end)
      assert.equal(1, m:stop_all{grace = 20})
      until_true(function() return eof end)
      c:close()
    end)
  end)

  it("opens all or nothing", function()
    collectgarbage()
    uv.run("nowait")
    local before = helpers.fd_count()
    local blocker = assert(core.socket_open{host = "127.0.0.1"})
    local port = blocker:info().port
    local m = manager.new{activation = false}
    local ok, msg, code = m:open{a = {address = "127.0.0.1"}, b = {address = "127.0.0.1", port = port}}
    assert.is_nil(ok)
    assert.equal("conflict", code)
    assert.equal(("conflict: bind 127.0.0.1:%d: EADDRINUSE: Address already in use (listener 'b')")
      :format(port), msg)
    assert.same({}, m:list())
    blocker:close()
    uv.run("nowait")
    assert.equal(before, helpers.fd_count())
  end)

  it("gives 'auto' ports from its pool and takes them back on stop", function()
    helpers.loop(function()
      local a = allocator.new{range = {helpers.free_range(5)}}
      local m = manager.new{activation = false, allocator = a}
      assert(m:open{web = {address = "127.0.0.1", port = "auto"}})
      local port = m:list()[1].port
      assert.is_true(a:is_allocated(port))
      m:stop("web")
      assert.equal(0, a:allocated())
    end)
  end)

  it("spreads a few hundred connections across a SO_REUSEPORT group", function()
    helpers.loop(function()
      local m = manager.new{activation = false}
      assert(m:open{pool = {address = "127.0.0.1", count = 4, handler = hold}})
      local members = m:get("pool")
      assert.equal(4, #members)
      for _, l in ipairs(members) do
        assert.equal(members[1].port, l.port)
        assert.is_true(l:getsockopt("reuseport"))
      end
      local total = 300
      for _ = 1, total / 50 do -- in batches, to stay clear of the backlog
        local batch = {}
        for i = 1, 50 do batch[i] = assert(connect("127.0.0.1", members[1].port)) end
        until_true(function()
          local n = 0
          for _, l in ipairs(members) do n = n + l:connections() end
          return n == 50
        end)
        for _, c in ipairs(batch) do c:close() end
        until_true(function()
          local n = 0
          for _, l in ipairs(members) do n = n + l:connections() end
          return n == 0
        end)
      end
      local d = m:list()[1]
      assert.equal(4, d.members)
      assert.equal(total, d.accepted)
      for _, l in ipairs(members) do
        assert.is_true(l.accepted > 0, "every member accepted some") -- P(a member gets none) ~ 1e-37
      end
      assert.equal(0, m:stop_all())
    end)
  end)

  describe("socket activation", function()
    local function env(t)
      return function(k) return t[k] end
    end

    it("reads LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES", function()
      assert.same({web = {3}, dns = {4, 5}},
        manager.activation(env{LISTEN_PID = "77", LISTEN_FDS = "3", LISTEN_FDNAMES = "web:dns:dns"}, 77))
      assert.same({unknown = {3, 4}}, manager.activation(env{LISTEN_PID = "77", LISTEN_FDS = "2"}, 77))
    end)

    it("ignores variables meant for another process or malformed", function()
      local hostile = {
        {LISTEN_PID = "78", LISTEN_FDS = "1"},
        {LISTEN_FDS = "1"},
        {LISTEN_PID = "77"},
        {LISTEN_PID = "77", LISTEN_FDS = "abc"},
        {LISTEN_PID = "77", LISTEN_FDS = "0"},
        {LISTEN_PID = "77", LISTEN_FDS = "-3"},
        {LISTEN_PID = "77", LISTEN_FDS = "1.5"},
        {LISTEN_PID = "77", LISTEN_FDS = "99999999999999999999"},
        {LISTEN_PID = "0x4d", LISTEN_FDS = "1"},
      }
      for _, e in ipairs(hostile) do
        assert.same({}, manager.activation(env(e), 77))
      end
      -- names that do not match the count are dropped (with a warning), the fds kept
      local log = require "portman.log"
      local lines, out = {}, log.out
      log.out = {write = function(_, ...) lines[#lines + 1] = table.concat{...} end, flush = function() end}
      local ok, got = pcall(manager.activation,
        env{LISTEN_PID = "77", LISTEN_FDS = "2", LISTEN_FDNAMES = "a:b:c"}, 77)
      log.out = out
      assert(ok, got)
      assert.same({unknown = {3, 4}}, got)
      assert.matches(" warn activation_names_mismatch fds=2 names=3\n$", lines[1])
    end)

    it("adopts an inherited fd by name instead of binding", function()
      helpers.loop(function()
        local s = assert(core.socket_open{host = "127.0.0.1", options = {nodelay = true}})
        local port = s:info().port
        local m = manager.new{activation = {web = {s:release()}, other = {999}}}
        assert(m:open{web = {address = "127.0.0.1", port = 0, handler = function(c)
          c:write("adopted\n", function() c:close() end)
        end}})
        local d = m:list()[1]
        assert.is_true(d.activated)
        assert.equal(port, d.port)
        assert.is_true(d.options.nodelay) -- the inherited socket's own options
        assert.same({"other"}, m:unclaimed())
        local c = assert(connect("127.0.0.1", port))
        local got = async.await(function(cb) c:read_start(function(_, data) cb(data) end) end)
        assert.equal("adopted\n", got)
        c:close()
        assert.equal(0, m:stop_all())
      end)
    end)

    it("refuses an inherited fd of the wrong kind", function()
      local s = assert(core.socket_open{type = "dgram", host = "127.0.0.1"})
      local fd = s:fd()
      local m = manager.new{activation = {web = {s:release()}}}
      local ok, msg, code = m:open{web = {proto = "tcp", address = "127.0.0.1"}}
      assert.is_nil(ok)
      assert.equal("protocol", code)
      assert.equal(("protocol: fd %d is a inet dgram socket, not a tcp listener (listener 'web')")
        :format(fd), msg)
    end)

    -- systemd's way: the socket is fd 3 of a child whose LISTEN_PID is its own pid
    local function start_child(listen_pid)
      local s = assert(core.socket_open{host = "127.0.0.1"})
      local port = s:info().port
      local out = uv.new_pipe(false)
      local vars = {"LISTEN_FDS=1", "LISTEN_FDNAMES=web", "LUA_PATH=" .. package.path,
                    "LUA_CPATH=" .. package.cpath}
      for k, v in pairs(uv.os_environ()) do
        if not k:match("^LISTEN_") and not k:match("^LUA_C?PATH") then vars[#vars + 1] = k .. "=" .. v end
      end
      local status
      local child, child_pid = uv.spawn("sh", {
        args = {"-c", ('LISTEN_PID=%s exec %s "$0"'):format(listen_pid, LUA),
                helpers.root .. "/spec/activation_child.lua"},
        stdio = {nil, out, 2, s:fd()}, env = vars, cwd = helpers.root,
      }, function(code) status = code end)
      assert(child, child_pid)
      s:close() -- the child holds its own copy now
      local line = async.await(function(cb)
        local buf = ""
        out:read_start(function(_, data)
          buf = buf .. (data or "")
          if buf:find("\n") or not data then
            out:read_stop()
            cb(buf)
          end
        end)
      end)
      out:close()
      return cjson.decode(line), port, child_pid, function()
        until_true(function() return status ~= nil end)
        child:close()
        return status
      end
    end

    it("a child started with LISTEN_FDS serves on the inherited socket", function()
      helpers.loop(function()
        local info, port, child_pid, wait = start_child("$$")
        assert.same({name = "web", port = port, activated = true, unclaimed = 0,
                     listen_fds = cjson.null}, info)
        local c = assert(connect("127.0.0.1", port))
        local got = async.await(function(cb)
          local buf = ""
          c:read_start(function(_, data)
            buf = buf .. (data or "")
            if not data then cb(buf) end
          end)
        end)
        c:close()
        assert.equal(("served by %d\n"):format(child_pid), got)
        assert.equal(0, wait())
      end)
    end)

    it("a child whose LISTEN_PID is another process binds its own socket", function()
      helpers.loop(function()
        local info, port, _, wait = start_child(tostring(pid))
        assert.is_false(info.activated)
        assert.are_not.equal(port, info.port)
        local c = assert(connect("127.0.0.1", info.port))
        local eof = false
        c:read_start(function(_, data)
          if not data then
            c:close()
            eof = true
          end
        end)
        assert.equal(0, wait())
        until_true(function() return eof end)
      end)
    end)
  end)
end)
