--- Name resolution for peers: A/AAAA and SRV over c-ares on the luv loop,
-- with a TTL cache and the selection policies that pick an endpoint.
--
-- The engine is C (portman.core's dns: one c-ares channel whose sockets sit
-- behind one epoll fd); this file polls that fd with uv.new_poll, runs a uv
-- timer for its timeouts, and keeps the cache:
--
-- * positive answers live for their TTL (the smallest over the records and
--   the CNAMEs that led to them), clamped to `min_ttl`..`max_ttl` seconds;
-- * "no such name" and "no data" live for `negative_ttl` seconds (RFC 2308
--   caches negative answers; the SOA is not exposed by c-ares 1.18.1's
--   getaddrinfo, so one fixed time stands in for its MINIMUM);
-- * concurrent lookups of one name share one query on the wire;
-- * when a refresh fails (timeout, refused, ...) an expired answer is served
--   for up to `stale_ttl` seconds after it expired (RFC 8767), with ttl 0.
--
-- The cache's clock is the loop's (uv.now), which advances as the loop runs.
--
-- Literal addresses and names in the hosts file answer without a query, with
-- ttl 0. Failures are `nil, "code: name: reason", code` with code one of
-- not_found, timeout, refused, protocol, unreachable, closed; a network
-- failure never raises.
--
-- I/O methods take a callback as their last argument, called as
-- `cb(records)` or `cb(nil, msg, code)` (a cached answer calls it before
-- the method returns); inside `portman.run` / `portman.spawn` they may be
-- called without one, and return the same values.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local log = require "portman.log"

local M = {}
local R = {}
local mt = {__index = R}

local OPTIONS = {servers = true, cache = true, min_ttl = true, max_ttl = true, negative_ttl = true,
                 stale_ttl = true, timeout = true, tries = true, hosts = true,
                 cache_size = true, max_inflight = true, registry = true}
local FAMILIES = {"inet", "inet6", "any"}
local DEFAULTS = {min_ttl = 0, max_ttl = 86400, negative_ttl = 30, stale_ttl = 0,
                  timeout = 2000, tries = 2, cache_size = 100000, max_inflight = 100}
-- Failures after which an expired answer may be served (not "no such name":
-- that is an answer, and it replaces what was cached).
local STALE_ON = {timeout = true, refused = true, protocol = true, unreachable = true}

--- Reads a DNS server's address, "IP", "IP:PORT", "[IPv6]" or
-- "[IPv6]:PORT" (port 53 by default).
-- @return[1] c-ares' form of it ("192.0.2.1:53", "[2001:db8::1]:53")
-- @return[2] nil, and what is wrong
function M.parse_server(text)
  if type(text) ~= "string" then return nil, "string expected, got " .. type(text) end
  local host, port = text:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = text:match("^([%d%.]+):(%d+)$") end
  host = host or text:match("^%[([^%]]+)%]$") or text
  local family, ip = core.dns_parse_ip(host)
  port = math.tointeger(tonumber(port or 53))
  if not family or not port or port < 1 or port > 65535 then
    return nil, ("IP[:PORT] expected, got '%s'"):format(text)
  end
  return (family == "inet6" and "[%s]:%d" or "%s:%d"):format(ip, port)
end

local function server_csv(fname, n, text, what)
  local csv, err = M.parse_server(text)
  if not csv then check.argerror(fname, n, ("%s: %s"):format(what, err)) end
  return csv
end

local function number_opt(fname, opts, key, min)
  local v = opts[key]
  if v == nil then return DEFAULTS[key] end
  if type(v) ~= "number" or v < min or v ~= v then
    check.argerror(fname, 1, ("%s: number >= %d expected, got %s"):format(key, min, tostring(v)))
  end
  return v
end

-- A name check: a DNS name (labels of 1-63 characters, 253 in all; letters,
-- digits, '-' and '_', which SRV owners use), or a literal address.
-- Names already found valid, so that a cache hit costs no pattern matching
-- (cleared when it grows large: it is only a shortcut).
local valid_names, valid_count = {}, 0

