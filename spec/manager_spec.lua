local helpers = require "helpers"
local uv = require "luv"

-- No port here is fixed: pools start at ports the kernel gave as free
-- (on every address: the listeners bind 0.0.0.0), so the specs can name
-- the ports they expect whatever else runs on this host.
describe("portman.manager", function()
  local manager
  local m, events, dir
  local lo -- the first port of pool "api", free on this host

  setup(function()
    local before = helpers.globals()
    manager = require "portman.manager"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)

  before_each(function()
    dir = helpers.tmpdir()
    events = {}
    m = manager.new{state_file = dir .. "/state.json", check_host = true,
                    on_event = function(ev) events[#events + 1] = ev end}
    lo = helpers.free_range(2, "tcp", "0.0.0.0")
    m:add_pool("api", {range = {lo, lo + 1}})
  end)

  after_each(function()
    local done = false
    m:shutdown(0, function() done = true end)
    helpers.run_until(function() return done end)
    os.execute("rm -rf " .. dir)
  end)

  local function connect(port)
    local c, result = uv.new_tcp(), nil
    c:connect("127.0.0.1", port, function(err) result = err or true end)
    helpers.run_until(function() return result ~= nil end)
    return c, result
  end

  local function event(name)
    for _, ev in ipairs(events) do if ev.event == name then return ev end end
  end

  it("gives a service a port from its type's pool, a listener, a registration and a check", function()
    local before = os.time()
    local s = assert(m:add_service{name = "web", type = "api"})
    assert.is_true(s.since >= before and s.since <= os.time())
    s.since = nil
    assert.same({name = "web", type = "api", proto = "tcp", address = "0.0.0.0", port = lo,
                 status = "unknown", pool = "api"}, s)
    assert.is_true(m.pools.api:is_allocated(lo))
    assert.equal(lo, m.registry:get("web").port)
    local c, ok = connect(lo)
    assert.is_true(ok)
    c:close()
    assert.is_true(helpers.run_until(function() return m:service("web").status == "healthy" end, 8000))
    assert.same({event = "service_started", service = "web", port = lo, proto = "tcp"}, event("service_started"))
  end)

  it("reserves without listening, and refuses a port another process holds", function()
    local s = assert(m:add_service{name = "ext", pool = "api", listen = false})
    assert.equal(lo, s.port)
    local c, connected = connect(lo)
    c:close()
    assert.matches("ECONNREFUSED", connected)
    -- a socket outside the manager holds a port of this host (the kernel's
    -- choice), in a pool of that one port
    local t = uv.new_tcp()
    assert(t:bind("127.0.0.1", 0))
    assert(t:listen(1, function() end))
    local held = t:getsockname().port
    m:add_pool("held", {range = {held, held}})
    local ok, err, code = m:add_service{name = "taken", pool = "held", port = held, listen = false}
    t:close()
    assert.is_nil(ok)
    assert.equal("conflict", code)
    assert.equal(("conflict: port %d/tcp is already bound on this host (127.0.0.1)"):format(held), err)
    assert.is_false(m.pools.held:is_allocated(held)) -- given back
  end)

  it("undoes every step when a later one fails", function()
    assert(m:register{name = "clash", port = lo, address = "127.0.0.1"})
    local before = m.pools.api:allocated()
    -- the listener binds lo, then the registration conflicts
    local ok, err, code = m:add_service{name = "new", pool = "api", port = lo}
    assert.is_nil(ok)
    assert.equal("conflict", code)
    assert.matches("registered to 'clash'", err)
    assert.equal(before, m.pools.api:allocated())
    assert.is_nil(m:service("new"))
    local t = uv.new_tcp() -- the port is free again
    assert.truthy(t:bind("0.0.0.0", lo))
    assert.truthy(t:listen(1, function() end)) -- a TCP bind reports EADDRINUSE only here
    t:close()
  end)

  it("drains a stopping service's connections, then frees its port", function()
    assert(m:add_service{name = "web", pool = "api", check = false, handler = function() end})
    local c = connect(lo)
    helpers.run_until(function() return m.services.web.listener:connections() == 1 end)
    local forced
    m:stop_service("web", 50, function(n) forced = n end)
    helpers.run_until(function() return forced ~= nil end)
    c:close()
    assert.equal(1, forced)
    assert.is_false(m.pools.api:is_allocated(lo))
    assert.is_nil(m.registry:get("web"))
    assert.same({nil, "not_found: no service web", "not_found"}, {m:stop_service("web")})
  end)

  it("writes its state on changes and gives the ports back after a restart", function()
    local rlo, rhi = helpers.free_range(20, "tcp", "0.0.0.0")
    local outside
    repeat outside = helpers.free_port("tcp", "0.0.0.0") until outside < rlo or outside > rhi
    m:add_pool("r", {range = {rlo, rhi}, strategy = "random"})
    local a = assert(m:add_service{name = "a", pool = "r"}).port
    local b = assert(m:add_service{name = "b", pool = "r", listen = false}).port
    assert(m:register{name = "outside", port = outside, address = "127.0.0.2"}) -- outside the pool
    local saved = assert(require("portman.state").load(dir .. "/state.json"))
    assert.equal(3, #saved.registry.services)
    local done = false
    m:shutdown(0, function() done = true end)
    helpers.run_until(function() return done end)
    m = manager.new{state_file = dir .. "/state.json"}
    m:add_pool("r", {range = {rlo, rhi}, strategy = "random"})
    m:remember(saved)
    assert.equal(b, m:add_service{name = "b", pool = "r", listen = false}.port)
    assert.equal(a, m:add_service{name = "a", pool = "r"}.port)
    m:restore_registrations(saved)
    assert.equal(outside, m.registry:get("outside").port)
    local names = {}
    for _, s in ipairs(m:status().services) do names[#names + 1] = s.name .. "=" .. s.status end
    -- a is checked (no result yet); b (no listener) and the registration are not
    assert.same({"a=unknown", "b=unchecked", "outside=unchecked"}, names)
    assert.same({"outside"}, saved.runtime)
  end)

  it("gives a Lua check the service it checks, and takes its verdict as the status", function()
    local seen
    assert(m:add_service{name = "lua", pool = "api", check = {kind = "lua", interval = 50, rise = 1, fall = 1,
      fn = function(done, svc)
        seen = svc
        done(false, "unreachable", "no answer from " .. svc.port)
      end}})
    assert.is_true(helpers.run_until(function() return m:service("lua").status == "unreachable" end, 5000))
    local s = m:service("lua")
    assert.same({name = "lua", address = "0.0.0.0", port = s.port, proto = "tcp"}, seen)
    assert.equal("no answer from " .. s.port, s.reason)
    assert.is_true(s.last_check <= os.time() and s.last_check >= os.time() - 5)
  end)

  it("reports pool exhaustion", function()
    -- reserved ports are registered, and registering checks the host's sockets
    local tlo, thi = helpers.free_range(4, "tcp", "0.0.0.0")
    m:add_pool("tiny", {range = {tlo, thi}, warning = 50, critical = 75})
    for i = 1, 3 do assert(m:add_service{name = "s" .. i, pool = "tiny", listen = false}) end
    assert.is_true(helpers.run_until(function()
      local ev = events[#events]
      return ev.event == "exhaustion" and ev.level == "critical"
    end, 5000))
    assert.equal("tiny", events[#events].pool)
  end)

  it("raises on bad arguments", function()
    assert.matches("bad argument #1 to 'add_service' %(unknown option 'prot'%)",
      helpers.raises(function() m:add_service{name = "x", prot = "tcp"} end))
    assert.matches("bad argument #1 to 'add_service' %(pool: no pool 'nope'%)",
      helpers.raises(function() m:add_service{name = "x", pool = "nope"} end))
    assert.matches("bad argument #2 to 'add_pool' %(unknown option 'rnge'%)",
      helpers.raises(function() m:add_pool("p", {rnge = {1, 2}}) end))
    assert.matches("bad argument #1 to 'add_pool' %(pool 'api' exists%)",
      helpers.raises(function() m:add_pool("api", {range = {23000, 23001}}) end))
    assert(m:add_service{name = "x", pool = "api", listen = false})
    assert.matches("name: service 'x' exists", helpers.raises(function() m:add_service{name = "x", pool = "api"} end))
    assert.matches("'x' is a running service", helpers.raises(function() m:unregister("x") end))
  end)

  describe("setup", function()
    -- a program that only sleeps: the service's "server"
    local function service(extra)
      local spec = {name = "db", pool = "api", check = false, restart = "no",
                    exec = {"sh", "-c", "echo served >> {state}/log; exec sleep 30"}}
      for k, v in pairs(extra) do spec[k] = v end
      return spec
    end
    local function log_of()
      local f = io.open(dir .. "/services/db/log")
      if not f then return "" end
      local s = f:read("a")
      f:close()
      return s
    end

    it("runs once before exec when `creates` is missing, the service starting meanwhile", function()
      local e = assert(m:start_service(service{
        setup = {"sh", "-c", "sleep 0.2; echo setup >> {state}/log; echo 1 > {state}/done"},
        creates = "{state}/done"}))
      assert.equal("starting", e.status)
      assert.is_true(e.setup)
      assert.is_true(helpers.run_until(function() return log_of() == "setup\nserved\n" end, 5000, 20))
      local st = m:service("db")
      assert.is_nil(st.setup)
      assert.equal("unchecked", st.status)
      local kinds = {}
      for _, ev in ipairs(events) do kinds[ev.event] = true end
      assert.is_true(kinds.setup_done)
      -- a second start finds `creates`: no setup
      local done = false
      m:stop_service("db", 0, function() done = true end)
      helpers.run_until(function() return done end)
      assert(m:start_service(service{setup = {"sh", "-c", "echo setup >> {state}/log"},
                                     creates = "{state}/done"}))
      assert.is_true(helpers.run_until(function() return log_of() == "setup\nserved\nserved\n" end, 5000, 20))
    end)

    it("that fails keeps the service pending with its exit status, and the program never starts", function()
      assert(m:start_service(service{setup = {"sh", "-c", "exit 3"}}))
      assert.is_true(helpers.run_until(function() return m.pending.db ~= nil end, 5000))
      local st = m:service("db")
      assert.equal("protocol", st.status)
      assert.equal("protocol: setup of service db exited with status 3", st.reason)
      assert.equal("", log_of())
    end)

    it("is checked: an argv, and creates only with setup", function()
      assert.matches("setup: {program, args...} expected", select(2, manager.validate_service{name = "x",
        exec = {"a"}, setup = "initdb"}), 1, true)
      assert.matches("creates: only with setup", select(2, manager.validate_service{name = "x", exec = {"a"},
                                                                                     creates = "{state}/x"}), 1, true)
      assert.matches("setup: only with exec", select(2, manager.validate_service{name = "x", setup = {"a"}}), 1, true)
    end)
  end)
end)
