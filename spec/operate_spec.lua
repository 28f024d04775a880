-- The daemon as an operator meets it (a child process in a network
-- namespace of its own): a failed start loses nothing, a held port does not
-- stop the others, a reload is all or nothing, `portman check`, budgets on
-- policy chunks, removed services stay gone, the state dir, a full disk,
-- a stop during the start, events and registrations from the command line.
-- Needs root (namespaces, tmpfs).
local helpers = require "helpers"
local uv = require "luv"
local json = require "portman.json"

local write, read = helpers.write, helpers.read

local function start(dir, policy, n, args)
  return helpers.start_daemon(dir, policy, n, {netns = true, args = args})
end

local function cli(d, words)
  return helpers.portman(words .. " --admin-socket " .. d.sock)
end

local function status(d)
  local code, out, err = cli(d, "status --json")
  assert.equal(0, code, err)
  return json.decode(out)
end

local function by_name(doc)
  local t = {}
  for _, s in ipairs(doc.services) do t[s.name] = s end
  return t
end

-- Runs `portman run` to its end in a namespace of its own; returns its
-- exit status and stderr.
local function run_once(dir, policy, extra)
  local code, _, err = helpers.portman(("run %s --state-dir %s --admin-socket %s/adm/admin.sock %s")
    :format(policy, dir, dir, extra or ""), helpers.NETNS)
  return code, err
end

-- A listener of this process on port: the squatter any other program
-- would be. Returns it (close it to free the port).
local function squat(port)
  local s = uv.new_tcp()
  assert(s:bind("0.0.0.0", port))
  assert(s:listen(8, function() end))
  return s
end

