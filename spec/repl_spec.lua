-- The REPL inside the daemon: a line runs under a time budget (a loop, even
-- one a pcall or a coroutine wraps, ends with a timeout and the daemon
-- serves on), the client interrupts a running line, `help` says what is at
-- hand, and names and fields complete without running code. In-process for
-- the REPL object, then against a daemon in a child process: through the
-- protocol (portman.admin.connect), and through `portman repl` in a
-- pseudo-terminal (`script`), with readline, Ctrl-C and Tab.
local helpers = require "helpers"
local uv = require "luv"
local admin = require "portman.admin"

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

describe("the REPL object", function()
  it("ends a looping line after its budget, a pcall or a coroutine around the loop too, and goes on", function()
    local r = admin.repl({}, {budget = 100})
    for _, line in ipairs{
      "while true do end",
      "pcall(function() while true do end end)",
      "while true do pcall(function() while true do end end) end",
      "coroutine.wrap(function() while true do end end)()",
      "print(pcall(coroutine.wrap(function() while true do end end)))",
    } do
      local t0 = uv.hrtime()
      local out, prompt = r:feed(line)
      local ms = (uv.hrtime() - t0) / 1e6
      assert.matches("^timeout: REPL line ran longer than 100 ms$", out, nil, line)
      assert.equal("> ", prompt)
      assert.is_true(ms >= 100 and ms < 3000, line .. ": " .. ms .. " ms")
    end
    assert.equal("2", (r:feed("1 + 1")))
    -- print's output before the timeout is kept
    assert.equal("before\ntimeout: REPL line ran longer than 100 ms", (r:feed("print('before') while true do end")))
  end)

  it("lets a coroutine the line made run on after the line, unbudgeted", function()
    local r = admin.repl({}, {budget = 5000})
    assert.equal("", (r:feed("g = coroutine.wrap(function() for i = 1, math.huge do coroutine.yield(i) end end)")))
    assert.equal("1", (r:feed("g()")))
    assert.equal("200030000", (r:feed("local s = 0 for _ = 1, 20000 do s = s + g() end return s")))
    -- resumed outside any line (as a daemon's callback would)
    assert.equal(20002, r.env.g())
  end)

  it("takes a budget of positive integer ms", function()
    assert.matches("bad argument #2 to 'repl' %(budget: positive integer ms expected, got 0%)",
      helpers.raises(admin.repl, {}, {budget = 0}))
    assert.matches("got 1.5", helpers.raises(admin.repl, {}, {budget = 1.5}))
    assert.matches("bad argument #2 to 'serve' %(repl_budget: ",
      helpers.raises(admin.serve, "/nonexistent/admin.sock", {repl_budget = -1}))
  end)

  it("does not run a line its client already interrupted", function()
    local r = admin.repl({}, {budget = 5000})
    assert.equal("interrupted: REPL line was interrupted", (r:feed("x = 1", {interrupted = true})))
    assert.equal("nil", (r:feed("x")))
  end)

  it("shows a value whose tostring raises", function()
    local r = admin.repl({}, {budget = 1000})
    local t = uv.new_timer()
    t:close()
    uv.run("nowait")
    r.env.t = t
    assert.matches("^{closed = ", (r:feed("{closed = t}")))
  end)

  it("drops an incomplete chunk on cancel", function()
    local r = admin.repl({})
    assert.equal(">> ", select(2, r:feed("for i = 1, 2 do")))
    r:cancel()
    assert.same({"3", "> "}, {r:feed("3")})
  end)

  it("prints help for a bare `help`, unless a variable is named help", function()
    local r = admin.repl({manager = {}, daemon = {}})
    local out = r:feed("help")
    assert.matches("\n  daemon +the daemon", out)
    assert.matches("\n  manager +the manager", out)
    for _, call in ipairs{"manager:status()", "manager:names()", "manager:service(name)", "manager:register{",
                          "manager:unregister(name)", ".exit"} do
      assert.truthy(out:find(call, 1, true), call)
    end
    assert.equal(out, (r:feed("  help ")))
    -- inside a chunk, help is Lua
    assert.equal(">> ", select(2, r:feed("do")))
    assert.same({"", ">> "}, {r:feed("help")})
    r:cancel()
    assert.equal("", (r:feed("help = 42")))
    assert.equal("42", (r:feed("help")))
    assert.matches("\n  help +number\n", r:help())
    r:feed("help = nil")
    assert.equal(out, (r:feed("help")))
  end)

  it("completes names and fields by walking tables and __index tables, never calling anything", function()
    local called = false
    local base = {deep = function() end, value = 1, _hidden = function() end}
    local mid = setmetatable({method = function() end, field = {x = 1}}, {__index = base})
    local obj = setmetatable({own = true}, {__index = mid})
    local trap = setmetatable({}, {__index = function() called = true end})
    local r = admin.repl({obj = obj, trap = trap, manager = {}})
    assert.same({"obj.deep", "obj.field", "obj.method", "obj.own", "obj.value"}, r:complete("obj."))
    assert.same({"obj:deep", "obj:method"}, r:complete("obj:"))
    assert.same({"obj._hidden"}, r:complete("obj._"))
    assert.same({"obj.field.x"}, r:complete("obj.field."))
    assert.same({}, r:complete("obj.nothing."))
    assert.same({}, r:complete("trap.anything.x"))
    assert.same({}, r:complete("trap:"))
    assert.is_false(called)
    assert.same({"manager"}, r:complete("man"))
    assert.same({"string.format"}, r:complete("string.form"))
    -- a string's methods come from its metatable
    r:feed("s = 'x'")
    assert.same({"s:upper"}, r:complete("s:up"))
    -- names typed in the REPL complete too
    r:feed("my_var = 1")
    assert.same({"my_var"}, r:complete("my_"))
    for _, bad in ipairs{"1.x", "obj:method.x", "obj..x", "a b", "obj[1]."} do
      assert.same({}, r:complete(bad), bad)
    end
  end)
end)

-- ---- against a daemon ----

local POLICY = [[return {pools = {p = {range = {21500, 21599}}}, services = {{name = "a", pool = "p"}}}]]

-- The output of a terminal without its control sequences (bracketed paste,
-- redraws) and carriage returns.
local function clean(s)
  return (s:gsub("\r", ""):gsub("\27%[[%?%d;]*[%a@]", ""))
end

-- `portman repl` in a pseudo-terminal (script), driven like expect: send
-- keys, wait for output.
local function terminal(d, dir, term)
  local stdin, stdout = uv.new_pipe(), uv.new_pipe()
  local env = {"PATH=" .. os.getenv("PATH"), "TERM=" .. term, "HOME=" .. dir}
  for _, k in ipairs({"ASAN_OPTIONS", "UBSAN_OPTIONS", "PORTMAN_BUILD"}) do
    if os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
  end
  -- lua-readline leaks each completion's list: not portman's to fix
  env[#env + 1] = "LSAN_OPTIONS=suppressions=" .. helpers.root .. "/spec/support/lsan.supp"
  local t = {raw = "", pos = 1}
  -- exec: a shell between script and portman would die of the Ctrl-C
  local cmd = ("exec %s %s/bin/portman repl --admin-socket %s"):format(helpers.lua, helpers.root, d.sock)
  local err
  t.proc, err = uv.spawn("script", {args = {"-q", "-e", "-c", cmd, "/dev/null"}, stdio = {stdin, stdout, nil},
                                    env = env}, function(code)
    t.code = code
    t.proc:close()
  end)
  assert(t.proc, err)
  stdout:read_start(function(_, data)
    if data then t.raw = t.raw .. data elseif not stdout:is_closing() then stdout:close() end
  end)
  function t.send(keys) stdin:write(keys) end
  -- Waits until the output after the last match holds text (plain); returns
  -- the output up to it.
  function t.expect(text, ms)
    local s, e
    helpers.run_until(function()
      s, e = clean(t.raw):find(text, t.pos, true)
      return s ~= nil
    end, ms or 10000)
    local out = clean(t.raw)
    assert(s, ("expected %q after:\n%s"):format(text, out:sub(t.pos)))
    local seen = out:sub(t.pos, e)
    t.pos = e + 1
    return seen
  end
  function t.finish()
    t.send("\4")
    assert.is_true(helpers.run_until(function() return t.code ~= nil and stdout:is_closing() end, 10000))
    stdin:close()
    return t.code, clean(t.raw)
  end
  return t
end

describe("portman repl against a daemon", function()
  local dir, d
  before_each(function()
    dir = helpers.tmpdir()
    helpers.write(dir .. "/policy.lua", POLICY)
    d = helpers.start_daemon(dir, dir .. "/policy.lua", 1, {netns = true})
  end)
  after_each(function()
    helpers.kill_daemons()
    os.execute("rm -rf " .. dir)
  end)

  it("ends looping lines after the budget; status waits for them, and the session goes on", function()
    local conn = assert(admin.connect(d.sock))
    local hello = assert(conn:request({op = "repl"}))
    assert.equal(5000, hello.budget)
    assert.equal("> ", hello.prompt)
    for _, line in ipairs{"while true do end", "pcall(function() while true do end end)"} do
      conn:send({["in"] = line})
      -- a status asked while the line runs is answered once it has ended
      local status = {out = ""}
      local stdout = uv.new_pipe()
      status.proc = uv.spawn(helpers.lua, {args = {helpers.root .. "/bin/portman", "status", "--json",
        "--timeout", "20000", "--admin-socket", d.sock}, stdio = {nil, stdout, nil}}, function(code)
        status.code = code
        status.proc:close()
      end)
      stdout:read_start(function(_, data) if data then status.out = status.out .. data else stdout:close() end end)
      local t0 = uv.hrtime()
      local reply = assert(conn:receive(20000))
      local ms = (uv.hrtime() - t0) / 1e6
      assert.equal("timeout: REPL line ran longer than 5000 ms", reply.out)
      assert.equal("> ", reply.prompt)
      assert.is_true(ms > 4000 and ms < 15000, ms)
      assert.is_true(helpers.run_until(function() return status.code ~= nil and stdout:is_closing() end, 10000))
      assert.equal(0, status.code)
      assert.matches('"name":"a"', status.out)
    end
    assert.equal("2", assert(conn:request({["in"] = "1 + 1"})).out)
    conn:close()
    local code, out = helpers.portman("status --admin-socket " .. d.sock)
    assert.equal(0, code)
    assert.matches("\na +", out)
  end)

  it("ends a running line on the client's interrupt, and ignores an interrupt with nothing running", function()
    local conn = assert(admin.connect(d.sock))
    assert(conn:request({op = "repl"}))
    conn:send({["in"] = "n = 0 while true do n = n + 1 end"})
    local timer = uv.new_timer()
    timer:start(300, 0, function() conn:send_line('{"interrupt":true}') end)
    local t0 = uv.hrtime()
    local reply = assert(conn:receive(20000))
    local ms = (uv.hrtime() - t0) / 1e6
    timer:close()
    assert.equal("interrupted: REPL line was interrupted", reply.out)
    assert.is_true(ms >= 250 and ms < 3000, ms)
    -- the line ran (n counted) and the interrupt line was read, not answered
    assert.equal("true", conn:request({["in"] = "n > 0"}).out)
    conn:send_line('{"interrupt":true}')
    assert.equal("2", conn:request({["in"] = "1 + 1"}).out)
    -- an interrupt sent along with its line: the line never runs
    conn:send_line('{"in":"m = 1 while true do end"}\n{"interrupt":true}')
    assert.equal("interrupted: REPL line was interrupted", assert(conn:receive(20000)).out)
    assert.equal("nil", conn:request({["in"] = "m"}).out)
    conn:close()
  end)

  it("answers completions and help through the protocol, and help through a pipe", function()
    local conn = assert(admin.connect(d.sock))
    assert(conn:request({op = "repl"}))
    local c = assert(conn:request({complete = "manager:st"})).candidates
    assert.is_true(contains(c, "manager:status"), table.concat(c, " "))
    assert.is_true(contains(c, "manager:stop_service"))
    assert.same({"manager"}, conn:request({complete = "man"}).candidates)
    assert.is_true(contains(conn:request({complete = "daemon."}).candidates, "daemon.manager"))
    assert.same({}, conn:request({complete = "nothing.here"}).candidates)
    local help = conn:request({["in"] = "help"}).out
    assert.matches("\n  manager ", help)
    assert.matches("\n  daemon ", help)
    conn:close()
    local out = helpers.repl(d, {"help", "help = 'mine'", "help"})
    assert.matches("Names at hand:\n  daemon .*\n  manager .*manager:status%(%)", out)
    assert.matches('\n"mine"\n$', out)
  end)

  it("in a terminal: Tab completes from the daemon, Ctrl-C interrupts a line or drops the one typed", function()
    local t = terminal(d, dir, "xterm")
    t.expect("> ")
    -- one candidate: completed in place
    t.send("manager:stat\t")
    t.expect("manager:status")
    t.send("().services[1].name\r")
    t.expect('\n"a"\n> ')
    t.send("man\t")
    t.expect("manager")
    t.send(":names()\r")
    t.expect('{"a"}\n> ')
    -- two candidates: the second Tab lists them; Ctrl-C drops the line
    t.send("manager:st\t\t")
    t.expect("manager:status")
    t.expect("manager:stop_service")
    t.send("\3")
    t.expect("^C\n> ")
    -- Ctrl-C at the continuation prompt drops the whole chunk
    t.send("for i = 1, 2 do\r")
    t.expect(">> ")
    t.send("print(i)")
    t.expect("print(i)")
    t.send("\3")
    t.expect("^C\n> ")
    t.send("1 + 1\r")
    t.expect("\n2\n> ")
    -- Ctrl-C while a line runs: the daemon ends it
    t.send("while true do end\r")
    t.expect("while true do end\n")
    helpers.run_until(function() return false end, 300)
    local t0 = uv.hrtime()
    t.send("\3")
    t.expect("interrupted: REPL line was interrupted\n> ")
    assert.is_true((uv.hrtime() - t0) / 1e6 < 4000)
    t.send("help\r")
    t.expect("Names at hand:")
    t.expect("\n> ")
    local code, out = t.finish()
    assert.equal(0, code, out)
    assert.not_matches("traceback", out)
    -- the daemon served on
    assert.equal(0, (helpers.portman("status --admin-socket " .. d.sock)))
  end)

  it("in a terminal without readline's line editing (TERM=dumb): Ctrl-C interrupts and drops lines", function()
    local t = terminal(d, dir, "dumb")
    t.expect("> ")
    t.send("for i = 1, 2 do\r")
    t.expect(">> ")
    t.send("\3")
    t.expect("\n> ")
    t.send("while true do end\r")
    t.expect("while true do end\n")
    helpers.run_until(function() return false end, 300)
    t.send("\3")
    t.expect("interrupted: REPL line was interrupted\n> ")
    t.send("1 + 1\r")
    t.expect("\n2\n> ")
    local code, out = t.finish()
    assert.equal(0, code, out)
  end)
end)
