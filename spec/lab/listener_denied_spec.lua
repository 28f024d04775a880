-- EACCES becomes "denied". Root bypasses the checks that give EACCES, so a
-- child drops the capabilities first (setpriv, util-linux): this needs root.
local helpers = require "helpers"
local LUA = helpers.lua or os.getenv("PORTMAN_LUA") or "lua5.4"

describe("portman.listener without privileges #lab", function()
  local pid = helpers.pid()
  local dir = ("/tmp/portman-denied-%d"):format(pid)

  setup(function()
    assert(os.execute("mkdir -p " .. dir .. " && chmod 500 " .. dir))
  end)

  teardown(function()
    os.execute("rm -rf " .. dir)
  end)

  -- runs a Lua chunk in a child without CAP_NET_BIND_SERVICE and the DAC
  -- overrides; returns its stdout
  local function unprivileged(chunk)
    local cmd = ("cd %s && LUA_PATH=%q LUA_CPATH=%q setpriv "
      .. "--bounding-set=-net_bind_service,-dac_override,-dac_read_search --inh-caps=-all "
      .. "%s -e %q 2>&1"):format(helpers.root, package.path, package.cpath, LUA, chunk)
    local p = assert(io.popen(cmd))
    local out = p:read("a")
    assert(p:close(), out)
    return out
  end

  it("reports a privileged port as denied, with the errno name", function()
    local out = unprivileged([[
      local l = require "portman.listener"
      print(l.open{address = "127.0.0.1", port = 1001})]])
    assert.equal("nil\tdenied: bind 127.0.0.1:1001: EACCES: Permission denied\tdenied\n", out)
  end)

  it("reports a Unix path in a directory it may not write as denied", function()
    local out = unprivileged(([[
      local l = require "portman.listener"
      local s, msg, code = l.open{proto = "unix", path = "%s/x.sock"}
      print(s, msg, code)]]):format(dir))
    assert.equal(("nil\tdenied: bind %s/x.sock: EACCES: Permission denied\tdenied\n"):format(dir), out)
  end)
end)
