-- portman.log's capture of fd 2 (docs/design.md, "Logs"): what C
-- libraries, child processes and io.stderr write there becomes one
-- `warn library_output text=...` event a line; `portman run` turns it on
-- and takes --log-level and --log-format.
local helpers = require "helpers"
local json = require "portman.json"
local uv = require "luv"

-- An out that keeps the lines written to it.
local function sink()
  local s = {lines = {}, partial = ""}
  function s.write(self, ...)
    local text = self.partial .. table.concat({...})
    for line in text:gmatch("([^\n]*)\n") do self.lines[#self.lines + 1] = line end
    self.partial = text:match("([^\n]*)$")
    return self
  end
  function s.flush() end
  return s
end

describe("portman.log capture_stderr", function()
  local log = require "portman.log"

  after_each(function()
    log.close()
    uv.run("nowait") -- the capture's poll handle finishes closing
  end)

  local function events(s)
    local t = {}
    for i, line in ipairs(s.lines) do t[i] = assert(json.decode(line), line) end
    return t
  end

  it("makes each line fd 2 receives one warn library_output event, and leaks no fd", function()
    local before = helpers.fd_count()
    local s = sink()
    assert.is_true(log.setup{out = s, format = "json", capture_stderr = true})
    assert.is_true(log.capturing())
    io.stderr:write("from io.stderr\n")
    uv.fs_write(2, "from write(2)\n", -1)
    os.execute("echo 'from a child' >&2; echo 'two at once' >&2")
    assert.is_true(helpers.run_until(function() return #s.lines >= 4 end))
    os.execute("printf 'without a newline' >&2")
    log.close() -- logs what is still in the pipe
    assert.is_false(log.capturing())
    uv.run("nowait")
    local got = {}
    for i, e in ipairs(events(s)) do
      assert.same({"library_output", "warn"}, {e.event, e.level})
      assert.is_string(e.time)
      got[i] = e.text
    end
    assert.same({"from io.stderr", "from write(2)", "from a child", "two at once", "without a newline"}, got)
    assert.equal(before, helpers.fd_count())
  end)

  it("cuts a line at 4 KiB, saying how many bytes it dropped; an empty line makes no event", function()
    local s = sink()
    assert.is_true(log.setup{out = s, capture_stderr = true})
    os.execute("head -c 5000 /dev/zero | tr '\\0' x >&2; echo >&2; echo >&2; echo 'say \"hi\" = x' >&2")
    assert.is_true(helpers.run_until(function() return #s.lines >= 2 end))
    assert.equal(2, #s.lines)
    local body = s.lines[1]:gsub("^%S+ ", "")
    assert.equal("warn library_output text=" .. ("x"):rep(4096) .. " truncated=904", body)
    assert.equal('warn library_output text="say \\"hi\\" = x"', (s.lines[2]:gsub("^%S+ ", "")))
  end)

  it("never keeps a writer waiting on the loop: what the queue cannot hold is counted", function()
    local n, dropped = 0, nil
    local s = {write = function(_, line)
      local e = json.decode(line)
      if e.event == "library_output" then
        assert.equal(("y"):rep(100), e.text)
        n = n + 1
      else
        assert.equal("library_output_dropped", e.event)
        dropped = e.bytes
      end
    end, flush = function() end}
    assert.is_true(log.setup{out = s, format = "json", capture_stderr = true})
    -- 30,000 lines of 100 bytes while the loop does not run: 3 MB, more
    -- than the pipe (64 KiB) and the queue (1 MiB) hold
    assert.is_true(os.execute("head -c 3000000 /dev/zero | tr '\\0' y | fold -w 100 >&2"))
    log.close()
    assert.is_true(n > 1000, n)
    assert.is_number(dropped)
    assert.equal(30000 * 101, n * 101 + dropped)
  end)

  it("puts the same stderr back after a second setup, and after close", function()
    local before = helpers.fd_count()
    local target = uv.fs_readlink("/proc/self/fd/2")
    assert.is_true(log.setup{out = sink(), capture_stderr = true})
    assert.matches("^pipe:", uv.fs_readlink("/proc/self/fd/2"))
    assert.is_true(log.setup{out = sink(), capture_stderr = true, level = "error"})
    assert.equal(4, log.threshold)
    log.setup{out = sink()}
    assert.equal(target, uv.fs_readlink("/proc/self/fd/2"))
    assert.is_false(log.capturing())
    uv.run("nowait")
    assert.equal(before, helpers.fd_count())
  end)

  it("writes the logger's own lines to the original stderr, not back through the capture", function()
    local out, ok = helpers.lua_child([[
      local log, uv = require "portman.log", require "luv"
      assert(log.setup{format = "json", capture_stderr = true})
      log.info("mine", {n = 1})
      io.stderr:write("theirs\n")
      local t = uv.new_timer()
      t:start(50, 0, function() t:close() end)
      uv.run()
      log.close()
      io.stderr:write("after close\n")
    ]])
    assert.is_true(ok, out)
    local lines = {}
    for line in out:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
    assert.equal(3, #lines, out)
    local mine, theirs = json.decode(lines[1]), json.decode(lines[2])
    assert.same({"mine", "info", 1}, {mine.event, mine.level, mine.n})
    assert.same({"library_output", "warn", "theirs"}, {theirs.event, theirs.level, theirs.text})
    assert.equal("after close", lines[3])
  end)
end)

describe("portman run's log", function()
  local dir, policy
  before_each(function()
    dir = helpers.tmpdir()
    policy = dir .. "/policy.lua"
    -- the policy's chunk runs a child that writes to the fd 2 it inherits
    helpers.write(policy, [[
      os.execute("echo 'hi from a child' >&2")
      return {services = {{name = "a", port = 21501}}}
    ]])
  end)
  after_each(function()
    helpers.kill_daemons()
    os.execute("rm -rf " .. dir)
  end)

  -- Runs the policy until SIGTERM; returns the lines of its stderr.
  local function run(args)
    local d = helpers.start_daemon(dir, policy, 1, {netns = true, args = args})
    assert.is_nil(d.code, d.err)
    assert.is_true(helpers.run_until(function() return d.err:find("library_output", 1, true) ~= nil end, 5000), d.err)
    d.proc:kill("sigterm")
    assert.equal(0, d.wait_exit(), d.err)
    local lines = {}
    for line in d.err:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
    assert.equal("\n", d.err:sub(-1))
    return lines
  end

  it("with --log-format json writes only JSON lines on stderr, one event each", function()
    local lines = run({"--log-format", "json"})
    local seen, outputs = {}, {}
    for _, line in ipairs(lines) do
      local e = json.decode(line)
      assert.is_table(e, line)
      assert.is_string(e.event, line)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", e.time)
      assert.is_truthy(({debug = 1, info = 1, warn = 1, error = 1})[e.level], line)
      seen[e.event] = true
      if e.event == "library_output" then outputs[#outputs + 1] = e end
    end
    assert.is_true(seen.daemon_started and seen.daemon_stopped and true)
    assert.equal(1, #outputs, table.concat(lines, "\n"))
    assert.same({"warn", "hi from a child"}, {outputs[1].level, outputs[1].text})
  end)

  it("with --log-level warn hides the info lines (text by default)", function()
    local lines = run({"--log-level", "warn"})
    for i, line in ipairs(lines) do lines[i] = line:gsub("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ ", "") end
    assert.same({'warn library_output text="hi from a child"'}, lines)
  end)

  it("refuses an unknown --log-level or --log-format (exit 2, naming the flag)", function()
    local status, _, err = helpers.portman("run " .. policy .. " --log-level loud")
    assert.equal(2, status)
    assert.matches("portman run: --log-level: debug, info, warn, error expected, got 'loud'", err, nil, true)
    assert.matches("usage: portman run POLICY", err, nil, true)
    status, _, err = helpers.portman("run " .. policy .. " --log-format=xml")
    assert.equal(2, status)
    assert.matches("--log-format: text, json expected, got 'xml'", err, nil, true)
  end)

  it("reports a failure on the stderr it was given, as the command line does", function()
    local status, _, err = helpers.portman("run " .. dir .. "/none.lua --log-format json")
    assert.equal(1, status)
    assert.equal("portman run: not_found: policy " .. dir .. "/none.lua\n", err)
  end)
end)
