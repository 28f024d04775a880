-- The daemon at scale: `portman run` with a policy of N registered
-- services (ports reserved in a pool below the kernel's ephemeral range,
-- listen = false, no checks) for N = 100, 1,000 and 10,000, beside the
-- same daemon with no service (the baseline), all in this run. Per N,
-- over several runs (min/median/max):
--   start       spawn until the daemon has printed its N service lines and
--               its admin socket answers; its CPU then (from /proc)
--   per service the start's CPU a service adds from one N to the next:
--               flat when it stays the same as N grows
--   /proc/net   files opened (strace, one start per N) per service
--   status e2e  `portman status --json` as a process (wall and CPU),
--               beside `portman events --since 0 --json`: a trivial
--               request with the same process costs
--   status rt   the status request from this process (connect, request,
--               decode), beside a trivial request's round trip
--   daemon      the daemon's part of one status (its debug line
--               admin_request: the op and its encoding, wall and CPU; the
--               write until sent)
--   in daemon   through the REPL, CPU in the daemon: manager:status(),
--               the document's json.encode, and cjson.encode of the same
--               document alone (the baseline)
--   RSS         before any status, after one, after five; what a service
--               adds to it (beside the daemon with no service), and the
--               daemon's live Lua heap after a full collection (through
--               its REPL), its anonymous memory and malloc's free bytes
-- The machine's load shows in wall-clock times: compare CPU times, and
-- each figure with its baseline in the same run.
--
--   SCALE_N="100 1000 10000" SCALE_RUNS=3 lua5.4 bench/scale.lua
-- SCALE_ROOTS="/path/to/main ." compares checkouts (their bin/portman),
-- one run of each in turn, so that both meet the same load.
package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local helpers = require "helpers"
local admin = require "portman.admin"

