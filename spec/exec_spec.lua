-- Services that run their programs (`exec`), against the daemon as a child
-- process in a network namespace of its own: the port handed over, the
-- socket passed as fd 3, restarts with back-off, reload, stop, kill -9.
local helpers = require "helpers"
local uv = require "luv"
local json = require "portman.json"

local SERVER = helpers.root .. "/spec/support/tcp_echo.lua"

local function start(dir, policy, n)
  return helpers.start_daemon(dir, policy, n, {netns = true})
end

local function status(d)
  local code, out, err = helpers.portman("status --json --admin-socket " .. d.sock)
  assert.equal(0, code, err)
  local t = {}
  for _, s in ipairs(json.decode(out).services) do t[s.name] = s end
  return t
end

-- What the service on port answers, from inside the daemon's namespace.
local function ask(d, port)
  local out = helpers.in_netns(([[
    local uv = require "luv"
    local c, got = uv.new_tcp(), ""
    c:connect("127.0.0.1", %d, function(err)
      if err then got = err return c:close() end
      c:read_start(function(_, data) if data then got = got .. data else c:close() end end)
    end)
    uv.run()
    return got
  ]]):format(port), {pid = d.pid})
  return out
end

local function alive(pid) return uv.kill(pid, 0) == 0 end

describe("services that run their programs", function()
  local dir, policy
  before_each(function()
    dir = helpers.tmpdir()
    policy = dir .. "/policy.lua"
  end)
  after_each(function()
    helpers.kill_daemons()
    os.execute("rm -rf " .. dir)
  end)

  local function write_policy(extra)
    helpers.write(policy, ([[return {pools = {p = {range = {30000, 30099}}}, services = {
      {name = "plain", pool = "p", exec = {%q, %q, "{port}"}, restart = "on-failure", stop_timeout = 2000},
      {name = "act", pool = "p", exec = {%q, %q, "fd3", "1000"}, activation = true},
      %s}}]]):format(helpers.lua, SERVER, helpers.lua, SERVER, extra or ""))
  end

  it("hands a program its port ({port}, PORTMAN_PORT) or its socket as fd 3, bound before it runs", function()
    write_policy()
    local d = start(dir, policy, 2)
    local s = status(d)
    -- the activated program waits a second before it serves: its port
    -- was bound (and accepting into the backlog) all along
    local answer = ask(d, s.act.port)
    assert.equal(("%d 1 %d\n"):format(s.act.pid, s.act.port), answer)
    assert.is_true(helpers.run_until(function() return status(d).plain.status == "healthy" end, 10000, 100))
    assert.equal(("%d - %d\n"):format(s.plain.pid, s.plain.port), ask(d, s.plain.port))
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    assert.is_false(alive(s.plain.pid))
    assert.is_false(alive(s.act.pid))
  end)

  it("restarts a killed program on the same port, and goes through starting back to healthy", function()
    write_policy()
    local d = start(dir, policy, 2)
    assert.is_true(helpers.run_until(function() return status(d).plain.status == "healthy" end, 10000, 100))
    local before = status(d).plain
    uv.kill(before.pid, "sigkill")
    local seen = {}
    assert.is_true(helpers.run_until(function()
      local s = status(d).plain
      seen[s.status] = true
      return s.status == "healthy" and s.pid ~= before.pid
    end, 15000, 20))
    local after = status(d).plain
    assert.equal(before.port, after.port)
    assert.equal(1, after.restarts)
    -- the new instance is not healthy until its own check passed
    assert.is_true(seen.starting or seen.stopped or seen.unknown or seen.unreachable,
      "no status between the kill and healthy")
    assert.matches("program_exited.*service=plain.*signal=SIGKILL", d.err)
  end)

  it("leaves a program with restart = 'no' stopped, and backs off one that exits at once", function()
    helpers.write(policy, [[return {pools = {p = {range = {30000, 30099}}}, services = {
      {name = "once", pool = "p", exec = {"false"}, restart = "no", check = false},
      {name = "crash", pool = "p", exec = {"false"}, restart = "always", check = false}}}]])
    local d = start(dir, policy, 2)
    assert.is_true(helpers.run_until(function() return status(d).once.status == "stopped" end, 5000, 50))
    assert.equal(1, status(d).once.exit_code)
    helpers.run_until(function() return false end, 1500)
    -- 100 ms doubling: a handful of restarts in 1.5 s (100+200+400+800 ms
    -- of waiting), not the hundreds of a busy loop
    local restarts = status(d).crash.restarts
    assert.is_true(restarts >= 1 and restarts <= 6, "restarts: " .. restarts)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("stops a program whose check does not pass within start_timeout, and counts it as a failure", function()
    helpers.write(policy, ([[return {pools = {p = {range = {30000, 30099}}}, services = {
      {name = "mute", pool = "p", exec = {"sleep", "600"}, start_timeout = 300, restart = "no",
       check = {kind = "tcp", interval = 100, timeout = 100}},
      {name = "ok", pool = "p", exec = {%q, %q, "{port}"}, start_timeout = 5000,
       check = {kind = "tcp", interval = 100, timeout = 500, rise = 1}}}}]]):format(helpers.lua, SERVER))
    local d = start(dir, policy, 2)
    assert.is_true(helpers.run_until(function()
      local s = status(d)
      return s.mute.status == "stopped" and s.ok.status == "healthy"
    end, 10000, 100))
    assert.matches("start_timeout", d.err)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
  end)

  it("restarts only the program whose service changed at a reload", function()
    write_policy()
    local d = start(dir, policy, 2)
    local before = status(d)
    write_policy([[{name = "third", pool = "p", exec = {"sleep", "600"}, check = false}]])
    helpers.write(policy, (io.open(policy):read("a"):gsub('"{port}"}, restart', '"{port}"}, env = {X = "1"}, restart')))
    uv.kill(d.pid, "sighup")
    assert.is_true(helpers.run_until(function() return d.err:find("info reloaded") ~= nil end, 10000, 50))
    local after = status(d)
    assert.equal(before.act.pid, after.act.pid) -- unchanged: the same process
    assert.are_not.equal(before.plain.pid, after.plain.pid)
    assert.equal(before.plain.port, after.plain.port)
    assert.is_false(alive(before.plain.pid))
    assert.truthy(after.third.pid)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit())
    assert.is_false(alive(after.third.pid))
  end)

  it("leaves no program behind when portman is killed -9, and the next start runs one of each", function()
    write_policy()
    local d = start(dir, policy, 2)
    local s = status(d)
    d.proc:kill("sigkill")
    d.wait_exit()
    -- the parent-death signal ends them; the next start would reap the rest
    assert.is_true(helpers.run_until(function() return not alive(s.plain.pid) and not alive(s.act.pid) end,
      5000, 50))
    local d2 = start(dir, policy, 2)
    local s2 = status(d2)
    assert.equal(s.plain.port, s2.plain.port)
    -- every tcp_echo.lua process now is one of d2's two ("[t]" keeps the
    -- shell that runs pgrep from matching itself)
    local p = io.popen("pgrep -f '[t]cp_echo.lua'")
    local pids = {}
    for pid in p:lines() do pids[#pids + 1] = math.tointeger(tonumber(pid)) end
    p:close()
    table.sort(pids)
    local expected = {s2.plain.pid, s2.act.pid}
    table.sort(expected)
    assert.same(expected, pids)
    d2.proc:kill("sigterm")
    assert.equal(0, d2.wait_exit())
  end)
end)