--- Checks a name for a query: a DNS name (labels of 1-63 characters, 253
-- in all; letters, digits, '-' and '_', which SRV owners use), or a
-- literal address.
-- @return[1] name
-- @return[2] nil, and what is wrong
function M.valid_name(name)
  if valid_names[name] then return name end
  if type(name) ~= "string" then return nil, "string expected, got " .. type(name) end
  if core.dns_parse_ip(name) then return name end
  local bare = name:sub(-1) == "." and name:sub(1, -2) or name
  local bad = ("invalid domain name '%s'"):format(name)
  if #bare == 0 or #bare > 253 or not bare:match("^[%w%-_%.]+$") then return nil, bad end
  for label in (bare .. "."):gmatch("([^.]*)%.") do
    if #label == 0 or #label > 63 then return nil, bad end
  end
  if valid_count >= 10000 then valid_names, valid_count = {}, 0 end
  valid_names[name], valid_count = true, valid_count + 1
  return name
end

--- A name in the ASCII form DNS carries: an internationalized name
-- (UTF-8) becomes its IDNA A-labels ("xn--...").
-- @return[1] the ASCII name
-- @return[2] nil, "unsupported: ...", "unsupported" when this build cannot convert it
function M.to_ascii(name)
  if type(name) == "string" and not name:find("[\128-\255]") then return name end
  return nil, ("unsupported: no IDNA conversion for '%s'"):format(tostring(name)), "unsupported"
end

local function check_name(fname, name)
  local ok, err = M.valid_name(name)
  if not ok then check.argerror(fname, 1, err) end
  return name
end

