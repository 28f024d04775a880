-- The spec helpers themselves: a helper that lies makes every spec that
-- leans on it worthless. Needs root (network namespaces).
local helpers = require "helpers"
local uv = require "luv"

describe("spec helpers", function()
  it("count fds by kind, and see a socket come and go", function()
    local all, sockets = helpers.fd_count(), helpers.fd_count{kinds = {"socket"}}
    local u = uv.new_udp()
    assert(u:bind("127.0.0.1", 0))
    assert.equal(all + 1, helpers.fd_count())
    assert.equal(sockets + 1, helpers.fd_count{kinds = {"socket"}, samples = 3})
    local pipes = helpers.fd_count{kinds = {"pipe"}}
    u:close()
    uv.run("nowait")
    assert.equal(sockets, helpers.fd_count{kinds = {"socket"}})
    assert.equal(pipes, helpers.fd_count{kinds = {"pipe"}})
    assert.equal(all, helpers.fd_count())
  end)

  it("give ports and runs of ports that bind", function()
    local ports = helpers.free_ports(3, "udp")
    assert.equal(3, #ports)
    assert.is_true(ports[1] ~= ports[2] and ports[2] ~= ports[3] and ports[1] ~= ports[3])
    local lo, hi = helpers.free_range(20, "tcp", "0.0.0.0")
    assert.equal(lo + 19, hi)
    local held = {}
    for p = lo, hi do
      local t = uv.new_tcp()
      assert(t:bind("0.0.0.0", p))
      assert(t:listen(1, function() end)) -- a taken port fails here, not at bind
      held[#held + 1] = t
    end
    for _, t in ipairs(held) do t:close() end
    uv.run("nowait")
    -- a run that must skip a taken port
    local t = uv.new_tcp()
    assert(t:bind("127.0.0.1", 0))
    assert(t:listen(1, function() end))
    local taken = t:getsockname().port
    for _ = 1, 20 do
      local a, b = helpers.free_range(3)
      assert.is_false(taken >= a and taken <= b)
    end
    t:close()
    uv.run("nowait")
  end)

  describe("run", function()
    local async = require "portman.async"

    it("returns the task's results and raises its error", function()
      assert.same({n = 3, 1, nil, 3}, table.pack(helpers.run(function()
        async.sleep(5)
        return 1, nil, 3
      end)))
      assert.matches("boom", helpers.raises(helpers.run, function() async.sleep(1) error("boom") end))
    end)

    it("fails a task that hangs instead of waiting for it", function()
      local busy = uv.new_timer() -- something else keeps the loop from going idle
      busy:start(60000, 0, function() end)
      local t0 = uv.hrtime()
      assert.equal("run: watchdog: the task did not finish in 0.05 s",
        helpers.raises(helpers.run, function() async.await(function() end) end, {watchdog = 0.05}))
      assert.is_true((uv.hrtime() - t0) / 1e6 < 5000)
      busy:close()
      -- nothing at all to wait for: the loop goes idle at once
      assert.equal("run: the task never finished (the loop went idle)",
        helpers.raises(helpers.run, function() async.await(function() end) end))
    end)

    it("returns with stop_on_return while another handle keeps the loop alive", function()
      local keep = uv.new_timer()
      keep:start(60000, 0, function() end)
      assert.equal(7, helpers.run(function() async.sleep(5) return 7 end, {stop_on_return = true}))
      assert.equal(8, helpers.run(function() return 8 end, {stop_on_return = true}))
      -- without it, the loop is not idle and the watchdog says so
      assert.matches("loop was still busy", helpers.raises(helpers.run, function() return 9 end, {watchdog = 0.05}))
      keep:close()
      uv.run("nowait")
    end)
  end)

  describe("network namespaces", function()
    it("run a chunk where a port this host holds is free, and bring back what it returns", function()
      local t = uv.new_tcp()
      assert(t:bind("127.0.0.1", 0))
      assert(t:listen(1, function() end))
      local port = t:getsockname().port
      local got, none, half, word = helpers.in_netns([[
        local port, word = ...
        local uv = require "luv"
        local s = uv.new_tcp()
        assert(s:bind("127.0.0.1", tonumber(port)))
        assert(s:listen(1, function() end))
        local bound = s:getsockname().port
        s:close()
        uv.run()
        return {port = bound}, nil, 0.5, word]], {args = {port, "it's"}})
      t:close()
      uv.run("nowait")
      assert.same({port = port}, got)
      assert.equal("integer", math.type(got.port))
      assert.is_nil(none)
      assert.equal(0.5, half)
      assert.equal("it's", word)
    end)

    it("raise with the chunk's error", function()
      assert.matches("in_netns: the child failed:.*chunk says no", helpers.raises(helpers.in_netns, "error('chunk says no')"))
    end)

    it("join the namespace of a process", function()
      local proc, pid = uv.spawn("unshare", {args = {"-n", "sleep", "30"}}, function() end)
      assert(proc, pid)
      local ours = uv.fs_readlink("/proc/self/ns/net")
      local theirs
      assert.is_true(helpers.run_until(function()
        theirs = uv.fs_readlink("/proc/" .. pid .. "/ns/net")
        return theirs ~= ours
      end, 5000, 10))
      local inside = helpers.in_netns([[return require("luv").fs_readlink("/proc/self/ns/net")]], {pid = pid})
      local fresh = helpers.in_netns([[return require("luv").fs_readlink("/proc/self/ns/net")]])
      proc:kill("sigkill")
      proc:close()
      uv.run("nowait")
      assert.equal(theirs, inside)
      assert.not_equal(theirs, fresh)
      assert.not_equal(ours, fresh)
    end)
  end)

  it("runs a chunk in a child and reports how it ended", function()
    assert.same({"x\n", true}, {helpers.lua_child("print('x')")})
    local out, ok = helpers.lua_child("error('no $HOME here')")
    assert.is_false(ok)
    assert.matches("no %$HOME here", out)
  end)
end)
