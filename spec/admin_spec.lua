-- The admin socket against a running daemon (a child process): request
-- lines are capped and framed in linear time, replies are written in full
-- before the close, silent clients are closed, and the client trusts only
-- a socket of its own uid or root.
local helpers = require "helpers"
local uv = require "luv"
local json = require "portman.json"

-- A raw client: connects, and collects what the daemon sends until it
-- closes the connection.
local function raw_client(sock)
  local c = {pipe = uv.new_pipe(), data = {}, closed = false}
  c.pipe:connect(sock, function(err)
    assert(not err, err)
    c.connected = true
    c.pipe:read_start(function(rerr, data)
      if rerr or not data then
        c.closed = true
        if not c.pipe:is_closing() then c.pipe:close() end
        return
      end
      c.data[#c.data + 1] = data
    end)
  end)
  assert(helpers.run_until(function() return c.connected end))
  function c.text() return table.concat(c.data) end
  return c
end

describe("the admin socket", function()
  local dir, policy
  before_each(function()
    dir = helpers.tmpdir()
    policy = dir .. "/policy.lua"
    helpers.write(policy, "return {services = {{name = 'a', listen = false, port = 1, type = 'x'}}}")
  end)
  after_each(function()
    helpers.kill_daemons()
    os.execute("rm -rf " .. dir)
  end)

  it("refuses a 16 MiB request line and answers status meanwhile", function()
    local d = helpers.start_daemon(dir, policy, 1)
    -- writing on after the daemon closed must give EPIPE, not end busted
    local sigpipe = uv.new_signal()
    sigpipe:start("sigpipe", function() end)
    local big = raw_client(d.sock)
    local chunk = ("x"):rep(64 * 1024)
    local sent = 0
    local function more()
      if sent >= 16 * 1024 * 1024 or big.closed then return end
      sent = sent + #chunk
      big.pipe:write(chunk, function() more() end)
    end
    more()
    local other = raw_client(d.sock)
    other.pipe:write('{"op":"status"}\n')
    assert.is_true(helpers.run_until(function() return other.closed end, 5000))
    assert.equal("a", json.decode(other.text()).services[1].name)
    assert.is_true(helpers.run_until(function() return big.closed end, 10000))
    assert.equal('{"error":"protocol: line longer than 1048576 bytes"}\n', big.text())
    assert.matches("warn admin_request_refused", d.err)
    sigpipe:close()
  end)

  it("writes a large status in full before it closes, logs it, and leaves no garbage", function()
    local d = helpers.start_daemon(dir, policy, 1, {args = {"--log-level", "debug"}})
    -- 10,000 registrations: a reply far larger than the socket's buffer
    local out = helpers.repl(d, {"for i = 1, 10000 do manager.registry:register({name = 'r' .. i .. ('-'):rep(300), "
      .. "port = 10000 + i % 50000, type = 'x', metadata = {note = ('n'):rep(100)}}, {check_host = false}) end",
      "#manager.registry:list()", "(collectgarbage() and nil) or collectgarbage('count')"})
    local count, before = out:match("(%d+)%s+([%d.]+)%s*$")
    assert.equal("10001", count)
    before = tonumber(before)
    local c = raw_client(d.sock)
    c.pipe:write('{"op":"status"}\n')
    assert.is_true(helpers.run_until(function() return c.closed end, 10000))
    local doc = json.decode(c.text())
    assert.equal(10001, #doc.services)
    -- the daemon's part, at debug level
    assert.is_true(helpers.run_until(function() return d.err:find("admin_request", 1, true) ~= nil end, 5000))
    assert.matches("debug admin_request bytes=" .. #c.text() .. " cpu_ms=[%d.]+ ms=[%d.]+ op=status sent_ms=[%d.]+",
      d.err)
    -- the reply's garbage (its text alone is 4 MB) was collected once it
    -- was out: the heap, not collected here, grew by far less than the text
    local after = tonumber(helpers.repl(d, {"collectgarbage('count')"}):match("([%d.]+)%s*$"))
    assert.is_true(after - before < #c.text() / 2 / 1024,
      ("%.0f KiB before, %.0f KiB after, a reply of %d bytes"):format(before, after, #c.text()))
  end)

  it("the client refuses a socket in a directory another uid owns, or one anyone may write", function()
    local d = helpers.start_daemon(dir, policy, 1)
    local adm = dir .. "/adm"
    assert(uv.fs_chown(adm, 65534, 65534))
    local code, out, err = helpers.portman("status --json --admin-socket " .. d.sock)
    assert.equal(1, code)
    assert.matches("^portman status: denied: admin socket .*: its directory must belong to uid 0 or root", err)
    assert.equal("denied", json.decode(out).code)
    assert(uv.fs_chown(adm, 0, 0))
    assert(uv.fs_chmod(adm, tonumber("777", 8)))
    code, out, err = helpers.portman("status --admin-socket " .. d.sock)
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("writable by no one else", err)
    assert(uv.fs_chmod(adm, tonumber("700", 8)))
    code = helpers.portman("status --admin-socket " .. d.sock)
    assert.equal(0, code)
  end)

  it("the client refuses a daemon that runs as another uid", function()
    -- a stand-in daemon run by nobody, in a directory that is root's again
    -- once its socket is made
    local adm = dir .. "/fake"
    assert(uv.fs_chmod(dir, tonumber("711", 8)))
    assert(uv.fs_mkdir(adm, tonumber("700", 8)))
    assert(uv.fs_chown(adm, 65534, 65534))
    local sock = adm .. "/admin.sock"
    local server = ([[
      local uv = require "luv"
      local s = uv.new_pipe()
      assert(s:bind(%q))
      s:listen(8, function() local c = uv.new_pipe(); s:accept(c); c:write('{"services":[]}\n') end)
      uv.new_timer():start(5000, 0, function() os.exit(0) end)
      io.stdout:write("ready\n"); io.stdout:flush()
      uv.run()
    ]]):format(sock)
    local p = io.popen(("setpriv --reuid=65534 --regid=65534 --clear-groups lua5.4 -e %q"):format(server))
    assert.equal("ready", p:read("l"))
    assert(uv.fs_chown(adm, 0, 0))
    assert(uv.fs_chmod(adm, tonumber("755", 8)))
    local code, _, err = helpers.portman("status --admin-socket " .. sock)
    p:close()
    assert.equal(1, code)
    assert.matches("denied: admin socket .* is served by uid 65534, not 0 or root", err)
  end)

  it("turns away admin clients past its cap, so that idle ones cannot starve the health checks", function()
    -- 64 fds: the cap is 16 clients; 40 idle ones come, the check goes on
    local server, port = helpers.tcp_acceptor()
    helpers.write(policy, ("return {services = {{name = 'a', listen = false, port = %d, "
      .. "check = {kind = 'tcp', port = %d, interval = 50}}}}"):format(helpers.free_port(), port))
    local d = helpers.start_daemon(dir, policy, 1, {wrap = {"prlimit", "--nofile=64", "--"}})
    local function status_of_a()
      local code, out = helpers.portman("status --json --admin-socket " .. d.sock)
      return code == 0 and json.decode(out).services[1].status
    end
    assert.is_true(helpers.run_until(function() return status_of_a() == "healthy" end, 10000, 50))
    local clients = {}
    for i = 1, 40 do clients[i] = raw_client(d.sock) end
    assert.is_true(helpers.run_until(function()
      local turned = 0
      for _, c in ipairs(clients) do if c.closed then turned = turned + 1 end end
      return turned == 24
    end, 5000))
    assert.matches('"code":"exhausted"', clients[40].text())
    assert.matches("warn admin_busy", d.err)
    -- the check kept its fds: it is healthy, never unreachable
    helpers.run_until(function() return false end, 500)
    for _, c in ipairs(clients) do if not c.closed then c.pipe:close() end end
    assert.is_true(helpers.run_until(function() return status_of_a() == "healthy" end, 10000, 50))
    assert.is_nil(d.err:find("unreachable", 1, true))
    server:close()
  end)

  it("closes a client that stays silent", function()
    local admin = require "portman.admin"
    assert(uv.fs_mkdir(dir .. "/adm", tonumber("700", 8)))
    local server = assert(admin.serve(dir .. "/adm/admin.sock", {status = function() return {} end,
                                                                 idle_timeout = 50}))
    local c = raw_client(dir .. "/adm/admin.sock")
    assert.is_true(helpers.run_until(function() return c.closed end, 5000))
    assert.equal("", c.text())
    server.close()
    uv.run("nowait")
  end)

  it("the client times out a daemon that does not answer", function()
    -- a stand-in daemon that accepts and never answers
    local sock = dir .. "/mute/admin.sock"
    assert(uv.fs_mkdir(dir .. "/mute", tonumber("700", 8)))
    local s = uv.new_pipe()
    assert(s:bind(sock))
    local clients = {}
    s:listen(8, function()
      local c = uv.new_pipe()
      s:accept(c)
      clients[#clients + 1] = c
    end)
    local child = {}
    local stdout = uv.new_pipe()
    local env = {"PATH=" .. os.getenv("PATH")}
    for _, k in ipairs({"ASAN_OPTIONS", "UBSAN_OPTIONS", "PORTMAN_BUILD"}) do
      if os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
    end
    child.proc = uv.spawn(helpers.lua, {args = {helpers.root .. "/bin/portman", "status", "--timeout", "200",
      "--admin-socket", sock}, stdio = {nil, nil, stdout}, env = env}, function(code)
      child.code = code
      child.proc:close()
    end)
    child.err = ""
    stdout:read_start(function(_, data) if data then child.err = child.err .. data else stdout:close() end end)
    assert.is_true(helpers.run_until(function() return child.code ~= nil and stdout:is_closing() end, 10000))
    assert.equal(1, child.code)
    assert.matches("timeout: admin socket .*: no answer in 200 ms", child.err)
    for _, c in ipairs(clients) do c:close() end
    s:close()
    uv.run("nowait")
  end)
end)
