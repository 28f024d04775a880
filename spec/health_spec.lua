local helpers = require "helpers"
local uv = require "luv"

describe("portman.health", function()
  local health, allocator
  local h, events

  setup(function()
    local before = helpers.globals()
    health = require "portman.health"
    allocator = require "portman.allocator"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)

  before_each(function()
    events = {}
    h = health.new{on_event = function(ev) events[#events + 1] = ev end}
  end)
  after_each(function()
    h:close()
    for _, name in ipairs(h:names()) do h:remove(name) end
    uv.run("nowait")
  end)

  local free_port = helpers.free_port

  local function runs(name) return #(h:history(name) or {}) end

  it("marks a listening TCP target healthy after rise successes", function()
    local server, port = helpers.tcp_acceptor(16)
    h:add{name = "web", kind = "tcp", port = port, interval = 5, jitter = 0, rise = 2}
    h:start()
    assert.is_true(helpers.run_until(function() return h:status("web").status == "healthy" end))
    assert.equal(2, runs("web"))
    assert.same({event = "status", check = "web", from = "unknown", to = "healthy"}, events[1])
    server:close()
  end)

  it("marks a closed port unreachable after fall failures", function()
    h:add{name = "gone", kind = "tcp", port = free_port(), interval = 5, jitter = 0, fall = 3}
    h:start()
    assert.is_true(helpers.run_until(function() return h:status("gone").status == "unreachable" end))
    assert.equal(3, runs("gone"))
    assert.matches("ECONNREFUSED", h:status("gone").last.msg)
  end)

  it("does not flap with a flapping target", function()
    local n = 0
    h:add{name = "flappy", kind = "lua", interval = 1, jitter = 0, rise = 2, fall = 2,
          fn = function(done) n = n + 1; done(n % 2 == 0, "unreachable") end}
    h:start()
    helpers.run_until(function() return runs("flappy") >= 40 end)
    assert.equal("unknown", h:status("flappy").status)
    assert.same({}, events)
  end)

  it("bounds the history at 100 results, oldest first, stamped by its clock", function()
    local ticks = 0
    local hc = health.new{clock = function() ticks = ticks + 1; return ticks end}
    hc:add{name = "many", kind = "lua", interval = 0, jitter = 0, fn = function(done) done(true) end}
    hc:start()
    helpers.run_until(function() return hc:status("many").successes >= 150 end)
    hc:close()
    local hist = hc:history("many")
    assert.equal(100, #hist)
    for i = 2, #hist do assert.is_true(hist[i].at > hist[i - 1].at) end
    hc:remove("many")
  end)

  it("keeps exactly the last 100 results in order, through the ring's wrap-arounds", function()
    -- run n moves the clock to 10 * n and fails every third time with
    -- "run n"; the check stops the scheduler at its limit
    local now, n, limit = 0, 0, 40
    local hc = health.new{clock = function() return now end}
    hc:add{name = "ring", kind = "lua", interval = 0, jitter = 0, rise = 1, fall = 1, fn = function(done)
      n = n + 1
      now = 10 * n
      if n == limit then hc:stop() end
      if n % 3 == 0 then done(false, "unreachable", "run " .. n) else done(true) end
    end}
    local function expected(k) -- run k's result, as main's history kept it
      if k % 3 == 0 then return {ok = false, status = "unreachable", msg = "run " .. k, at = 10 * k, ms = 10, lag = 0} end
      return {ok = true, status = "healthy", at = 10 * k, ms = 10, lag = 0}
    end
    local function runs_from(first, last)
      local out = {}
      for k = first, last do out[#out + 1] = expected(k) end
      return out
    end
    hc:start()
    assert.is_true(helpers.run_until(function() return n == limit and hc:status("ring").due == nil end))
    assert.same(runs_from(1, 40), hc:history("ring")) -- before the first wrap-around
    limit = 250
    hc:start()
    assert.is_true(helpers.run_until(function() return n == limit and hc:status("ring").due == nil end))
    local hist = hc:history("ring")
    assert.equal(100, #hist)
    assert.same(runs_from(151, 250), hist) -- oldest first, newest last: fields and values
    assert.same(expected(250), hc:status("ring").last)
    assert.equal("healthy", hc:status("ring").status) -- 250 is no multiple of 3
    -- what history returns is the caller's: changing it changes nothing kept
    hist[1].msg, hist[100] = "changed", nil
    assert.same(runs_from(151, 250), hc:history("ring"))
    hc:close()
    hc:remove("ring")
  end)

  it("does not start a check again while its run, from before a stop and start, is still going", function()
    local hc = health.new{concurrency = 2}
    local held, calls, later = {}, 0, 0
    hc:add{name = "slow", kind = "lua", interval = 100000, jitter = 0, rise = 1,
           fn = function(done) calls = calls + 1; held[#held + 1] = done end}
    hc:start()
    assert.is_true(helpers.run_until(function() return calls == 1 end))
    hc:stop()
    hc:start() -- "slow" is armed again while its first run waits
    -- armed after "slow" with the same delay: once it ran, slow's timer fired
    hc:add{name = "later", kind = "lua", interval = 100000, jitter = 0, fn = function(done) later = later + 1; done(true) end}
    assert.is_true(helpers.run_until(function() return later == 1 end))
    assert.equal(1, calls) -- not started twice
    held[1](true)
    assert.equal(1, #hc:history("slow")) -- the first run's result counts
    assert.equal("healthy", hc:status("slow").status)
    assert.truthy(hc:status("slow").due) -- and its end armed the next
    hc:close()
    for _, name in ipairs(hc:names()) do hc:remove(name) end
  end)

  -- The scheduler's clock standing still: due times are exact, and the
  -- spec needs no waiting for them.
  local function frozen()
    return health.new{clock = function() return 1000 end}
  end

  it("spreads the first runs over the jitter", function()
    local hc = frozen()
    for i = 1, 100 do
      hc:add{name = "c" .. i, kind = "lua", interval = 100000, jitter = 300, fn = function(done) done(true) end}
    end
    hc:start()
    local due = {}
    for i = 1, 100 do due[i] = hc:status("c" .. i).due - 1000 end
    hc:close()
    for i = 1, 100 do assert.is_nil(hc:status("c" .. i).due) end -- stopped: nothing due
    table.sort(due)
    -- 100 uniform draws over 300 ms: all inside 150 ms has odds below 1e-27
    assert.is_true(due[100] - due[1] > 150)
    assert.is_true(due[1] >= 1 and due[100] <= 300) -- inside the jitter
    for _, name in ipairs(hc:names()) do hc:remove(name) end
  end)

  it("honours the initial delay", function()
    local hc = frozen()
    hc:add{name = "late", kind = "lua", initial_delay = 50, jitter = 0, fn = function(done) done(true) end}
    hc:add{name = "later", kind = "lua", initial_delay = 50, jitter = 20, fn = function(done) done(true) end}
    hc:start()
    assert.equal(1050, hc:status("late").due)
    assert.is_true(hc:status("later").due >= 1050 and hc:status("later").due <= 1070)
    hc:close()
    hc:remove("late")
    hc:remove("later")
  end)

  it("runs a check when it is due, on a timer", function()
    local ran_at, t0 = nil, uv.hrtime()
    h:add{name = "soon", kind = "lua", initial_delay = 20, jitter = 0, interval = 100000,
          fn = function(done) ran_at = (uv.hrtime() - t0) / 1e6; done(true) end}
    h:start()
    assert.truthy(h:status("soon").due)
    helpers.run_until(function() return ran_at ~= nil end)
    assert.is_true(ran_at >= 19)
    assert.is_true(h:status("soon").last.lag < 100)
    assert.truthy(h:status("soon").due) -- the next run, an interval on
  end)

  it("reports in_use for a bound port and healthy for a free one", function()
    local server, port = helpers.tcp_acceptor(16)
    h:add{name = "taken", kind = "bind", port = port, interval = 5, jitter = 0, fall = 1}
    h:add{name = "free", kind = "bind", port = free_port(), interval = 5, jitter = 0, rise = 1}
    local u = uv.new_udp()
    u:bind("127.0.0.1", 0)
    h:add{name = "udp-taken", kind = "bind", proto = "udp", port = u:getsockname().port, interval = 5, jitter = 0, fall = 1}
    h:start()
    helpers.run_until(function()
      return h:status("taken").status ~= "unknown" and h:status("free").status ~= "unknown"
        and h:status("udp-taken").status ~= "unknown"
    end)
    assert.equal("in_use", h:status("taken").status)
    assert.equal("healthy", h:status("free").status)
    assert.equal("in_use", h:status("udp-taken").status)
    server:close()
    u:close()
  end)

  describe("with a host name", function()
    local resolver = require "portman.resolver"
    local path

    -- The default resolver reads a hosts file of this spec's and asks no
    -- server but a dead loopback port: no query leaves the host.
    before_each(function()
      path = os.tmpname()
      helpers.write(path, "127.0.0.1 web.health.test\n")
      resolver.set_default{hosts = path, servers = {"127.0.0.1:" .. free_port("udp")}, timeout = 200, tries = 1}
    end)
    after_each(function()
      resolver.set_default(nil)
      os.remove(path)
    end)

    it("resolves it for tcp, udp and bind checks", function()
      local server, port = helpers.tcp_acceptor(16)
      local echo = uv.new_udp()
      echo:bind("127.0.0.1", 0)
      echo:recv_start(function(_, data, addr) if data then echo:send(data, addr.ip, addr.port) end end)
      h:add{name = "tcp", kind = "tcp", host = "web.health.test", port = port, interval = 5, jitter = 0, rise = 1}
      h:add{name = "udp", kind = "udp", host = "WEB.health.test", port = echo:getsockname().port, interval = 5,
            jitter = 0, rise = 1}
      h:add{name = "bind", kind = "bind", host = "web.health.test", port = port, interval = 5, jitter = 0, fall = 1}
      h:start()
      assert.is_true(helpers.run_until(function()
        return h:status("tcp").status ~= "unknown" and h:status("udp").status ~= "unknown"
          and h:status("bind").status ~= "unknown"
      end))
      assert.equal("healthy", h:status("tcp").status)
      assert.equal("healthy", h:status("udp").status)
      assert.equal("in_use", h:status("bind").status)
      server:close()
      echo:close()
    end)

    it("marks a name that does not resolve unreachable, with the resolver's message", function()
      h:add{name = "nx", kind = "tcp", host = "nx.invalid", port = 80, interval = 5, jitter = 0, fall = 1}
      h:add{name = "nxbind", kind = "bind", host = "nx.invalid", port = 80, interval = 5, jitter = 0, fall = 1}
      h:start()
      assert.is_true(helpers.run_until(function()
        return h:status("nx").status ~= "unknown" and h:status("nxbind").status ~= "unknown"
      end))
      assert.equal("unreachable", h:status("nx").status)
      assert.matches("^not_found: nx%.invalid", h:status("nx").last.msg)
      assert.equal("bind_error", h:status("nxbind").status)
    end)
  end)

  it("times out a silent target as unreachable, and takes silence as healthy when no reply is expected", function()
    local silent = uv.new_udp()
    silent:bind("127.0.0.1", 0)
    local port = silent:getsockname().port
    h:add{name = "mute", kind = "udp", port = port, timeout = 30, interval = 5, jitter = 0, fall = 1}
    h:add{name = "ok", kind = "udp", port = port, timeout = 30, expect_reply = false, interval = 5, jitter = 0,
          rise = 1}
    h:start()
    assert.is_true(helpers.run_until(function()
      return h:status("mute").status ~= "unknown" and h:status("ok").status ~= "unknown"
    end))
    assert.equal("unreachable", h:status("mute").status)
    assert.equal("timeout: udp check 'mute' after 30 ms", h:status("mute").last.msg)
    assert.equal("healthy", h:status("ok").status)
    silent:close()
  end)

  it("checks UDP: a reply is healthy, an ICMP port unreachable is not", function()
    local echo = uv.new_udp()
    echo:bind("127.0.0.1", 0)
    echo:recv_start(function(_, data, addr) if data then echo:send(data, addr.ip, addr.port) end end)
    local dead = uv.new_udp()
    dead:bind("127.0.0.1", 0)
    local dead_port = dead:getsockname().port
    dead:close()
    h:add{name = "echo", kind = "udp", port = echo:getsockname().port, interval = 5, jitter = 0, rise = 1}
    h:add{name = "dead", kind = "udp", port = dead_port, interval = 5, jitter = 0, fall = 1}
    h:start()
    helpers.run_until(function()
      return h:status("echo").status ~= "unknown" and h:status("dead").status ~= "unknown"
    end)
    assert.equal("healthy", h:status("echo").status)
    assert.equal("unreachable", h:status("dead").status)
    echo:close()
  end)

  describe("postgres checks", function()
    local servers

    before_each(function() servers = {} end)
    after_each(function()
      for _, s in ipairs(servers) do s:close() end
      uv.run("nowait")
    end)

    -- A fake PostgreSQL on a kernel-chosen port: it reads the client's
    -- first 8 bytes (kept in `got`) and writes answer; with answer false
    -- it closes each connection at once, with nil it stays silent.
    local function pg_server(answer)
      local s, got = uv.new_tcp(), {}
      servers[#servers + 1] = s
      assert(s:bind("127.0.0.1", 0))
      assert(s:listen(16, function()
        local c = uv.new_tcp()
        s:accept(c)
        if answer == false then return c:close() end
        local buf = ""
        c:read_start(function(_, data)
          if not data then return c:close() end
          buf = buf .. data
          if #buf >= 8 and #buf - #data < 8 then
            got[#got + 1] = buf
            if answer then c:write(answer) end
          end
        end)
      end))
      return s:getsockname().port, got
    end

    local function settled(...)
      local names = {...}
      return helpers.run_until(function()
        for _, n in ipairs(names) do if h:status(n).status == "unknown" then return false end end
        return true
      end)
    end

    it("sends an SSLRequest and counts an answer of S or N as healthy", function()
      local nport, got = pg_server("N")
      local sport = pg_server("S")
      h:add{name = "n", kind = "postgres", port = nport, interval = 5, jitter = 0, rise = 1}
      h:add{name = "s", kind = "postgres", port = sport, interval = 5, jitter = 0, rise = 1}
      h:start()
      assert.is_true(settled("n", "s"))
      assert.equal("healthy", h:status("n").status)
      assert.equal("healthy", h:status("s").status)
      -- length 8, then 80877103 = 1234 << 16 | 5679, both big-endian
      assert.equal("\0\0\0\8\4\210\22\47", got[1])
    end)

    it("marks garbage, a closed connection, silence and a refusal unreachable, the code word in the message",
      function()
      h:add{name = "garbage", kind = "postgres", port = pg_server("HTTP/1.0 400 Bad Request\r\n\r\n"), interval = 5,
            jitter = 0, fall = 1}
      h:add{name = "binary", kind = "postgres", port = pg_server("E\0\0\0\n"), interval = 5, jitter = 0, fall = 1}
      h:add{name = "closes", kind = "postgres", port = pg_server(false), interval = 5, jitter = 0, fall = 1}
      h:add{name = "mute", kind = "postgres", port = pg_server(nil), timeout = 50, interval = 5, jitter = 0,
            fall = 1}
      h:add{name = "refused", kind = "postgres", port = free_port(), interval = 5, jitter = 0, fall = 1}
      h:start()
      assert.is_true(settled("garbage", "binary", "closes", "mute", "refused"))
      for _, n in ipairs({"garbage", "binary", "closes", "mute", "refused"}) do
        assert.equal("unreachable", h:status(n).status, n)
      end
      local function at(n) return "127.0.0.1:" .. h:status(n).last.msg:match("127%.0%.0%.1:(%d+)") end
      assert.equal(("protocol: %s answered the SSLRequest with 'HTTP/1.0 400 Bad', not S or N"):format(at("garbage")),
        h:status("garbage").last.msg)
      assert.equal(("protocol: %s answered the SSLRequest with 'E\\x00\\x00\\x00\\x0a', not S or N")
        :format(at("binary")), h:status("binary").last.msg)
      assert.matches("^closed: ", h:status("closes").last.msg)
      assert.equal("timeout: postgres check 'mute' after 50 ms", h:status("mute").last.msg)
      assert.matches("^refused: connect 127%.0%.0%.1:%d+: ECONNREFUSED", h:status("refused").last.msg)
    end)
  end)

  it("turns a raising Lua check into a failure, not a crash", function()
    h:add{name = "bad", kind = "lua", interval = 1, jitter = 0, fall = 1, fn = function() error("oops") end}
    h:start()
    helpers.run_until(function() return runs("bad") >= 1 end)
    assert.matches("oops", h:status("bad").last.msg)
    assert.equal("unknown", h:status("bad").status)
  end)

  it("starts and stops idempotently", function()
    local n = 0
    h:add{name = "x", kind = "lua", interval = 1, jitter = 0, fn = function(done) n = n + 1; done(true) end}
    h:start(); h:start()
    helpers.run_until(function() return n >= 3 end)
    h:stop(); h:stop()
    local at_stop = n
    local t = uv.new_timer()
    t:start(20, 0, function() t:close() end)
    uv.run()
    assert.equal(at_stop, n)
  end)

  it("fires exhaustion events as a pool fills and drains", function()
    local pool = allocator.new{range = {20000, 20009}}
    h:watch_pool("api", pool, {warning = 50, critical = 90, interval = 2})
    h:start()
    local function level() return events[#events] and events[#events].level end
    for _ = 1, 5 do pool:allocate() end
    assert.is_true(helpers.run_until(function() return level() == "warning" end))
    for _ = 1, 4 do pool:allocate() end
    assert.is_true(helpers.run_until(function() return level() == "critical" end))
    for p = 20000, 20007 do pool:release(p) end
    assert.is_true(helpers.run_until(function() return level() == "ok" end))
    assert.same({"warning", "critical", "ok"}, {events[1].level, events[2].level, events[3].level})
    assert.equal("api", events[1].pool)
    assert.equal(50, events[1].utilization)
  end)

  it("takes running out of fds (EMFILE) as portman's own condition, never the service's status", function()
    -- a child with 64 fds, so that filling them is quick and harms no one
    local out, ok = helpers.lua_child([[
      local uv = require "luv"
      local health = require "portman.health"
      local server = uv.new_tcp()
      assert(server:bind("127.0.0.1", 0))
      assert(server:listen(64, function()
        local c = uv.new_tcp()
        if server:accept(c) then c:close() else c:close() end
      end))
      local seen = {}
      local h = health.new{on_event = function(ev) seen[#seen + 1] = ev.event .. ":" .. tostring(ev.to or ev.msg) end}
      h:add{name = "svc", kind = "tcp", host = "127.0.0.1", port = server:getsockname().port, interval = 20,
            timeout = 500}
      h:start()
      local function wait(pred)
        local t = uv.new_timer()
        local expired = false
        t:start(10000, 0, function() expired = true end)
        while not pred() and not expired do uv.run("once") end
        t:close()
        return pred()
      end
      assert(wait(function() return h:status("svc").status == "healthy" end), "never healthy")
      local held = {}
      while true do -- every fd left, taken
        local fd = uv.fs_open("/dev/null", "r", 0)
        if not fd then break end
        held[#held + 1] = fd
      end
      assert(wait(function() return h:status("svc").local_errors >= 3 end), "no local error")
      print("during", h:status("svc").status, h:status("svc").failures)
      for _, fd in ipairs(held) do uv.fs_close(fd) end
      local before = h:status("svc").successes
      assert(wait(function() return h:status("svc").successes > before end), "no success after")
      print("after", h:status("svc").status)
      print("events", table.concat(seen, ","))
      h:stop()
      server:close()
      uv.run("nowait")
    ]], "prlimit --nofile=64 --")
    assert(ok, out)
    assert.matches("during%shealthy%s0", out)
    assert.matches("after%shealthy", out)
    -- one event for the streak, naming the shortage, and no status change
    local events_line = out:match("events%s([^\n]*)")
    assert.equal("status:healthy", events_line:match("^[^,]*"))
    local _, n = events_line:gsub("local_error:", "")
    assert.equal(1, n)
    assert.matches("local_error:[^,]*EMFILE", events_line)
    assert.not_matches("status:unreachable", events_line)
  end)

  describe("bad arguments", function()
    local cases = {
      {{kind = "tcp", port = 1}, "name: string expected"},
      {{name = "a", kind = "icmp", port = 1}, "unknown kind 'icmp' (tcp, udp, bind, lua, postgres)"},
      {{name = "a", kind = "tcp"}, "port: integer port expected, got nil"},
      {{name = "a", kind = "lua"}, "fn: function expected"},
      {{name = "a", kind = "postgres"}, "port: integer port expected, got nil"},
      {{name = "a", kind = "tcp", port = 1, interval = -1}, "interval: non-negative number expected"},
      {{name = "a", kind = "tcp", port = 1, intervl = 5}, "unknown option 'intervl'"},
      {{name = "a", kind = "tcp", port = 1, host = 127}, "host: string expected, got number"},
    }
    for _, case in ipairs(cases) do
      it("raises on " .. case[2], function()
        assert.matches("health_spec.lua:%d+: bad argument #1 to 'add' %(" .. case[2]:gsub("%p", "%%%0") .. "%)",
          helpers.raises(function() h:add(case[1]) end))
      end)
    end

    it("raises on a bad clock", function()
      assert.matches("bad argument #1 to 'new' %(clock: function expected, got string%)",
        helpers.raises(function() health.new{clock = "now"} end))
    end)

    it("raises on a duplicate name", function()
      h:add{name = "a", kind = "lua", fn = function() end}
      assert.matches("name: check 'a' exists", helpers.raises(function() h:add{name = "a", kind = "lua", fn = print} end))
    end)
  end)
end)
