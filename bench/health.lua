-- Health checks at scale: 5,000 TCP connect checks a second against local
-- listeners on one core. Reports the checks run a second, the CPU used, and
-- the lag between each check's due time and its start (p50, p99); beside a
-- baseline in the same run: the same connects from a bare luv timer loop
-- with no scheduling, thresholds or history.
local uv = require "luv"
local health = require "portman.health"

local CHECKS, SECONDS, LISTENERS = 5000, 6, 50

local function listeners()
  local ports, handles = {}, {}
  for i = 1, LISTENERS do
    local s = uv.new_tcp()
    assert(s:bind("127.0.0.1", 0))
    assert(s:listen(1024, function()
      local c = uv.new_tcp()
      s:accept(c)
      c:close()
    end))
    ports[i], handles[i] = s:getsockname().port, s
  end
  return ports, handles
end

local function percentile(t, p)
  table.sort(t)
  return t[math.max(1, math.ceil(#t * p))]
end

local function run_for(seconds, stop)
  local t = uv.new_timer()
  uv.update_time()
  t:start(seconds * 1000, 0, function()
    t:close()
    stop()
    uv.stop() -- the listeners would keep the loop running
  end)
  uv.run()
end

local ports, handles = listeners()

-- portman.health: 5,000 checks, each once a second, spread by jitter
local h = health.new{concurrency = 512}
for i = 1, CHECKS do
  h:add{name = "c" .. i, kind = "tcp", port = ports[i % LISTENERS + 1], interval = 1000,
        jitter = 1000, timeout = 1000}
end
local cpu0, wall0 = os.clock(), uv.hrtime()
h:start()
run_for(SECONDS, function() h:close() end)
local cpu, wall = os.clock() - cpu0, (uv.hrtime() - wall0) / 1e9
local lags, runs, fails = {}, 0, 0
for i = 1, CHECKS do
  for _, r in ipairs(h:history("c" .. i) or {}) do
    runs = runs + 1
    if not r.ok then fails = fails + 1 end
    lags[#lags + 1] = r.lag
  end
  h:remove("c" .. i)
end
print(("portman.health: %d checks of %d listeners for %.1f s"):format(CHECKS, LISTENERS, wall))
print(("  %-34s %8.0f checks/s, %d failed, CPU %.0f%% of one core"):format("portman.health", runs / wall, fails,
  100 * cpu / wall))
print(("  %-34s p50 %.2f ms, p99 %.2f ms"):format("lag behind the due time", percentile(lags, 0.5),
  percentile(lags, 0.99)))

-- baseline: the same connect rate from one repeating timer, nothing else
uv.run("nowait")
local done, started = 0, 0
local per_tick = CHECKS / 100 -- every 10 ms
local ticker = uv.new_timer()
cpu0, wall0 = os.clock(), uv.hrtime()
uv.update_time()
ticker:start(0, 10, function()
  for _ = 1, per_tick do
    started = started + 1
    local c = uv.new_tcp()
    c:connect("127.0.0.1", ports[started % LISTENERS + 1], function()
      c:close()
      done = done + 1
    end)
  end
end)
run_for(SECONDS, function()
  ticker:close()
end)
cpu, wall = os.clock() - cpu0, (uv.hrtime() - wall0) / 1e9
print(("  %-34s %8.0f connects/s, CPU %.0f%% of one core"):format("baseline: bare luv connects", done / wall,
  100 * cpu / wall))
for _, s in ipairs(handles) do s:close() end
uv.run("nowait")
