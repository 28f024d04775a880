-- The cost of a scrape of /metrics at 10,000 services: a manager with
-- 10,000 services (ports reserved in a pool, no listener) with Lua health
-- checks that have run, and portman.metrics rendering the text, beside
-- baselines measured in the same run on the same data:
--   * the same lines built by a plain string.format loop from the status
--     document (one format call a line, then one concat): what a naive
--     exporter does; a scrape of it costs manager:status() plus the loop;
--   * cjson encoding the status document (what /status.json costs);
--   * manager:status() alone.
-- portman.metrics reads the manager itself (manager:brief()), so its
-- figure is a whole scrape.
-- Each figure is the min/median/max of REPS renders, in CPU ms.
local uv = require "luv"
local manager = require "portman.manager"
local metrics = require "portman.metrics"
local cjson = require "cjson"
local statuspage = require "portman.statuspage"
local log = require "portman.log"

log.setup{level = "error"} -- 10,000 status changes are not the point

local N = tonumber(os.getenv("SERVICES")) or 10000
local REPS = tonumber(os.getenv("REPS")) or 15

local m = manager.new{}
m:add_pool("p", {range = {20000, 20000 + N + 99}})
local c = metrics.new(m)
for i = 1, N do
  assert(m:add_service{name = ("svc-%05d"):format(i), pool = "p", listen = false,
    check = {kind = "lua", fn = function(done) done(i % 50 ~= 0, "unreachable", "down") end,
             interval = 200, rise = 1, fall = 1, jitter = 50}})
end
-- run the checks a few rounds: every service has results and a status
local ran = false
local t = uv.new_timer()
t:start(1000, 0, function() t:close() ran = true end)
while not ran do uv.run("once") end

-- CPU time: 8 processes share 2 cores here, and wall time measures the
-- scheduler as much as the work
local function clock() return os.clock() * 1000 end

local function measure(fn)
  local times, out = {}, nil
  for i = 1, REPS do
    collectgarbage()
    local t0 = clock()
    out = fn()
    times[i] = clock() - t0
  end
  table.sort(times)
  return times[1], times[(REPS + 1) // 2], times[REPS], out
end

-- The baseline exporter: the same samples, one string.format a line.
local hists
local function naive(doc)
  local lines = {}
  local function add(fmt, ...) lines[#lines + 1] = fmt:format(...) end
  for _, p in ipairs(doc.pools) do
    add('portman_pool_ports{pool="%s",state="allocated"} %d\n', p.name, p.allocated)
    add('portman_pool_ports{pool="%s",state="free"} %d\n', p.name, p.size - p.allocated)
  end
  for _, s in ipairs(doc.services) do
    add('portman_service_up{service="%s",proto="%s"} %d\n', s.name, s.proto, s.status == "healthy" and 1 or 0)
  end
  for _, s in ipairs(doc.services) do
    add('portman_service_status{service="%s",status="healthy"} %d\n', s.name, s.status == "healthy" and 1 or 0)
    if s.status ~= "healthy" then add('portman_service_status{service="%s",status="%s"} 1\n', s.name, s.status) end
  end
  for _, s in ipairs(doc.services) do
    local h = hists[s.name]
    if h then
      local cum = 0
      for i, b in ipairs(metrics.BUCKETS) do
        cum = cum + h.counts[i]
        add('portman_health_check_duration_seconds_bucket{service="%s",le="%g"} %d\n', s.name, b, cum)
      end
      add('portman_health_check_duration_seconds_bucket{service="%s",le="+Inf"} %d\n', s.name, h.count)
      add('portman_health_check_duration_seconds_sum{service="%s"} %.17g\n', s.name, h.sum)
      add('portman_health_check_duration_seconds_count{service="%s"} %d\n', s.name, h.count)
    end
  end
  for _, s in ipairs(doc.services) do
    for result, n in pairs(hists[s.name] and hists[s.name].results or {}) do
      add('portman_health_checks_total{service="%s",result="%s"} %d\n', s.name, result, n)
    end
  end
  return table.concat(lines)
end

local doc = m:status()
-- the naive exporter's histograms: Lua tables, as such an exporter keeps them
hists = {}
for _, s in ipairs(doc.services) do hists[s.name] = c.hist:get(s.name) end
local s_min, s_med, s_max = measure(function() return m:status() end)
local r_min, r_med, r_max, chunks = measure(function() return (c:render_chunks()) end)
local text = table.concat(chunks)
local history = function(name) return m.health:history(name) end
local p_min, p_med, p_max, page = measure(function() return statuspage.render(doc, history) end)
local n_min, n_med, n_max, naive_text = measure(function() return naive(doc) end)
local j_min, j_med, j_max, js = measure(function() return cjson.encode(doc) end)

local _, lines = text:gsub("\n", "")
print(("/metrics at %d services: %d lines, %.1f MiB in %d chunks (naive baseline: %.1f MiB; status.json %.1f MiB)")
  :format(N, lines, #text / 1048576, #chunks, #naive_text / 1048576, #js / 1048576))
print(("%-44s %8s %8s %8s"):format("ms (min / median / max of " .. REPS .. ")", "min", "median", "max"))
local function row(name, a, b, x) print(("  %-42s %8.1f %8.1f %8.1f"):format(name, a, b, x)) end
row("portman.metrics: a scrape (render_chunks)", r_min, r_med, r_max)
row("baseline: string.format a line", n_min, n_med, n_max)
row("baseline: cjson.encode(status doc)", j_min, j_med, j_max)
row("manager:status() alone", s_min, s_med, s_max)
row(("status page (%.1f MiB), a sparkline a service"):format(#page / 1048576), p_min, p_med, p_max)
print(("scrape / (manager:status() + string.format baseline) (medians): %.2f; goal < 50 ms a scrape: %s (%.1f)")
  :format(r_med / (s_med + n_med), r_med < 50 and "met" or "NOT met", r_med))
m:shutdown(0)
uv.run()
