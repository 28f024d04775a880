local helpers = require "helpers"
local uv = require "luv"

describe("portman.async", function()
  local async, portman

  setup(function()
    local before = helpers.globals()
    portman = require "portman"
    async = require "portman.async"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)

  it("loads submodules on first use and nothing unknown", function()
    assert.equal(require "portman.allocator", portman.allocator)
    assert.is_nil(portman.nonesuch)
    assert.is_string(portman.version)
  end)

  it("runs a task to its end and returns its results", function()
    local a, b = portman.run(function(x)
      async.sleep(5)
      return x, "done"
    end, 41)
    assert.equal(41, a)
    assert.equal("done", b)
  end)

  it("raises a task's error from run", function()
    assert.matches("boom", helpers.raises(portman.run, function() error("boom") end))
  end)

  it("adapted functions take a callback outside a task", function()
    local called = false
    async.sleep(1, function() called = true end)
    uv.run()
    assert.is_true(called)
  end)

  it("refuses to wait outside a task", function()
    assert.matches("not inside portman.run or portman.spawn: pass a callback",
      helpers.raises(async.sleep, 1))
  end)

  it("copes with a callback that fires before the yield, and only once", function()
    local twice = async.adapt(function(cb) cb(1); cb(2) end)
    assert.equal(1, portman.run(function() return twice() end))
  end)

  it("passes nils through", function()
    local f = async.adapt(function(cb)
    local t = uv.new_timer()
    t:start(1, 0, function() t:close(); cb(nil, "e", nil) end)
  end)
    local r = table.pack(portman.run(function() return f() end))
    assert.equal(3, r.n)
    assert.same({nil, "e", nil}, {r[1], r[2], r[3]})
  end)

  it("logs an error in a spawned task instead of raising into the loop", function()
    local log = require "portman.log"
    local lines = {}
    local saved = log.out
    log.out = {write = function(_, ...) lines[#lines + 1] = table.concat({...}) end, flush = function() end}
    async.spawn(function() async.sleep(1); error("inside") end)
    uv.run()
    log.out = saved
    assert.matches("error task_failed error=.*inside", lines[1])
  end)

  it("safe() keeps a failing callback from escaping", function()
    local log = require "portman.log"
    local saved, got = log.out, nil
    log.out = {write = function(_, s) got = got or s end, flush = function() end}
    async.safe(function() error("cb failed") end, "test")()
    log.out = saved
    assert.matches("callback_failed", got)
  end)
end)

describe("portman.log", function()
  local log = require "portman.log"

  it("writes time, level, event and sorted, quoted fields", function()
    local line = log.format("warn", "pool_full", {pool = "api", msg = 'a "b"', n = 3})
    assert.matches('^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ warn pool_full msg="a \\"b\\"" n=3 pool=api$', line)
  end)
end)

describe("portman.state", function()
  local state = require "portman.state"
  local dir

  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("saves atomically and loads back", function()
    local path = dir .. "/state.json"
    assert.is_true(state.save(path, {services = {{name = "a", port = 1}}}))
    assert.same({services = {{name = "a", port = 1}}}, state.load(path))
    assert.is_true(state.save(path, {v = 2}))
    assert.same({v = 2}, state.load(path))
    local p = io.popen("ls " .. dir)
    assert.equal("state.json", p:read("a"):gsub("%s+$", ""))
    p:close()
  end)

  it("treats a missing file as empty state", function()
    assert.same({}, state.load(dir .. "/none.json"))
  end)

  it("returns protocol on a corrupt file", function()
    local f = io.open(dir .. "/bad.json", "w")
    f:write("{not json")
    f:close()
    local doc, err, code = state.load(dir .. "/bad.json")
    assert.is_nil(doc)
    assert.matches("^protocol: ", err)
    assert.equal("protocol", code)
  end)

  it("returns not_found, naming the errno, when the folder is missing", function()
    local ok, err, code = state.save(dir .. "/no/such/state.json", {})
    assert.is_nil(ok)
    assert.equal("not_found", code)
    assert.matches("^not_found: .*: ENOENT: No such file or directory", err)
  end)

  it("raises on bad arguments", function()
    assert.matches("bad argument #1 to 'save' %(string expected, got nil%)", helpers.raises(state.save, nil, {}))
    assert.matches("bad argument #2 to 'save' %(table expected, got string%)", helpers.raises(state.save, "x", "y"))
  end)
end)
