-- The example policies that run real programs, under `portman run` in a
-- network namespace of their own: examples/postgres-cluster.lua (three
-- PostgreSQL instances, initdb on first start; Debian's postgresql
-- package) and examples/web-activation.lua (a luv HTTP responder on the
-- socket portman hands over). Needs root.
local helpers = require "helpers"
local json = require "portman.json"

local q = helpers.shell_quote

local function status(d)
  local code, out, err = helpers.portman("status --json --admin-socket " .. d.sock)
  if code ~= 0 then return nil, err end
  return json.decode(out)
end

-- The services of d's status by name (nil while the daemon does not answer).
local function services(d)
  local doc = status(d)
  if not doc then return nil end
  local by = {}
  for _, s in ipairs(doc.services) do by[s.name] = s end
  return by
end

local function all_healthy(d, names)
  local by = services(d)
  if not by then return false end
  for _, n in ipairs(names) do
    if not by[n] or by[n].status ~= "healthy" then return false end
  end
  return true
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok and 0 or code, out
end

local function has(program) return sh("command -v " .. program) == 0 end

describe("examples/postgres-cluster.lua", function()
  local dir
  after_each(function()
    helpers.kill_daemons()
    os.execute("pkill -KILL -f " .. q(dir .. "/services") .. " 2>/dev/null") -- what a failed spec left
    os.execute("rm -rf " .. q(dir))
  end)

  it("initialises, serves and restarts three PostgreSQL instances, and leaves none behind", function()
    assert(io.open("/usr/lib/postgresql") or has("postgres"), "needs postgresql (make deps)")
    dir = helpers.tmpdir()
    -- postgres must reach its data directory under the state dir
    assert(os.execute("chmod 0711 " .. q(dir)))
    local names = {"pg1", "pg2", "pg3"}
    local d = helpers.start_daemon(dir, helpers.root .. "/examples/postgres-cluster.lua", 3, {netns = true})
    assert.is_nil(d.code, d.err)
    assert.is_true(helpers.run_until(function() return all_healthy(d, names) end, 90000, 250), d.err)
    local by = services(d)
    for _, n in ipairs(names) do
      local f = io.open(("%s/services/%s/PG_VERSION"):format(dir, n))
      assert.is_not_nil(f, n .. " was not initialised")
      f:close()
      assert.is_number(by[n].pid)
    end
    if has("psql") then
      for _, n in ipairs(names) do
        local code, out = sh(("nsenter -t %d -n psql -h 127.0.0.1 -p %d -U postgres -At -c 'select 1'")
          :format(d.pid, by[n].port))
        assert.equal(0, code, out)
        assert.equal("1\n", out)
      end
    end

    -- a postgres killed is started again, on the same port, and healthy again
    local victim = by.pg2
    assert(os.execute(("kill -KILL %d"):format(victim.pid)))
    assert.is_true(helpers.run_until(function()
      local s = services(d)
      return s and s.pg2.pid and s.pg2.pid ~= victim.pid and s.pg2.restarts >= 1 and s.pg2.status == "healthy"
    end, 60000, 250), d.err)
    local after = services(d)
    assert.equal(victim.port, after.pg2.port)
    assert.is_true(after.pg2.restarts >= 1)

    -- SIGTERM: the daemon stops every postgres before it exits
    assert(os.execute(("kill -TERM %d"):format(d.pid)))
    assert.equal(0, d.wait_exit(), d.err)
    -- "[/]tmp/..." matches the programs, not the shell that runs pgrep
    local code, out = sh("pgrep -af " .. q("[/]" .. dir:sub(2) .. "/services"))
    assert.equal(1, code, "postgres processes left: " .. out)
  end)
end)

describe("examples/web-activation.lua", function()
  local dir
  after_each(function()
    helpers.kill_daemons()
    os.execute("rm -rf " .. q(dir))
  end)

  it("serves the page from the port portman bound and handed over as fd 3", function()
    dir = helpers.tmpdir()
    local d = helpers.start_daemon(dir, helpers.root .. "/examples/web-activation.lua", 1, {netns = true})
    assert.is_nil(d.code, d.err)
    assert.is_true(helpers.run_until(function() return all_healthy(d, {"web"}) end, 20000, 100), d.err)
    local web = services(d).web
    local page = helpers.in_netns([[
      local uv = require "luv"
      local c, got, err = uv.new_tcp(), "", nil
      c:connect("127.0.0.1", tonumber((...)), function(cerr)
        if cerr then err = cerr; return c:close() end
        c:write("GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        c:read_start(function(rerr, data)
          if rerr or not data then return c:close() end
          got = got .. data
        end)
      end)
      uv.run()
      return got, err
    ]], {pid = d.pid, args = {tostring(web.port)}})
    assert.matches("^HTTP/1.0 200 OK\r\n", page)
    assert.matches("hello from web %(pid " .. web.pid .. "%)\n$", page)
    assert(os.execute(("kill -TERM %d"):format(d.pid)))
    assert.equal(0, d.wait_exit(), d.err)
  end)
end)
