--- Name resolution for peers: A/AAAA and SRV over c-ares on the luv loop,
-- with a TTL cache; and the resolver that portman's own lookups go through
-- (`resolver.default()`, `resolver.lookup`).
--
-- The engine is C (portman.core's dns: one c-ares channel whose sockets sit
-- behind one epoll fd), driven on the loop by portman.engine (docs/design.md,
-- "The engine contract"). This file keeps the cache:
--
-- * positive answers live for their TTL (the smallest over the records and
--   the CNAMEs that led to them), clamped to `min_ttl`..`max_ttl` seconds;
-- * "no such name" and "no data" live for `negative_ttl` seconds (RFC 2308
--   caches negative answers; the engine reports them as a status, without
--   the SOA, so one fixed time stands in for its MINIMUM);
-- * concurrent lookups of one name share one query on the wire;
-- * when a refresh fails (timeout, refused, ...) an expired answer is served
--   for up to `stale_ttl` seconds after it expired (RFC 8767), with ttl 0;
-- * the cache is keyed by record type, then lower-case name (no key string
--   is made on a hit), and a hit hands out one records table per entry and
--   remaining TTL, shared by every hit in that second: read-only by
--   contract, and checked on each hit, so that a caller who changed it
--   anyway does not pass the change on (see `hit_view`).
--
-- Every time the cache and the hosts file go by is the resolver's clock
-- (`clock`, default the loop's uv.now, which advances as the loop runs).
--
-- Names: an internationalized name is asked for in its ASCII form (IDNA2008,
-- resolver/names.lua); literal addresses and names in the hosts file
-- (resolver/hosts.lua) answer without a query, with ttl 0; names under
-- .invalid are "not found" without a query (RFC 6761 section 6.4). The
-- selection policies live in resolver/select.lua. Failures are
-- `nil, "code: name: reason", code` with code one of not_found, timeout,
-- refused, protocol, unreachable, closed; a network failure never raises.
--
-- I/O methods take a callback as their last argument, called as
-- `cb(records)` or `cb(nil, msg, code)` (a cached answer calls it before
-- the method returns); inside `portman.run` / `portman.spawn` they may be
-- called without one, and return the same values.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local engine = require "portman.engine"
local log = require "portman.log"
local names = require "portman.resolver.names"
local hosts = require "portman.resolver.hosts"
local policies = require "portman.resolver.select"

local M = {}
local R = {}
local mt = {__index = R}

M.parse_server = names.parse_server
M.valid_name = names.valid_name
M.to_ascii = names.to_ascii
M.read_hosts = hosts.read
M.picker = policies.picker
M.srv_order = policies.srv_order
M.interleave = policies.interleave

local OPTIONS = {servers = true, cache = true, min_ttl = true, max_ttl = true, negative_ttl = true,
                 stale_ttl = true, timeout = true, tries = true, hosts = true,
                 cache_size = true, max_inflight = true, registry = true, clock = true}
local FAMILIES = {"inet", "inet6", "any"}
local FAMILY = {inet = true, inet6 = true, any = true}
local KINDS = {"inet", "inet6", "srv"}
local DEFAULTS = {min_ttl = 0, max_ttl = 86400, negative_ttl = 30, stale_ttl = 0,
                  timeout = 2000, tries = 2, cache_size = 100000, max_inflight = 100}
-- Failures after which an expired answer may be served (not "no such name":
-- that is an answer, and it replaces what was cached).
local STALE_ON = {timeout = true, refused = true, protocol = true, unreachable = true}

local function server_csv(fname, n, text, what)
  local csv, err = names.parse_server(text)
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

-- The ASCII form of a query name (false: a literal address) and its lower
-- case; raises on anything else, blaming the caller.
local function query_name(fname, name)
  local ascii, lower = names.query_name(name)
  if ascii == nil then check.argerror(fname, 1, lower) end
  return ascii, lower
end

local function new_cache()
  return {inet = {}, inet6 = {}, srv = {}}
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
--   queue, which costs each dropped query a whole timeout); `registry` (a
--   function name -> {{address, port, node}, ...} consulted first);
--   `clock` (a function giving milliseconds, default uv.now: every TTL,
--   the stale window and the hosts file's re-read go by it).
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
  check.optional("new", 1, opts, "clock", "function")
  self._clock = opts.clock or uv.now
  local path = opts.hosts
  if path == nil then path = "/etc/hosts" end
  if path ~= false and type(path) ~= "string" then
    check.argerror("new", 1, "hosts: path or false expected, got " .. type(path))
  end
  self._hosts = path and hosts.new(path, self._clock) or nil
  check.optional("new", 1, opts, "registry", "function")
  self._registry = opts.registry
  self._cache, self._cache_count = new_cache(), 0 -- kind -> lower-case name -> entry
  -- kind -> lower-case name -> flight {kind, name, waiters...}: one
  -- query on the wire (or waiting in the engine for max_inflight) per flight
  self._inflight = new_cache()
  self._queries = {} -- engine id -> flight
  self._next_id = 0
  self._stats = {queries = 0, hits = 0, misses = 0, coalesced = 0, stale = 0, negative_hits = 0}
  return self
end

--- Is v a resolver?
function M.is_resolver(v)
  return getmetatable(v) == mt
end

local function call(cb, ...)
  local ok, err = xpcall(cb, debug.traceback, ...)
  if not ok then log.error("callback_failed", {what = "resolver", error = err}) end
end

-- Copies records with their remaining TTL (the cache's own records never
-- leave it: what a caller gets is always a copy of them).
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
local function make_room(self)
  if self._cache_count < self._cache_size then return end
  local now = self._clock()
  for _, kind in ipairs(KINDS) do
    local by_name = self._cache[kind]
    for name, e in pairs(by_name) do
      if e.stale_until <= now then
        by_name[name] = nil
        self._cache_count = self._cache_count - 1
      end
    end
  end
  local keep = math.floor(self._cache_size * 0.9)
  for _, kind in ipairs(KINDS) do
    local by_name = self._cache[kind]
    while self._cache_count > keep and next(by_name) do
      by_name[next(by_name)] = nil
      self._cache_count = self._cache_count - 1
    end
  end
end

local function store(self, kind, name, entry)
  if not self._caching then return end
  local by_name = self._cache[kind]
  if not by_name[name] then
    make_room(self)
    self._cache_count = self._cache_count + 1
  end
  by_name[name] = entry
end

-- The smallest TTL of records.
local function least_ttl(records)
  local ttl = math.huge
  for i = 1, #records do
    local t = records[i].ttl
    if t < ttl then ttl = t end
  end
  return ttl
end

-- A query's result (records and their smallest TTL, or nil, a code word
-- and reason) at now (the clock's time): into the cache, then to every
-- waiter of its flight (the first gets the copy made here, the others
-- copies of it).
local function settle(self, now, flight, res, least, code, reason)
  local kind, name = flight[1], flight[2]
  local records, err
  if res then
    local ttl = math.tointeger(clamp(least, self._min_ttl, self._max_ttl) // 1) or 0
    store(self, kind, name, {records = res, ttl = ttl, fetched = now,
                      expires = now + ttl * 1000, stale_until = now + (ttl + self._stale_ttl) * 1000})
    records = fresh_copy(res, ttl)
  else
    err = ("%s: %s: %s"):format(code, name, reason)
    local old = self._caching and self._cache[kind][name]
    if STALE_ON[code] and old and old.records and now < old.stale_until then
      self._stats.stale = self._stats.stale + 1
      records, err, code = fresh_copy(old.records, 0, true), nil, nil
    elseif code == "not_found" then
      local ttl = self._negative_ttl
      store(self, kind, name, {err = err, code = code, ttl = ttl, fetched = now, expires = now + ttl * 1000,
                        stale_until = now + ttl * 1000})
    end
  end
  local by_name = self._inflight[kind]
  if by_name[name] ~= flight then return end -- closed meanwhile: its waiters were told
  by_name[name] = nil
  for i = 3, #flight do
    local cb = flight[i]
    if not records then call(cb, nil, err, code)
    elseif i == 3 then call(cb, records)
    else call(cb, fresh_copy(records, records[1] and records[1].ttl or 0, records.stale)) end
  end
end

-- RFC 2782: a target of "." means the service is decidedly not available
-- at this domain; such records are dropped, and an answer of only those is
-- "not found". Returns settle's res, least, code, reason.
local function without_root_targets(records)
  local kept = {}
  for _, rec in ipairs(records) do
    if rec.target ~= "" and rec.target ~= "." then kept[#kept + 1] = rec end
  end
  if #kept == 0 then return nil, nil, "not_found", "service not available (SRV target '.')" end
  return kept, least_ttl(kept)
end

local release

-- A step's finished queries, from the engine's driver: a flat batch of
-- id, records, least TTL, false or id, false, code, reason (lua_dns.c). A resolver that
-- releases when idle does so before any callback runs, when this batch
-- leaves nothing on the wire: a callback then sees it holding nothing.
-- Queries waiting for max_inflight took the room the batch made before
-- the step returned (in the engine), so the server works on them while
-- these answers are settled.
local function deliver(self, batch)
  if self._release_when_idle and self._engine:pending() == 0 then release(self) end
  local queries = self._queries
  local now = self._clock() -- the loop's time stands still while a batch is settled
  for i = 1, #batch, 4 do
    if self._closed then return end -- a callback closed the resolver
    local id = batch[i]
    local flight = queries[id]
    if flight then
      queries[id] = nil
      local res = batch[i + 1]
      if not res then
        settle(self, now, flight, nil, nil, batch[i + 2], batch[i + 3])
      elseif flight[1] == "srv" then
        settle(self, now, flight, without_root_targets(res))
      else
        settle(self, now, flight, res, batch[i + 2])
      end
    end
  end
end

-- Closes the engine and its driver (the resolver stays usable: the next
-- query makes them again).
function release(self)
  local driver, eng = self._driver, self._engine
  if not driver then return end
  self._driver, self._engine = nil, nil
  driver:close()
  eng:close()
  -- luv 1.44 crashes at exit on handles whose close has not completed:
  -- outside a running loop, let the loop finish closing them now.
  if not uv.loop_mode() then uv.run("nowait") end
end

-- The engine and its driver, made on the first query. A resolver that
-- releases when idle (the default one) closes them whenever no query is
-- on the wire, so that it holds no fd or handle between uses.
local function engine_get(self)
  if self._closed then return nil, "closed: resolver closed", "closed" end
  if self._engine then return self._engine end
  local inflight = self._max_inflight -- the engine's window: an integer, 0 for no limit
  inflight = inflight >= 2 ^ 31 and 0 or math.floor(inflight)
  local eng, err, code = core.dns_new(self._servers, self._timeout, self._tries, inflight)
  if not eng then return nil, err, code end
  local ok, driver = pcall(engine.drive, eng, {
    name = "resolver",
    on_batch = function(batch) deliver(self, batch) end,
    on_idle = self._release_when_idle and function() release(self) end or nil,
  })
  if not ok then
    eng:close()
    return nil, "unreachable: cannot poll the resolver's fd: " .. tostring(driver), "unreachable"
  end
  self._engine, self._driver = eng, driver
  return eng
end

-- RFC 6761 section 6.4: names under .invalid never exist; no query asks.
local function invalid_tld(name)
  local at = name:find("invalid", -8, true)
  if not at then return false end
  local tail = name:sub(at + 7)
  return (tail == "" or tail == ".") and (at == 1 or name:byte(at - 1) == 46) -- 46: "."
end

-- Puts a flight's query (its kind and name) on the wire; the engine holds
-- it back while max_inflight others are there.
local function send(self, flight)
  local kind, name = flight[1], flight[2]
  if invalid_tld(name) then
    return settle(self, self._clock(), flight, nil, nil, "not_found", "no such name (.invalid, RFC 6761)")
  end
  local eng, err, code = engine_get(self)
  local ok
  if eng then
    local id = self._next_id + 1
    self._next_id = id
    if kind == "srv" then ok, err, code = eng:srv(name, id)
    else ok, err, code = eng:resolve(name, kind, id) end
    if ok then
      self._queries[id] = flight
      self._stats.queries = self._stats.queries + 1
      return
    end
  end
  -- The engine could not take it: answer the waiters now.
  settle(self, self._clock(), flight, nil, nil, code, (err or ""):gsub("^[^:]*: ", ""))
end

-- Makes entry e's view: its records as a hit hands them out with left
-- seconds to live, and (private) the record tables put in it.
local function make_view(e, left)
  local view = fresh_copy(e.records, left)
  e.view, e.view_ttl, e.view_records = view, left, table.move(view, 1, #view, 1, {})
  return view
end

-- The cached answer for kind ("inet", "inet6", "srv") and lname at now:
-- true and records (fresh), or true, nil, err, code (a cached failure), or
-- false.
--
-- The records a hit hands out are one table per entry and remaining TTL,
-- shared by the hits of that second (read-only by contract), and made
-- again from the entry's own records (which never leave the cache) when
-- the TTL left changes or a caller changed them: each record table must be
-- the one put there and every field the resolver sets is compared (fields
-- a caller added are not looked for).
local function cached(self, kind, lname, now)
  local e = self._cache[kind][lname]
  if not e or now >= e.expires then return false end
  local stats = self._stats
  local records = e.records
  if not records then
    stats.negative_hits = stats.negative_hits + 1
    return true, nil, e.err, e.code
  end
  stats.hits = stats.hits + 1
  local left = e.ttl - (now - e.fetched) // 1000
  local view, mine = e.view, e.view_records
  local n = #records
  if not view or e.view_ttl ~= left or view.stale ~= nil or #view ~= n then
    return true, make_view(e, left)
  end
  for i = 1, n do
    local v, rec = view[i], records[i]
    if v ~= mine[i] or v.ttl ~= left then return true, make_view(e, left) end
    if rec.address then
      if v.address ~= rec.address or v.family ~= rec.family then return true, make_view(e, left) end
    elseif v.target ~= rec.target or v.port ~= rec.port or v.priority ~= rec.priority
        or v.weight ~= rec.weight then
      return true, make_view(e, left)
    end
  end
  return true, view
end

-- Joins or starts the query for kind and lname (not in the cache).
local function wire(self, kind, lname, cb)
  if self._closed then return cb(nil, "closed: resolver closed", "closed") end
  local stats = self._stats
  stats.misses = stats.misses + 1
  local by_name = self._inflight[kind]
  local flight = by_name[lname]
  if flight then
    stats.coalesced = stats.coalesced + 1
    flight[#flight + 1] = cb
    return
  end
  flight = {kind, lname, cb}
  by_name[lname] = flight
  -- The driver is armed already while the engine has queries; it needs
  -- arming when this is the first, or when the engine answered at once.
  local eng = self._engine
  local before = eng and eng:pending() or 0
  send(self, flight)
  local driver = self._driver
  if driver and (before == 0 or eng ~= self._engine or eng:pending() <= before) then driver:arm() end
end

-- Looks kind and lname up: the cache, else joins or starts its query.
local function ask(self, kind, lname, cb, now)
  local hit, records, err, code = cached(self, kind, lname, now)
  if hit then return cb(records, err, code) end
  return wire(self, kind, lname, cb)
end

local function hosts_lookup(self, lname, now)
  local h = self._hosts
  return h and h:lookup(lname, now)
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

-- "any": both families' answers (records, err, code each), IPv6 first; a
-- failure only when both fail (not_found only when both found nothing).
local function combine(r6, e6, c6, r4, e4, c4)
  if r6 and r4 then
    local out = table.move(r6, 1, #r6, 1, {})
    table.move(r4, 1, #r4, #out + 1, out)
    if r6.stale or r4.stale then out.stale = true end
    return out
  end
  if r6 then return r6 end
  if r4 then return r4 end
  if c6 ~= "not_found" then return nil, e6, c6 end
  return nil, e4, c4
end

-- "any" with at least one family not cached: asks the wire for those.
local function resolve_both(self, lname, cb, six, four)
  local function both()
    if six and four then cb(combine(six[1], six[2], six[3], four[1], four[2], four[3])) end
  end
  if not six then wire(self, "inet6", lname, function(...) six = table.pack(...); both() end) end
  if not four then wire(self, "inet", lname, function(...) four = table.pack(...); both() end) end
end

-- Where the registry says service name runs: records like a DNS answer
-- (ttl 0: the registry is live), or nil when it knows no such service.
local function registry_lookup(self, name)
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

-- Resolves name, whose ASCII form is ascii (false: name is a literal) and
-- lname its lower case. A hit makes no closure, key string or copy.
local function resolve(self, name, ascii, lname, family, cb)
  if not ascii then
    local lit_family, ip = core.dns_parse_ip(name)
    return cb(pick_family({{address = ip, family = lit_family}}, family, name))
  end
  if self._registry then
    local from_registry = registry_lookup(self, ascii)
    if from_registry then return cb(pick_family(from_registry, family, ascii)) end
  end
  local now = self._clock()
  local h = self._hosts
  local from_hosts = h and h:lookup(lname, now)
  if from_hosts then return cb(pick_family(from_hosts, family, ascii)) end
  if family ~= "any" then
    local hit, records, err, code = cached(self, family, lname, now)
    if hit then return cb(records, err, code) end
    return wire(self, family, lname, cb)
  end
  local h6, r6, e6, c6 = cached(self, "inet6", lname, now)
  local h4, r4, e4, c4 = cached(self, "inet", lname, now)
  if h6 and h4 then return cb(combine(r6, e6, c6, r4, e4, c4)) end
  resolve_both(self, lname, cb, h6 and {r6, e6, c6}, h4 and {r4, e4, c4})
end

-- The option table resolve checked last: passed again (a loop's), it is
-- not walked for unknown keys again; its family is checked on every call.
local vetted

-- resolve's opts: the family. {family = F} and {} need no walk.
local function family_opt(opts)
  if type(opts) == "table" then
    local k = next(opts)
    if k == nil then vetted = opts; return "any" end
    local family = opts.family
    if k == "family" and FAMILY[family] and next(opts, k) == nil then
      vetted = opts
      return family
    end
  end
  check.table("resolve", 2, opts)
  check.known("resolve", 2, opts, {family = true})
  local family = check.oneof("resolve", 2, opts.family or "any", FAMILIES, "family")
  vetted = opts
  return family
end

--- Resolves name to addresses.
-- @tparam string name a DNS name (an internationalized one is asked for in
--   its IDNA ASCII form) or a literal address
-- @tparam[opt] table opts `family`: "inet", "inet6" or "any" (default)
-- @tparam[opt] function cb called with the results instead of returning them
-- @return[1] records: `{{address = "192.0.2.1", family = "inet", ttl = 300}, ...}`
--   (ttl: seconds left; 0 for literals, hosts-file names and stale answers,
--   which also set `records.stale = true`). Read-only: a cached answer's
--   tables are shared by the hits of the same second (copy to change them).
-- @return[2] nil, msg, code: not_found, timeout, refused, protocol, unreachable, closed
-- @raise on a malformed name, a bad option, no callback outside a task, or
--   a closed resolver
function R:resolve(name, opts, cb)
  if self._closed then error("attempt to use a closed portman.resolver", 2) end
  if cb == nil and type(opts) == "function" then opts, cb = nil, opts end
  if cb ~= nil and type(cb) ~= "function" then
    check.argerror("resolve", 3, "function expected, got " .. type(cb))
  end
  local ascii, lname = names.query_name(name)
  if ascii == nil then check.argerror("resolve", 1, lname) end
  local family = "any"
  if opts ~= nil then
    family = opts == vetted and opts.family or "any"
    if not (opts == vetted and FAMILY[family]) then family = family_opt(opts) end
  end
  if cb then
    resolve(self, name, ascii, lname, family, cb)
    return
  end
  -- In a task, a fresh cached answer for one family needs no coroutine
  -- switch (and nothing the registry or hosts file says otherwise about).
  if family ~= "any" and ascii and not self._registry and async.in_task() then
    local now = self._clock()
    if not hosts_lookup(self, lname, now) then
      local hit, records, err, code = cached(self, family, lname, now)
      if hit then return records, err, code end
    end
  end
  return async.await(function(done) resolve(self, name, ascii, lname, family, done) end)
end

--- Looks up SRV records (RFC 2782) for name, "_service._proto.domain".
-- @tparam string name
-- @tparam[opt] function cb called with the results instead of returning them
-- @return[1] records: `{{target, port, priority, weight, ttl}, ...}` as the
--   server sent them (order them with `resolver.srv_order`); read-only, as
--   `resolve`'s are
-- @return[2] nil, msg, code
-- @raise on a malformed name, no callback outside a task, or a closed resolver
function R:srv(name, cb)
  if self._closed then error("attempt to use a closed portman.resolver", 2) end
  local ascii, lname = query_name("srv", name)
  if not ascii then check.argerror("srv", 1, "SRV name expected, got an address") end
  if cb ~= nil and type(cb) ~= "function" then
    check.argerror("srv", 2, "function expected, got " .. type(cb))
  end
  local from_registry = registry_lookup(self, ascii)
  if from_registry then -- every node running the service, as SRV records
    local records = {}
    for i, r in ipairs(from_registry) do
      records[i] = {target = r.address, port = r.port, priority = 0, weight = 1, ttl = 0}
    end
    if cb then return cb(records) end
    return records
  end
  if cb then
    ask(self, "srv", lname, cb, self._clock())
    return
  end
  return async.await(function(done) ask(self, "srv", lname, done, self._clock()) end)
end

--- One address for host, for a connection: a literal address (or
-- "[IPv6]") answers at once; a name is resolved (cache, hosts file, DNS).
-- Without a family, an IPv4 address is preferred when the name has both.
-- @tparam string host
-- @tparam[opt] string family "inet" or "inet6"
-- @tparam[opt] function cb `cb(address, family)` or `cb(nil, msg, code)`
--   (not_found, also for a malformed name; timeout, refused, ...)
-- @return in a task without cb: address, family; or nil, msg, code
-- @raise on a non-string host, an unknown family, no callback outside a
--   task, or a closed resolver
function R:lookup(host, family, cb)
  if type(family) == "function" and cb == nil then family, cb = nil, family end
  if cb == nil then return async.await(R.lookup, self, host, family) end
  if self._closed then error("attempt to use a closed portman.resolver", 2) end
  if type(host) ~= "string" then check.argerror("lookup", 1, "string expected, got " .. type(host)) end
  if family ~= nil then check.oneof("lookup", 2, family, {"inet", "inet6"}, "family") end
  if type(cb) ~= "function" then check.argerror("lookup", 3, "function expected, got " .. type(cb)) end
  local ascii, lname = names.query_name(host)
  if ascii == nil then return cb(nil, "not_found: " .. lname, "not_found") end
  resolve(self, host, ascii, lname, family or "any", function(records, msg, code)
    if not records then return cb(nil, msg, code) end
    local pick = records[1]
    if not family then
      for _, rec in ipairs(records) do
        if rec.family == "inet" then
          pick = rec
          break
        end
      end
    end
    cb(pick.address, pick.family)
  end)
end

--- The cached answer for name without a query (read-only, as `resolve`'s
-- records are), or nil.
-- @tparam string name
-- @tparam[opt] string kind "inet", "inet6" or "srv" (default "inet")
function R:cached(name, kind)
  local ascii, lname = query_name("cached", name)
  kind = check.oneof("cached", 2, kind or "inet", KINDS, "kind")
  if not ascii then return nil end
  local hit, records = cached(self, kind, lname, self._clock())
  return hit and records or nil
end

--- Forgets every cached answer.
function R:flush()
  self._cache, self._cache_count = new_cache(), 0
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
  release(self)
  local flights = self._inflight
  self._inflight, self._queries = new_cache(), {}
  for _, kind in ipairs(KINDS) do
    for name, waiters in pairs(flights[kind]) do
      for i = 3, #waiters do call(waiters[i], nil, "closed: " .. name .. ": resolver closed", "closed") end
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
-- The process-wide resolver

local default, default_made -- the default resolver; made here (not given)?

-- A resolver that releases its engine whenever idle.
local function make_default(opts)
  local r = M.new(opts)
  r._release_when_idle = true
  return r
end

--- The resolver portman's own name lookups go through (STUN servers,
-- health checks, probes), so that one cache, its TTLs and its servers
-- serve the whole program. Made on first use from /etc/resolv.conf and
-- /etc/hosts (or set with `set_default`). One made here holds no fd or luv
-- handle while no query is on the wire, so it never keeps the loop alive
-- and leaves nothing open when idle.
function M.default()
  if not default or default._closed then
    default, default_made = make_default({}), true
  end
  return default
end

--- Sets the default resolver: `opts` (a table of `new`'s options: the
-- default is made from them, as `default()` makes it), a resolver (used as
-- it is: its owner closes it), or nil (the next `default()` makes one from
-- /etc/resolv.conf). A default made here is closed when replaced.
-- @return the previous default when it was a resolver given here, else nil
-- @raise on anything else, or on a bad option
function M.set_default(v)
  local new_default, made = nil, false
  if M.is_resolver(v) then
    new_default = v
  elseif type(v) == "table" then
    new_default, made = make_default(v), true
  elseif v ~= nil then
    check.argerror("set_default", 1, "resolver, options or nil expected, got " .. type(v))
  end
  local old, old_made = default, default_made
  default, default_made = new_default, made
  if old and old ~= new_default then
    if old_made then
      old:close()
      return nil
    end
    return old
  end
  return nil
end

--- `resolver.default():lookup(host, family, cb)`: one address for host,
-- `cb(address, family)` or `cb(nil, msg, code)`; a literal address answers
-- at once. In a task, without cb, returns them.
function M.lookup(host, family, cb)
  if type(family) == "function" and cb == nil then family, cb = nil, family end
  if cb == nil then return async.await(M.lookup, host, family) end
  return M.default():lookup(host, family, cb)
end

return M
