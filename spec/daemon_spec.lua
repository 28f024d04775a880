local helpers = require "helpers"
local uv = require "luv"
local cjson = require "cjson"

local function tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("l")
  p:close()
  return d
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Starts `portman run` in a child, waits until it has printed n service
-- lines, sends signal, and returns the exit code, stdout and stderr.
local function run_daemon(args, n, signal)
  local stdout, stderr = uv.new_pipe(), uv.new_pipe()
  local out, err, code = {}, {}, nil
  local env = {"PATH=" .. os.getenv("PATH")}
  for _, k in ipairs({"ASAN_OPTIONS", "UBSAN_OPTIONS", "PORTMAN_BUILD"}) do
    if os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
  end
  local proc
  local guard = uv.new_timer() -- a hung daemon fails the spec instead of hanging it
  proc = uv.spawn(helpers.lua, {args = {helpers.root .. "/bin/portman", "run", table.unpack(args)},
    stdio = {nil, stdout, stderr}, env = env}, function(c)
      code = c
      proc:close()
      guard:close()
    end)
  guard:start(10000, 0, function() proc:kill("sigkill") end)
  local signalled = false
  stdout:read_start(function(_, data)
    if data then
      out[#out + 1] = data
      local _, lines = table.concat(out):gsub("\n", "")
      if lines >= n and not signalled then
        signalled = true
        proc:kill(signal)
      end
    else
      stdout:close()
    end
  end)
  stderr:read_start(function(_, data)
    if data then err[#err + 1] = data else stderr:close() end
  end)
  uv.run()
  return code, table.concat(out), table.concat(err)
end

describe("portman run", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("places the example policy's services and stops cleanly on SIGINT", function()
    local code, out, err = run_daemon({helpers.root .. "/examples/default.lua"}, 4, "sigint")
    assert.equal(0, code, err)
    assert.matches("web%s+api%s+20000\n", out)
    assert.matches("admin%s+api%s+20001\n", out)
    assert.matches("metrics%s+api%s+20090\n", out)
    local allocator = require "portman.allocator"
    assert.matches("postgres%s+db%s+" .. allocator.hash_start("db-7", 25000, 25999), out)
    assert.matches("info daemon_started policy=", err)
    assert.matches("info daemon_stopping signal=sigint", err)
    assert.matches("%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ info service_placed pool=api port=20000 service=web", err)
  end)

  it("keeps each service's port across a restart through the state file", function()
    local policy = dir .. "/p.lua"
    write(policy, [[return {pools = {p = {range = {21000, 21999}, strategy = "random"}},
      services = {{name = "a", pool = "p"}, {name = "b", pool = "p"}}}]])
    local args = {policy, "--state-dir", dir}
    local code, first = run_daemon(args, 2, "sigterm")
    assert.equal(0, code)
    local saved = cjson.decode(assert(io.open(dir .. "/state.json")):read("a"))
    assert.equal(2, #saved.services)
    local code2, second = run_daemon(args, 2, "sigterm")
    assert.equal(0, code2)
    assert.equal(first, second)
  end)

  local broken = {
    {"a syntax error", "return {", "protocol: policy: .*unexpected symbol"},
    {"an unknown key", "return {pols = {}}", "protocol: policy: unknown key 'pols'"},
    {"a service with an unknown key", [[return {pools = {p = {range = {21000, 21010}}},
      services = {{name = "a", pool = "p", prt = 1}}}]], "unknown key 'services%[1%]%.prt'"},
    {"a service in no pool", [[return {services = {{name = "a", pool = "x"}}}]],
     "services%[1%]%.pool: no pool 'x'"},
    {"a bad pool", [[return {pools = {p = {range = {5, 1}}}}]], "pools%.p: %(range: lo 5 > hi 1%)"},
    {"a fixed port outside its pool", [[return {pools = {p = {range = {21000, 21010}}},
      services = {{name = "a", pool = "p", port = 22000}}}]], "service a: port 22000 outside its pool"},
    {"two services on one fixed port", [[return {pools = {p = {range = {21000, 21010}}},
      services = {{name = "a", pool = "p", port = 21005}, {name = "b", pool = "p", port = 21005}}}]],
     "conflict: port 21005 is already allocated %(service b%)"},
  }
  for _, case in ipairs(broken) do
    it("exits 1 on a policy with " .. case[1], function()
      write(dir .. "/p.lua", case[2])
      local status, _, err = helpers.portman("run " .. dir .. "/p.lua")
      assert.equal(1, status)
      assert.matches(case[3], err)
    end)
  end

  it("exits 1 on a missing policy and 2 without one", function()
    local status, _, err = helpers.portman("run " .. dir .. "/none.lua")
    assert.equal(1, status)
    assert.matches("not_found: policy", err)
    assert.equal(2, (helpers.portman("run")))
  end)
end)
