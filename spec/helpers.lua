--- Shared spec helpers.
local M = {}

--- The checkout's folder, absolute, whichever folder busted runs from.
M.root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helpers%.lua$")) or "."
if M.root:sub(1, 1) ~= "/" then
  local cwd = assert(require("luv").cwd())
  M.root = M.root == "." and cwd or cwd .. "/" .. M.root
end

--- The Lua interpreter to start portman's own child processes with: the
-- sanitizer run sets PORTMAN_LUA to its instrumented interpreter.
M.lua = os.getenv("PORTMAN_LUA") or "lua5.4"

-- The kind of fd a /proc/self/fd link names: "socket", "pipe", "file",
-- or an anon_inode's word ("eventpoll", "eventfd", "timerfd", ...).
local function fd_kind(target)
  if target:sub(1, 1) == "/" then return "file" end
  return target:match("^anon_inode:%[?([%w_]+)") or target:match("^([%w_]+):") or target
end

--- The number of open fds of this process.
-- Read in-process: a child listing /proc/PID/fd (popen) can run before the
-- parent has closed popen's write end, and then counts one fd too many.
-- Files and sockets an earlier spec dropped close when collected: this
-- collects first, so they do not close in the middle of a count.
-- @tparam[opt] table opts `kinds`: count only fds of these kinds (a list of
--   "socket", "pipe", "file", "eventpoll", "eventfd", ...: libuv's threads
--   and the shell commands a spec runs open pipes and files on their own
--   schedules); `samples`: the fewest of that many counts (a thread that
--   holds an fd for a moment can add one to a single count; a leak shows
--   in every count)
function M.fd_count(opts)
  opts = opts or {}
  collectgarbage()
  collectgarbage()
  local uv = require "luv"
  local want
  if opts.kinds then
    want = {}
    for _, k in ipairs(opts.kinds) do want[k] = true end
  end
  local fewest = math.huge
  for _ = 1, opts.samples or 1 do
    local req = assert(uv.fs_scandir("/proc/self/fd"))
    local n = 0
    for name in uv.fs_scandir_next, req do
      -- the folder's own fd is closed by now: its link no longer reads
      local target = uv.fs_readlink("/proc/self/fd/" .. name)
      if target and (not want or want[fd_kind(target)]) then n = n + 1 end
    end
    fewest = math.min(fewest, n)
  end
  return fewest
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

-- A word for sh: single-quoted.
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.shell_quote = q

