-- Socket activation the way systemd does it, with systemd's own tool:
-- systemd-socket-activate binds the sockets, waits for a first connection,
-- sets LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES and execs the service in
-- its own place, the sockets as fds 3, 4, ... This is the parsing that
-- `portman run` relies on (listeners.activation).
local helpers = require "helpers"

local TOOL = "/usr/bin/systemd-socket-activate"

describe("socket activation under systemd-socket-activate", function()
  local uv, cjson, listener, async
  local pid = helpers.pid()
  local have_tool = io.open(TOOL) ~= nil

  setup(function()
    uv = require "luv"
    cjson = require "cjson"
    listener = require "portman.listener"
    async = require "portman.async"
  end)

  local function until_true(pred)
    while not pred() do async.sleep(1) end
  end

  -- reads a luv stream until pred(text) holds or it ends
  local function read_until(stream, pred)
    return async.await(function(cb)
      local buf = ""
      stream:read_start(function(_, data)
        buf = buf .. (data or "")
        if not data or pred(buf) then
          stream:read_stop()
          cb(buf)
        end
      end)
    end)
  end

  -- connects, retrying while the tool has not bound the port yet
  local function connect_when_up(port)
    for _ = 1, 500 do
      local c, err = helpers.connect("127.0.0.1", port)
      if c then return c end
      assert.equal("ECONNREFUSED", err)
      async.sleep(10)
    end
    error("nothing listens on " .. port)
  end

  it("a child sees LISTEN_FDS and LISTEN_FDNAMES through listeners.activation() and serves on fds 3 and 4 by name",
     function()
    assert(have_tool, TOOL .. " is not installed: make deps installs systemd")
    helpers.loop(function()
      local web, api, spare = table.unpack(helpers.free_ports(3))
      -- the child reports readiness as a Type=notify service does
      local name = "portman-activation-" .. pid
      local bus = assert(listener.open{proto = "unixgram", abstract = name})
      local notes = {}
      assert(bus:serve(function(_, data) notes[#notes + 1] = data end))

      -- the tool passes on only PATH, TERM, USER, HOME and what -E names
      local args = {"-l", "127.0.0.1:" .. web, "-l", "127.0.0.1:" .. api, "-l", "127.0.0.1:" .. spare,
                    "--fdname=web:api:spare",
                    "-E", "LUA_PATH=" .. package.path, "-E", "LUA_CPATH=" .. package.cpath,
                    "-E", "NOTIFY_SOCKET=@" .. name}
      for _, k in ipairs{"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "PORTMAN_BUILD"} do
        if os.getenv(k) then table.move({"-E", k .. "=" .. os.getenv(k)}, 1, 2, #args + 1, args) end
      end
      table.move({helpers.lua, helpers.root .. "/spec/support/activated_child.lua"}, 1, 2, #args + 1, args)
      local out, err = uv.new_pipe(false), uv.new_pipe(false)
      local status, errors = nil, ""
      local proc, child_pid = uv.spawn(TOOL, {args = args, stdio = {nil, out, err}, cwd = helpers.root},
        function(code) status = code end)
      assert(proc, child_pid)
      err:read_start(function(_, data)
        if data then errors = errors .. data else err:close() end
      end)

      -- the first connection makes the tool exec the child, which accepts it
      local c1 = connect_when_up(web)
      local line = read_until(out, function(b) return b:find("\n") end)
      assert.truthy(line:find("\n"), "the child printed nothing; stderr:\n" .. errors)
      local info = cjson.decode(line)
      -- exec in place: the child is the process we started, and LISTEN_PID says so
      assert.equal(child_pid, info.pid)
      assert.same({LISTEN_FDS = "3", LISTEN_FDNAMES = "web:api:spare", LISTEN_PID = tostring(child_pid)},
        info.seen)
      assert.same({web = {3}, api = {4}, spare = {5}}, info.activation)
      assert.same({{name = "api", port = api, activated = true, fd = 4},
                   {name = "web", port = web, activated = true, fd = 3}}, info.listeners)
      -- a socket no listener claims stays open, but no child of the child gets it
      assert.same({"spare"}, info.unclaimed)
      assert.same({true, true, true}, info.cloexec)
      assert.equal(cjson.null, info.listen_fds_after) -- unset for the child's children

      local got = read_until(c1, function() return false end)
      c1:close()
      assert.equal(("web served by %d\n"):format(child_pid), got)
      local c2 = assert(helpers.connect("127.0.0.1", api))
      got = read_until(c2, function() return false end)
      c2:close()
      assert.equal(("api served by %d\n"):format(child_pid), got)

      until_true(function() return status ~= nil and err:is_closing() end)
      assert.equal(0, status, errors)
      until_true(function() return #notes == 2 end)
      assert.same({"READY=1\nSTATUS=serving web and api", "STOPPING=1"}, notes)
      out:close()
      proc:close()
      bus:close()
    end)
  end)
end)