local ROOTS = {}
for r in (os.getenv("SCALE_ROOTS") or "."):gmatch("%S+") do ROOTS[#ROOTS + 1] = r end
local ROOT -- the checkout measured now
local SIZES = {}
for n in (os.getenv("SCALE_N") or "100 1000 10000"):gmatch("%d+") do SIZES[#SIZES + 1] = math.tointeger(n) end
local RUNS = math.tointeger(tonumber(os.getenv("SCALE_RUNS") or "3"))

local tmpdir = helpers.tmpdir

local function policy(dir, n)
  local lines = {"return {pools = {p = {range = {20000, 32000}}}, services = {"}
  for i = 1, n do
    lines[#lines + 1] = ('{name = "s%05d", pool = "p", listen = false, check = false, metadata = {n = %d}},')
      :format(i, i)
  end
  lines[#lines + 1] = "}}"
  local path = dir .. "/policy.lua"
  local f = assert(io.open(path, "w"))
  f:write(table.concat(lines, "\n"))
  f:close()
  return path
end

local function ms_since(t0) return (uv.hrtime() - t0) / 1e6 end

-- Runs the loop until done() or ms passed (a timer wakes it to look).
local function run_until(done, ms)
  local t0, tick = uv.hrtime(), uv.new_timer()
  tick:start(1, 1, function() end)
  while not done() and ms_since(t0) < ms do uv.run("once") end
  tick:close()
  return done()
end

local function sleep(ms) run_until(function() return false end, ms) end

-- Runs a command line under bash's `time`; returns its exit code, its
-- wall-clock ms and its CPU ms (user + system), the shell's start left out.
local function run_process(line)
  local p = io.popen("bash -c 'TIMEFORMAT=\"%R %U %S\"; time (" .. line .. " > /dev/null)' 2>&1")
  local out = p:read("a")
  local ok = p:close()
  local real, user, sys = out:match("([%d.]+) ([%d.]+) ([%d.]+)%s*$")
  assert(real, "no timing in: " .. out)
  return ok, tonumber(real) * 1000, (tonumber(user) + tonumber(sys)) * 1000
end

-- The CPU ms (user + system) a process has used, from /proc (10 ms steps).
local function cpu_ms(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local stat = f:read("a")
  f:close()
  local fields = {}
  for w in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = w end
  return (tonumber(fields[12]) + tonumber(fields[13])) * 10 -- utime, stime in ticks of 1/100 s
end

local function rss_kib(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  local rss = f and tonumber(f:read("a"):match("VmRSS:%s+(%d+)"))
  if f then f:close() end
  return rss
end

-- Starts the daemon (under strace when trace is a file name); returns once
-- it has printed n service lines, with the ms that took.
local function start(dir, n, trace)
  local d = {sock = dir .. "/adm/s", err = "", lines = 0}
  local path = policy(dir, n)
  local stdout, stderr = uv.new_pipe(), uv.new_pipe()
  local args = {ROOT .. "/bin/portman", "run", path, "--state-dir", dir .. "/state", "--admin-socket", d.sock,
                "--log-level", "debug"}
  local file = "lua5.4"
  if trace then
    file = "strace"
    args = {"-f", "-qq", "-e", "trace=openat", "-o", trace, "lua5.4", table.unpack(args)}
  end
  d.traced = trace ~= nil
  local t0 = uv.hrtime()
  d.proc, d.pid = uv.spawn(file, {args = args, stdio = {nil, stdout, stderr}}, function(code)
    d.code = code
    d.proc:close()
  end)
  assert(d.proc, d.pid)
  stdout:read_start(function(_, data)
    if data then
      d.lines = d.lines + select(2, data:gsub("\n", ""))
    else stdout:close() end
  end)
  stderr:read_start(function(_, data) if data then d.err = d.err .. data else stderr:close() end end)
  assert(run_until(function() return d.lines >= n or d.code ~= nil end, 120000), "the daemon did not start")
  assert(d.code == nil, "the daemon exited: " .. d.err)
  -- and its admin socket answers (the start's end for a daemon of no service)
  local answered = false
  while not answered and d.code == nil and ms_since(t0) < 120000 do
    answered = admin.talk(d.sock, {op = "events", since = 0}, function() end, {timeout = 60000})
    if not answered then sleep(2) end
  end
  assert(answered, "the admin socket did not answer: " .. d.err)
  d.start_ms = ms_since(t0)
  d.start_cpu = cpu_ms(d.pid)
  return d
end

-- Kills the daemon; under strace the daemon itself first (a strace
-- killed detaches its tracee, which would run on).
local function stop(d)
  if d.traced then
    local f = io.open(("/proc/%d/task/%d/children"):format(d.pid, d.pid))
    local child = f and tonumber(f:read("a"):match("%d+"))
    if f then f:close() end
    if child then uv.kill(child, "sigkill") end
  end
  d.proc:kill("sigkill")
  run_until(function() return d.code ~= nil end, 10000)
end

-- One request from this process: its reply and the ms it took.
local function ask(d, request)
  local t0, reply = uv.hrtime(), nil
  assert(admin.talk(d.sock, request, function(r) reply = r end, {timeout = 60000}))
  return reply, ms_since(t0)
end

-- The daemon's own figures for the last status, from its debug line
-- (nil for a daemon that does not write one).
local function daemon_part(d)
  sleep(50) -- the line comes after the write
  local last
  for line in d.err:gmatch("[^\n]*admin_request[^\n]*op=status[^\n]*") do last = line end
  if not last then return nil end
  return tonumber(last:match(" ms=([%d.]+)")), tonumber(last:match(" sent_ms=([%d.]+)")),
    tonumber(last:match(" cpu_ms=([%d.]+)"))
end

-- In the daemon, through its REPL: CPU ms of manager:status(), of its
-- json.encode, of cjson.encode alone (garbage collected before each).
local REPL_LINE = 'local json, cjson, c = require "portman.json", require "cjson", os.clock; '
  .. 'collectgarbage(); local t0 = c(); local doc = manager:status(); local t1 = c(); '
  .. 'collectgarbage(); local t2 = c(); local s = json.encode(doc); local t3 = c(); '
  .. 's = nil; collectgarbage(); local t4 = c(); s = cjson.encode(doc); local t5 = c(); '
  .. 'doc, s = nil, nil; collectgarbage(); '
  .. 'return (t1 - t0) * 1e3, (t3 - t2) * 1e3, (t5 - t4) * 1e3'
local function in_daemon(d)
  local conn = assert(admin.connect(d.sock, {timeout = 60000}))
  assert(conn:request({op = "repl"}))
  local reply = assert(conn:request({["in"] = REPL_LINE}))
  conn:close()
  uv.run("nowait")
  local a, b, c = reply.out:match("^([%d.e+-]+)\t([%d.e+-]+)\t([%d.e+-]+)$")
  assert(a, "REPL: " .. tostring(reply.out))
  return tonumber(a), tonumber(b), tonumber(c)
end

-- In the daemon, through its REPL: the live Lua heap (KiB, after a full
-- collection) and its anonymous RSS (KiB, /proc/self/smaps_rollup).
local HEAP_LINE = 'collectgarbage(); collectgarbage(); local f = io.open("/proc/self/smaps_rollup"); '
  .. 'local t = f and f:read("a") or ""; if f then f:close() end; '
  .. 'return collectgarbage("count"), tonumber(t:match("Anonymous:%s+(%d+)")) or 0'
local function heap_kib(d)
  local conn = assert(admin.connect(d.sock, {timeout = 60000}))
  assert(conn:request({op = "repl"}))
  local reply = assert(conn:request({["in"] = HEAP_LINE}))
  conn:close()
  uv.run("nowait")
  local heap, anon = reply.out:match("^([%d.e+-]+)\t(%d+)$")
  assert(heap, "REPL: " .. tostring(reply.out))
  return tonumber(heap), tonumber(anon)
end

-- /proc/net opens per service in one start, from strace.
local function proc_reads(n)
  local dir = tmpdir()
  local trace = dir .. "/trace"
  local d = start(dir, n, trace)
  stop(d)
  local count = 0
  for line in io.lines(trace) do
    if line:find('"/proc/net/', 1, true) or line:find('"/proc/self/net/', 1, true) then count = count + 1 end
  end
  os.execute("rm -rf " .. dir)
  return count
end

local function stats(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  return s[1], s[(#s + 1) // 2], s[#s]
end

local all = {} -- all[root][n][name] = {values}
local results -- all[ROOT]
local function note(n, name, v)
  if v == nil then return end
  results[n] = results[n] or {}
  results[n][name] = results[n][name] or {}
  table.insert(results[n][name], v)
end

local function one_run(n)
  local dir = tmpdir()
  local d = start(dir, n)
  note(n, "start", d.start_ms)
  note(n, "start_cpu", d.start_cpu)
  note(n, "rss0", rss_kib(d.pid))
  for _ = 1, 3 do note(n, "trivial_rt", select(2, ask(d, {op = "events", since = 0}))) end
  local doc, ms = ask(d, {op = "status"})
  assert(#doc.services == n, "status: " .. #doc.services .. " services")
  note(n, "status_rt", ms)
  sleep(300) -- the daemon collects after the reply is out: what stays is what counts
  note(n, "rss1", rss_kib(d.pid))
  local part, sent, part_cpu = daemon_part(d)
  note(n, "daemon_ms", part)
  note(n, "daemon_sent_ms", sent)
  note(n, "daemon_cpu_ms", part_cpu)
  local portman = "lua5.4 " .. ROOT .. "/bin/portman "
  for _ = 1, 2 do
    local ok, t, cpu = run_process(portman .. "status --json --timeout 60000 --admin-socket " .. d.sock)
    assert(ok, "portman status failed")
    note(n, "status_e2e", t)
    note(n, "status_e2e_cpu", cpu)
    ok, t, cpu = run_process(portman .. "events --since 0 --json --admin-socket " .. d.sock)
    assert(ok, "portman events failed")
    note(n, "trivial_e2e", t)
    note(n, "trivial_e2e_cpu", cpu)
  end
  for _ = 1, 3 do ask(d, {op = "status"}) end
  sleep(300)
  note(n, "rss5", rss_kib(d.pid))
  local heap, anon = heap_kib(d)
  note(n, "heap", heap)
  note(n, "anon", anon)
  local st, enc, cj = in_daemon(d)
  note(n, "repl_status", st)
  note(n, "repl_encode", enc)
  note(n, "repl_cjson", cj)
  stop(d)
  os.execute("rm -rf " .. dir)
end

local function row(label, n, name, unit, scale)
  local list = results[n] and results[n][name]
  if not list then
    print(("  %-34s %s"):format(label, "n/a"))
    return
  end
  local lo, mid, hi = stats(list)
  scale = scale or 1
  print(("  %-34s %9.2f %-3s (min %.2f, max %.2f, %d runs)"):format(label, mid * scale, unit, lo * scale,
    hi * scale, #list))
end

local function median(n, name)
  local list = results[n] and results[n][name]
  return list and select(2, stats(list))
end

local function each_root(fn)
  for _, r in ipairs(ROOTS) do
    ROOT = r
    all[r] = all[r] or {}
    results = all[r]
    fn()
  end
end

for _, n in ipairs({0, table.unpack(SIZES)}) do
  for _ = 1, RUNS do each_root(function() one_run(n) end) end
end
local reads = {}
each_root(function()
  reads[ROOT] = {[0] = proc_reads(0)}
  for _, n in ipairs(SIZES) do reads[ROOT][n] = proc_reads(n) end
end)

local function report()
  print(("portman daemon at scale (%s; %d runs each; medians, min and max)"):format(ROOT, RUNS))
  print("baseline: no service")
  row("start", 0, "start", "ms")
  row("  its CPU (user + sys)", 0, "start_cpu", "ms")
  row("admin round trip: events since 0", 0, "trivial_rt", "ms")
  row("status round trip", 0, "status_rt", "ms")
  row("portman status --json (process)", 0, "status_e2e", "ms")
  row("  its CPU (user + sys)", 0, "status_e2e_cpu", "ms")
  row("RSS", 0, "rss0", "MiB", 1 / 1024)
  row("  anonymous (after statuses)", 0, "anon", "MiB", 1 / 1024)
  row("  live Lua heap", 0, "heap", "MiB", 1 / 1024)
  local base_reads = reads[ROOT][0]
  print(("  %-34s %9d"):format("/proc/net opens", base_reads))
  local last, prev = nil, 0
  for _, n in ipairs(SIZES) do
    print(("%d services"):format(n))
    row("start", n, "start", "ms")
    row("  its CPU (user + sys)", n, "start_cpu", "ms")
    -- the cost a service adds, between this N and the one before (or none):
    -- flat when it stays the same as N grows
    local per = (median(n, "start_cpu") - median(prev, "start_cpu")) / (n - prev) * 1000
    print(("  %-34s %9.1f us CPU a service from N = %d%s"):format("start per service", per, prev,
      last and ("; x%.2f of the step before"):format(per / last) or ""))
    last = prev > 0 and per or nil
    prev = n
    print(("  %-34s %9.4f (%d opens, %d with no service)"):format("/proc/net opens per service",
      (reads[ROOT][n] - base_reads) / n, reads[ROOT][n], base_reads))
    row("admin round trip: events since 0", n, "trivial_rt", "ms")
    row("status round trip (this process)", n, "status_rt", "ms")
    row("daemon: status op + encode", n, "daemon_ms", "ms")
    row("daemon: status op + encode, CPU", n, "daemon_cpu_ms", "ms")
    row("daemon: until the reply was sent", n, "daemon_sent_ms", "ms")
    row("in daemon: manager:status(), CPU", n, "repl_status", "ms")
    row("in daemon: json.encode(doc), CPU", n, "repl_encode", "ms")
    row("in daemon: cjson.encode alone, CPU", n, "repl_cjson", "ms")
    row("portman status --json (process)", n, "status_e2e", "ms")
    row("  its CPU (user + sys)", n, "status_e2e_cpu", "ms")
    row("portman events --since 0 (process)", n, "trivial_e2e", "ms")
    row("  its CPU (user + sys)", n, "trivial_e2e_cpu", "ms")
    row("RSS before status", n, "rss0", "MiB", 1 / 1024)
    row("RSS after 1 status", n, "rss1", "MiB", 1 / 1024)
    row("RSS after 5 statuses", n, "rss5", "MiB", 1 / 1024)
    row("  anonymous", n, "anon", "MiB", 1 / 1024)
    row("  live Lua heap", n, "heap", "MiB", 1 / 1024)
    -- what a service adds, beside the daemon with no service
    for _, r in ipairs({{"RSS a service", "rss5"}, {"live Lua heap a service", "heap"}}) do
      local a, b = median(n, r[2]), median(0, r[2])
      if a and b then print(("  %-34s %9.0f B   (%.2f MiB with no service)"):format(r[1], (a - b) * 1024 / n, b / 1024)) end
    end
  end
end

each_root(report)
uv.walk(function(h) if not h:is_closing() then h:close() end end)
uv.run()
