-- EACCES becomes "denied". Root bypasses the checks that give EACCES, so a
-- child drops the capabilities first (setpriv, util-linux): this needs root.
local helpers = require "helpers"

describe("portman.listener without privileges #lab", function()
  local pid = helpers.pid()
  local dir = ("/tmp/portman-denied-%d"):format(pid)

  setup(function()
    assert(os.execute("mkdir -p " .. dir .. " && chmod 500 " .. dir))
  end)

  teardown(function()
    os.execute("rm -rf " .. dir)
  end)

  local unprivileged = helpers.unprivileged

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
