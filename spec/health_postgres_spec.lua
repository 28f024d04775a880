-- The postgres health check against a real PostgreSQL (Debian's
-- postgresql package; scripts/deps test installs it): a cluster made by
-- initdb in a temporary folder, run as the postgres user on a port the
-- kernel chose on loopback. Needs root (su).
local helpers = require "helpers"
local uv = require "luv"

local q = helpers.shell_quote

-- The newest installed PostgreSQL's bin folder (/usr/lib/postgresql/V/bin).
local function pg_bin()
  local p = io.popen("ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null")
  local best, best_v
  for path in p:lines() do
    local v = tonumber(path:match("/postgresql/(%d+)"))
    if v and (not best_v or v > best_v) then best, best_v = path, v end
  end
  p:close()
  return best and best:match("^(.*)/initdb$")
end

describe("the postgres health check against PostgreSQL", function()
  local health = require "portman.health"

  it("is healthy while the server runs and unreachable once it stopped", function()
    local bin = pg_bin()
    assert(bin, "no /usr/lib/postgresql/*/bin/initdb: scripts/deps test installs postgresql")
    assert(uv.getuid() == 0, "needs root (su postgres)")
    local dir = helpers.tmpdir()
    local data = dir .. "/data"
    local server, h -- the postgres process (su's child) and the scheduler
    local log, exited = "", false
    finally(function()
      if h then
        h:close()
        for _, n in ipairs(h:names()) do h:remove(n) end
      end
      -- the postmaster's pid is the first line of postmaster.pid while it runs
      local f = io.open(data .. "/postmaster.pid")
      local pid = f and tonumber(f:read("l"))
      if f then f:close() end
      if pid and not exited then uv.kill(pid, "sigquit") end
      if server and not exited then
        if not helpers.run_until(function() return exited end, 10000) then server:kill("sigkill") end
      end
      uv.run("nowait")
      os.execute("rm -rf " .. q(dir))
    end)
    -- the folder is root's (0700): postgres must reach its data folder in it
    assert(os.execute(("chmod 755 %s && mkdir %s && chown postgres: %s"):format(q(dir), q(data), q(data))))
    local initdb = ("%s/initdb -D %s -A trust -U postgres --no-sync"):format(bin, data)
    assert(os.execute(("su postgres -s /bin/sh -c %s >%s/initdb.log 2>&1"):format(q(initdb), q(dir))),
      "initdb failed: see " .. dir .. "/initdb.log")

    local port = helpers.free_port("tcp")
    local cmd = ("exec %s/postgres -D %s -p %d -k %s -c listen_addresses=127.0.0.1"):format(bin, data, port, data)
    local stderr = uv.new_pipe()
    local pid
    server, pid = uv.spawn("su", {args = {"postgres", "-s", "/bin/sh", "-c", cmd}, stdio = {nil, nil, stderr}},
      function()
        exited = true
        server:close()
      end)
    assert(server, pid)
    stderr:read_start(function(_, chunk)
      if chunk then log = log .. chunk else stderr:close() end
    end)
    assert.is_true(helpers.run_until(function()
      return log:find("ready to accept connections", 1, true) ~= nil or exited
    end, 30000), "postgres did not start:\n" .. log)
    assert.is_false(exited, log)

    h = health.new()
    h:add{name = "pg", kind = "postgres", port = port, interval = 20, jitter = 0, rise = 1, fall = 1}
    h:start()
    assert.is_true(helpers.run_until(function() return h:status("pg").status == "healthy" end, 5000),
      tostring(h:status("pg").last and h:status("pg").last.msg))

    -- SIGINT: a fast shutdown
    local f = assert(io.open(data .. "/postmaster.pid"))
    local postmaster = assert(tonumber(f:read("l")))
    f:close()
    uv.kill(postmaster, "sigint")
    assert.is_true(helpers.run_until(function() return exited end, 15000), log)
    -- a run during the shutdown may see a reset; the runs after it, a refusal
    assert.is_true(helpers.run_until(function()
      local last = h:status("pg").last
      return last.msg ~= nil and last.msg:find("ECONNREFUSED", 1, true) ~= nil
    end, 5000), tostring(h:status("pg").last.msg))
    assert.equal("unreachable", h:status("pg").status)
    assert.matches("^refused: connect 127%.0%.0%.1:" .. port .. ": ECONNREFUSED", h:status("pg").last.msg)
    assert.matches("database system is shut down", log)
  end)
end)
