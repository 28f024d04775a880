local helpers = require "helpers"
local uv = require "luv"
local json = require "portman.json"

-- Every daemon here runs in a network namespace of its own (root): the
-- fixed ports of the policies, examples/default.lua's among them, are then
-- never this host's. The admin socket is a file, reached from here; a
-- connection to a daemon's listener is made beside it (helpers.in_netns).
local write = helpers.write
local function start(dir, policy, services)
  return helpers.start_daemon(dir, policy, services, {netns = true})
end

local function ports(out)
  local t = {}
  for name, port in out:gmatch("(%S+)%s+%S+%s+%S+%s+(%d+)\n") do t[name] = tonumber(port) end
  return t
end

-- Does the daemon d accept a TCP connection on 127.0.0.1:port? true, or
-- the connect error (an errno name and text).
local ACCEPTS = [[
local uv = require "luv"
local c, result = uv.new_tcp(), nil
c:connect("127.0.0.1", tonumber((...)), function(err) result = err or true; c:close() end)
uv.run()
return result
]]
local function accepts(d, port)
  return helpers.in_netns(ACCEPTS, {pid = d.pid, args = {port}})
end

local function status(d)
  local code, out, err = helpers.portman("status --json --admin-socket " .. d.sock)
  assert.equal(0, code, err)
  assert.is_nil(out:find('"mappings":{}', 1, true)) -- an empty list is []
  return json.decode(out)
end

