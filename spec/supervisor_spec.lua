-- portman.supervisor: programs started, watched, restarted on a back-off,
-- stopped with their process group; orphans of a portman killed with -9.
local helpers = require "helpers"

describe("portman.supervisor", function()
  local uv, core, cjson, async, log, listener, supervisor
  local q = helpers.shell_quote
  local saved_out, saved_threshold
  local logged -- what the log wrote while a spec ran

  setup(function()
    uv = require "luv"
    core = require "portman.core"
    cjson = require "cjson"
    async = require "portman.async"
    log = require "portman.log"
    listener = require "portman.listener"
    local before = helpers.globals()
    supervisor = require "portman.supervisor"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], "new global " .. k) end
    assert.equal(supervisor, require("portman").supervisor)
    saved_out, saved_threshold = log.out, log.threshold
    -- what libuv opens once per loop, on first use (a reserve fd for
    -- EMFILE at the first stream, the signal pipe at the first signal
    -- handle), is not a leak of the specs below
    local s = supervisor.new()
    s:close()
    local pipe = uv.new_pipe(false)
    pipe:close()
    uv.run("nowait")
  end)

  before_each(function()
    logged = {}
    log.out = {
      write = function(self, ...)
        for _, part in ipairs{...} do
          for line in part:gmatch("[^\n]+") do logged[#logged + 1] = line end
        end
        return self
      end,
      flush = function() end,
    }
  end)

  after_each(function()
    log.out, log.threshold = saved_out, saved_threshold
  end)

  -- Waits (in a task) until pred() holds; fails after 10 s.
  local function until_true(pred, what)
    for _ = 1, 2000 do
      if pred() then return end
      async.sleep(5)
    end
    error("timed out waiting for " .. (what or "a condition"), 2)
  end

  -- The log lines holding every one of the plain strings given.
  local function log_lines(...)
    local out, needles = {}, {...}
    for _, line in ipairs(logged) do
      local all = true
      for _, n in ipairs(needles) do
        if not line:find(n, 1, true) then all = false break end
      end
      if all then out[#out + 1] = line end
    end
    return out
  end

  -- A supervisor recording its events in sup.events.
  local function new_sup(opts)
    opts = opts or {}
    local evs = {}
    opts.on_event = function(ev) evs[#evs + 1] = ev end
    opts.backoff = opts.backoff or {initial = 10}
    local sup = supervisor.new(opts)
    sup.events = evs
    return sup
  end

  local function names(evs, name)
    local out = {}
    for _, ev in ipairs(evs) do
      if not name or ev.name == name then out[#out + 1] = ev.event end
    end
    return out
  end

  local function count(evs, event)
    local n = 0
    for _, ev in ipairs(evs) do n = n + (ev.event == event and 1 or 0) end
    return n
  end

  local slurp, gone, zombies = helpers.read, helpers.gone, helpers.zombies

  local function lua_env()
    return {LUA_PATH = package.path, LUA_CPATH = package.cpath}
  end

  it("starts a program with its argv, its env added to portman's, and its cwd; restart = no leaves it stopped",
     function()
    helpers.loop(function()
      local out, dir = os.tmpname(), helpers.tmpdir()
      assert(uv.os_setenv("NOTIFY_SOCKET", "/run/portman-spec-notify"))
      local sup = new_sup()
      local p = assert(sup:start{name = "show", restart = "no", output = out, cwd = dir, env = {FOO = "bar baz", HOME = false},
        argv = {"sh", "-c", 'tr "\\0" "|" </proc/$$/cmdline; echo; echo "$FOO|${HOME-unset}|$(pwd)|$PATH|'
          .. '${NOTIFY_SOCKET-unset}|${LISTEN_PID-unset}"', "arg one"}})
      uv.os_unsetenv("NOTIFY_SOCKET")
      assert.equal("show", p.name)
      local pid = p:info().pid
      assert.is_number(pid)
      until_true(function() return count(sup.events, "stopped") == 1 end, "the program's end")
      local text = slurp(out)
      os.remove(out)
      os.remove(dir)
      assert.equal(table.concat({
        'sh|-c|tr "\\0" "|" </proc/$$/cmdline; echo; echo "$FOO|${HOME-unset}|$(pwd)|$PATH|'
          .. '${NOTIFY_SOCKET-unset}|${LISTEN_PID-unset}"|arg one|',
        ("bar baz|unset|%s|%s|unset|unset"):format(dir, os.getenv("PATH")), ""}, "\n"), text)
      assert.same({"started", "exited", "stopped"}, names(sup.events))
      local info = p:info()
      assert.equal("stopped", info.status)
      assert.equal(0, info.exit_code)
      assert.is_nil(info.signal)
      assert.is_nil(info.pid)
      assert.equal(0, info.restarts)
      assert.is_number(info.since)
      assert.equal(pid, sup.events[1].pid)
      assert.same({{name = "show", status = "stopped", exit_code = 0, restarts = 0, since = info.since}},
        sup:list())
      sup:close()
    end)
  end)

  it("a program that cannot be exec'd fails at start with not_found, leaving nothing", function()
    helpers.loop(function()
      local sup = new_sup()
      local before = helpers.fd_count()
      local p, msg, code = sup:start{name = "missing", argv = {"portman-no-such-program", "x"}}
      assert.is_nil(p)
      assert.equal("not_found", code)
      assert.matches("^not_found: exec portman%-no%-such%-program: ENOENT", msg)
      assert.is_nil(sup:get("missing"))
      assert.same({}, sup.events)
      assert.equal(before, helpers.fd_count())
      p, msg, code = sup:start{name = "nobody-here", argv = {"true"}, user = "portman-no-such-user"}
      assert.is_nil(p)
      assert.equal("not_found", code)
      assert.equal("not_found: no user portman-no-such-user", msg)
      sup:close()
    end)
  end)

  it("socket activation: the listener at fd 3, LISTEN_FDS, LISTEN_PID (the program's pid) and LISTEN_FDNAMES",
     function()
    helpers.loop(function()
      local l = assert(listener.open{address = "127.0.0.1", port = 0})
      local report = os.tmpname()
      local sup = new_sup()
      local p = assert(sup:start{name = "web", restart = "no", cwd = helpers.root, env = lua_env(),
        argv = {helpers.lua, helpers.root .. "/spec/support/spawned_child.lua", report},
        fds = {l}, activation = true, fdnames = {"web"}})
      local pid = p:info().pid
      local c
      until_true(function()
        c = helpers.connect("127.0.0.1", l.port)
        return c ~= nil
      end, "a connection")
      local reply = async.await(function(cb)
        local buf = ""
        c:read_start(function(_, data)
          if data then buf = buf .. data else c:close() cb(buf) end
        end)
      end)
      assert.equal(("web served by %d\n"):format(pid), reply)
      until_true(function() return p:info().status == "stopped" end, "the program's end")
      assert.equal(0, p:info().exit_code)
      local seen = cjson.decode(slurp(report))
      os.remove(report)
      assert.equal(pid, seen.pid)
      assert.equal(tostring(pid), seen.listen_pid)
      assert.equal("1", seen.listen_fds)
      assert.equal("web", seen.listen_fdnames)
      assert.same({{fd = 3, port = l.port, listening = true, cloexec = false}}, seen.fds)
      assert.is_false(seen.next_fd_open)
      l:close()
      sup:close()
    end)
  end)

  it("restart = on-failure restarts a crashing program with doubling delays, in order", function()
    helpers.loop(function()
      local sup = new_sup{backoff = {initial = 10, max = 1000}}
      local p = assert(sup:start{name = "crash", argv = {"sh", "-c", "exit 3"}})
      until_true(function() return count(sup.events, "restarting") >= 4 end, "four restarts")
      assert(p:stop())
      local evs = sup.events
      local seq = names(evs)
      assert.same({"started", "exited", "restarting", "started", "exited", "restarting", "started", "exited",
                   "restarting", "started", "exited", "restarting"}, {table.unpack(seq, 1, 12)})
      assert.equal("stopped", seq[#seq])
      local delays, restarts = {}, {}
      for _, ev in ipairs(evs) do
        if ev.event == "restarting" then
          delays[#delays + 1] = ev.delay
          restarts[#restarts + 1] = ev.restarts
          assert.equal(3, ev.exit_code)
        elseif ev.event == "exited" then
          assert.equal(3, ev.exit_code)
          assert.is_nil(ev.signal)
        end
      end
      assert.same({10, 20, 40, 80}, {table.unpack(delays, 1, 4)})
      for i = 2, #delays do assert.is_true(delays[i] > delays[i - 1] or delays[i] == 1000) end
      assert.same({1, 2, 3, 4}, {table.unpack(restarts, 1, 4)})
      -- event times come from the supervisor's clock, in order
      for i = 2, #evs do assert.is_true(evs[i].time >= evs[i - 1].time) end
      local info = p:info()
      assert.equal("stopped", info.status)
      assert.is_true(info.restarts >= 3) -- the fourth restart may have been cancelled
      assert.equal(#log_lines("program_restarting", "service=crash"), count(evs, "restarting"))
      sup:close()
    end)
  end)

  it("the back-off is capped, and starts over after a program ran a while (the injected clock)", function()
    helpers.loop(function()
      local now = 0
      local sup = new_sup{clock = function() return now end, backoff = {initial = 10, max = 25, reset = 10000}}
      sup:on(function(ev)
        -- the third run "lasts" 20 s
        if ev.event == "started" and ev.restarts == 2 then now = now + 20000 end
      end)
      local p = assert(sup:start{name = "flaky", argv = {"sh", "-c", "exit 1"}})
      until_true(function() return count(sup.events, "restarting") >= 5 end, "five restarts")
      p:stop()
      local delays = {}
      for _, ev in ipairs(sup.events) do
        if ev.event == "restarting" then delays[#delays + 1] = ev.delay end
        assert.is_true(ev.time == 0 or ev.time == 20000)
      end
      assert.same({10, 20, 10, 20, 25}, {table.unpack(delays, 1, 5)})
      for _, ev in ipairs(sup.events) do
        if ev.event == "exited" and ev.time == 20000 and ev.runtime == 20000 then return sup:close() end
      end
      error("no exit after a run of 20 s")
    end)
  end)

  it("status is failed while a restart waits, with the exit code and the restart count", function()
    helpers.loop(function()
      local sup = new_sup{backoff = {initial = 60000}}
      local p = assert(sup:start{name = "down", argv = {"sh", "-c", "exit 4"}})
      until_true(function() return count(sup.events, "restarting") == 1 end, "a restart")
      local info = p:info()
      assert.equal("failed", info.status)
      assert.equal(4, info.exit_code)
      assert.equal(0, info.restarts)
      assert.is_nil(info.pid)
      -- stop cancels the restart
      p:stop()
      assert.equal("stopped", p:info().status)
      assert.equal("stopped", sup.events[#sup.events].event)
      sup:close()
    end)
  end)

  it("a restart whose exec fails is tried again on the back-off (start_failed)", function()
    helpers.loop(function()
      local dir = helpers.tmpdir()
      local prog = dir .. "/vanishing"
      helpers.write(prog, "#!/bin/sh\nrm -f \"$0\"\nexit 1\n")
      assert(os.execute("chmod +x " .. prog))
      local sup = new_sup()
      local p = assert(sup:start{name = "vanishing", argv = {prog}})
      until_true(function() return count(sup.events, "start_failed") >= 2 end, "two failed restarts")
      p:stop()
      os.remove(dir)
      local seq, delays = {}, {}
      for _, ev in ipairs(sup.events) do
        seq[#seq + 1] = ev.event
        if ev.event == "restarting" then delays[#delays + 1] = ev.delay end
        if ev.event == "start_failed" then
          assert.equal("not_found", ev.code)
          assert.matches("^not_found: exec .*vanishing: ENOENT", ev.error)
        end
      end
      assert.same({"started", "exited", "restarting", "start_failed", "restarting", "start_failed", "restarting"},
        {table.unpack(seq, 1, 7)})
      assert.same({10, 20, 40}, {table.unpack(delays, 1, 3)})
      assert.equal("stopped", p:info().status)
      sup:close()
    end)
  end)

  it("close ends what still runs, and the stops under way", function()
    helpers.loop(function()
      local sup = new_sup()
      local p = assert(sup:start{name = "stubborn", stop_timeout = 60000,
        argv = {"sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 1; done'}})
      local pid = p:info().pid
      until_true(function() return #log_lines("text=ready") == 1 end, "ready")
      local stopped
      p:stop(function(info) stopped = info end)
      sup:close()
      assert.equal("stopped", stopped.status)
      assert.is_nil(supervisor.process_info(pid))
    end)
  end)

  it("restart = no leaves a failed program down with its exit code or signal", function()
    helpers.loop(function()
      local sup = new_sup()
      local a = assert(sup:start{name = "a", restart = "no", argv = {"sh", "-c", "exit 3"}})
      local b = assert(sup:start{name = "b", restart = "no", argv = {"sh", "-c", "kill -KILL $$"}})
      until_true(function() return count(sup.events, "stopped") == 2 end, "both ends")
      assert.same({"started", "exited", "stopped"}, names(sup.events, "a"))
      assert.same({"started", "exited", "stopped"}, names(sup.events, "b"))
      local ia, ib = a:info(), b:info()
      assert.equal("failed", ia.status)
      assert.equal(3, ia.exit_code)
      assert.equal(0, ia.restarts)
      assert.equal("failed", ib.status)
      assert.is_nil(ib.exit_code)
      assert.equal("SIGKILL", ib.signal)
      for _, ev in ipairs(sup.events) do
        if ev.event == "stopped" then assert.equal("failed", ev.status) end
      end
      sup:close()
    end)
  end)

  it("restart = always restarts a program that exits with 0", function()
    helpers.loop(function()
      local sup = new_sup()
      local p = assert(sup:start{name = "again", restart = "always", argv = {"true"}})
      until_true(function() return count(sup.events, "restarting") >= 3 end, "three restarts")
      p:stop()
      assert.is_true(p:info().restarts >= 2)
      sup:close()
    end)
  end)

  it("stop sends the stop signal to the process group: a program that ends is stopped, no SIGKILL", function()
    helpers.loop(function()
      local sup = new_sup()
      local p = assert(sup:start{name = "sleepy", argv = {"sleep", "60"}})
      local info = p:stop()
      assert.equal("stopped", info.status)
      assert.equal("SIGTERM", info.signal)
      assert.same({"started", "exited", "stopped"}, names(sup.events))
      assert.same({}, log_lines("program_killed"))
      -- stopping it again is at once
      assert.equal("stopped", p:stop().status)
      sup:close()
    end)
  end)

  it("stop sends SIGKILL to the group of a program that ignores SIGTERM, after stop_timeout", function()
    helpers.loop(function()
      local sup = new_sup()
      local p = assert(sup:start{name = "stubborn", stop_timeout = 200,
        argv = {"sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 1; done'}})
      until_true(function() return #log_lines("program_output", "service=stubborn", "text=ready") == 1 end, "ready")
      local info = p:stop()
      assert.equal("stopped", info.status)
      assert.equal("SIGKILL", info.signal)
      local killed = log_lines("program_killed", "service=stubborn")
      assert.equal(1, #killed)
      assert.matches("after_ms=200", killed[1])
      -- in that order: the SIGKILL, then the exit
      local order = {}
      for _, line in ipairs(logged) do
        local ev = line:match("^%S+ %S+ (program_%w+)")
        if ev == "program_killed" or ev == "program_exited" or ev == "program_stopped" then order[#order + 1] = ev end
      end
      assert.same({"program_killed", "program_exited", "program_stopped"}, order)
      sup:close()
    end)
  end)

  it("a child's child in the process group ends too: on stop, and when the program exits by itself", function()
    helpers.loop(function()
      local sup = new_sup()
      local function grandchild(name)
        local pid
        until_true(function()
          local lines = log_lines("program_output", "service=" .. name)
          pid = lines[1] and tonumber(lines[1]:match("text=(%d+)"))
          return pid ~= nil
        end, "the grandchild's pid")
        return pid
      end
      local p = assert(sup:start{name = "parent", argv = {"sh", "-c", "sleep 60 & echo $!; wait"}})
      local g = grandchild("parent")
      assert.is_false(gone(g))
      p:stop()
      until_true(function() return gone(g) end, "the grandchild's end")
      -- the program exits, its child stays: the group still gets the stop signal
      local q2 = assert(sup:start{name = "leaver", restart = "no", argv = {"sh", "-c", "sleep 60 & echo $!; exit 0"}})
      local g2 = grandchild("leaver")
      until_true(function() return count(sup.events, "stopped") == 2 end, "the leaver's end")
      assert.is_true(gone(g2))
      assert.equal(0, q2:info().exit_code)
      assert.equal("stopped", q2:info().status)
      sup:close()
    end)
  end)

  it("output lines become log events with the service's name, one a line, capped", function()
    local saved_max, saved_rate = supervisor.MAX_LINE, supervisor.MAX_LINES_PER_SECOND
    finally(function() supervisor.MAX_LINE, supervisor.MAX_LINES_PER_SECOND = saved_max, saved_rate end)
    helpers.loop(function()
      local sup = new_sup()
      assert(sup:start{name = "talker", restart = "no",
        argv = {"sh", "-c", 'echo "one two"; echo oops >&2; printf "no newline"'}})
      until_true(function() return #log_lines("program_output", "service=talker") == 3 end, "three lines")
      assert.equal(1, #log_lines("info program_output", "service=talker", "stream=stdout", 'text="one two"'))
      assert.equal(1, #log_lines("info program_output", "service=talker", "stream=stderr", "text=oops"))
      assert.equal(1, #log_lines("info program_output", "service=talker", "stream=stdout", 'text="no newline"'))
      -- at most MAX_LINES_PER_SECOND lines a second; at most MAX_LINE bytes a line
      supervisor.MAX_LINES_PER_SECOND, supervisor.MAX_LINE = 3, 16
      assert(sup:start{name = "chatty", restart = "no",
        argv = {"sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; done; echo 0123456789abcdefghij"}})
      until_true(function() return #log_lines("program_output_dropped", "service=chatty") == 1 end, "the drop")
      assert.same({"line1", "line2", "line3"}, (function()
        local t = {}
        for _, l in ipairs(log_lines("program_output ", "service=chatty")) do t[#t + 1] = l:match("text=(%S+)") end
        return t
      end)())
      assert.matches("lines=8", log_lines("program_output_dropped", "service=chatty")[1])
      -- a line over the cap is cut, the event says by how much
      supervisor.MAX_LINES_PER_SECOND = 1000
      assert(sup:start{name = "long", restart = "no", argv = {"sh", "-c", "echo 0123456789abcdefghij; echo short"}})
      until_true(function() return #log_lines("program_output ", "service=long", "text=short") == 1 end, "short")
      assert.equal(1, #log_lines("program_output ", "service=long", "text=0123456789abcdef truncated=4"))
      until_true(function() return count(sup.events, "stopped") == 3 end, "the ends")
      sup:close()
    end)
  end)

  it("output to a path is appended to that file, across restarts", function()
    helpers.loop(function()
      local out = os.tmpname()
      helpers.write(out, "before\n")
      local sup = new_sup()
      local p = assert(sup:start{name = "filer", output = out, argv = {"sh", "-c", "echo run; echo err >&2; exit 1"}})
      until_true(function() return count(sup.events, "exited") >= 3 end, "three runs")
      p:stop()
      local text = slurp(out)
      os.remove(out)
      assert.matches("^before\n", text)
      local runs = select(2, text:gsub("run\n", ""))
      assert.is_true(runs >= 3)
      assert.equal(runs, select(2, text:gsub("err\n", "")))
      assert.same({}, log_lines("program_output"))
      sup:close()
    end)
  end)

  it("start_timeout: starting until p:ready(), else stopped as failed", function()
    helpers.loop(function()
      local sup = new_sup()
      local a = assert(sup:start{name = "ready", start_timeout = 5000, argv = {"sleep", "60"}})
      assert.equal("starting", a:info().status)
      assert.is_true(a:ready())
      assert.equal("running", a:info().status)
      assert.is_false(a:ready())
      local b = assert(sup:start{name = "late", restart = "no", start_timeout = 50, argv = {"sleep", "60"}})
      until_true(function() return b:info().status == "failed" end, "the timeout")
      assert.same({"started", "start_timeout", "exited", "stopped"}, names(sup.events, "late"))
      assert.equal("SIGTERM", b:info().signal)
      assert.same({"started", "running"}, names(sup.events, "ready"))
      assert(sup:stop_all())
      assert.equal("stopped", a:info().status)
      sup:close()
    end)
  end)

  it("stop_all stops every program; a name in use is a conflict", function()
    helpers.loop(function()
      local sup = new_sup()
      assert(sup:start{name = "one", argv = {"sleep", "60"}})
      assert(sup:start{name = "two", argv = {"sleep", "60"}})
      local p, msg, code = sup:start{name = "one", argv = {"sleep", "60"}}
      assert.is_nil(p)
      assert.equal("conflict", code)
      assert.equal("conflict: program one is running", msg)
      local calls = 0
      sup:stop_all(function(ok)
        assert.is_true(ok)
        calls = calls + 1
      end)
      until_true(function() return calls > 0 end, "stop_all")
      async.sleep(20)
      assert.equal(1, calls)
      for _, info in ipairs(sup:list()) do assert.equal("stopped", info.status) end
      assert.same({"one", "two"}, {sup:list()[1].name, sup:list()[2].name})
      -- a stopped program's name can be used again
      local again = assert(sup:start{name = "one", restart = "no", argv = {"sleep", "60"}})
      assert.equal(again, sup:get("one"))
      assert.is_false(sup:remove("one")) -- live: kept
      again:stop()
      assert.is_true(sup:remove("one"))
      assert.is_nil(sup:get("one"))
      assert.same({"two"}, {sup:list()[1].name, sup:list()[2]})
      sup:close()
    end)
  end)

  it("runs the program as another user and group, with that user's USER and HOME (as root)", function()
    if uv.os_get_passwd().uid ~= 0 then
      pending("needs root")
      return
    end
    helpers.loop(function()
      local nobody = assert(core.user_info("nobody"))
      local nogroup = assert(core.group_info(nobody.gid))
      local out = os.tmpname()
      assert(uv.fs_chmod(out, tonumber("666", 8)))
      local sup = new_sup()
      assert(sup:start{name = "dropped", restart = "no", output = out, user = "nobody", group = nogroup.name,
        argv = {"sh", "-c", 'id -u; id -g; id -G; echo "$USER $LOGNAME $HOME"'}})
      until_true(function() return count(sup.events, "stopped") == 1 end, "the end")
      local text = slurp(out)
      os.remove(out)
      assert.equal(("%d\n%d\n%d\nnobody nobody %s\n"):format(nobody.uid, nogroup.gid, nogroup.gid, nobody.home), text)
      sup:close()
    end)
  end)

  it("coexists with luv's process handles: each reaps only its own", function()
    helpers.loop(function()
      local sup = new_sup()
      local luv_code
      local h = uv.spawn("sh", {args = {"-c", "sleep 0.05; exit 5"}}, function(code) luv_code = code end)
      assert(sup:start{name = "mine", restart = "no", argv = {"sh", "-c", "exit 6"}})
      until_true(function() return luv_code ~= nil and count(sup.events, "stopped") == 1 end, "both ends")
      assert.equal(5, luv_code)
      assert.equal(6, sup:get("mine"):info().exit_code)
      h:close()
      sup:close()
    end)
  end)

  it("p:record() says what to save: pid, pgid, start time since boot, boot id", function()
    helpers.loop(function()
      local sup = new_sup()
      local p = assert(sup:start{name = "rec", argv = {"sleep", "60"}})
      local rec = p:record()
      local info = supervisor.process_info(rec.pid)
      assert.same({name = "rec", pid = p:info().pid, pgid = p:info().pid, started_at_boot_ticks = info.start_ticks,
                   boot_id = rec.boot_id}, rec)
      assert.matches("^%x+%-", rec.boot_id)
      p:stop()
      assert.is_nil(p:record())
      sup:close()
    end)
  end)

  describe("reap_orphans", function()
    it("ends the program a portman killed with -9 left behind (one that ignores the parent-death SIGTERM)",
       function()
      local ready = os.tmpname()
      local chunk = ([[
        local uv, cjson = require "luv", require "cjson"
        require("portman.log").setup{level = "error"}
        local sup = require("portman.supervisor").new()
        local p = assert(sup:start{name = "orphan", output = %q,
          argv = {"sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 1; done'}})
        io.write(cjson.encode(p:record()), "\n")
        io.flush()
        uv.sleep(60000)
      ]]):format(ready)
      local cmd = ("cd %s && LUA_PATH=%s LUA_CPATH=%s exec %s -e %s"):format(q(helpers.root), q(package.path),
        q(package.cpath), q(helpers.lua), q(chunk))
      local f = assert(io.popen(cmd))
      local rec = cjson.decode(f:read("l"))
      local mid
      for _ = 1, 2000 do
        if slurp(ready) == "ready\n" then break end
        uv.sleep(5)
      end
      os.remove(ready)
      mid = supervisor.process_info(rec.pid).ppid
      assert.is_true(core.kill(mid, "SIGKILL"))
      f:close()
      uv.sleep(50)
      -- it got SIGTERM when its parent died, and ignored it
      assert.is_false(gone(rec.pid))
      helpers.loop(function()
        local report = supervisor.reap_orphans({rec}, {timeout = 100})
        assert.same({{name = "orphan", pid = rec.pid, result = "killed"}}, report)
      end)
      for _ = 1, 1000 do
        if gone(rec.pid) then break end
        uv.sleep(5)
      end
      assert.is_true(gone(rec.pid))
      assert.equal(1, #log_lines("orphan_killed", "service=orphan"))
    end)

    it("stops one that ends on SIGTERM, and leaves alone a pid that is gone or another process's", function()
      local function sleeper()
        local pid = assert(core.spawn{file = "sleep", argv = {"sleep", "60"}})
        return pid, supervisor.process_info(pid).start_ticks
      end
      local a, a_ticks = sleeper()
      local b, b_ticks = sleeper()
      local c, c_ticks = sleeper()
      local d = assert(core.spawn{file = "true", argv = {"true"}})
      while core.reap(d) == nil do uv.sleep(5) end
      helpers.loop(function()
        local report = supervisor.reap_orphans({
          {name = "a", pid = a, pgid = a, started_at_boot_ticks = a_ticks},
          {name = "b", pid = b, pgid = b, started_at_boot_ticks = b_ticks + 1},
          {name = "c", pid = c, pgid = c, started_at_boot_ticks = c_ticks, boot_id = "another-boot"},
          {name = "d", pid = d, pgid = d, started_at_boot_ticks = 1},
        }, {timeout = 2000})
        assert.same({{name = "a", pid = a, result = "stopped"}, {name = "b", pid = b, result = "reused"},
                     {name = "c", pid = c, result = "gone"}, {name = "d", pid = d, result = "gone"}}, report)
      end)
      assert.same({false, "SIGTERM"}, {core.reap(a)})
      assert.is_nil(core.reap(b))
      assert.is_nil(core.reap(c))
      for _, pid in ipairs{b, c} do
        core.kill(pid, "SIGKILL")
        while core.reap(pid) == nil do uv.sleep(5) end
      end
      -- nothing to do: at once
      local got
      supervisor.reap_orphans({}, function(r) got = r end)
      assert.same({}, got)
      assert.matches("bad argument #1 to 'reap_orphans' %(%[1%]: {pid, pgid, started_at_boot_ticks} expected",
        helpers.raises(supervisor.reap_orphans, {{pid = 1234}}, function() end))
    end)
  end)

  it("raises on bad options, naming them", function()
    local sup = supervisor.new()
    local function err(opts) return helpers.raises(sup.start, sup, opts) end
    assert.matches("bad argument #1 to 'start' %(table expected", helpers.raises(sup.start, sup, nil))
    assert.matches("%(name: non%-empty string expected", err{argv = {"true"}})
    assert.matches("%(argv: list of strings expected", err{name = "x"})
    assert.matches("%(argv: non%-empty list", err{name = "x", argv = {}})
    assert.matches("%(argv%[2%]: string expected, got number", err{name = "x", argv = {"true", 1}})
    assert.matches("%(unknown option 'bogus'", err{name = "x", argv = {"true"}, bogus = 1})
    assert.matches("%(unknown restart 'sometimes'", err{name = "x", argv = {"true"}, restart = "sometimes"})
    assert.matches("%(unknown stop_signal 'TERM'", err{name = "x", argv = {"true"}, stop_signal = "TERM"})
    assert.matches("%(stop_timeout: non%-negative integer", err{name = "x", argv = {"true"}, stop_timeout = -1})
    assert.matches("%(fdnames: needs activation", err{name = "x", argv = {"true"}, fds = {0}, fdnames = {"a"}})
    assert.matches("%(fdnames: 2 names for 1 fds",
      err{name = "x", argv = {"true"}, fds = {0}, activation = true, fdnames = {"a", "b"}})
    assert.matches("%(fdnames%[1%]: 1%-255 printable",
      err{name = "x", argv = {"true"}, fds = {0}, activation = true, fdnames = {"a:b"}})
    assert.matches("%(fds%[1%]: fd or listener expected", err{name = "x", argv = {"true"}, fds = {"3"}})
    assert.matches("%(env: bad variable name 'A=B'", err{name = "x", argv = {"true"}, env = {["A=B"] = "1"}})
    assert.matches("%(env.A: string or false expected", err{name = "x", argv = {"true"}, env = {A = {}}})
    assert.matches("%(output: \"log\", a path or false", err{name = "x", argv = {"true"}, output = true})
    assert.matches("%(user: name or id expected", err{name = "x", argv = {"true"}, user = -3})
    assert.matches("bad argument #1 to 'new' %(unknown option 'backoff.slow'",
      helpers.raises(supervisor.new, {backoff = {slow = 1}}))
    assert.matches("bad argument #1 to 'new' %(backoff.initial: at least 1 ms",
      helpers.raises(supervisor.new, {backoff = {initial = 0}}))
    assert.matches("bad argument #1 to 'new' %(clock: function expected",
      helpers.raises(supervisor.new, {clock = 5}))
    sup:close()
    uv.run("nowait")
    assert.matches("attempt to use a closed supervisor", helpers.raises(sup.start, sup, {name = "x", argv = {"true"}}))
  end)

  it("leaves no fd open and no zombie behind", function()
    local before = helpers.fd_count()
    local old_zombies = zombies()
    helpers.loop(function()
      local l = assert(listener.open{address = "127.0.0.1", port = 0})
      local sup = new_sup()
      assert(sup:start{name = "a", argv = {"sh", "-c", "echo hi; exit 2"}, fds = {l}, activation = true})
      assert(sup:start{name = "b", argv = {"sh", "-c", "sleep 60 & wait"}})
      assert.is_nil(sup:start{name = "c", argv = {"portman-no-such-program"}})
      until_true(function() return count(sup.events, "restarting") >= 3 end, "restarts")
      assert(sup:stop_all())
      until_true(function()
        local open = 0
        uv.walk(function(h) if h:get_type() == "pipe" and not h:is_closing() then open = open + 1 end end)
        return open == 0
      end, "the output pipes' end")
      sup:close()
      l:close()
    end)
    assert.equal(before, helpers.fd_count())
    assert.same({}, zombies(old_zombies))
  end)
end)
