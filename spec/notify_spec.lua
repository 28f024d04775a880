local helpers = require "helpers"

describe("portman.notify", function()
  local uv, notify, listener, log, async
  local pid = helpers.pid()
  local tmp

  setup(function()
    local before = helpers.globals()
    uv = require "luv"
    notify = require "portman.notify"
    listener = require "portman.listener"
    log = require "portman.log"
    async = require "portman.async"
    assert.same(before, helpers.globals())
    tmp = helpers.tmpdir()
  end)

  teardown(function()
    os.execute("rm -rf " .. helpers.shell_quote(tmp))
  end)

  local saved_out
  before_each(function()
    for _, k in ipairs(notify.VARS) do uv.os_unsetenv(k) end
    saved_out = log.out
  end)
  after_each(function()
    log.out = saved_out
    for _, k in ipairs(notify.VARS) do uv.os_unsetenv(k) end
  end)

  -- log lines written while fn runs
  local function logged(fn)
    local lines = {}
    log.out = {write = function(_, ...) lines[#lines + 1] = table.concat({...}) end, flush = function() end}
    local ok, err = pcall(fn)
    log.out = saved_out
    assert(ok, err)
    return lines
  end

  local function until_true(pred)
    while not pred() do async.sleep(1) end
  end

  -- systemd's side: a datagram socket that collects what it receives
  local function receiver(opts)
    local l = assert(listener.open(opts))
    local got = {}
    assert(l:serve(function(err, data)
      assert.is_nil(err)
      got[#got + 1] = data
    end))
    return l, got
  end

  local function setenv(vars)
    for k, v in pairs(vars) do assert(uv.os_setenv(k, v)) end
  end

  local function env_left()
    local left = {}
    for _, k in ipairs(notify.VARS) do left[#left + 1] = os.getenv(k) end
    return left
  end

  it("sends each state to a path socket, and unsets the variables it read", function()
    helpers.loop(function()
      local path = tmp .. "/notify.sock"
      local l, got = receiver{proto = "unixgram", path = path}
      setenv{NOTIFY_SOCKET = path}
      local n = notify.new()
      assert.same({}, env_left()) -- children do not inherit them
      assert.equal(path, n.socket)
      assert.is_true(n:enabled())
      assert.is_true(n:ready("serving 3 services"))
      assert.is_true(n:status("reloading\npolicy.lua")) -- one line: no forged assignment
      local before = notify.monotonic_usec()
      assert.is_true(n:reloading())
      local after = notify.monotonic_usec()
      assert.is_true(n:ready())
      assert.is_true(n:mainpid(pid))
      assert.is_true(n:extend_timeout(5000000))
      assert.is_true(n:stopping("draining"))
      assert.is_true(n:watchdog())
      until_true(function() return #got == 8 end)
      assert.same({"READY=1\nSTATUS=serving 3 services", "STATUS=reloading policy.lua"}, {got[1], got[2]})
      local usec = got[3]:match("^RELOADING=1\nMONOTONIC_USEC=(%d+)$")
      assert.truthy(usec, got[3])
      usec = math.tointeger(tonumber(usec))
      assert.is_true(before <= usec and usec <= after)
      assert.same({"READY=1", "MAINPID=" .. pid, "EXTEND_TIMEOUT_USEC=5000000",
                   "STOPPING=1\nSTATUS=draining", "WATCHDOG=1"}, {table.unpack(got, 4)})
      n:close()
      n:close()
      assert.matches("attempt to use a closed notifier", helpers.raises(function() n:ready() end))
      l:close()
    end)
  end)

  it("reads MONOTONIC_USEC from CLOCK_MONOTONIC, which never runs ahead of the boot clock", function()
    local f = assert(io.open("/proc/uptime"))
    local boot = f:read("n")
    f:close()
    local mono = notify.monotonic_usec()
    assert.equal("integer", math.type(mono))
    -- /proc/uptime is CLOCK_BOOTTIME (which counts suspend too) in 10 ms
    -- steps, read just before: a second's slack
    assert.is_true(mono > 0 and mono <= (boot + 1) * 1e6)
  end)

  it("sends to an abstract socket ('@name')", function()
    helpers.loop(function()
      local name = "portman-notify-" .. pid
      local l, got = receiver{proto = "unixgram", abstract = name}
      setenv{NOTIFY_SOCKET = "@" .. name}
      local n = notify.new()
      assert.is_true(n:ready())
      assert.is_true(n:reloading("policy.lua"))
      assert.is_true(n:stopping())
      until_true(function() return #got == 3 end)
      assert.equal("READY=1", got[1])
      assert.matches("^RELOADING=1\nMONOTONIC_USEC=%d+\nSTATUS=policy.lua$", got[2])
      assert.equal("STOPPING=1", got[3])
      n:close()
      l:close()
    end)
  end)

  it("sends WATCHDOG=1 every WATCHDOG_USEC/2 from a timer that does not keep the loop alive", function()
    helpers.loop(function()
      local name = "portman-watchdog-" .. pid
      local l, got = receiver{proto = "unixgram", abstract = name}
      setenv{NOTIFY_SOCKET = "@" .. name, WATCHDOG_USEC = "40000", WATCHDOG_PID = tostring(pid)}
      local n = notify.new()
      assert.same({}, env_left())
      assert.equal(40000, n.watchdog_usec)
      assert.is_true(n:watchdog_start())
      assert.is_true(n:watchdog_start()) -- idempotent: still one timer
      assert.equal(20, n.watchdog_period)
      assert.is_false(n._timer:has_ref())
      -- a luv timer of one watchdog period, then wait for the pings
      local period_over = false
      local t = uv.new_timer()
      t:start(n.watchdog_period, 0, function()
        period_over = true
        t:close()
      end)
      until_true(function() return period_over end)
      until_true(function() return #got >= 2 end)
      for _, m in ipairs(got) do assert.equal("WATCHDOG=1", m) end
      n:watchdog_stop()
      async.sleep(n.watchdog_period) -- what was in flight arrives
      local count = #got
      async.sleep(3 * n.watchdog_period)
      assert.equal(count, #got) -- stopped
      n:close()
      l:close()
    end)
  end)

  it("closing the notifier stops its watchdog (no handle left open)", function()
    helpers.loop(function()
      setenv{NOTIFY_SOCKET = "@portman-nobody-" .. pid, WATCHDOG_USEC = "1000000"}
      local n = notify.new()
      assert.is_true(n:watchdog_start()) -- no WATCHDOG_PID: this process is meant
      n:close()
    end)
  end)

  it("does nothing, and fails at nothing, without NOTIFY_SOCKET", function()
    helpers.loop(function()
      setenv{WATCHDOG_USEC = "20000", WATCHDOG_PID = tostring(pid)}
      local lines = logged(function()
        local n = notify.new()
        assert.is_nil(n.socket)
        assert.is_false(n:enabled())
        assert.is_nil(n.watchdog_usec)
        for _, call in ipairs{"ready", "reloading", "stopping", "watchdog", "watchdog_start"} do
          assert.is_false(n[call](n), call)
        end
        assert.is_false(n:status("x"))
        assert.is_false(n:mainpid(1))
        n:close()
      end)
      assert.same({}, lines)
      assert.same({}, env_left()) -- the watchdog's variables go too
    end)
  end)

  it("runs no watchdog when WATCHDOG_PID names another process", function()
    helpers.loop(function()
      local name = "portman-otherpid-" .. pid
      local l, got = receiver{proto = "unixgram", abstract = name}
      setenv{NOTIFY_SOCKET = "@" .. name, WATCHDOG_USEC = "20000", WATCHDOG_PID = "1"}
      local n = notify.new()
      assert.same({}, env_left())
      assert.is_nil(n.watchdog_usec)
      assert.is_false(n:watchdog_start())
      assert.is_nil(n._timer)
      assert.is_true(n:ready()) -- notifications still go
      until_true(function() return #got == 1 end)
      assert.same({"READY=1"}, got)
      n:close()
      l:close()
    end)
  end)

  it("logs a failure to send once, and never raises", function()
    helpers.loop(function()
      local path = tmp .. "/nobody.sock"
      setenv{NOTIFY_SOCKET = path}
      local n = notify.new()
      local results = {}
      local lines = logged(function()
        results[1] = table.pack(n:ready())
        results[2] = table.pack(n:stopping())
      end)
      for _, r in ipairs(results) do
        assert.is_nil(r[1])
        assert.equal("not_found", r[3])
        assert.matches("^not_found: connect .*nobody%.sock: ENOENT", r[2])
      end
      assert.equal(1, #lines)
      assert.matches(" warn notify_failed .*message=\"READY=1\" ", lines[1])
      n:close()
    end)
  end)

  it("ignores a NOTIFY_SOCKET that is neither an absolute path nor '@name', with a warning", function()
    for _, bad in ipairs{"relative.sock", "@", "/" .. ("x"):rep(107)} do
      setenv{NOTIFY_SOCKET = bad, WATCHDOG_USEC = "20000"}
      local n
      local lines = logged(function() n = notify.new() end)
      assert.is_false(n:enabled())
      assert.is_false(n:ready())
      assert.is_false(n:watchdog_start())
      assert.equal(1, #lines)
      assert.matches(" warn notify_socket_invalid ", lines[1])
      assert.same({}, env_left())
    end
  end)

  it("reads a given getenv and leaves the environment alone", function()
    setenv{NOTIFY_SOCKET = "@left-alone"}
    local vars = {NOTIFY_SOCKET = "/run/systemd/notify", WATCHDOG_USEC = "30000000", WATCHDOG_PID = "4242"}
    local n = notify.new(function(k) return vars[k] end, 4242)
    assert.equal("/run/systemd/notify", n.socket)
    assert.equal(30000000, n.watchdog_usec)
    assert.equal("@left-alone", os.getenv("NOTIFY_SOCKET"))
    -- a malformed WATCHDOG_USEC is no watchdog
    vars.WATCHDOG_USEC = "0x10"
    local lines = logged(function() n = notify.new(function(k) return vars[k] end, 4242) end)
    assert.is_nil(n.watchdog_usec)
    assert.matches(" warn watchdog_usec_invalid ", lines[1])
  end)

  it("raises on bad arguments in the caller's words", function()
    local n = notify.new(function(k) return k == "NOTIFY_SOCKET" and "@x" or nil end)
    assert.matches("bad argument #1 to 'status' %(string expected, got nil%)",
      helpers.raises(function() n:status() end))
    assert.matches("bad argument #1 to 'mainpid' %(positive integer expected%)",
      helpers.raises(function() n:mainpid(0) end))
    assert.matches("bad argument #1 to 'extend_timeout' %(positive integer expected%)",
      helpers.raises(function() n:extend_timeout(1.5) end))
  end)
end)