describe("portman run", function()
  local dir, policy
  before_each(function()
    dir = helpers.tmpdir()
    policy = dir .. "/policy.lua"
  end)
  after_each(function()
    helpers.kill_daemons()
    os.execute("rm -rf " .. dir)
  end)

  it("runs the example policy: services listen, report healthy, stop on SIGINT", function()
    local d = start(dir, helpers.root .. "/examples/default.lua", 4)
    assert.not_equal(uv.fs_readlink("/proc/self/ns/net"), uv.fs_readlink("/proc/" .. d.pid .. "/ns/net"))
    local p = ports(d.out)
    -- api is sequential from 20000; metrics has its fixed port in it
    assert.same({web = 20000, admin = 20001, metrics = 20090}, {web = p.web, admin = p.admin, metrics = p.metrics})
    local allocator = require "portman.allocator"
    assert.equal(allocator.hash_start("db-7", 25000, 25999), p.postgres)
    -- the listeners really accept
    for _, name in ipairs{"web", "admin", "postgres", "metrics"} do
      assert.is_true(accepts(d, p[name]), name)
    end
    assert.matches("^ECONNREFUSED", accepts(d, 20002))
    assert.is_true(helpers.run_until(function()
      for _, s in ipairs(status(d).services) do if s.status ~= "healthy" then return false end end
      return true
    end, 10000))
    d.proc:kill("sigint")
    assert.equal(0, d.wait_exit())
    assert.matches("info daemon_stopping signal=sigint", d.err)
    assert.matches("%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ info service_started port=%d+ proto=tcp service=web", d.err)
  end)

  it("serves status as JSON and as text", function()
    write(policy, [[return {pools = {p = {range = {21000, 21099}}},
      services = {{name = "a", pool = "p"}, {name = "u", proto = "udp", pool = "p"}}}]])
    local d = start(dir, policy, 2)
    local doc = status(d)
    assert.same({"a", "u"}, {doc.services[1].name, doc.services[2].name})
    assert.same({name = "p", range = {21000, 21099}, strategy = "sequential", allocated = 2, size = 100,
                 utilization = 2}, doc.pools[1])
    assert.same({}, doc.mappings)
    local code, out = helpers.portman("status --admin-socket " .. d.sock)
    assert.equal(0, code)
    assert.matches("^SERVICE%s+TYPE%s+PROTO%s+ADDRESS%s+PORT%s+STATUS%s+SINCE%s+PID%s+REASON\n", out)
    assert.matches("\na%s+custom%s+tcp%s+0%.0%.0%.0%s+21000%s+%a+%s+%d+s%s+%-", out)
    assert.matches("\nu%s+custom%s+udp%s+0%.0%.0%.0%s+21001%s+unchecked%s+%d+s%s+%-\n", out)
    assert.matches("pool p 21000%-21099: 2 of 100 allocated", out)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("reloads on SIGHUP, keeping unchanged listeners", function()
    write(policy, [[return {pools = {p = {range = {21100, 21199}}},
      services = {{name = "keep", pool = "p"}, {name = "drop", pool = "p"}}}]])
    local d = start(dir, policy, 2)
    local before = ports(d.out)
    assert.is_true(accepts(d, before.drop))
    write(policy, [[return {pools = {p = {range = {21100, 21199}}},
      services = {{name = "keep", pool = "p"}, {name = "new", pool = "p", port = 21150}}}]])
    d.proc:kill("sighup")
    assert.is_true(helpers.run_until(function() return d.err:find("info reloaded") ~= nil end))
    local names = {}
    for _, s in ipairs(status(d).services) do names[s.name] = s.port end
    assert.same({keep = before.keep, new = 21150}, names)
    assert.matches("service_stopped forced=0 service=drop", d.err)
    assert.not_matches("service_stopped[^\n]*service=keep", d.err)
    -- keep's listener serves on, new's opened, drop's closed
    assert.is_true(accepts(d, before.keep))
    assert.is_true(accepts(d, 21150))
    assert.matches("^ECONNREFUSED", accepts(d, before.drop))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("reloads a changed service that keeps its socket, its record whole", function()
    write(policy, [[return {pools = {p = {range = {21200, 21299}}},
      services = {{name = "web", pool = "p", metadata = {v = 1}}}}]])
    local d = start(dir, policy, 1)
    local before = ports(d.out)
    write(policy, [[return {pools = {p = {range = {21200, 21299}}},
      services = {{name = "web", pool = "p", metadata = {v = 2}}}}]])
    d.proc:kill("sighup")
    assert.is_true(helpers.run_until(function() return d.err:find("info reloaded") ~= nil end))
    -- the same listener, handed to the new spec's service: its entry has every field
    local s = status(d).services[1]
    assert.same({"web", "custom", "tcp", "0.0.0.0", before.web, "p"},
      {s.name, s.type, s.proto, s.address, s.port, s.pool})
    assert.is_true(accepts(d, before.web))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("keeps running when a reloaded policy is broken", function()
    write(policy, [[return {services = {{name = "a", port = 21201}}}]])
    local d = start(dir, policy, 1)
    write(policy, "return {")
    d.proc:kill("sighup")
    assert.is_true(helpers.run_until(function() return d.err:find("error reload_failed") ~= nil end))
    assert.equal(21201, status(d).services[1].port)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("comes back after kill -9 with its state intact", function()
    write(policy, [[return {pools = {p = {range = {21300, 21399}, strategy = "random"}},
      services = {{name = "a", pool = "p"}, {name = "b", pool = "p"}}}]])
    local d = start(dir, policy, 2)
    local first = ports(d.out)
    -- a registration made at run time, through the REPL (no terminal)
    assert.matches("\n21490\n",
      helpers.repl(d, {'manager:register{name = "ext", port = 21490, address = "127.0.0.3"}.port'}))
    d.proc:kill("sigkill")
    d.wait_exit()
    assert.equal("sigkill", (d.signal == 9 or d.signal == "sigkill") and "sigkill" or tostring(d.signal))
    local d2 = start(dir, policy, 2)
    assert.same(first, ports(d2.out))
    local names = {}
    for _, s in ipairs(status(d2).services) do names[#names + 1] = s.name end
    assert.same({"a", "b", "ext"}, names)
    d2.proc:kill("sigterm")
    assert.equal(0, d2.wait_exit())
    -- and after a clean stop too
    local d3 = start(dir, policy, 2)
    assert.same(first, ports(d3.out))
    d3.proc:kill("sigterm")
    assert.equal(0, d3.wait_exit())
  end)

  it("keeps its admin socket private and refuses other users", function()
    write(policy, [[return {services = {{name = "a", port = 21401}}}]])
    local d = start(dir, policy, 1)
    local st = uv.fs_stat(d.sock)
    assert.equal("socket", st.type)
    assert.equal(tonumber("600", 8), st.mode & tonumber("777", 8))
    assert.equal(tonumber("700", 8), uv.fs_stat(dir .. "/adm").mode & tonumber("777", 8))
    -- open the file modes up: the peer credential check must still refuse
    uv.fs_chmod(dir, tonumber("755", 8))
    uv.fs_chmod(dir .. "/adm", tonumber("755", 8))
    uv.fs_chmod(d.sock, tonumber("666", 8))
    local nobody = ("setpriv --reuid=65534 --regid=65534 --clear-groups %s %s/bin/portman status --admin-socket %s")
      :format(helpers.lua, helpers.root, d.sock)
    local p = io.popen(nobody .. " 2>&1; echo rc=$?")
    local out = p:read("a")
    p:close()
    assert.matches("rc=1", out)
    assert.matches("closed: the daemon closed the connection", out)
    assert.is_true(helpers.run_until(function() return d.err:find("warn admin_refused uid=65534") ~= nil end))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("runs a REPL session through a pseudo-terminal", function()
    write(policy, [[return {pools = {p = {range = {21500, 21599}}}, services = {{name = "a", pool = "p"}}}]])
    local d = start(dir, policy, 1)
    local input = dir .. "/input"
    -- lines typed at the terminal: an expression, a multi-line chunk, a
    -- line edited with Ctrl-A (readline), an error, then a change to the
    -- running daemon, and .exit
    write(input, table.concat({
      "manager:names()",
      "for i = 1, 2 do",
      "print('line', i)",
      "end",
      "+ 1\1return 41 ",
      "error('boom')",
      "manager:add_service{name = 'added', pool = 'p'}.port",
      ".exit",
    }, "\r") .. "\r")
    -- (lua-readline's leaks are not portman's: spec/support/lsan.supp)
    local cmd = ("TERM=xterm HOME=%s LSAN_OPTIONS=suppressions=%s/spec/support/lsan.supp "
      .. "script -q -e -c '%s %s/bin/portman repl --admin-socket %s' /dev/null < %s")
      :format(dir, helpers.root, helpers.lua, helpers.root, d.sock, input)
    local p = io.popen(cmd .. " 2>&1; echo rc=$?")
    -- without the terminal's control sequences (bracketed paste, redraws)
    local out = p:read("a"):gsub("\r", ""):gsub("\27%[[%?%d;]*[%a@]", "")
    p:close()
    assert.matches("rc=0", out)
    assert.matches("REPL: Lua inside the daemon", out)
    assert.matches('{"a"}', out)
    assert.matches(">> ", out)
    assert.matches("line\t1\nline\t2", out)
    assert.matches("\n42\n", out)
    assert.matches("repl:1: boom", out)
    assert.matches("\n215%d%d\n", out) -- the port of the service added from the REPL
    -- the daemon survived the error and has the service added from the REPL
    local names = {}
    for _, s in ipairs(status(d).services) do names[#names + 1] = s.name end
    assert.same({"a", "added"}, names)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  local broken = {
    {"a syntax error", "return {", "protocol: policy: .*unexpected symbol"},
    {"an unknown key", "return {pols = {}}", "protocol: policy: unknown key 'pols'"},
    {"a service with an unknown key", [[return {pools = {p = {range = {21000, 21010}}},
      services = {{name = "a", pool = "p", prt = 1}}}]], "protocol: policy: services%[1%] %(a%): unknown option 'prt'"},
    {"a service in no pool", [[return {services = {{name = "a", pool = "x"}}}]],
     "services%[1%]%.pool: no pool 'x'"},
    {"two services of one name", [[return {services = {{name = "a", port = 21001}, {name = "a", port = 21002}}}]],
     "services%[2%]: a second service 'a'"},
    {"a bad pool", [[return {pools = {p = {range = {5, 1}}}}]], "protocol: policy: pools%.p: range: lo 5 > hi 1"},
    {"two services on one fixed port", [[return {pools = {p = {range = {21000, 21010}}},
      services = {{name = "a", pool = "p", port = 21005}, {name = "b", pool = "p", port = 21005}}}]],
     "protocol: policy: services%[2%] %(b%): port tcp/21005 is also 'a''s"},
  }
  for _, case in ipairs(broken) do
    it("exits 1 on a policy with " .. case[1], function()
      write(policy, case[2])
      local status_code, _, err = helpers.portman(("run %s --admin-socket %s/adm/s"):format(policy, dir),
        helpers.NETNS)
      assert.equal(1, status_code)
      assert.matches(case[3], err)
    end)
  end

  it("exits 1 on a missing policy and 2 without one", function()
    local code, _, err = helpers.portman("run " .. dir .. "/none.lua")
    assert.equal(1, code)
    assert.matches("not_found: policy", err)
    assert.equal(2, (helpers.portman("run")))
  end)

  -- ---- a state file or directory that others may have written ----

  local seeds = helpers.root .. "/fuzz/seeds/state/"
  local corrupt = {
    {"mappings-string.json", "mappings: array expected, got 'x'"},
    {"services-number.json", "registry.services: array expected, got 5"},
    {"port-99999.json", "registry.services[1].port: 99999 is not a port (1-65535)"},
    {"external-port-0.json", "mappings[3].external_port: 0 is not a port (1-65535)"},
    {"wrong-types.json", "runtime[1]: string expected, got 1"},
    {"version-2.json", "version: unknown version 2 (this portman reads 1)"},
    {"truncated.json", "is not a JSON state document"},
    {"not-object.json", "is not a JSON state document"},
  }
  for _, case in ipairs(corrupt) do
    it("refuses the corrupt state " .. case[1] .. " by itself: exit 1, the field named, the file kept", function()
      write(policy, [[return {pools = {p = {range = {21600,21699}}}, services = {{name = "a", pool = "p"}}}]])
      local text = assert(helpers.read(seeds .. case[1]))
      write(dir .. "/state.json", text)
      local d = start(dir, policy, 1) -- returns once it exited: it must not hang
      assert.equal(1, d.wait_exit())
      assert.is_truthy(d.err:find(case[2], 1, true), d.err)
      assert.matches("error state_refused", d.err)
      assert.matches("portman run: protocol: [^\n]*move it away to start without the saved state\n", d.err)
      assert.is_nil(d.err:find("service_started", 1, true))
      assert.is_nil(d.err:find("traceback", 1, true))
      assert.equal(text, helpers.read(dir .. "/state.json")) -- byte for byte
    end)
  end

  it("refuses a FIFO at state.json at once, where the open used to block with SIGTERM unheard", function()
    write(policy, [[return {services = {{name = "a", port = 21703}}}]])
    assert.is_true(os.execute("mkfifo " .. dir .. "/state.json"))
    local d = start(dir, policy, 1)
    assert.equal(1, d.wait_exit())
    assert.is_truthy(d.err:find("protocol: " .. dir .. "/state.json is not a regular file", 1, true), d.err)
    assert.equal("fifo", uv.fs_lstat(dir .. "/state.json").type)
  end)

  it("starts once the corrupt state is moved away, as the message says", function()
    write(policy, [[return {pools = {p = {range = {21600, 21699}}}, services = {{name = "a", pool = "p"}}}]])
    write(dir .. "/state.json", '{"mappings":"x"}')
    assert.equal(1, start(dir, policy, 1).wait_exit())
    assert(os.rename(dir .. "/state.json", dir .. "/state.json.corrupt"))
    local d = start(dir, policy, 1)
    assert.same({a = 21600}, ports(d.out))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    assert.equal('{"mappings":"x"}', helpers.read(dir .. "/state.json.corrupt"))
  end)

  it("removes the temporary state files of dead runs at start, and only those", function()
    write(policy, [[return {services = {{name = "a", port = 21701}}}]])
    local p = io.popen("sh -c 'echo $$'")
    local dead = math.tointeger(tonumber(p:read("l")))
    p:close()
    assert.is_true(helpers.gone(dead))
    local stale = {("state.json.tmp.%d"):format(dead), (".portman-write-test.%d"):format(dead)}
    local kept = {("state.json.tmp.%d"):format(helpers.pid()), "state.json.tmp.old", "notes.tmp.1"}
    for _, n in ipairs(stale) do write(dir .. "/" .. n, "{") end
    for _, n in ipairs(kept) do write(dir .. "/" .. n, "{") end
    local d = start(dir, policy, 1)
    for _, n in ipairs(stale) do
      assert.is_nil(uv.fs_lstat(dir .. "/" .. n), n)
      assert.is_truthy(d.err:find("info state_temp_removed dir=" .. dir .. " file=" .. n, 1, true), d.err)
    end
    for _, n in ipairs(kept) do assert.equal("{", helpers.read(dir .. "/" .. n), n) end
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("refuses a state dir that others can write, naming it and its mode", function()
    write(policy, [[return {services = {{name = "a", port = 21702}}}]])
    local shared = dir .. "/shared"
    assert(uv.fs_mkdir(shared, tonumber("700", 8)))
    local function run() -- refused: it ends by itself
      return helpers.portman(("run %s --state-dir %s --admin-socket %s/adm/admin.sock"):format(policy, shared, dir),
        helpers.NETNS)
    end
    for _, mode in ipairs{"777", "775", "722"} do
      assert(uv.fs_chmod(shared, tonumber(mode, 8)))
      local code, _, err = run()
      assert.equal(1, code, err)
      assert.is_truthy(err:find(("denied: state dir %s has mode 0%s: others can write it"):format(shared, mode),
        1, true), err)
      assert.is_nil(err:find("service_started", 1, true))
      assert.is_nil(helpers.read(shared .. "/state.json"))
    end
    -- owned by another uid
    assert(uv.fs_chmod(shared, tonumber("700", 8)))
    assert(uv.fs_chown(shared, 65534, 65534))
    local code, _, err = run()
    assert.equal(1, code, err)
    assert.is_truthy(err:find(("denied: state dir %s belongs to uid 65534 (mode 0700)"):format(shared), 1, true), err)
    -- a sticky directory of our own (as /tmp is root's) is fine
    assert(uv.fs_chown(shared, 0, 0))
    assert(uv.fs_chmod(shared, tonumber("1777", 8)))
    local d = start(shared, policy, 1)
    assert.same({a = 21702}, ports(d.out))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    assert.truthy(helpers.read(shared .. "/state.json"))
  end)
end)