--- Reads a hosts file into name -> {{address, family}, ...}.
-- @return the table, or an empty one when the file cannot be read
function M.read_hosts(path)
  local map = {}
  local f = io.open(path)
  if not f then return map end
  for line in f:lines() do
    line = line:gsub("#.*", "")
    local fields = {}
    for w in line:gmatch("%S+") do fields[#fields + 1] = w end
    local family, ip = core.dns_parse_ip(fields[1] or "")
    if family and not (fields[1]):find("^%[") then
      for i = 2, #fields do
        local key = fields[i]:lower()
        local list = map[key] or {}
        map[key] = list
        local dup = false
        for _, rec in ipairs(list) do dup = dup or rec.address == ip end
        if not dup then list[#list + 1] = {address = ip, family = family} end
      end
    end
  end
  f:close()
  return map
end

--- Creates a resolver.
-- @tparam[opt] table opts
--   `servers`: list of "IP", "IP:PORT", "[IPv6]:PORT" (default: /etc/resolv.conf);
--   `cache` (true): keep answers; `min_ttl` (0), `max_ttl` (86400): clamp
--   TTLs, seconds; `negative_ttl` (30): how long "not found" is kept;
--   `stale_ttl` (0): how long past expiry an answer may stand in for a
--   failed refresh; `timeout` (2000 ms, the first try's; c-ares doubles it
--   per round) and `tries` (2); `hosts` (path, "/etc/hosts"; false: none);
--   `cache_size` (100000 entries); `max_inflight` (100 queries on the wire
--   at once; more wait their turn: c-ares sends them all from one UDP
--   socket, and a burst of a few hundred overflows a server's receive
--   queue, which costs each dropped query a whole timeout).
-- @return a resolver
-- @raise on a bad or unknown option, naming it
function M.new(opts)
  opts = opts or {}
  check.table("new", 1, opts)
  check.known("new", 1, opts, OPTIONS)
  local self = setmetatable({}, mt)
  if opts.servers ~= nil then
    check.table("new", 1, opts.servers)
    if #opts.servers == 0 then check.argerror("new", 1, "servers: at least one server expected") end
    local csv = {}
    for i, s in ipairs(opts.servers) do csv[i] = server_csv("new", 1, s, ("servers[%d]"):format(i)) end
    self._servers = table.concat(csv, ",")
  end
  for _, key in ipairs{"min_ttl", "max_ttl", "negative_ttl", "stale_ttl"} do
    self["_" .. key] = number_opt("new", opts, key, 0)
  end
  if self._min_ttl > self._max_ttl then
    check.argerror("new", 1, ("min_ttl %s > max_ttl %s"):format(self._min_ttl, self._max_ttl))
  end
  self._timeout = math.tointeger(number_opt("new", opts, "timeout", 1))
  self._tries = math.tointeger(number_opt("new", opts, "tries", 1))
  self._cache_size = number_opt("new", opts, "cache_size", 1)
  self._max_inflight = number_opt("new", opts, "max_inflight", 1)
  if not (self._timeout and self._tries) then
    check.argerror("new", 1, "timeout and tries: integers expected")
  end
  if opts.cache ~= nil and type(opts.cache) ~= "boolean" then
    check.argerror("new", 1, "cache: boolean expected, got " .. type(opts.cache))
  end
  self._caching = opts.cache ~= false
  local hosts = opts.hosts
  if hosts == nil then hosts = "/etc/hosts" end
  if hosts ~= false and type(hosts) ~= "string" then
    check.argerror("new", 1, "hosts: path or false expected, got " .. type(hosts))
  end
  self._hosts_path = hosts or nil
  if opts.registry ~= nil and type(opts.registry) ~= "function" then
    check.argerror("new", 1, "registry: function expected, got " .. type(opts.registry))
  end
  self._registry = opts.registry
  self._cache, self._cache_count = {}, 0
  self._inflight = {} -- key -> {waiters}, one query on the wire per key
  self._queries = {} -- engine id -> key
  self._queue, self._queue_head = {}, 1 -- keys waiting for max_inflight
  self._next_id = 0
  self._stats = {queries = 0, hits = 0, misses = 0, coalesced = 0, stale = 0, negative_hits = 0}
  return self
end

--- Is v a resolver?
function M.is_resolver(v)
  return getmetatable(v) == mt
end

local function now_ms() return uv.now() end

-- The engine, its poll handle and timer, made on the first query.
function R:_engine_get()
  if self._closed then return nil, "closed: resolver closed", "closed" end
  if self._engine then return self._engine end
  local eng, err, code = core.dns_new(self._servers, self._timeout, self._tries)
  if not eng then return nil, err, code end
  local ok, poll = pcall(uv.new_poll, eng:fd())
  if not ok or not poll then
    eng:close()
    return nil, "unreachable: uv.new_poll failed", "unreachable"
  end
  self._engine, self._poll, self._timer = eng, poll, uv.new_timer()
  self._on_ready = async.safe(function() self:_step() end, "resolver")
  return eng
end

-- Arms the poll and the timer while queries are in flight; stops both when
-- idle so that the loop can end.
function R:_arm()
  local eng = self._engine
  if not eng then return end
  local ms = eng:timeout()
  if ms == nil then
    if self._polling then
      self._poll:stop()
      self._timer:stop()
      self._polling = false
    end
    return
  end
  if not self._polling then
    self._poll:start("r", self._on_ready)
    self._polling = true
  end
  self._timer:start(ms, 0, self._on_ready)
end

local function call(cb, ...)
  local ok, err = xpcall(cb, debug.traceback, ...)
  if not ok then log.error("callback_failed", {what = "resolver", error = err}) end
end

-- Copies records with their remaining TTL (a caller may keep or change
-- what it gets; the cache's own copy stays as it was).
local function fresh_copy(records, remaining, stale)
  local out = {}
  for i = 1, #records do
    local rec = records[i]
    if rec.address then
      out[i] = {address = rec.address, family = rec.family, ttl = remaining}
    else
      out[i] = {target = rec.target, port = rec.port, priority = rec.priority,
                weight = rec.weight, ttl = remaining}
    end
  end
  if stale then out.stale = true end
  return out
end

local function clamp(v, lo, hi)
  return v < lo and lo or v > hi and hi or v
end

-- Room for one more entry: drop expired ones, then (still over 90% full)
-- arbitrary ones down to 90%, so that a full cache of live entries pays
-- for one sweep per tenth of its size rather than one per insert.
function R:_make_room()
  if self._cache_count < self._cache_size then return end
  local now = now_ms()
  for key, e in pairs(self._cache) do
    if e.stale_until <= now then
      self._cache[key] = nil
      self._cache_count = self._cache_count - 1
    end
  end
  local keep = math.floor(self._cache_size * 0.9)
  while self._cache_count > keep do
    local key = next(self._cache)
    self._cache[key] = nil
    self._cache_count = self._cache_count - 1
  end
end

function R:_store(key, entry)
  if not self._caching then return end
  if not self._cache[key] then
    self:_make_room()
    self._cache_count = self._cache_count + 1
  end
  self._cache[key] = entry
end

-- A query's result: into the cache, then to every waiter.
function R:_settle(key, res)
  local now = now_ms()
  local records, err, code
  if res.records then
    local ttl = math.huge
    for _, rec in ipairs(res.records) do ttl = math.min(ttl, rec.ttl) end
    ttl = math.tointeger(clamp(ttl, self._min_ttl, self._max_ttl) // 1) or 0
    self:_store(key, {records = res.records, ttl = ttl, fetched = now,
                      expires = now + ttl * 1000, stale_until = now + (ttl + self._stale_ttl) * 1000})
    records = fresh_copy(res.records, ttl)
  else
    code = res.code
    err = ("%s: %s: %s"):format(code, key:match("|(.*)$"), res.reason)
    local old = self._caching and self._cache[key]
    if STALE_ON[code] and old and old.records and now < old.stale_until then
      self._stats.stale = self._stats.stale + 1
      records, err, code = fresh_copy(old.records, 0, true), nil, nil
    elseif code == "not_found" then
      local ttl = self._negative_ttl
      self:_store(key, {err = err, code = code, ttl = ttl, fetched = now, expires = now + ttl * 1000,
                        stale_until = now + ttl * 1000})
    end
  end
  local flight = self._inflight[key]
  if not flight then return end -- closed meanwhile: its waiters were told
  self._inflight[key] = nil
  for _, cb in ipairs(flight) do
    if records then call(cb, fresh_copy(records, records[1] and records[1].ttl or 0, records.stale))
    else call(cb, nil, err, code) end
  end
end

-- RFC 2782: a target of "." means the service is decidedly not available
-- at this domain; such records are dropped, and an answer of only those is
-- "not found".
local function without_root_targets(res)
  local kept = {}
  for _, rec in ipairs(res.records) do
    if rec.target ~= "" and rec.target ~= "." then kept[#kept + 1] = rec end
  end
  if #kept == 0 then
    return {code = "not_found", reason = "service not available (SRV target '.')"}
  end
  res.records = kept
  return res
end

function R:_step()
  local eng = self._engine
  if not eng then return end
  for _, res in ipairs(eng:step()) do
    if self._closed then return end -- a callback closed the resolver
    local key = self._queries[res.id]
    self._queries[res.id] = nil
    if key and res.records and key:find("^srv|") then res = without_root_targets(res) end
    if key then self:_settle(key, res) end
  end
  if self._closed then return end
  self:_drain()
  if self._engine then self:_arm() end
end

-- Puts a query for key on the wire.
function R:_send(key)
  local eng, err, code = self:_engine_get()
  local ok
  if eng then
    self._next_id = self._next_id + 1
    local id = self._next_id
    local kind, name = key:match("^(%w+)|(.*)$")
    if kind == "srv" then ok, err, code = eng:srv(name, id)
    else ok, err, code = eng:resolve(name, kind, id) end
    if ok then
      self._queries[id] = key
      self._stats.queries = self._stats.queries + 1
      return
    end
  end
  -- The engine could not take it: answer the waiters now.
  self:_settle(key, {code = code, reason = (err or ""):gsub("^[^:]*: ", "")})
end

-- Sends queued queries while there is room on the wire.
function R:_drain()
  local q = self._queue
  while q[self._queue_head] and (not self._engine or self._engine:pending() < self._max_inflight) do
    local key = q[self._queue_head]
    q[self._queue_head] = nil
    self._queue_head = self._queue_head + 1
    self:_send(key)
  end
  if not q[self._queue_head] then self._queue, self._queue_head = {}, 1 end
end

-- The cached answer for key: records (fresh), or nil, err, code (a cached
-- failure), or nothing at all.
function R:_cached(key)
  if not self._caching then return false end
  local e = self._cache[key]
  if not e then return false end
  local now = now_ms()
  if now >= e.expires then return false end
  if e.records then
    self._stats.hits = self._stats.hits + 1
    return true, fresh_copy(e.records, e.ttl - (now - e.fetched) // 1000)
  end
  self._stats.negative_hits = self._stats.negative_hits + 1
  return true, nil, e.err, e.code
end

-- Looks key up: the cache, else joins or starts its query.
function R:_lookup(key, cb)
  local hit, records, err, code = self:_cached(key)
  if hit then return cb(records, err, code) end
  if self._closed then return cb(nil, "closed: resolver closed", "closed") end
  self._stats.misses = self._stats.misses + 1
  local flight = self._inflight[key]
  if flight then
    self._stats.coalesced = self._stats.coalesced + 1
    flight[#flight + 1] = cb
    return
  end
  self._inflight[key] = {cb}
  if self._engine and self._engine:pending() >= self._max_inflight then
    self._queue[#self._queue + 1] = key
    return
  end
  self:_send(key)
  if self._engine then self:_arm() end
end

-- The hosts file's addresses for name, re-read when the file changes
-- (looked at no more than once a second).
function R:_hosts_lookup(lname)
  local path = self._hosts_path
  if not path then return nil end
  local now = now_ms()
  if not self._hosts_checked or now - self._hosts_checked >= 1000 then
    self._hosts_checked = now
    local st = uv.fs_stat(path)
    local stamp = st and (st.mtime.sec .. "." .. st.mtime.nsec .. ":" .. st.size) or "none"
    if stamp ~= self._hosts_stamp then
      self._hosts_stamp = stamp
      self._hosts = M.read_hosts(path)
    end
  end
  local hosts = self._hosts
  if next(hosts) == nil then return nil end
  return hosts[lname] or hosts[(lname:gsub("%.$", ""))]
end

local function pick_family(list, family, name)
  local out = {}
  for _, rec in ipairs(list) do
    if family == "any" or rec.family == family then
      out[#out + 1] = {address = rec.address, family = rec.family, ttl = 0}
    end
  end
  if #out == 0 then
    return nil, ("not_found: %s: no %s address"):format(name, family), "not_found"
  end
  return out
end

-- "any": both families' answers, IPv6 first; a failure only when both
-- fail (not_found only when both found nothing).
local function combine(a, b)
  if a[1] and b[1] then
    local out = {}
    for _, rec in ipairs(a[1]) do out[#out + 1] = rec end
    for _, rec in ipairs(b[1]) do out[#out + 1] = rec end
    if a[1].stale or b[1].stale then out.stale = true end
    return out
  end
  if a[1] then return a[1] end
  if b[1] then return b[1] end
  if a[3] ~= "not_found" then return nil, a[2], a[3] end
  return nil, b[2], b[3]
end

-- Where the registry says service name runs: records like a DNS answer
-- (ttl 0: the registry is live), or nil when it knows no such service.
function R:_registry_lookup(name)
  if not self._registry then return nil end
  local list = self._registry(name)
  if not list or #list == 0 then return nil end
  local out = {}
  for _, s in ipairs(list) do
    local fam = core.dns_parse_ip(s.address or "")
    if fam then
      out[#out + 1] = {address = s.address, family = fam, ttl = 0, port = s.port, node = s.node}
    end
  end
  return #out > 0 and out or nil
end

function R:_resolve(name, family, cb)
  local lit_family, ip
  if not valid_names[name] then -- a name check_name found valid is no literal
    lit_family, ip = core.dns_parse_ip(name)
  end
  if lit_family then
    return cb(pick_family({{address = ip, family = lit_family}}, family, name))
  end
  local lname = name:lower()
  local from_registry = self:_registry_lookup(name)
  if from_registry then return cb(pick_family(from_registry, family, name)) end
  local from_hosts = self:_hosts_lookup(lname)
  if from_hosts then return cb(pick_family(from_hosts, family, name)) end
  if family ~= "any" then return self:_lookup(family .. "|" .. lname, cb) end
  local six, four
  local function both()
    if six and four then cb(combine(six, four)) end
  end
  self:_lookup("inet6|" .. lname, function(...) six = table.pack(...); both() end)
  self:_lookup("inet|" .. lname, function(...) four = table.pack(...); both() end)
end

local function wait(start)
  return async.await(start)
end

--- Resolves name to addresses.
-- @tparam string name a DNS name or a literal address
-- @tparam[opt] table opts `family`: "inet", "inet6" or "any" (default)
-- @tparam[opt] function cb called with the results instead of returning them
-- @return[1] records: `{{address = "192.0.2.1", family = "inet", ttl = 300}, ...}`
--   (ttl: seconds left; 0 for literals, hosts-file names and stale answers,
--   which also set `records.stale = true`)
-- @return[2] nil, msg, code: not_found, timeout, refused, protocol, unreachable, closed
-- @raise on a malformed name, a bad option, no callback outside a task, or
--   a closed resolver
function R:resolve(name, opts, cb)
  if self._closed then error("attempt to use a closed portman.resolver", 2) end
  if type(opts) == "function" and cb == nil then opts, cb = nil, opts end
  if cb ~= nil and type(cb) ~= "function" then
    check.argerror("resolve", 3, "function expected, got " .. type(cb))
  end
  check_name("resolve", name)
  local family = "any"
  if opts ~= nil then
    check.table("resolve", 2, opts)
    check.known("resolve", 2, opts, {family = true})
    family = check.oneof("resolve", 2, opts.family or "any", FAMILIES, "family")
  end
  if cb then
    self:_resolve(name, family, cb)
    return
  end
  -- In a task, a fresh cached answer for one family needs no coroutine
  -- switch (and nothing the hosts file says otherwise about).
  if family ~= "any" and valid_names[name] and async.in_task() then
    local lname = name:lower()
    if not self:_hosts_lookup(lname) then
      local hit, records, err, code = self:_cached(family .. "|" .. lname)
      if hit then return records, err, code end
    end
  end
  return wait(function(done) self:_resolve(name, family, done) end)
end

--- Looks up SRV records (RFC 2782) for name, "_service._proto.domain".
-- @tparam string name
-- @tparam[opt] function cb called with the results instead of returning them
-- @return[1] records: `{{target, port, priority, weight, ttl}, ...}` as the
--   server sent them (order them with `resolver.srv_order`)
-- @return[2] nil, msg, code
-- @raise on a malformed name, no callback outside a task, or a closed resolver
function R:srv(name, cb)
  if self._closed then error("attempt to use a closed portman.resolver", 2) end
  check_name("srv", name)
  if core.dns_parse_ip(name) then check.argerror("srv", 1, "SRV name expected, got an address") end
  if cb ~= nil and type(cb) ~= "function" then
    check.argerror("srv", 2, "function expected, got " .. type(cb))
  end
  local from_registry = self:_registry_lookup(name)
  if from_registry then -- every node running the service, as SRV records
    local records = {}
    for i, r in ipairs(from_registry) do
      records[i] = {target = r.address, port = r.port, priority = 0, weight = 1, ttl = 0}
    end
    if cb then return cb(records) end
    return records
  end
  local key = "srv|" .. name:lower()
  if cb then
    self:_lookup(key, cb)
    return
  end
  return wait(function(done) self:_lookup(key, done) end)
end

--- The cached answer for name without a query, or nil.
-- @tparam string name
-- @tparam[opt] string kind "inet", "inet6" or "srv" (default "inet")
function R:cached(name, kind)
  check_name("cached", name)
  kind = check.oneof("cached", 2, kind or "inet", {"inet", "inet6", "srv"}, "kind")
  local hit, records = self:_cached(kind .. "|" .. name:lower())
  return hit and records or nil
end

--- Forgets every cached answer.
function R:flush()
  self._cache, self._cache_count = {}, 0
end

--- Counters: queries (sent on the wire), hits, negative_hits, misses,
-- coalesced (lookups that joined a query already on the wire), stale.
function R:stats()
  local s = {}
  for k, v in pairs(self._stats) do s[k] = v end
  s.cached = self._cache_count
  s.inflight = self._engine and self._engine:pending() or 0
  return s
end

--- Closes the resolver: queries in flight fail with "closed". Idempotent.
function R:close()
  if self._closed then return end
  self._closed = true
  if self._engine then
    self._poll:stop()
    self._poll:close()
    self._timer:close()
    self._engine:close()
    self._engine = nil
    -- luv 1.44 crashes at exit on handles whose close has not completed:
    -- outside a running loop, let the loop finish closing them now.
    if not uv.loop_mode() then uv.run("nowait") end
  end
  local flights = self._inflight
  self._inflight, self._queries, self._queue = {}, {}, {}
  for key, waiters in pairs(flights) do
    for _, cb in ipairs(waiters) do
      call(cb, nil, "closed: " .. key:match("|(.*)$") .. ": resolver closed", "closed")
    end
  end
end

-- No __gc: the luv handles' callbacks hold the resolver, so it lives until
-- closed (its engine's own __gc frees the C side at exit).
mt.__close = R.close
mt.__tostring = function(self)
  return ("portman.resolver (%s)"):format(self._closed and "closed" or self._servers or "resolv.conf")
end

----------------------------------------------------------------------------
-- Selection policies

local function weight_of(rec)
  local w = rec.weight
  if w == nil then return 1 end
  return w
end

-- Weighted random pick from list: index.
local function weighted_index(list)
  local total = 0
  for _, rec in ipairs(list) do total = total + weight_of(rec) end
  if total <= 0 then return math.random(#list) end
  local r = math.random() * total
  for i, rec in ipairs(list) do
    r = r - weight_of(rec)
    if r < 0 then return i end
  end
  return #list
end

-- The records sharing the lowest priority value.
local function lowest_priority(list)
  local best, group = math.huge, {}
  for _, rec in ipairs(list) do
    local p = rec.priority or 0
    if p < best then best, group = p, {rec}
    elseif p == best then group[#group + 1] = rec end
  end
  return group
end

-- RFC 2782's pick within one priority: zero weights first, a uniform
-- integer in [0, sum], the first record whose running sum reaches it.
local function rfc2782_index(group)
  local order, sum = {}, 0
  for i, rec in ipairs(group) do
    if (rec.weight or 0) == 0 then order[#order + 1] = i end
  end
  for i, rec in ipairs(group) do
    if (rec.weight or 0) ~= 0 then order[#order + 1] = i end
    sum = sum + (rec.weight or 0)
  end
  local r = math.random(0, sum)
  local running = 0
  for _, i in ipairs(order) do
    running = running + (group[i].weight or 0)
    if running >= r then return i end
  end
  return order[#order]
end

--- Orders SRV records as RFC 2782 says a client tries them: by priority,
-- lowest first; within a priority, by repeated weighted random selection.
-- @tparam table records SRV records (`priority`, `weight`)
-- @return a new list
function M.srv_order(records)
  check.table("srv_order", 1, records)
  local byprio, prios = {}, {}
  for _, rec in ipairs(records) do
    local p = rec.priority or 0
    if not byprio[p] then byprio[p] = {}; prios[#prios + 1] = p end
    table.insert(byprio[p], rec)
  end
  table.sort(prios)
  local out = {}
  for _, p in ipairs(prios) do
    local group = byprio[p]
    while #group > 0 do
      out[#out + 1] = table.remove(group, rfc2782_index(group))
    end
  end
  return out
end

--- Orders addresses for connection attempts as RFC 8305 section 4 does:
-- `first_family_count` addresses of the preferred family, then the families
-- alternate; each family keeps its own order.
-- @tparam table records addresses (`family` "inet" or "inet6")
-- @tparam[opt] table opts `prefer` ("inet6"), `first_family_count` (1)
-- @return a new list
function M.interleave(records, opts)
  check.table("interleave", 1, records)
  opts = opts or {}
  check.table("interleave", 2, opts)
  check.known("interleave", 2, opts, {prefer = true, first_family_count = true})
  local prefer = check.oneof("interleave", 2, opts.prefer or "inet6", {"inet6", "inet"}, "family")
  local count = opts.first_family_count or 1
  if math.type(count) ~= "integer" or count < 1 then
    check.argerror("interleave", 2, "first_family_count: integer >= 1 expected")
  end
  local first, second = {}, {}
  for _, rec in ipairs(records) do
    table.insert(rec.family == prefer and first or second, rec)
  end
  local out, i, j = {}, 1, 1
  for _ = 1, count do
    if first[i] then out[#out + 1] = first[i]; i = i + 1 end
  end
  while first[i] or second[j] do
    if second[j] then out[#out + 1] = second[j]; j = j + 1 end
    if first[i] then out[#out + 1] = first[i]; i = i + 1 end
  end
  return out
end

local POLICIES = {"round_robin", "weighted", "priority", "srv"}
local Picker = {}
Picker.__index = Picker

--- A picker choosing one endpoint from a list by policy:
-- "round_robin" (in turn), "weighted" (random, in proportion to `weight`,
-- 1 when absent), "priority" (the lowest `priority` value, weighted within),
-- "srv" (the first choice of RFC 2782's order).
-- @raise on an unknown policy
function M.picker(policy)
  check.oneof("picker", 1, policy, POLICIES, "policy")
  return setmetatable({policy = policy, _turn = 0}, Picker)
end

--- Picks one record of list, or nil when list is empty.
function Picker:pick(list)
  check.table("pick", 1, list)
  if #list == 0 then return nil end
  local p = self.policy
  if p == "round_robin" then
    self._turn = self._turn % #list + 1
    return list[self._turn]
  elseif p == "weighted" then
    return list[weighted_index(list)]
  end
  local group = lowest_priority(list)
  if p == "priority" then return group[weighted_index(group)] end
  return group[rfc2782_index(group)]
end

return M
