-- Two daemons in one cluster through a real etcd (Debian's etcd-server) on
-- loopback: each registers its services there, each sees where the other's
-- run (the manager's `where` and a resolver with the registry), and a
-- daemon killed with SIGKILL drops out after its lease's TTL.
local helpers = require "helpers"
local etcd_cluster = require "support.etcd_cluster"

describe("daemons in a cluster #lab", function()
  local cluster, dir

  setup(function()
    cluster = etcd_cluster.start{n = 1}
  end)
  teardown(function()
    helpers.kill_daemons()
    if cluster then cluster:stop() end
  end)
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function()
    helpers.kill_daemons()
    os.execute("rm -rf " .. dir)
  end)

  local function node(name, address, port)
    local d = dir .. "/" .. name
    os.execute("mkdir -p " .. d)
    helpers.write(d .. "/policy.lua", ([[return {
      services = {{name = "web", address = %q, port = %d}},
      cluster = {etcd = %q, name = "spec-%d", node = %q, ttl = 2},
    }]]):format(address, port, cluster:endpoints(), helpers.pid(), name))
    return helpers.start_daemon(d, d .. "/policy.lua", 1)
  end

  -- the nodes a daemon's manager sees running service (web), once n of
  -- them are there
  local function where(d, n, service)
    local out
    helpers.run_until(function()
      out = helpers.repl(d, {('local t = {} for _, s in ipairs(manager:where(%q)) do '):format(service or "web")
        .. 't[#t + 1] = s.node .. "@" .. s.address .. ":" .. s.port end return table.concat(t, " ")'})
      local _, count = out:gsub("@", "")
      return count == n
    end, 15000, 200)
    return out
  end

  it("shares registrations, answers where a service runs, and drops a dead node", function()
    local a = node("node-a", "127.0.0.11", helpers.free_port())
    local b = node("node-b", "127.0.0.12", helpers.free_port())
    local both = where(a, 2)
    assert.matches('"node%-a@127%.0%.0%.11:%d+ node%-b@127%.0%.0%.12:%d+"', both)
    assert.matches('"node%-a@127%.0%.0%.11:%d+ node%-b@127%.0%.0%.12:%d+"', where(b, 2))
    -- a resolver that asks the registry first answers with both nodes
    local out = helpers.repl(a, {'local r = require("portman.resolver").new{registry = function(n) '
      .. 'return manager:where(n) end} local t = {} for _, x in ipairs(r:srv("web", nil) or {}) do '
      .. 't[#t + 1] = x.target end r:close() return table.concat(t, " ")'})
    assert.matches('"127%.0%.0%.11 127%.0%.0%.12"', out)
    -- etcd goes away: the daemons keep serving; when it is back, they go on
    cluster:kill(1, "sigkill")
    local code, status = helpers.portman("status --json --admin-socket " .. a.sock)
    assert.equal(0, code)
    assert.matches('"name":"web"', status)
    -- a service started during the outage is registered once etcd is back
    assert.matches("\n%d+\n", helpers.repl(a, {('manager:add_service{name = "late", address = "127.0.0.11", '
      .. 'port = %d}.port'):format(helpers.free_port())}))
    cluster:start_member(1)
    assert.is_true(cluster:wait_healthy(20000))
    assert.matches('"node%-a@127%.0%.0%.11:%d+ node%-b@127%.0%.0%.12:%d+"', where(b, 2))
    assert.matches('"node%-a@127%.0%.0%.11:%d+"', where(b, 1, "late"))
    -- node b dies without a word: its lease lapses and it leaves the view
    b.proc:kill("sigkill")
    b.wait_exit()
    assert.matches('"node%-a@127%.0%.0%.11:%d+"', where(a, 1))
    -- a clean stop revokes the lease at once
    a.proc:kill("sigterm")
    assert.equal(0, a.wait_exit())
    local list
    code, list = helpers.portman(("services --etcd %s --cluster spec-%d --json")
      :format(cluster:endpoints(), helpers.pid()))
    assert.equal(0, code)
    assert.matches("%[%]", list)
  end)
end)
