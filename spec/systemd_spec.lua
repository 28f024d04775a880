-- `portman run` under systemd's own tool: systemd-socket-activate binds
-- the port and passes it by name, the daemon's service of that name adopts
-- it, and the daemon tells a NOTIFY_SOCKET listener (systemd's side,
-- played by the spec) READY, RELOADING, STOPPING.
local helpers = require "helpers"
local uv = require "luv"
local json = require "portman.json"
local listener = require "portman.listener"

local TOOL = "/usr/bin/systemd-socket-activate"

describe("portman run under systemd", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("adopts the socket passed as 'web' and speaks sd_notify through start, reload and stop", function()
    assert(io.open(TOOL), TOOL .. " is not installed: make deps installs systemd")
    local port = helpers.free_port("tcp", "0.0.0.0")
    local policy = dir .. "/policy.lua"
    helpers.write(policy, [[return {services = {{name = "web"}, {name = "other", port = 1, listen = false}}}]])
    local bus = assert(listener.open{proto = "unixgram", path = dir .. "/notify"})
    local notes = {}
    assert(bus:serve(function(_, data) notes[#notes + 1] = data end))
    local args = {"-l", "0.0.0.0:" .. port, "--fdname=web", "-E", "NOTIFY_SOCKET=" .. dir .. "/notify",
                  "-E", "PATH=" .. os.getenv("PATH")}
    for _, k in ipairs{"ASAN_OPTIONS", "UBSAN_OPTIONS", "PORTMAN_BUILD"} do
      if os.getenv(k) then table.move({"-E", k .. "=" .. os.getenv(k)}, 1, 2, #args + 1, args) end
    end
    local sock = dir .. "/adm/admin.sock"
    table.move({helpers.lua, helpers.root .. "/bin/portman", "run", policy, "--admin-socket", sock,
                "--state-dir", dir}, 1, 8, #args + 1, args)
    local errors, status = "", nil
    local err = uv.new_pipe(false)
    local proc, pid = uv.spawn(TOOL, {args = args, stdio = {nil, nil, err}}, function(code) status = code end)
    assert(proc, pid)
    err:read_start(function(_, data) if data then errors = errors .. data else err:close() end end)
    -- the first connection makes the tool exec portman (retried while the
    -- tool has not bound the port yet)
    local connected = false
    for _ = 1, 500 do
      local c, result = uv.new_tcp(), nil
      c:connect("127.0.0.1", port, function(e) result = e or true end)
      helpers.run_until(function() return result ~= nil end)
      c:close()
      if result == true then connected = true break end
      helpers.run_until(function() return false end, 20)
    end
    assert.is_true(connected, errors)
    assert.is_true(helpers.run_until(function() return notes[1] ~= nil end, 10000), errors)
    assert.equal("READY=1\nSTATUS=2 services", notes[1])
    local code, out = helpers.portman("status --json --admin-socket " .. sock)
    assert.equal(0, code)
    local web
    for _, s in ipairs(json.decode(out).services) do if s.name == "web" then web = s end end
    assert.equal(port, web.port) -- systemd's socket, not one portman bound
    uv.kill(pid, "sighup")
    assert.is_true(helpers.run_until(function() return #notes >= 3 end, 10000), errors)
    assert.matches("^RELOADING=1\nMONOTONIC_USEC=%d+\nSTATUS=reloading ", notes[2])
    assert.equal("READY=1\nSTATUS=2 services", notes[3])
    uv.kill(pid, "sigterm")
    assert.is_true(helpers.run_until(function() return status ~= nil and err:is_closing() end, 10000))
    assert.equal(0, status, errors)
    assert.equal("STOPPING=1\nSTATUS=draining", notes[4])
    assert.is_nil(errors:find("activation_unclaimed", 1, true))
    proc:close()
    bus:close()
    uv.run("nowait")
  end)
end)
