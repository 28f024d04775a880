-- Health checks at scale: 5,000 TCP connect checks a second against local
-- listeners on one core, with the garbage collector running. Each
-- repetition runs portman.health, then two baselines in the same process,
-- making the same connects with no scheduling, thresholds or history:
-- A, one bare luv timer ticking every 10 ms with 50 connects a tick (few
-- loop wake-ups); B, a bare luv timer per check, spread by the same jitter
-- and re-armed when its connect ends (as many due times and wake-ups as
-- portman.health's: the least any scheduler of 5,000 checks pays).
--
-- Figures, min/median/max over the repetitions:
-- * CPU per check over CPU per bare connect (1.00: the scheduler costs
--   nothing beyond the connects and their due times);
-- * lag: how late each check starts after its due time (p50, p99), beside
--   the baselines' own lag (what the loop and the machine's load cost
--   anyone; on a loaded machine it is most of the figure);
-- * how many GC cycles ended during portman.health's runs: each run starts
--   after a full collection, and with a large heap (5,000 histories) a
--   cycle may take longer than a short run to come; SECONDS=30 sees some.
--
-- Environment: REPS (5), SECONDS per run (4), GC ("inc" as Lua starts,
-- "gen" for generational mode, "stop" to run without collecting: for
-- telling the collector's share of the lag from the rest), STALLS (below).
package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local helpers = require "helpers"
local health = require "portman.health"

local CHECKS, LISTENERS = 5000, 50
local REPS = tonumber(os.getenv("REPS")) or 5
local SECONDS = tonumber(os.getenv("SECONDS")) or 4
local GC = os.getenv("GC") or "inc"

if GC == "gen" then collectgarbage("generational") elseif GC == "stop" then collectgarbage("stop") end

local function listeners()
  local ports, handles = {}, {}
  for i = 1, LISTENERS do
    local s, port = helpers.tcp_acceptor(1024)
    ports[i], handles[i] = port, s
  end
  return ports, handles
end

local function percentile(t, p)
  table.sort(t)
  return t[math.max(1, math.ceil(#t * p))]
end

local function median(t)
  local s = {table.unpack(t)}
  table.sort(s)
  return s[(#s + 1) // 2]
end

local function now_ms() return uv.hrtime() / 1e6 end

-- Runs the loop for ms, calls stop(), then lets what is in flight finish.
local function run_for(ms, stop)
  local t = uv.new_timer()
  uv.update_time()
  t:start(ms, 0, function()
    stop()
    t:start(300, 0, function()
      t:close()
      uv.stop() -- the listeners would keep the loop running
    end)
  end)
  uv.run()
end

-- GC cycles ended so far: an object whose finalizer makes another like it
-- counts them (collectgarbage("collect") ends one too).
local cycles_ended = 0
local function sentinel()
  setmetatable({}, {__gc = function()
    cycles_ended = cycles_ended + 1
    sentinel()
  end})
end
sentinel()
local function gc_cycles() return cycles_ended end

-- STALLS=1: times each timer callback's CPU (os.clock), to tell the
-- collector's pauses (CPU spent inside a callback, a step or a cycle's
-- end) from the machine's load (time the process did not run). Wrappers
-- are made once a callback, so runs allocate nothing more; off by default,
-- since the timing itself costs CPU in every phase.
local stalls
if os.getenv("STALLS") then
  local methods = getmetatable(uv.new_timer()).__index
  local start, wrappers = methods.start, setmetatable({}, {__mode = "k"})
  function methods.start(t, timeout, rep, cb)
    local w = wrappers[cb]
    if not w then
      w = function(...)
        local c0 = os.clock()
        cb(...)
        local d = os.clock() - c0
        if d > 0.001 then stalls.over1 = stalls.over1 + 1 end
        if d > 0.005 then stalls.over5 = stalls.over5 + 1 end
        if d > stalls.max then stalls.max = d end
      end
      wrappers[cb] = w
    end
    return start(t, timeout, rep, w)
  end
end
local function stalls_reset() stalls = {over1 = 0, over5 = 0, max = 0} end
local function stalls_now() return {over1 = stalls.over1, over5 = stalls.over5, max = stalls.max} end
stalls_reset()

local ports, handles = listeners()

-- portman.health: 5,000 checks, each once a second, spread by jitter.
local function run_health()
  local h = health.new{concurrency = 512}
  for i = 1, CHECKS do
    h:add{name = "c" .. i, kind = "tcp", port = ports[i % LISTENERS + 1], interval = 1000,
          jitter = 1000, timeout = 1000}
  end
  collectgarbage("collect") -- each run starts from the same heap
  local cycles = gc_cycles()
  stalls_reset()
  local cpu0, wall0 = os.clock(), uv.hrtime()
  h:start()
  local cpu, stalled
  run_for(SECONDS * 1000, function()
    cpu = os.clock() - cpu0
    cycles = gc_cycles() - cycles
    stalled = stalls_now()
    h:close()
  end)
  local wall = (uv.hrtime() - wall0) / 1e9
  local lags, runs, fails = {}, 0, 0
  for i = 1, CHECKS do
    for _, r in ipairs(h:history("c" .. i) or {}) do
      runs = runs + 1
      if not r.ok then fails = fails + 1 end
      lags[#lags + 1] = r.lag
    end
    h:remove("c" .. i)
  end
  return {runs = runs, fails = fails, wall = wall, cpu = cpu, per = cpu / runs, cycles = cycles,
          p50 = percentile(lags, 0.5), p99 = percentile(lags, 0.99), stalls = stalled}
end

-- Baseline A: the same connect rate from one timer, nothing else; its
-- ticks have due times of their own, t0 + 10 ms * k.
local function run_ticks()
  local done, started, lags = 0, 0, {}
  local per_tick = CHECKS // 100
  local ticker = uv.new_timer()
  collectgarbage("collect")
  local cpu0 = os.clock()
  uv.update_time()
  local due = now_ms() + 10
  local function tick()
    local t = now_ms()
    lags[#lags + 1] = math.max(0, t - due)
    for _ = 1, per_tick do
      started = started + 1
      local c = uv.new_tcp()
      c:connect("127.0.0.1", ports[started % LISTENERS + 1], function()
        c:close()
        done = done + 1
      end)
    end
    due = due + 10
    ticker:start(math.max(1, math.floor(due - t)), 0, tick)
  end
  ticker:start(10, 0, tick)
  local cpu
  run_for(SECONDS * 1000, function()
    ticker:close()
    cpu = os.clock() - cpu0
  end)
  return {runs = done, cpu = cpu, per = cpu / done, p50 = percentile(lags, 0.5), p99 = percentile(lags, 0.99)}
end

-- Baseline B: what any scheduler of 5,000 checks with due times of their
-- own pays at the least: a bare luv timer per check (made once), spread by
-- the same jitter, each connecting and, once connected, re-armed for an
-- interval on; no timeout, thresholds or history. Its due times are as
-- many and as spread as portman.health's, so are the loop's wake-ups.
local function run_timers()
  local done, lags, timers, stalled = 0, {}, {}, nil
  collectgarbage("collect")
  stalls_reset()
  local cpu0 = os.clock()
  uv.update_time()
  for i = 1, CHECKS do
    local t, due = uv.new_timer(), nil
    local port = ports[i % LISTENERS + 1]
    local function fire()
      local now = now_ms()
      lags[#lags + 1] = math.max(0, now - due)
      local c = uv.new_tcp()
      c:connect("127.0.0.1", port, function()
        c:close()
        done = done + 1
        if t:is_closing() then return end
        due = now_ms() + 1000
        t:start(1000, 0, fire)
      end)
    end
    local delay = math.max(1, math.floor(math.random() * 1000))
    due = now_ms() + delay
    t:start(delay, 0, fire)
    timers[i] = t
  end
  local cpu
  run_for(SECONDS * 1000, function()
    stalled = stalls_now()
    for _, t in ipairs(timers) do t:close() end
    cpu = os.clock() - cpu0
  end)
  return {runs = done, cpu = cpu, per = cpu / done, p50 = percentile(lags, 0.5), p99 = percentile(lags, 0.99),
          stalls = stalled}
end

local function mmm(list, key, scale)
  local t = {}
  for i, r in ipairs(list) do t[i] = r[key] * (scale or 1) end
  local s = {table.unpack(t)}
  table.sort(s)
  return s[1], median(t), s[#s]
end

local hs, as, bs, ra, rb = {}, {}, {}, {}, {}
for rep = 1, REPS do
  hs[rep] = run_health()
  as[rep] = run_ticks()
  bs[rep] = run_timers()
  ra[rep], rb[rep] = {ratio = hs[rep].per / as[rep].per}, {ratio = hs[rep].per / bs[rep].per}
  io.stderr:write(("rep %d: CPU ratio %.2f (A) %.2f (B); lag p50 %.2f p99 %.2f ms (A p99 %.2f, B p99 %.2f);"
    .. " %d checks, %d failed, %d GC cycles\n"):format(rep, ra[rep].ratio, rb[rep].ratio, hs[rep].p50, hs[rep].p99,
    as[rep].p99, bs[rep].p99, hs[rep].runs, hs[rep].fails, hs[rep].cycles))
end
for _, s in ipairs(handles) do s:close() end
uv.run("nowait")

local fails, cycles = 0, 0
for _, r in ipairs(hs) do fails, cycles = fails + r.fails, cycles + r.cycles end
print(("portman.health: %d tcp checks/s on %d listeners, %d x %d s, GC %s (%d cycles ended during its runs);"
  .. " min / median / max"):format(CHECKS, LISTENERS, REPS, SECONDS, GC, cycles))
local function row(label, list, key, unit, scale, fmt)
  fmt = fmt or "%8.2f"
  local lo, mid, hi = mmm(list, key, scale)
  print(("  %-44s " .. fmt .. " / " .. fmt .. " / " .. fmt .. " %s"):format(label, lo, mid, hi, unit))
end
row("portman.health checks run", hs, "runs", ("(%d failed)"):format(fails), 1, "%8d")
row("A: one 10 ms ticker, connects done", as, "runs", "", 1, "%8d")
row("B: a bare luv timer per check, connects done", bs, "runs", "", 1, "%8d")
row("CPU per check, portman.health", hs, "per", "us", 1e6)
row("CPU per connect, A", as, "per", "us", 1e6)
row("CPU per connect, B", bs, "per", "us", 1e6)
row("CPU ratio health / A", ra, "ratio", "x")
row("CPU ratio health / B", rb, "ratio", "x")
row("lag p50, portman.health", hs, "p50", "ms")
row("lag p99, portman.health", hs, "p99", "ms")
row("lag p50, A's ticks", as, "p50", "ms")
row("lag p99, A's ticks", as, "p99", "ms")
row("lag p50, B's timers", bs, "p50", "ms")
row("lag p99, B's timers", bs, "p99", "ms")
if os.getenv("STALLS") then
  local function flat(list)
    local out = {}
    for i, r in ipairs(list) do out[i] = r.stalls end
    return out
  end
  row("health timer callbacks over 1 / 5 ms CPU", flat(hs), "over1", "", 1, "%8d")
  row("", flat(hs), "over5", "", 1, "%8d")
  row("longest health timer callback, CPU", flat(hs), "max", "ms", 1000)
  row("B's timer callbacks over 1 / 5 ms CPU", flat(bs), "over1", "", 1, "%8d")
  row("", flat(bs), "over5", "", 1, "%8d")
  row("longest B timer callback, CPU", flat(bs), "max", "ms", 1000)
end
