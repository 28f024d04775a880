--- Shared spec helpers.
local M = {}

--- Paths of the checkout, whichever folder busted runs from.
M.root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helpers%.lua$")) or "."

--- The Lua interpreter to start portman's own child processes with: the
-- sanitizer run sets PORTMAN_LUA to its instrumented interpreter.
M.lua = os.getenv("PORTMAN_LUA") or "lua5.4"

--- The number of open fds of this process.
-- Read in-process: a child listing /proc/PID/fd (popen) can run before the
-- parent has closed popen's write end, and then counts one fd too many.
function M.fd_count()
  -- files and sockets an earlier spec dropped close when collected: collect
  -- now, so they do not close in the middle of a count
  collectgarbage()
  collectgarbage()
  local uv = require "luv"
  local req = assert(uv.fs_scandir("/proc/self/fd"))
  local n = 0
  while uv.fs_scandir_next(req) do n = n + 1 end
  return n - 1 -- the directory fd that scandir held while reading
end

--- This process's pid (lua5.4 has no getpid; /proc/self is the reader's).
function M.pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  return math.tointeger(tonumber(pid))
end

--- Names of globals, to check that a require leaves _G alone.
function M.globals()
  local names = {}
  for k in pairs(_G) do names[k] = true end
  return names
end

--- Runs the portman command line in a child process.
-- @return exit status, stdout, stderr
function M.portman(args, env)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("%s %s %s/bin/portman %s >%s 2>%s"):format(env or "", M.lua, M.root, args, out, err)
  local _, _, status = os.execute(cmd)
  local function slurp(path)
    local f = assert(io.open(path))
    local s = f:read("a")
    f:close()
    os.remove(path)
    return s
  end
  return status, slurp(out), slurp(err)
end

--- The error message of fn(...), which must raise.
function M.raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(err)
end

--- Runs a Lua chunk in a child without CAP_NET_BIND_SERVICE and the DAC
-- overrides (setpriv, util-linux), as root's capabilities would hide
-- EACCES; returns its output. Needs root (the lab specs).
function M.unprivileged(chunk)
  local cmd = ("cd %s && LUA_PATH=%q LUA_CPATH=%q setpriv "
    .. "--bounding-set=-net_bind_service,-dac_override,-dac_read_search --inh-caps=-all "
    .. "%s -e %q 2>&1"):format(M.root, package.path, package.cpath, M.lua, chunk)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  assert(p:close(), out)
  return out
end

--- Writes text to the file at path.
function M.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local daemons = {} -- started by start_daemon, killed by kill_daemons