--- Runs a Lua chunk in a child: this run's interpreter and package paths
-- (the sanitizer run's under asan), from the checkout, after the shell
-- words in prefix if given (e.g. M.NETNS). Returns its output (stdout and
-- stderr) and whether it exited with status 0.
function M.lua_child(chunk, prefix)
  local cmd = ("cd %s && LUA_PATH=%s LUA_CPATH=%s %s %s -e %s 2>&1"):format(q(M.root), q(package.path),
    q(package.cpath), prefix or "", q(M.lua), q(chunk))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  return out, p:close() == true
end

--- Runs a Lua chunk in a child without CAP_NET_BIND_SERVICE and the DAC
-- overrides (setpriv, util-linux), as root's capabilities would hide
-- EACCES; returns its output. Needs root (the lab specs).
function M.unprivileged(chunk)
  local out, ok = M.lua_child(chunk, "setpriv --bounding-set=-net_bind_service,-dac_override,-dac_read_search "
    .. "--inh-caps=-all")
  assert(ok, out)
  return out
end

--- Shell words that run the command after them in a network namespace of
-- its own, with lo up: every port is free in there, and nothing it binds
-- is seen on the host. Needs root (unshare -n). The namespace ends with
-- the last process in it.
M.NETNS = [[unshare -n -- sh -c 'ip link set lo up && exec "$@"' netns]]
local NETNS_ARGV = {"-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "netns"}

--- Runs a Lua chunk in a child in a network namespace: a new one (as
-- M.NETNS), or with opts.pid the one process pid runs in (nsenter). The
-- chunk gets opts.args (strings) as `...`; what it returns comes back
-- through JSON (plain data: tables, strings, numbers, booleans, nil), with
-- integers kept. Raises with the child's output when the chunk raises or
-- the child fails (a sanitizer report). Needs root.
function M.in_netns(chunk, opts)
  opts = opts or {}
  local file, result = os.tmpname(), os.tmpname()
  M.write(file, chunk)
  local args = {q(M.root .. "/spec/support/netns_child.lua"), q(file), q(result)}
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = q(a) end
  local prefix = opts.pid and ("nsenter -t %d -n"):format(opts.pid) or M.NETNS
  local cmd = ("cd %s && LUA_PATH=%s LUA_CPATH=%s %s %s %s 2>&1"):format(q(M.root), q(package.path),
    q(package.cpath), prefix, q(M.lua), table.concat(args, " "))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok = p:close()
  local f = io.open(result)
  local text = f and f:read("a") or ""
  if f then f:close() end
  os.remove(file)
  os.remove(result)
  if not ok or text == "" then error("in_netns: the child failed:\n" .. out, 2) end
  local doc = assert(require("portman.json").decode(text))
  local null, values = require("cjson").null, {}
  for i = 1, doc.n do
    local v = doc[tostring(i)]
    if v ~= null then values[i] = v end
  end
  return table.unpack(values, 1, doc.n)
end

--- The text of the file at path, or nil when it cannot be read.
function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- Is pid gone: no such process, or a zombie (an init that does not reap
-- leaves them)?
function M.gone(pid)
  local info = require("portman.supervisor").process_info(pid)
  return info == nil or info.state == "Z"
end

--- This process's children that are zombies (exited, never reaped), as a
-- set of pids; with since (an earlier result), only those not in it
-- (other spec files may leave theirs).
function M.zombies(since)
  local uv = require "luv"
  local process_info = require("portman.supervisor").process_info
  local me, out = M.pid(), {}
  local req = assert(uv.fs_scandir("/proc"))
  for name in uv.fs_scandir_next, req do
    local pid = name:match("^%d+$") and math.tointeger(tonumber(name))
    local info = pid and process_info(pid)
    if info and info.ppid == me and info.state == "Z" and not (since and since[pid]) then out[pid] = true end
  end
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
-- output, d.code its exit code, d.wait_exit() waits for it, d.pid is its
-- pid. With opts.netns it runs in a network namespace of its own (as
-- M.NETNS; its admin socket is a file, reached from here all the same):
-- the ports of its policy are then never the host's; M.in_netns with
-- {pid = d.pid} runs code beside it. opts.args: more words for `portman
-- run` (a list), after the others.
function M.start_daemon(dir, policy, services, opts)
  local uv = require "luv"
  local d = {out = "", err = "", sock = dir .. "/adm/admin.sock"}
  daemons[#daemons + 1] = d
  local stdout, stderr = uv.new_pipe(), uv.new_pipe()
  local env = {"PATH=" .. os.getenv("PATH")}
  for _, k in ipairs({"ASAN_OPTIONS", "UBSAN_OPTIONS", "PORTMAN_BUILD"}) do
    if os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
  end
  local file, args = M.lua, {}
  if opts and opts.wrap then -- a command the daemon runs under: {"prlimit", "--nofile=64", "--"}
    file = opts.wrap[1]
    for i = 2, #opts.wrap do args[#args + 1] = opts.wrap[i] end
    args[#args + 1] = M.lua
  elseif opts and opts.netns then
    -- unshare and sh exec in place: the pid stays the daemon's
    file = "unshare"
    for _, a in ipairs(NETNS_ARGV) do args[#args + 1] = a end
    args[#args + 1] = M.lua
  end
  for _, a in ipairs({M.root .. "/bin/portman", "run", policy, "--state-dir", dir, "--admin-socket", d.sock}) do
    args[#args + 1] = a
  end
  for _, a in ipairs(opts and opts.args or {}) do args[#args + 1] = a end
  d.proc, d.pid = uv.spawn(file, {args = args, stdio = {nil, stdout, stderr}, env = env},
    function(code, signal)
      d.code, d.signal = code, signal
      d.proc:close()
    end)
  assert(d.proc, d.pid)
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

--- A TCP server on 127.0.0.1 (a port the kernel picks) that accepts each
-- connection and closes it: a target a connect check finds up.
-- @return the luv handle (the caller closes it), its port
function M.tcp_acceptor(backlog)
  local uv = require "luv"
  local s = uv.new_tcp()
  assert(s:bind("127.0.0.1", 0))
  assert(s:listen(backlog or 128, function()
    local c = uv.new_tcp()
    s:accept(c)
    c:close()
  end))
  return s, s:getsockname().port
end

--- A shallow copy of t with the fields of changes (if any) over it.
function M.merged(t, changes)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  for k, v in pairs(changes or {}) do r[k] = v end
  return r
end

--- A shallow copy of t with field k set to v (nil removes it).
function M.with(t, k, v)
  local r = M.merged(t)
  r[k] = v
  return r
end

--- What the shell command cmd writes on stdout (its exit status ignored).
function M.output(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

--- A new temporary folder (the caller removes it).
function M.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("l")
  p:close()
  return d
end

-- A luv handle for proto ("tcp" or "udp") bound to host:port, or nil; TCP
-- binds report EADDRINUSE late (at listen), so the bound port is read back.
local function probe_bind(proto, host, port)
  local uv = require "luv"
  local h = proto == "udp" and uv.new_udp() or uv.new_tcp()
  local name = h:bind(host, port) and h:getsockname()
  if name and name.port ~= 0 and (port == 0 or name.port == port) then return h, name.port end
  h:close()
  return nil
end

--- A port where nothing on this host listens (proto "tcp" or "udp"):
-- bound to host (127.0.0.1; "0.0.0.0": free on every address) by the
-- kernel's choice, then closed again.
function M.free_port(proto, host)
  return M.free_ports(1, proto, host)[1]
end

--- n different ports where nothing listens, chosen by the kernel as
-- free_port's, all bound at once (so they differ), then closed again.
function M.free_ports(n, proto, host)
  local handles, ports = {}, {}
  for i = 1, n do
    handles[i], ports[i] = assert(probe_bind(proto, host or "127.0.0.1", 0))
  end
  for _, h in ipairs(handles) do h:close() end
  require("luv").run("nowait")
  return ports
end

--- n consecutive ports that were all free (proto "tcp" or "udp", on host,
-- 127.0.0.1 by default): a kernel-chosen first port, and the ports after
-- it bound one by one to prove them free, then closed; another start when
-- one is taken. For pools whose ports a spec names: returns lo, hi.
function M.free_range(n, proto, host)
  host = host or "127.0.0.1"
  local uv = require "luv"
  for _ = 1, 200 do
    local lo = M.free_port(proto, host)
    local held, ok = {}, lo + n - 1 <= 65535
    for p = lo, lo + n - 1 do
      if not ok then break end
      local h = probe_bind(proto, host, p)
      held[#held + 1], ok = h, h ~= nil
    end
    for _, h in ipairs(held) do h:close() end
    uv.run("nowait")
    if ok then return lo, lo + n - 1 end
  end
  error(("free_range: found no %d free %s ports in a row"):format(n, proto or "tcp"), 2)
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

--- Runs fn() as a portman task (portman.run) with a watchdog, and returns
-- its results or raises its error. The loop runs until it is idle, or with
-- opts.stop_on_return only until fn returns (while the spec's own servers
-- keep the loop alive). The watchdog (opts.watchdog seconds, 30 by
-- default) stops the loop when fn has not returned by then, and this
-- raises: a spec that would wait forever fails instead. Unlike loop(), the
-- handles fn leaves open stay open.
function M.run(fn, opts)
  opts = opts or {}
  local uv = require "luv"
  local async = require "portman.async"
  local results, expired, running
  uv.update_time() -- see loop(): a stale clock would expire the watchdog at once
  local dog = uv.new_timer()
  dog:start(math.floor((opts.watchdog or 30) * 1000), 0, function()
    expired = true
    uv.stop()
  end)
  dog:unref() -- never what keeps the loop alive
  async.spawn(function()
    results = table.pack(xpcall(fn, debug.traceback))
    if opts.stop_on_return and running then uv.stop() end
  end)
  if not (results and opts.stop_on_return) then
    running = true
    uv.run()
    running = false
  end
  dog:close()
  uv.run("nowait") -- a handle left closing at exit would crash luv's loop collection
  if not results then
    error(expired and ("run: watchdog: the task did not finish in %g s"):format(opts.watchdog or 30)
      or "run: the task never finished (the loop went idle)", 2)
  end
  if expired and not opts.stop_on_return then
    error(("run: watchdog: the task returned, but the loop was still busy after %g s"):format(opts.watchdog or 30), 2)
  end
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
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