describe("the daemon, as an operator meets it", function()
  local dir, policy
  before_each(function()
    dir = helpers.tmpdir()
    policy = dir .. "/policy.lua"
  end)
  after_each(function()
    helpers.kill_daemons()
    os.execute(("umount %s/state %s/x/y/state 2>/dev/null; rm -rf %s"):format(dir, dir, dir))
  end)

  it("leaves state.json byte for byte as it was after a start that failed", function()
    write(policy, [[return {pools = {p = {range = {21000, 21099}}},
      services = {{name = "a", pool = "p"}, {name = "b", pool = "p"}}}]])
    local d = start(dir, policy, 2)
    assert.equal("ok", helpers.repl(d, {'manager:register{name = "ext", port = 21500}', 'print("ok")'})
      :match("\n(ok)\n"))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    local before = assert(read(dir .. "/state.json"))
    assert.matches('"ext"', before)
    -- a broken policy, then an admin socket in a directory others may write
    write(policy, [[return {pools = {p = {range = {21000, 21099}}},
      services = {{name = "a", pool = "p"}, {name = "b", pool = "nope"}}}]])
    local code, err = run_once(dir, policy)
    assert.equal(1, code)
    assert.matches("no pool 'nope'", err)
    assert.equal(before, read(dir .. "/state.json"))
    write(policy, [[return {pools = {p = {range = {21000, 21099}}}, services = {{name = "a", pool = "p"}}}]])
    assert(uv.fs_mkdir(dir .. "/open", tonumber("777", 8)))
    assert(uv.fs_chmod(dir .. "/open", tonumber("777", 8)))
    local _
    code, _, err = helpers.portman(("run %s --state-dir %s --admin-socket %s/open/admin.sock")
      :format(policy, dir, dir), helpers.NETNS)
    assert.equal(1, code)
    assert.matches("denied: .*/open must be owned by uid 0 with mode 0700", err)
    assert.is_nil(err:find("service_started", 1, true)) -- refused before any service ran
    assert.equal(before, read(dir .. "/state.json"))
  end)

  it("reports a service whose fixed port another program holds, runs the others, and starts it once freed", function()
    local held = helpers.free_port("tcp", "0.0.0.0")
    local lo, hi = helpers.free_range(10, "tcp", "0.0.0.0")
    local holder = squat(held)
    write(policy, ([[return {pools = {p = {range = {%d, %d}}},
      services = {{name = "db", port = %d}, {name = "web", pool = "p"}}}]]):format(lo, hi, held))
    local d = helpers.start_daemon(dir, policy, 2)
    local s = by_name(status(d))
    assert.equal("conflict", s.db.status)
    assert.equal(held, s.db.port)
    assert.matches("EADDRINUSE", s.db.reason)
    assert.equal(helpers.pid(), s.db.holder.pid)
    assert.truthy(s.db.holder.program)
    assert.matches("warn service_pending .*holder_pid=" .. helpers.pid(), d.err)
    assert.is_true(helpers.run_until(function() return by_name(status(d)).web.status == "healthy" end, 8000, 100))
    holder:close()
    assert.is_true(helpers.run_until(function()
      local db = by_name(status(d)).db
      return db.status ~= "conflict" and db.port == held and db.holder == nil
    end, 15000, 200))
    local c = uv.new_tcp()
    local connected
    c:connect("127.0.0.1", held, function(err) connected = err or true end)
    assert.is_true(helpers.run_until(function() return connected ~= nil end))
    assert.is_true(connected)
    c:close()
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("reloads all or nothing: one failing service keeps every old one and the old policy", function()
    local p1, held = helpers.free_port("tcp", "0.0.0.0"), helpers.free_port("tcp", "0.0.0.0")
    local lo, hi = helpers.free_range(10, "tcp", "0.0.0.0")
    local function policy_with(a_port, extra)
      write(policy, ([[return {pools = {p = {range = {%d, %d}}},
        services = {{name = "a", port = %d, check = false}, {name = "b", pool = "p"}%s}}]]):format(lo, hi, a_port,
        extra or ""))
    end
    policy_with(p1)
    local d = helpers.start_daemon(dir, policy, 2)
    local before = by_name(status(d))
    local holder = squat(held)
    -- a moves to a held port and c is new: the reload must not happen at all
    policy_with(held, ', {name = "c", pool = "p"}')
    uv.kill(d.pid, "sighup")
    assert.is_true(helpers.run_until(function() return d.err:find("error reload_failed") ~= nil end, 10000, 50))
    local doc = status(d)
    assert.matches("EADDRINUSE", doc.reload.error)
    local now = by_name(doc)
    assert.equal(p1, now.a.port)
    assert.equal(before.b.port, now.b.port)
    assert.is_nil(now.c)
    holder:close()
    -- the same reload once the port is free: a moves, b and c run
    uv.kill(d.pid, "sighup")
    assert.is_true(helpers.run_until(function() return d.err:find("info reloaded") ~= nil end, 10000, 50))
    doc = status(d)
    assert.is_nil(doc.reload)
    now = by_name(doc)
    assert.equal(held, now.a.port)
    assert.equal(before.b.port, now.b.port) -- unchanged: never stopped
    assert.truthy(now.c)
    -- a change that keeps a's socket (its check) moves the listener: same port, no gap
    write(policy, ([[return {pools = {p = {range = {%d, %d}}},
      services = {{name = "a", port = %d}, {name = "b", pool = "p"}, {name = "c", pool = "p"}}}]])
      :format(lo, hi, held))
    uv.kill(d.pid, "sighup")
    assert.is_true(helpers.run_until(function()
      return select(2, d.err:gsub("info reloaded", "")) == 2 end, 10000, 50))
    assert.equal(held, by_name(status(d)).a.port)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("ends a looping policy with an error: at start, and at a reload while status still answers", function()
    write(policy, "while true do end")
    local code, err = run_once(dir, policy)
    assert.equal(1, code)
    assert.matches("protocol: policy: policy .* ran longer than 2000 ms", err)
    write(policy, [[return {services = {{name = "a", port = 1, listen = false}}}]])
    local d = start(dir, policy, 1)
    write(policy, "local t = {} while true do pcall(function() t[#t % 10 + 1] = 1 end) end")
    uv.kill(d.pid, "sighup")
    assert.is_true(helpers.run_until(function() return d.err:find("reload_failed") ~= nil end, 10000, 50))
    assert.matches("ran longer than 2000 ms", status(d).reload.error)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("drops a service removed from the policy at the next start, keeping run-time registrations", function()
    write(policy, [[return {services = {{name = "a", port = 1, listen = false}, {name = "gone", port = 2,
      listen = false}}}]])
    local d = start(dir, policy, 2)
    local code, out, err = cli(d, "register ext --port 3 --meta role=primary --json")
    assert.equal(0, code, err)
    assert.same({role = "primary"}, json.decode(out).metadata)
    d.proc:kill("sigkill")
    d.wait_exit()
    write(policy, [[return {services = {{name = "a", port = 1, listen = false}}}]])
    d = start(dir, policy, 1)
    local names = {}
    for _, s in ipairs(status(d).services) do names[#names + 1] = s.name end
    assert.same({"a", "ext"}, names)
    code, out = cli(d, "deregister ext")
    assert.equal(0, code)
    assert.equal("deregistered ext\n", out)
    code, out, err = cli(d, "deregister ext --json")
    assert.equal(1, code)
    assert.equal("not_found", json.decode(out).code)
    assert.matches("not_found: no registration ext", err)
    code, out, err = cli(d, "register a --port 1 --json")
    assert.equal(1, code)
    assert.equal("conflict", json.decode(out).code)
    assert.matches("conflict", err)
    code, out = cli(d, "events --json")
    assert.equal(0, code)
    local seen = {}
    for _, ev in ipairs(json.decode(out).events) do
      seen[ev.event] = true
      assert.is_true(ev.time <= os.time() and ev.time > os.time() - 60)
    end
    assert.is_true(seen.service_started and seen.deregistered)
    code, out = cli(d, "events --since 1h -H")
    assert.equal(0, code)
    assert.matches("^%d+%-%d+%-%d+T[%d:]+Z%s+service_started%s", out)
    assert.equal(2, (cli(d, "events --since 5x")))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("makes a missing state dir (0700), and refuses one it cannot write", function()
    write(policy, [[return {services = {{name = "a", port = 1, listen = false}}}]])
    local nested = dir .. "/x/y/state"
    local code, _, err = helpers.portman(("run %s --state-dir %s --admin-socket %s/adm/admin.sock")
      :format(policy, nested, dir), "timeout --preserve-status -s TERM 1")
    assert.equal(0, code, err)
    assert.equal(tonumber("700", 8), uv.fs_stat(nested).mode & tonumber("777", 8))
    assert.truthy(read(nested .. "/state.json"))
    assert.is_true(os.execute("mount -t tmpfs -o ro,size=64k none " .. dir .. "/x/y/state"))
    code, _, err = helpers.portman(("run %s --state-dir %s --admin-socket %s/adm/admin.sock")
      :format(policy, nested, dir))
    os.execute("umount " .. nested)
    assert.equal(1, code)
    assert.matches("EROFS.*the state dir .* cannot be written", err)
  end)

  it("refuses a registration the full disk cannot take, and saves once room is back", function()
    local state = dir .. "/state"
    assert(uv.fs_mkdir(state, tonumber("700", 8)))
    assert.is_true(os.execute("mount -t tmpfs -o size=64k none " .. state))
    write(policy, [[return {services = {{name = "a", port = 1, listen = false}}}]])
    local d = helpers.start_daemon(state, policy, 1, {netns = true})
    -- fill the disk
    os.execute(("dd if=/dev/zero of=%s/filler bs=4k count=100 2>/dev/null"):format(state))
    local code, out, err = cli(d, "register ext --port 7 --json")
    assert.equal(1, code)
    assert.equal("ENOSPC", json.decode(out).code)
    assert.matches("ENOSPC: the registration of 'ext' could not be saved", err)
    assert.is_true(helpers.run_until(function() return d.err:find("error state_save_failed") ~= nil end))
    assert.is_nil(by_name(status(d)).ext) -- not acknowledged, not kept
    os.remove(state .. "/filler")
    code, out, err = cli(d, "register ext --port 7")
    assert.equal(0, code, err)
    assert.equal("registered ext tcp 0.0.0.0:7\n", out)
    assert.matches('"ext"', read(state .. "/state.json"))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    os.execute("umount " .. state)
  end)

  it("stops at SIGTERM during its start, leaving the state file alone", function()
    local saved = '{"version":1,"registry":{"version":1,"services":[]},"runtime":["as it was"]}'
    write(dir .. "/state.json", saved)
    -- a policy whose chunk takes a second: the signal comes while it runs
    -- (asleep, not busy: on a loaded machine a busy second of CPU could
    -- outlast the policy's time budget)
    write(policy, [[os.execute("sleep 1")
      return {services = {{name = "a", port = 1, listen = false}}}]])
    local d = start(dir, policy, 0)
    helpers.run_until(function() return false end, 300)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    assert.equal("", d.out)
    assert.matches("daemon_stopping signal=sigterm", d.err)
    assert.is_nil(d.err:find("service_started", 1, true))
    assert.equal(saved, read(dir .. "/state.json"))
  end)

  it("keeps every service's port in the state file when some cannot open (EMFILE)", function()
    local lines = {"return {pools = {p = {range = {30000, 30199}}}, services = {"}
    for i = 1, 60 do lines[#lines + 1] = ('{name = "s%d", pool = "p", check = false},'):format(i) end
    lines[#lines + 1] = "}}"
    write(policy, table.concat(lines, "\n"))
    local d = start(dir, policy, 60)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    local function ports()
      local t = {}
      for _, s in ipairs(json.decode(read(dir .. "/state.json")).registry.services) do t[s.name] = s.port end
      return t
    end
    local before = ports()
    local n = 0
    for _ in pairs(before) do n = n + 1 end
    assert.equal(60, n)
    -- 40 fds: the first services open, the rest fail with EMFILE and wait
    local limited = helpers.NETNS:gsub("^unshare", "prlimit --nofile=40 unshare")
    local code, out, err = helpers.portman(("run %s --state-dir %s --admin-socket %s/adm/admin.sock")
      :format(policy, dir, dir), limited .. " timeout --preserve-status -s TERM 2")
    assert.equal(0, code, err)
    assert.matches("EMFILE", err)
    assert.matches(" EMFILE\n", out) -- a pending service's line shows its status
    assert.same(before, ports())
  end)
end)