--- A daemon in a child process: `portman run policy` with dir as its state
-- folder and dir/adm/admin.sock as its admin socket; returns once it has
-- printed `services` service lines (or exited). d.out and d.err collect its
-- output, d.code its exit code, d.wait_exit() waits for it.
function M.start_daemon(dir, policy, services)
  local uv = require "luv"
  local d = {out = "", err = "", sock = dir .. "/adm/admin.sock"}
  daemons[#daemons + 1] = d
  local stdout, stderr = uv.new_pipe(), uv.new_pipe()
  local env = {"PATH=" .. os.getenv("PATH")}
  for _, k in ipairs({"ASAN_OPTIONS", "UBSAN_OPTIONS", "PORTMAN_BUILD"}) do
    if os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
  end
  d.proc = uv.spawn(M.lua, {args = {M.root .. "/bin/portman", "run", policy,
    "--state-dir", dir, "--admin-socket", d.sock}, stdio = {nil, stdout, stderr}, env = env},
    function(code, signal)
      d.code, d.signal = code, signal
      d.proc:close()
    end)
  stdout:read_start(function(_, data) if data then d.out = d.out .. data else stdout:close() end end)
  stderr:read_start(function(_, data) if data then d.err = d.err .. data else stderr:close() end end)
  function d.wait_exit()
    M.run_until(function() return d.code ~= nil end, 15000)
    M.run_until(function() return stdout:is_closing() and stderr:is_closing() end, 2000)
    return d.code
  end
  M.run_until(function() return select(2, d.out:gsub("\n", "")) >= services or d.code ~= nil end, 15000)
  return d
end

--- Kills (SIGKILL) every daemon start_daemon started that still runs.
function M.kill_daemons()
  for _, d in ipairs(daemons) do
    if d.code == nil then
      d.proc:kill("sigkill")
      d.wait_exit()
    end
  end
  daemons = {}
end

--- Sends Lua lines to a daemon's REPL (no terminal); returns the output.
function M.repl(d, lines)
  local input = os.tmpname()
  M.write(input, table.concat(lines, "\n") .. "\n")
  local p = io.popen(("%s %s/bin/portman repl --admin-socket %s < %s"):format(M.lua, M.root, d.sock, input))
  local out = p:read("a")
  p:close()
  os.remove(input)
  return out
end

--- A new temporary folder (the caller removes it).
function M.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("l")
  p:close()
  return d
end

--- A port where nothing on this host listens (proto "tcp" or "udp"):
-- bound to 127.0.0.1 by the kernel's choice, then closed again.
function M.free_port(proto)
  local uv = require "luv"
  local h = proto == "udp" and uv.new_udp() or uv.new_tcp()
  assert(h:bind("127.0.0.1", 0))
  local port = h:getsockname().port
  h:close()
  uv.run("nowait")
  return port
end

--- A connected luv TCP client, inside a portman task; nil, err on failure.
function M.connect(host, port)
  local uv = require "luv"
  local c = uv.new_tcp()
  local err = require("portman.async").await(function(cb) c:connect(host, port, cb) end)
  if err then
    c:close()
    return nil, err
  end
  return c
end

--- Runs the luv loop until pred() is true or ms (5000) pass; returns
-- pred(). With poll_ms, pred is also asked every poll_ms (for state outside
-- this process, which no loop event announces).
function M.run_until(pred, ms, poll_ms)
  local uv = require "luv"
  local expired = false
  local t = uv.new_timer()
  uv.update_time() -- see loop(): a stale clock would expire the guard at once
  t:start(ms or 5000, 0, function() expired = true end)
  local tick
  if poll_ms then
    tick = uv.new_timer()
    tick:start(poll_ms, poll_ms, function() end)
  end
  while not pred() and not expired do uv.run("once") end
  t:close()
  if tick then tick:close() end
  uv.run("nowait")
  return pred()
end

--- Runs fn() as a portman task on the luv loop until the loop is idle, with
-- a watchdog (seconds, 30 by default): when fn fails, hangs, or leaves luv
-- handles open, every handle is closed (so the loop ends) and this raises.
function M.loop(fn, watchdog)
  local uv = require "luv"
  local async = require "portman.async"
  local result, left
  -- handles that were there before fn ran (another spec's unreferenced
  -- helpers, say) are not fn's to close or count
  local before = {}
  uv.walk(function(h) before[h] = true end)
  local function close_all()
    local n = 0
    uv.walk(function(h)
      if not before[h] and not h:is_closing() then
        n = n + 1
        h:close()
      end
    end)
    return n
  end
  -- the loop's clock stood still while earlier specs blocked (os.execute):
  -- without this the watchdog would start in the past and fire at once
  uv.update_time()
  local dog = uv.new_timer()
  dog:start(math.floor((watchdog or 30) * 1000), 0, function()
    result = result or {false, "watchdog: the task did not finish"}
    close_all()
  end)
  dog:unref() -- never what keeps the loop alive
  async.spawn(function()
    result = table.pack(xpcall(fn, debug.traceback))
    dog:close()
    left = close_all()
  end)
  uv.run()
  if not dog:is_closing() then dog:close() end
  uv.run("nowait")
  if not result then error("loop: the task never finished (the loop went idle)", 2) end
  if not result[1] then error(result[2], 0) end
  if left > 0 then error(("loop: %d luv handle(s) left open"):format(left), 2) end
  return table.unpack(result, 2, result.n)
end

return M
