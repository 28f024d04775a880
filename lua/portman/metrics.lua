--- The daemon's metrics in Prometheus' text exposition format 0.0.4
-- (docs/design.md, "Metrics"). A collector listens to the manager's
-- events (counters: allocations, exhaustion, renewals, program restarts
-- and exits), observes each health check result (a duration histogram
-- and a result counter per service), and at each scrape reads the gauges
-- from the manager (manager:brief(), the services as parallel lists, and
-- manager:pool_counts(); the status document's tables would cost as much
-- as the whole render), the default resolver's counters and /proc/self.
--
-- A scrape of 10,000 services must stay cheap (bench/metrics.lua): the
-- lines are put together as pieces in one buffer and joined once; the
-- label text of each service is escaped once and kept.
local uv = require "luv"
local resolver = require "portman.resolver"
local portman = require "portman"
local core = require "portman.core"

local M = {}

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
-- seconds: a TCP connect on loopback takes ~0.1 ms, a remote one ms to s.
-- Few buckets: each is a line per checked service at every scrape.
M.BUCKETS = {0.001, 0.005, 0.025, 0.1, 1}

--- A label value escaped as the format asks: backslash, double quote
-- and newline.
function M.escape(v)
  v = tostring(v)
  if not v:find('[\\"\n]') then return v end
  return (v:gsub('[\\"\n]', {["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n"}))
end

local escape = M.escape

local Collector = {}
Collector.__index = Collector

-- A counter table keyed by two labels, made on first use.
local function bump(t, a, b)
  local row = t[a]
  if not row then
    row = {}
    t[a] = row
  end
  row[b] = (row[b] or 0) + 1
end

--- Records one health check result (the scheduler's observer).
function Collector:observe(name, ok, status, ms)
  self.hist:observe(name, ms / 1000, ok and "healthy" or status or "unknown")
end

local MAPPING_RESULTS = {mapping_renewed = "renewed", mapping_recreated = "recreated", mapping_moved = "moved",
                         mapping_renew_failed = "failed"}

-- The manager's events that count.
function Collector:on_event(ev)
  local e, m = ev.event, self.manager
  if e == "service_started" then
    local svc = m.services[ev.service]
    if svc and svc.pool_name then self.allocations[svc.pool_name] = (self.allocations[svc.pool_name] or 0) + 1 end
  elseif e == "exhaustion" and ev.level ~= "ok" then
    bump(self.exhaustion, ev.pool, ev.level)
  elseif MAPPING_RESULTS[e] then
    local svc = m.services[ev.service]
    local method = svc and svc.mapping and svc.mapping.method or "unknown"
    bump(self.renewals, method, MAPPING_RESULTS[e])
  elseif e == "program_restarting" then
    self.restarts[ev.service] = (self.restarts[ev.service] or 0) + 1
  elseif e == "program_exited" then
    bump(self.exits, ev.service, ev.signal and tostring(ev.signal) or tostring(ev.exit_code))
  elseif e == "service_stopped" then
    -- a service that left takes its series along (a new one starts at 0)
    self.hist:remove(ev.service)
    self.restarts[ev.service], self.exits[ev.service], self.labels[ev.service] = nil, nil, nil
  end
end

--- Counts one admin request of op (the daemon wraps its admin ops).
function Collector:count_admin(op)
  self.admin[op] = (self.admin[op] or 0) + 1
end

--- Counts one HTTP request answered with status code.
function Collector:count_http(code)
  self.http[code] = (self.http[code] or 0) + 1
end

--- A collector for manager m: it listens to m's events and m's health
-- checks from now on.
function M.new(m)
  local self = setmetatable({manager = m, hist = core.histograms_new(M.BUCKETS), allocations = {},
                             exhaustion = {}, renewals = {}, restarts = {}, exits = {}, admin = {}, http = {},
                             labels = {},
                             started = os.time()}, Collector)
  -- the services running now took their ports before the collector came
  for _, svc in pairs(m.services) do
    if svc.pool_name then self.allocations[svc.pool_name] = (self.allocations[svc.pool_name] or 0) + 1 end
  end
  self._off = m:on(function(ev) self:on_event(ev) end)
  if m.health.observe then m.health:observe(function(...) self:observe(...) end) end
  return self
end

--- Stops listening.
function Collector:close()
  if self._off then self._off() end
  if self.manager.health.observe then self.manager.health:observe(nil) end
  self._off = nil
end

-- ---- rendering ----

-- The text is a list of chunks: the server writes it as it is (writev),
-- never joined into one string of MiBs, whose fresh pages cost more than
-- all the rest. The lines that grow with the number of services are
-- written by C as chunks of about 64 KiB (csrc/lua_metrics.c); the few
-- others are put together as pieces in one table and joined into a chunk
-- (flush) before each C part.
local function flush(b, n)
  if n > 0 then b.chunks[#b.chunks + 1] = core.text_join(b, n) end
  return 0
end

local function family(b, name, kind, help)
  local n = b.n
  b[n + 1], b[n + 2], b[n + 3], b[n + 4], b[n + 5], b[n + 6], b[n + 7] =
    "# HELP ", name, " ", help, "\n# TYPE ", name, " " .. kind .. "\n"
  b.n = n + 7
end

-- A sample with one label: name{k="v"} value
local function one(b, prefix, v, value)
  local n = b.n
  b[n + 1], b[n + 2], b[n + 3], b[n + 4] = prefix, v, '"} ', value
  b[n + 5] = "\n"
  b.n = n + 5
end

-- A sample with two labels: prefix v1 mid v2 "} value
local function two(b, prefix, v1, mid, v2, value)
  local n = b.n
  b[n + 1], b[n + 2], b[n + 3], b[n + 4], b[n + 5], b[n + 6], b[n + 7] = prefix, v1, mid, v2, '"} ', value, "\n"
  b.n = n + 7
end

-- The escaped label text of a name, kept.
function Collector:label(name)
  local l = self.labels[name]
  if not l then
    l = escape(name)
    self.labels[name] = l
  end
  return l
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out, function(a, b) return tostring(a) < tostring(b) end)
  return out
end

local function counter2(self, b, t, name, help, l1, l2)
  family(b, name, "counter", help)
  local prefix, mid = name .. "{" .. l1 .. '="', '",' .. l2 .. '="'
  for _, a in ipairs(sorted_keys(t)) do
    local row = t[a]
    for _, k in ipairs(sorted_keys(row)) do two(b, prefix, self:label(a), mid, escape(k), row[k]) end
  end
end

local function counter1(self, b, t, name, help, l1)
  family(b, name, "counter", help)
  local prefix = name .. "{" .. l1 .. '="'
  for _, a in ipairs(sorted_keys(t)) do one(b, prefix, self:label(a), t[a]) end
end

local function render_pools(self, b, v)
  family(b, "portman_pool_ports", "gauge", "Ports of a pool, by state (allocated or free).")
  for _, p in ipairs(v.pools) do
    local l = self:label(p.name)
    two(b, 'portman_pool_ports{pool="', l, '",state="', "allocated", p.allocated)
    two(b, 'portman_pool_ports{pool="', l, '",state="', "free", p.size - p.allocated)
  end
  family(b, "portman_pool_size_ports", "gauge", "Ports in a pool's range.")
  for _, p in ipairs(v.pools) do one(b, 'portman_pool_size_ports{pool="', self:label(p.name), p.size) end
  counter1(self, b, self.allocations, "portman_pool_allocations_total",
    "Services started on a port of the pool.", "pool")
  counter2(self, b, self.exhaustion, "portman_pool_exhaustion_events_total",
    "Times the pool's utilization crossed its warning or critical level.", "pool", "level")
end

-- Is a service with this status up: running, and healthy or unchecked?
local UP = {healthy = 1, unchecked = 1}

-- portman_service_status: a "healthy" line for every service (1 or 0),
-- and one more with the status it has when that is another (value 1). A
-- line for every status word of every service would be most of the text
-- at 10,000 services; the line of a status left ends there, and
-- Prometheus marks its series stale.
-- The lines of every service are written by C (core.service_text), as
-- chunks of their own.
local function render_services(_, b, v)
  family(b, "portman_service_up", "gauge", "1 when the service runs and its health check passes (or it has none).")
  b.n = flush(b, b.n)
  core.service_text(b.chunks, "portman_service_up", "up", v.names, v.protos, v.statuses, UP)
  family(b, "portman_service_status", "gauge", "1 for the service's status: healthy (1 or 0), or another "
    .. "(unknown, unreachable, starting, stopped, a pending service's code word, ...).")
  b.n = flush(b, b.n)
  core.service_text(b.chunks, "portman_service_status", "status", v.names, v.protos, v.statuses, UP)
end

-- In name order (manager:brief sorts once, the registry keeps it): no sort of 10,000
-- names at each scrape.
local function render_health(self, b, v)
  family(b, "portman_health_check_duration_seconds", "histogram", "Time a service's health check took.")
  -- every series written by one walk in C, as chunks of its own
  b.n = flush(b, b.n)
  self.hist:text(b.chunks, "portman_health_check_duration_seconds", "service", v.names)
  family(b, "portman_health_checks_total", "counter",
    "Health check results of a service, by result (healthy or the failure's status).")
  b.n = flush(b, b.n)
  self.hist:results_text(b.chunks, "portman_health_checks_total", "service", "result", v.names)
end

local function render_mappings(self, b, v, now)
  family(b, "portman_mapping_up", "gauge", "1 when the service's router mapping is in place, 0 when it failed.")
  local left = {}
  for i, mp in ipairs(v.mappings) do
    if mp then
      local name, method = v.names[i], mp.method or "none"
      two(b, 'portman_mapping_up{service="', self:label(name), '",method="', method, mp.error and 0 or 1)
      if mp.expires then left[#left + 1] = {name, method, math.max(0, mp.expires - now)} end
    end
  end
  family(b, "portman_mapping_lifetime_remaining_seconds", "gauge", "Seconds until the router forgets the mapping "
    .. "unless it is renewed.")
  for _, r in ipairs(left) do
    two(b, 'portman_mapping_lifetime_remaining_seconds{service="', self:label(r[1]), '",method="', r[2], r[3])
  end
  counter2(self, b, self.renewals, "portman_mapping_renewals_total",
    "Mapping renewals, by method and result (renewed, recreated, moved, failed).", "method", "result")
end

local function render_programs(self, b)
  counter1(self, b, self.restarts, "portman_program_restarts_total",
    "Restarts of the service's supervised program.", "service")
  counter2(self, b, self.exits, "portman_program_exits_total",
    "Exits of the service's supervised program, by exit code (or signal).", "service", "code")
end

local function simple(b, name, kind, help, value)
  family(b, name, kind, help)
  local n = b.n
  b[n + 1], b[n + 2], b[n + 3], b[n + 4] = name, " ", value, "\n"
  b.n = n + 4
end

local RESOLVER = {{"queries", "portman_resolver_queries_total", "DNS queries sent on the wire."},
                  {"hits", "portman_resolver_cache_hits_total", "Lookups answered from the cache."},
                  {"misses", "portman_resolver_cache_misses_total", "Lookups the cache could not answer."}}

local function render_daemon(self, b)
  local m = self.manager
  simple(b, "portman_state_saves_total", "counter", "State file writes.", m.state_saves or 0)
  simple(b, "portman_state_save_failures_total", "counter", "State file writes that failed.",
    m.state_save_failures or 0)
  counter1(self, b, self.admin, "portman_admin_requests_total", "Admin socket requests, by op.", "op")
  counter1(self, b, self.http, "portman_http_requests_total", "HTTP requests, by status code.", "code")
  local st = resolver.default():stats()
  for _, r in ipairs(RESOLVER) do simple(b, r[2], "counter", r[3], st[r[1]] or 0) end
  family(b, "portman_build_info", "gauge", "portman's version.")
  one(b, 'portman_build_info{version="', escape(portman.version), 1)
end

-- ---- the process (named as the Prometheus client libraries name them) ----

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local USER_HZ = 100 -- /proc's clock ticks (sysconf(_SC_CLK_TCK) on Linux)

-- The boot time, read once.
local boot_time
local function booted()
  if not boot_time then boot_time = tonumber((read("/proc/stat") or ""):match("\nbtime (%d+)")) or 0 end
  return boot_time
end

--- The process metrics' values: cpu_seconds, resident_bytes, virtual_bytes,
-- open_fds, max_fds, start_time (unix seconds).
function M.process()
  local out = {}
  local stat = read("/proc/self/stat") or ""
  local f = {}
  for w in (stat:match("%) (.*)$") or ""):gmatch("%S+") do f[#f + 1] = w end
  -- fields after the command: state is field 3, so field k is f[k - 2]
  out.cpu_seconds = ((tonumber(f[12]) or 0) + (tonumber(f[13]) or 0)) / USER_HZ
  out.start_time = booted() + (tonumber(f[20]) or 0) / USER_HZ
  out.virtual_bytes = tonumber(f[21]) or 0
  out.resident_bytes = uv.resident_set_memory()
  local n, req = 0, uv.fs_scandir("/proc/self/fd")
  if req then
    for _ in uv.fs_scandir_next, req do n = n + 1 end
  end
  out.open_fds = n
  out.max_fds = tonumber((read("/proc/self/limits") or ""):match("Max open files%s+(%d+)")) or 0
  return out
end

local function render_process(b)
  local p = M.process()
  simple(b, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
    p.cpu_seconds)
  simple(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", p.resident_bytes)
  simple(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", p.virtual_bytes)
  simple(b, "process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds)
  simple(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds)
  simple(b, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
    p.start_time)
end

--- The metrics text as a list of strings (to be written in order) and
-- its length in bytes, read from the manager now. now: unix seconds
-- (os.time()).
function Collector:render_chunks(now)
  local m = self.manager
  local v = {pools = m:pool_counts()}
  v.names, v.protos, v.statuses, v.mappings = m:brief()
  local b = {n = 0, chunks = {}}
  render_pools(self, b, v)
  render_services(self, b, v)
  render_health(self, b, v)
  render_mappings(self, b, v, now or os.time())
  render_programs(self, b)
  render_daemon(self, b)
  render_process(b)
  flush(b, b.n)
  local len = 0
  for _, c in ipairs(b.chunks) do len = len + #c end
  return b.chunks, len
end

--- The metrics text as one string (render_chunks joined).
function Collector:render(now)
  return table.concat((self:render_chunks(now)))
end

return M
