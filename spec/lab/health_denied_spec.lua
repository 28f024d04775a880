-- The bind health check's denied status, seen by a process
-- without CAP_NET_BIND_SERVICE (root binds any port): needs root.
local helpers = require "helpers"

describe("portman.health without privileges #lab", function()
  it("reports denied for a privileged port, healthy for a free one", function()
    local out = helpers.unprivileged(([[
      local uv = require "luv"
      local h = require("portman.health").new()
      h:add{name = "low", kind = "bind", port = 1001, interval = 5, jitter = 0, fall = 1}
      h:add{name = "high", kind = "bind", port = %d, interval = 5, jitter = 0, rise = 1}
      h:start()
      local low, high
      local t = uv.new_timer()
      t:start(10, 10, function()
        low, high = h:status("low").status, h:status("high").status
        if low ~= "unknown" and high ~= "unknown" then
          t:close()
          h:close()
          for _, n in ipairs(h:names()) do h:remove(n) end
        end
      end)
      uv.run()
      print("low=" .. low, "high=" .. high)
    ]]):format(helpers.free_port()))
    assert.matches("low=denied", out)
    assert.matches("high=healthy", out)
  end)
end)
