-- core.spawn, core.reap, core.kill, core.user_info, core.group_info: the C
-- side of portman.supervisor (csrc/lua_spawn.c).
local helpers = require "helpers"

describe("core.spawn", function()
  local uv, core, cjson, listener, sup_mod
  local q = helpers.shell_quote
  local me = helpers.pid()

  setup(function()
    uv = require "luv"
    core = require "portman.core"
    cjson = require "cjson"
    listener = require "portman.listener"
    sup_mod = require "portman.supervisor"
  end)

  -- Waits (polling, up to 10 s) for our child pid to end; returns what
  -- core.reap said.
  local function wait(pid)
    for _ = 1, 2000 do
      local code, sig = core.reap(pid)
      if code ~= nil then return code, sig end
      uv.sleep(5)
    end
    error("child " .. pid .. " did not end")
  end

  local slurp, gone, zombies = helpers.read, helpers.gone, helpers.zombies

  local function wait_gone(pid)
    for _ = 1, 1000 do
      if gone(pid) then return true end
      uv.sleep(5)
    end
    return false
  end

  -- Runs argv with stdout (and stderr) to a file; returns exit code, signal, output.
  local function run(opts)
    local out = os.tmpname()
    local fd = assert(uv.fs_open(out, "w", 420))
    opts.stdout, opts.stderr = fd, fd
    local pid, err, code = core.spawn(opts)
    uv.fs_close(fd)
    if not pid then
      os.remove(out)
      return nil, err, code
    end
    local status, sig = wait(pid)
    local text = slurp(out)
    os.remove(out)
    return status, sig, text, pid
  end

  it("runs the program with its argv (argv[0] included), the environment given, and its cwd", function()
    local dir = helpers.tmpdir()
    local status, _, text = run{
      file = "sh", cwd = dir,
      argv = {"my-sh", "-c", 'tr "\\0" "|" </proc/$$/cmdline; printf "\\n%s|%s\\n" "$FOO" "$(pwd)"; env', "one",
              "two words"},
      env = {"PATH=/usr/bin:/bin", "FOO=bar baz"},
    }
    os.remove(dir)
    assert.equal(0, status)
    local cmdline, first, rest = text:match("^([^\n]*)\n([^\n]*)\n(.*)$")
    assert.equal('my-sh|-c|tr "\\0" "|" </proc/$$/cmdline; printf "\\n%s|%s\\n" "$FOO" "$(pwd)"; env|one|two words|',
      cmdline)
    assert.equal(("bar baz|%s"):format(dir), first)
    assert.matches("\nFOO=bar baz\n", "\n" .. rest)
    assert.is_nil(rest:find("HOME=", 1, true), "only the environment given")
  end)

  it("takes portman's environment when env is absent", function()
    local status, _, text = run{file = "sh", argv = {"sh", "-c", "echo $HOME"}}
    assert.equal(0, status)
    assert.equal(os.getenv("HOME") .. "\n", text)
  end)

  it("looks a program without '/' up in env's PATH, as execvp does", function()
    assert.equal(0, (run{file = "true", argv = {"true"}, env = {"PATH=/nonexistent:/usr/bin:/bin"}}))
    local pid, msg, code = run{file = "true", argv = {"true"}, env = {"PATH=/nonexistent"}}
    assert.is_nil(pid)
    assert.equal("not_found", code)
    assert.equal("not_found: exec true: ENOENT: No such file or directory", msg)
  end)

  it("a program that cannot be exec'd fails at spawn with its errno, leaving no child", function()
    local before = helpers.fd_count()
    local old_zombies = zombies()
    local pid, msg, code = core.spawn{file = "portman-no-such-program", argv = {"x"}}
    assert.is_nil(pid)
    assert.equal("not_found", code)
    assert.matches("^not_found: exec portman%-no%-such%-program: ENOENT", msg)
    pid, msg, code = core.spawn{file = "/nonexistent/prog", argv = {"x"}}
    assert.is_nil(pid)
    assert.equal("not_found", code)
    assert.matches("^not_found: exec /nonexistent/prog: ENOENT", msg)
    -- a file without x bits, and one with them that is no program
    local plain = os.tmpname()
    helpers.write(plain, "just text\n")
    pid, msg, code = core.spawn{file = plain, argv = {"x"}}
    assert.is_nil(pid)
    assert.equal("denied", code)
    assert.equal(("denied: exec %s: EACCES: Permission denied"):format(plain), msg)
    assert(os.execute("chmod +x " .. plain))
    pid, msg, code = core.spawn{file = plain, argv = {"x"}}
    os.remove(plain)
    assert.is_nil(pid)
    assert.equal("ENOEXEC", code)
    assert.matches("^ENOEXEC: exec .*: Exec format error", msg)
    pid, msg, code = core.spawn{file = "true", argv = {"true"}, cwd = "/nonexistent/dir"}
    assert.is_nil(pid)
    assert.equal("not_found", code)
    assert.matches("^not_found: chdir /nonexistent/dir: ENOENT", msg)
    assert.same({}, zombies(old_zombies))
    assert.equal(before, helpers.fd_count())
  end)

  it("gives the program /dev/null for stdin (and stdout, stderr by default) and no fd of portman's", function()
    -- io.open's fds are not close-on-exec: the child must not get it
    local leaky = assert(io.open("/dev/null"))
    local status, _, text = run{file = "sh", argv = {"sh", "-c", "readlink /proc/$$/fd/0; ls /proc/$$/fd"}}
    leaky:close()
    assert.equal(0, status)
    local stdin, fds = text:match("^([^\n]*)\n(.*)$")
    assert.equal("/dev/null", stdin)
    local list = {}
    for fd in fds:gmatch("%d+") do list[#list + 1] = tonumber(fd) end
    table.sort(list)
    -- sh may hold one fd of its own (the command substitution's pipe is gone by now)
    assert.same({0, 1, 2}, {list[1], list[2], list[3]})
    assert.is_true(#list <= 4, "fds: " .. fds)
    local pid = assert(core.spawn{file = "sh", argv = {"sh", "-c", "exit 0"}})
    assert.equal(0, wait(pid))
  end)

  it("places fds at 3, 4, ... (in the order given), not close-on-exec, with LISTEN_FDS and LISTEN_PID the child's pid",
     function()
    helpers.loop(function()
      local a = assert(listener.open{address = "127.0.0.1", port = 0})
      local b = assert(listener.open{address = "127.0.0.1", port = 0})
      local report = os.tmpname()
      local env = {"PATH=" .. os.getenv("PATH"), "LUA_PATH=" .. package.path, "LUA_CPATH=" .. package.cpath,
                   "LISTEN_PID=1", "LISTEN_FDS=9", "LISTEN_FDNAMES=web:api"}
      for _, k in ipairs{"ASAN_OPTIONS", "UBSAN_OPTIONS"} do
        if os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
      end
      -- b first: the fds cross (b's fd is above a's)
      local pid = assert(core.spawn{file = helpers.lua, cwd = helpers.root,
        argv = {helpers.lua, helpers.root .. "/spec/support/spawned_child.lua", report},
        env = env, fds = {b.fd, a.fd}, listen_fds = true, stderr = 2})
      local c
      for _ = 1, 500 do
        c = helpers.connect("127.0.0.1", b.port)
        if c then break end
        require("portman.async").sleep(10)
      end
      local reply = require("portman.async").await(function(cb)
        local buf = ""
        c:read_start(function(_, data)
          if data then buf = buf .. data else c:close() cb(buf) end
        end)
      end)
      assert.equal(("web served by %d\n"):format(pid), reply)
      assert.equal(0, wait(pid))
      local seen = cjson.decode(slurp(report))
      os.remove(report)
      assert.equal(pid, seen.pid)
      assert.equal(tostring(pid), seen.listen_pid)
      assert.equal("2", seen.listen_fds)
      assert.equal("web:api", seen.listen_fdnames)
      assert.same({{fd = 3, port = b.port, listening = true, cloexec = false},
                   {fd = 4, port = a.port, listening = true, cloexec = false}}, seen.fds)
      assert.is_false(seen.next_fd_open)
      -- ours stay close-on-exec
      assert.is_true(core.sockinfo(a.fd).cloexec)
      a:close()
      b:close()
    end)
  end)

  it("starts a new session (the program leads its own process group) unless new_session is false", function()
    local pid = assert(core.spawn{file = "sleep", argv = {"sleep", "30"}})
    local info = sup_mod.process_info(pid)
    assert.equal(pid, info.pgid)
    assert.equal(pid, info.sid)
    assert.is_true(core.kill(-pid, "SIGTERM"))
    assert.same({false, "SIGTERM"}, {wait(pid)})
    pid = assert(core.spawn{file = "sleep", argv = {"sleep", "30"}, new_session = false})
    assert.equal(sup_mod.process_info(me).pgid, sup_mod.process_info(pid).pgid)
    assert.is_true(core.kill(pid, "SIGKILL"))
    assert.same({false, "SIGKILL"}, {wait(pid)})
  end)

  it("resets signal dispositions and the mask in the child", function()
    -- the interpreter runs with SIGPIPE ignored (luv) and handlers installed
    local status, _, text = run{file = "sh", argv = {"sh", "-c", "grep -E '^Sig(Blk|Ign):' /proc/self/status"}}
    assert.equal(0, status)
    assert.matches("SigBlk:%s+0+\n", text)
    assert.matches("SigIgn:%s+0+\n", text)
  end)

  it("core.reap: nil while the program runs, then its exit code, or false and the signal's name", function()
    local pid = assert(core.spawn{file = "sh", argv = {"sh", "-c", "read x; exit 7"}, stdin = nil})
    -- stdin is /dev/null: read ends at once
    assert.equal(7, wait(pid))
    local _, msg, code = core.reap(pid)
    assert.equal("not_found", code)
    assert.matches("^not_found: waitpid %d+: ECHILD", msg)
    pid = assert(core.spawn{file = "sleep", argv = {"sleep", "30"}})
    assert.is_nil(core.reap(pid))
    assert.is_true(core.kill(pid, "SIGKILL"))
    assert.same({false, "SIGKILL"}, {wait(pid)})
  end)

  it("core.reap leaves luv's children to luv", function()
    helpers.loop(function()
      local async = require "portman.async"
      local got
      local handle, upid = uv.spawn("sh", {args = {"-c", "exit 5"}}, function(code)
        got = code
      end)
      assert.is_truthy(handle)
      assert.is_number(upid)
      local pid = assert(core.spawn{file = "sh", argv = {"sh", "-c", "exit 6"}})
      assert.equal(6, wait(pid))
      -- reap waited for its own pid only: luv still gets its child's status
      while got == nil do async.sleep(5) end
      assert.equal(5, got)
      handle:close()
    end)
  end)

  it("PR_SET_PDEATHSIG: the program ends when the process that spawned it is killed with -9", function()
    local function intermediate(pdeath)
      local chunk = ([[
        local uv, core = require "luv", require "portman.core"
        local pid = assert(core.spawn{file = "sleep", argv = {"sleep", "60"}, pdeath_signal = %s})
        io.write(uv.os_getpid(), " ", pid, "\n")
        io.flush()
        uv.sleep(60000)
      ]]):format(pdeath and ("%q"):format(pdeath) or "nil")
      local cmd = ("cd %s && LUA_PATH=%s LUA_CPATH=%s exec %s -e %s"):format(q(helpers.root), q(package.path),
        q(package.cpath), q(helpers.lua), q(chunk))
      local p = assert(io.popen(cmd))
      local line = p:read("l")
      local mid, prog = line:match("^(%d+) (%d+)$")
      return p, tonumber(mid), tonumber(prog)
    end
    local p, mid, prog = intermediate("SIGTERM")
    assert.is_false(gone(prog))
    assert.is_true(core.kill(mid, "SIGKILL"))
    p:close()
    assert.is_true(wait_gone(prog), "the program outlived its parent")
    -- without it, the program stays: the check above is not a coincidence
    p, mid, prog = intermediate(nil)
    assert.is_true(core.kill(mid, "SIGKILL"))
    p:close()
    uv.sleep(100)
    assert.is_false(gone(prog))
    assert.is_true(core.kill(prog, "SIGKILL"))
    assert.is_true(wait_gone(prog))
  end)

  it("drops to the uid, gid and groups given (as root), none of root's groups kept", function()
    if uv.os_get_passwd().uid ~= 0 then
      pending("needs root")
      return
    end
    local nobody = assert(core.user_info("nobody"))
    local status, _, text = run{file = "sh", argv = {"sh", "-c", "id -u; id -g; id -G"}, uid = nobody.uid,
                                gid = nobody.gid}
    assert.equal(0, status)
    assert.equal(("%d\n%d\n%d\n"):format(nobody.uid, nobody.gid, nobody.gid), text)
    status, _, text = run{file = "sh", argv = {"sh", "-c", "id -G"}, uid = nobody.uid, gid = nobody.gid,
                          groups = {nobody.gid, 4242}}
    assert.equal(0, status)
    assert.equal(("%d 4242\n"):format(nobody.gid), text)
    -- the parent-death signal survives the change of ids (set after it)
    local pid = assert(core.spawn{file = "sh", argv = {"sh", "-c", "grep -q . /dev/null; exit 0"},
                                  uid = nobody.uid, gid = nobody.gid, pdeath_signal = "SIGKILL"})
    assert.equal(0, wait(pid))
  end)

  it("raises on bad arguments, naming them", function()
    local function err(opts) return helpers.raises(core.spawn, opts) end
    assert.matches("bad argument #1 to '.-spawn' %(table expected", helpers.raises(core.spawn, "sh"))
    assert.matches("%(file: non%-empty string", err{argv = {"x"}})
    assert.matches("%(argv: list expected", err{file = "x"})
    assert.matches("%(argv: list of 1%-65536 items expected", err{file = "x", argv = {}})
    assert.matches("%(argv%[2%]: string without NUL expected, got number", err{file = "x", argv = {"x", 1}})
    assert.matches('%(env%[1%]: "NAME=value" expected, got "noeq"', err{file = "x", argv = {"x"}, env = {"noeq"}})
    assert.matches("%(unknown field 'bogus'", err{file = "x", argv = {"x"}, bogus = 1})
    assert.matches("%(fds%[1%]: 9999 is not an open fd", err{file = "x", argv = {"x"}, fds = {9999}})
    assert.matches("%(fds%[1%]: integer", err{file = "x", argv = {"x"}, fds = {"3"}})
    assert.matches("%(stdout: 9999 is not an open fd", err{file = "x", argv = {"x"}, stdout = 9999})
    assert.matches("%(uid: integer", err{file = "x", argv = {"x"}, uid = -1})
    assert.matches("%(listen_fds: boolean expected", err{file = "x", argv = {"x"}, listen_fds = 1})
    assert.matches("%(pdeath_signal: unknown signal 'SIGNOPE'", err{file = "x", argv = {"x"}, pdeath_signal = "SIGNOPE"})
    assert.matches("%(cwd: non%-empty string", err{file = "x", argv = {"x"}, cwd = ""})
    assert.matches("bad argument #1 to '.-reap' %(pid: positive", helpers.raises(core.reap, -1))
    assert.matches("bad argument #1 to '.-reap' %(pid: positive", helpers.raises(core.reap, 0))
    assert.matches("bad argument #1 to '.-kill' %(pid or %-pgid expected", helpers.raises(core.kill, 0))
    assert.matches("bad argument #1 to '.-kill' %(pid or %-pgid expected", helpers.raises(core.kill, -1))
    assert.matches("bad argument #2 to '.-kill' %(unknown signal 'TERM'", helpers.raises(core.kill, 12345, "TERM"))
  end)

  it("core.kill says not_found for a process that is not there", function()
    local pid = assert(core.spawn{file = "true", argv = {"true"}})
    wait(pid)
    local ok, msg, code = core.kill(pid, "SIG0")
    assert.is_nil(ok)
    assert.equal("not_found", code)
    assert.matches("^not_found: kill %d+: ESRCH", msg)
  end)

  it("core.user_info and core.group_info look names and ids up", function()
    local root = assert(core.user_info("root"))
    assert.equal(0, root.uid)
    assert.equal(0, root.gid)
    assert.equal("root", root.name)
    assert.is_string(root.home)
    assert.equal(0, root.groups[1])
    assert.equal("root", core.user_info(0).name)
    assert.equal("root", core.group_info(0).name)
    assert.equal(0, core.group_info("root").gid)
    local u, msg, code = core.user_info("portman-no-such-user")
    assert.is_nil(u)
    assert.equal("not_found", code)
    assert.equal("not_found: no user portman-no-such-user", msg)
    assert.equal("not_found", select(3, core.group_info("portman-no-such-group")))
    assert.equal("not_found", select(3, core.user_info(4000000000)))
    assert.matches("bad argument #1 to '.-user_info' %(user: id", helpers.raises(core.user_info, -5))
  end)

  it("leaves no fd and no zombie behind", function()
    local before = helpers.fd_count()
    local old_zombies = zombies()
    for _ = 1, 20 do
      local pid = assert(core.spawn{file = "true", argv = {"true"}, fds = {0, 1}, listen_fds = true})
      wait(pid)
      assert.is_nil(core.spawn{file = "portman-no-such-program", argv = {"x"}})
    end
    assert.equal(before, helpers.fd_count())
    assert.same({}, zombies(old_zombies))
  end)
end)
