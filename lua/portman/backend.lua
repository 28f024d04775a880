--- Shared state backends: where a node's port claims and service
-- registrations live, so that the allocator and the registry work the same
-- on one machine and across a cluster.
--
-- Two implementations of one interface:
--
-- * `file` (the embedded default): records in the local state file
--   (portman.state, written atomically). One machine, one portman process
--   writing the file; nothing expires.
-- * `etcd`: records in an etcd cluster under `/portman/<cluster>/`, each
--   bound to the node's lease, which the node keeps alive. A node that dies
--   loses its records after the lease's TTL, so its ports come free and its
--   services disappear from every other node's view. A claim is a txn that
--   creates the key only if it does not exist: of concurrent claims of one
--   port, exactly one wins. When etcd is unreachable or has no quorum, every
--   call fails with `unreachable` or `timeout`: never a silent local fallback
--   that could hand a port out twice.
--
-- A record is `(ns, key) -> value` (a JSON-able table) held by one node;
-- namespaces used by portman: "ports" (key: the port number as a string)
-- and "services" (key: "NAME/NODE", value: the registration).
--
-- The interface (each I/O method takes a callback as its last argument,
-- or, in a task, yields and returns):
--
--     ok, err, code = b:claim(ns, key, value)      -- exclusive create
--     info, err, code = b:renew()                  -- one keep-alive round
--     ok, err, code = b:release(ns, key)           -- drop a record we hold
--     records, err, code = b:list(ns)              -- {{key, value, node}, ...}
--     watcher = b:watch(ns, fn)                    -- fn{type, key, value, node}
--     b:start(); b:close()
--
-- On top of it, for both kinds: `register`, `deregister`, `services`,
-- `lookup` and `mirror` (the registry's records, and a live copy that
-- follows every node's changes) and `claim_ports` (cluster-wide
-- allocation).
local uv = require "luv"
local cjson = require "cjson"
local async = require "portman.async"
local check = require "portman.check"
local log = require "portman.log"

local M = {}

-- Methods every backend shares; each kind adds the five primitives.
local Base = {}

local function check_ns_key(fname, ns, key)
  if type(ns) ~= "string" or not ns:match("^[%w_%-]+$") then
    check.argerror(fname, 1, "ns: name of letters, digits, '_' or '-' expected")
  end
  if type(key) ~= "string" or key == "" then
    check.argerror(fname, 2, "key: non-empty string expected")
  end
end

local function check_value(fname, n, value)
  if type(value) ~= "table" then check.argerror(fname, n, "table expected, got " .. type(value)) end
  local ok, err = pcall(cjson.encode, value)
  if not ok then check.argerror(fname, n, "value not JSON-able: " .. tostring(err)) end
end

local function default_node()
  return ("%s:%d"):format(uv.os_gethostname() or "localhost", uv.os_getpid())
end

--- This backend's node id.
function Base:node() return self._node end

local REG_FIELDS = {name = true, address = true, port = true, proto = true, metadata = true}

--- Registers a service of this node: `rec = {name, address, port, proto,
-- metadata}` (name and port required). A service registered again by the
-- same node replaces its record.
-- @return[1] true
-- @return[2] nil, msg, code
-- @raise on a bad record
Base.register = async.adapt(function(self, rec, cb)
  check.table("register", 1, rec)
  check.known("register", 1, rec, REG_FIELDS)
  if type(rec.name) ~= "string" or not rec.name:match("^[%w_%.%-]+$") then
    check.argerror("register", 1, "name: letters, digits, '.', '_' or '-' expected")
  end
  check.port("register", 1, rec.port, "port")
  local value = {name = rec.name, node = self._node, address = rec.address or "", port = rec.port,
                 proto = rec.proto or "tcp", metadata = rec.metadata}
  check_value("register", 1, value)
  local key = rec.name .. "/" .. self._node
  local function claim()
    self:claim("services", key, value, cb)
  end
  if self:holds("services", key) then
    return self:release("services", key, function(ok, err, code)
      if not ok and code ~= "not_found" then return cb(nil, err, code) end
      claim()
    end)
  end
  claim()
end)

--- Removes this node's registration of service name.
-- @return[1] true
-- @return[2] nil, msg, code (`not_found` when this node has none)
Base.deregister = async.adapt(function(self, name, cb)
  if type(name) ~= "string" then check.argerror("deregister", 1, "string expected") end
  self:release("services", name .. "/" .. self._node, cb)
end)

--- Every node's registrations, sorted by name then node.
-- @return[1] `{{name, node, address, port, proto, metadata}, ...}`
-- @return[2] nil, msg, code
Base.services = async.adapt(function(self, cb)
  self:list("services", function(records, err, code)
    if not records then return cb(nil, err, code) end
    local out = {}
    for _, r in ipairs(records) do
      if type(r.value) == "table" then out[#out + 1] = r.value end
    end
    table.sort(out, function(a, b)
      if a.name ~= b.name then return tostring(a.name) < tostring(b.name) end
      return tostring(a.node) < tostring(b.node)
    end)
    cb(out)
  end)
end)

--- Where service name runs: every node's registration of it.
-- @return[1] `{{name, node, address, port, proto, metadata}, ...}` (maybe empty)
-- @return[2] nil, msg, code
Base.lookup = async.adapt(function(self, name, cb)
  if type(name) ~= "string" then check.argerror("lookup", 1, "string expected, got " .. type(name)) end
  self:services(function(list, err, code)
    if not list then return cb(nil, err, code) end
    local out = {}
    for _, s in ipairs(list) do
      if s.name == name then out[#out + 1] = s end
    end
    cb(out)
  end)
end)

--- A live copy of namespace ns: `m.records[key] = {key, value, node}`,
-- read once, then kept current by a watch that starts right after the
-- read's revision (no change between the two is missed). `opts.on_change`
-- (ev), if given, runs after each change is applied; on a "reset" (etcd
-- compacted the changes away) the copy is read again. The etcd kind shows
-- every node's records; the file kind this process's.
-- @return[1] the mirror, with `records` and `close()`, once the first read is in
-- @return[2] nil, msg, code
Base.mirror = async.adapt(function(self, ns, opts, cb)
  if type(opts) == "function" then cb, opts = opts, nil end
  local on_change = opts and opts.on_change
  if opts ~= nil then
    check.table("mirror", 2, opts)
    check.known("mirror", 2, opts, {on_change = true})
    if on_change ~= nil and type(on_change) ~= "function" then
      check.argerror("mirror", 2, "on_change: function expected")
    end
  end
  local m = {records = {}}
  local watcher
  -- list gives records and, from etcd, the revision it read at
  local function load(done)
    self:list(ns, function(records, revision_or_err, code)
      if not records then return done(nil, revision_or_err, code) end
      m.records = {}
      for _, r in ipairs(records) do m.records[r.key] = r end
      done(true, revision_or_err)
    end)
  end
  local function apply(ev)
    if ev.type == "reset" then
      return load(function() if on_change then on_change(ev) end end)
    elseif ev.type == "delete" then
      m.records[ev.key] = nil
    else
      m.records[ev.key] = {key = ev.key, value = ev.value, node = ev.node}
    end
    if on_change then on_change(ev) end
  end
  function m.close()
    if watcher then watcher.close() end
    watcher = nil
  end
  load(function(ok, revision, code)
    if not ok then return cb(nil, revision, code) end
    watcher = self:watch(ns, apply, revision)
    cb(m)
  end)
end)

local ALLOC_OPTS = {range = true, count = true, strategy = true, node_id = true,
                    allow_privileged = true, concurrency = true}

--- Claims count ports of range for this node, cluster-wide: reads what
-- is claimed, picks candidates with a local pool (the allocator's
-- strategies), and claims them with up to `concurrency` claims in flight;
-- a port another node won meanwhile is skipped, and after a run of such
-- conflicts the claimed ports are read again. On failure the ports
-- already claimed are released (best effort).
-- @tparam table opts `range = {lo, hi}`, `count` (1), `strategy`,
--   `node_id`, `allow_privileged` (as allocator.new), `concurrency` (8)
-- @return[1] the ports (ascending), and `{conflicts = n, refreshes = n}`
-- @return[2] nil, msg, code (`exhausted` when the range has too few free)
-- @raise on a bad or unknown option
Base.claim_ports = async.adapt(function(self, opts, cb)
  check.table("claim_ports", 1, opts)
  check.known("claim_ports", 1, opts, ALLOC_OPTS)
  local count = opts.count or 1
  if math.type(count) ~= "integer" or count < 1 then
    check.argerror("claim_ports", 1, "count: positive integer expected")
  end
  local concurrency = opts.concurrency or 8
  if math.type(concurrency) ~= "integer" or concurrency < 1 then
    check.argerror("claim_ports", 1, "concurrency: positive integer expected")
  end
  local pool = require("portman.allocator").new{range = opts.range, strategy = opts.strategy,
    node_id = opts.node_id or (opts.strategy == "hash" and self._node or nil),
    allow_privileged = opts.allow_privileged}
  self:_mark_claimed(pool, function(ok, err, code)
    if not ok then return cb(nil, err, code) end
    self:_claim_from(pool, count, concurrency, cb)
  end)
end)

-- Marks in pool every port of its range that some node holds now.
function Base:_mark_claimed(pool, cb)
  local lo, hi = pool:range()
  self:list("ports", function(records, err, code)
    if not records then return cb(nil, err, code) end
    for _, r in ipairs(records) do
      local p = math.tointeger(tonumber(r.key))
      if p and p >= lo and p <= hi and not pool:is_allocated(p) then pool:reserve(p) end
    end
    cb(true)
  end)
end

function Base:_claim_from(pool, count, concurrency, cb)
  local got, inflight, conflicts, refreshes = {}, 0, 0, 0
  local streak, refreshing = 0, false
  local failure, finished
  local next_claim
  local function finish()
    if finished or inflight > 0 or refreshing then return end
    finished = true
    if not failure then
      table.sort(got)
      return cb(got, {conflicts = conflicts, refreshes = refreshes})
    end
    local left = #got
    if left == 0 then return cb(nil, failure[1], failure[2]) end
    for _, p in ipairs(got) do -- give back what we took, then report
      self:release("ports", tostring(p), function()
        left = left - 1
        if left == 0 then cb(nil, failure[1], failure[2]) end
      end)
    end
  end
  -- A run of conflicts: another node is claiming the same stretch. One
  -- read of what is held costs less than a conflict a port.
  local function refresh()
    refreshing, streak, refreshes = true, 0, refreshes + 1
    self:_mark_claimed(pool, function(ok, err, code)
      refreshing = false
      if not ok and not failure then failure = {err, code} end
      next_claim()
    end)
  end
  next_claim = function()
    while not failure and not refreshing and #got + inflight < count and inflight < concurrency do
      local p = pool:allocate()
      if not p then
        if inflight == 0 then
          local lo, hi = pool:range()
          failure = {("exhausted: %d of %d ports claimed, no free port left in %d-%d")
            :format(#got, count, lo, hi), "exhausted"}
        end
        break
      end
      inflight = inflight + 1
      self:claim("ports", tostring(p), {port = p}, function(ok, cerr, ccode)
        inflight = inflight - 1
        if ok then
          got[#got + 1] = p
          streak = 0
        elseif ccode == "conflict" then
          conflicts, streak = conflicts + 1, streak + 1 -- the pool keeps it marked
          if streak >= 2 * concurrency and not refreshing then return refresh() end
        elseif not failure then
          failure = {cerr, ccode}
        end
        next_claim()
      end)
    end
    if failure or #got == count then finish() end
  end
  next_claim()
end

-- The file backend ---------------------------------------------------------

local File = setmetatable({}, {__index = Base})
File.__index = File

local FILE_OPTS = {kind = true, path = true, node = true}

--- Reads the records; cb-free: the file is local.
function File:_load()
  local doc, err, code = require("portman.state").load(self._path)
  if not doc then return nil, err, code end
  if doc.records ~= nil and type(doc.records) ~= "table" then
    return nil, "protocol: " .. self._path .. ": records is not an object", "protocol"
  end
  doc.records = doc.records or {}
  return doc
end

function File:_save(doc)
  return require("portman.state").save(self._path, doc)
end

function File:_notify(ev)
  for _, w in pairs(self._watchers) do
    if w.ns == ev.ns then
      local ok, err = xpcall(w.fn, debug.traceback, {type = ev.type, key = ev.key, value = ev.value,
                                                     node = ev.node})
      if not ok then log.error("watch_callback_failed", {error = err}) end
    end
  end
end

function File:_check()
  if self._closed then error("attempt to use a closed portman.backend (file)", 3) end
end

--- Does this node hold (ns, key)?
function File:holds(ns, key)
  local doc = self:_load()
  local r = doc and doc.records[ns] and doc.records[ns][key]
  return r ~= nil and r.node == self._node
end

--- Claims (ns, key) for this node with value (a JSON-able table).
-- @return[1] true (also when this node holds it already)
-- @return[2] nil, "conflict: ns/key is held by node N", "conflict"; or
--   nil, msg, code when the state file cannot be read or written
File.claim = async.adapt(function(self, ns, key, value, cb)
  self:_check()
  check_ns_key("claim", ns, key)
  check_value("claim", 3, value)
  local doc, err, code = self:_load()
  if not doc then return cb(nil, err, code) end
  local space = doc.records[ns] or {}
  local held = space[key]
  if held and held.node == self._node then return cb(true) end
  if held then
    return cb(nil, ("conflict: %s/%s is held by node %s"):format(ns, key, tostring(held.node)), "conflict")
  end
  space[key] = {node = self._node, value = value}
  doc.records[ns] = space
  local ok, serr, scode = self:_save(doc)
  if not ok then return cb(nil, serr, scode) end
  self:_notify({type = "put", ns = ns, key = key, value = value, node = self._node})
  cb(true)
end)

--- Drops a record this node holds.
-- @return[1] true
-- @return[2] nil, "not_found: ...", "not_found" when this node holds none
File.release = async.adapt(function(self, ns, key, cb)
  self:_check()
  check_ns_key("release", ns, key)
  local doc, err, code = self:_load()
  if not doc then return cb(nil, err, code) end
  local space = doc.records[ns]
  local held = space and space[key]
  if not held or held.node ~= self._node then
    return cb(nil, ("not_found: node %s holds no %s/%s"):format(self._node, ns, key), "not_found")
  end
  space[key] = nil
  local ok, serr, scode = self:_save(doc)
  if not ok then return cb(nil, serr, scode) end
  self:_notify({type = "delete", ns = ns, key = key, node = self._node})
  cb(true)
end)

--- Nothing in the state file expires: a round is a no-op.
File.renew = async.adapt(function(self, cb)
  self:_check()
  cb({regranted = false, lost = {}})
end)

--- Every node's records in ns, sorted by key.
-- @return[1] `{{key, value, node}, ...}`
-- @return[2] nil, msg, code
File.list = async.adapt(function(self, ns, cb)
  self:_check()
  check_ns_key("list", ns, "-")
  local doc, err, code = self:_load()
  if not doc then return cb(nil, err, code) end
  local out = {}
  for key, r in pairs(doc.records[ns] or {}) do
    out[#out + 1] = {key = key, value = r.value, node = r.node}
  end
  table.sort(out, function(a, b) return a.key < b.key end)
  cb(out)
end)

--- Watches this backend's own changes (one process owns the file).
function File:watch(ns, fn)
  self:_check()
  check_ns_key("watch", ns, "-")
  if type(fn) ~= "function" then check.argerror("watch", 2, "function expected") end
  local w = {ns = ns, fn = fn}
  self._watchers[w] = w
  return {close = function() self._watchers[w] = nil end}
end

function File:start() self:_check() return self end

--- Stops the backend; the records stay in the file (they are this
-- machine's state across restarts).
function File:close(cb)
  self._closed = true
  self._watchers = {}
  if cb then cb(true) end
end
File.detach = File.close

-- The etcd backend ---------------------------------------------------------

local Etcd = setmetatable({}, {__index = Base})
Etcd.__index = Etcd

local ETCD_OPTS = {kind = true, endpoints = true, cluster = true, node = true, ttl = true,
                   timeout = true, attempt_timeout = true, user = true, password = true,
                   cacert = true, cert = true, key = true, insecure = true}

function Etcd:_check()
  if not self._etcd then error("attempt to use a closed portman.backend (etcd)", 3) end
end

function Etcd:_key(ns, key) return self._prefix .. ns .. "/" .. key end

-- Calls cb(lease_id) once the node has a lease, granting one if needed;
-- concurrent callers share one grant.
function Etcd:_with_lease(cb)
  if self._lease then return cb(self._lease) end
  if self._waiting then
    self._waiting[#self._waiting + 1] = cb
    return
  end
  self._waiting = {cb}
  self._etcd:grant(self._ttl, function(lease, err, code)
    local waiting = self._waiting
    self._waiting = nil
    if lease then self._lease = lease.id end
    for _, w in ipairs(waiting) do
      if lease then w(lease.id) else w(nil, err, code) end
    end
  end)
end

--- Does this node hold (ns, key)? (What this process claimed.)
function Etcd:holds(ns, key)
  return self._held[self:_key(ns, key)] ~= nil
end

local function owner_of(kv)
  local ok, doc = pcall(cjson.decode, kv.value or "")
  return ok and type(doc) == "table" and doc.node or "?"
end

--- Claims (ns, key) for this node with value (a JSON-able table): a txn
-- that creates the key only if its create_revision is 0, bound to the
-- node's lease (granted on first use). A claim whose earlier attempt
-- landed (a timeout after the commit) is recognised by its lease.
-- @return[1] true (also when this node's lease holds it already)
-- @return[2] nil, "conflict: ns/key is held by node N", "conflict"; or
--   nil, "unreachable: ..." / "timeout: ..." when etcd has no quorum
Etcd.claim = async.adapt(function(self, ns, key, value, cb)
  self:_check()
  check_ns_key("claim", ns, key)
  check_value("claim", 3, value)
  local full = self:_key(ns, key)
  local body = cjson.encode({node = self._node, value = value})
  local retried = false
  local function try()
    self:_with_lease(function(lease, err, code)
      if not lease then return cb(nil, err, code) end
      self._etcd:create(full, body, lease, function(ok, kv, ecode)
        if ok then
          self._held[full] = {ns = ns, key = key, body = body}
          return cb(true)
        end
        if ok == nil then
          if ecode == "not_found" and not retried and self._lease == lease then
            -- the lease lapsed (an outage longer than the TTL): a new one
            retried = true
            return self:_regrant(lease, function() try() end)
          end
          return cb(nil, kv, ecode)
        end
        if kv.lease == lease then -- an earlier attempt of ours landed after all
          self._held[full] = {ns = ns, key = key, body = body}
          return cb(true)
        end
        cb(nil, ("conflict: %s/%s is held by node %s"):format(ns, key, owner_of(kv)), "conflict")
      end)
    end)
  end
  try()
end)

--- Drops a record this node holds (a txn on the key's lease: never
-- another node's).
-- @return[1] true
-- @return[2] nil, "not_found: ...", "not_found"; or unreachable, timeout
Etcd.release = async.adapt(function(self, ns, key, cb)
  self:_check()
  check_ns_key("release", ns, key)
  local full = self:_key(ns, key)
  if not self._lease or not self._held[full] then
    return cb(nil, ("not_found: node %s holds no %s/%s"):format(self._node, ns, key), "not_found")
  end
  self._etcd:delete_if_lease(full, self._lease, function(ok, err, code)
    if ok == nil then return cb(nil, err, code) end
    self._held[full] = nil
    if not ok then
      return cb(nil, ("not_found: %s/%s is no longer held by node %s"):format(ns, key, self._node),
        "not_found")
    end
    cb(true)
  end)
end)

-- The lease lapsed: grant a new one and write every record again with it.
-- A record another node took meanwhile is lost (never overwritten).
function Etcd:_regrant(old, cb)
  if self._lease == old then self._lease = nil end
  self:_with_lease(function(lease, err, code)
    if not lease then return cb(nil, err, code) end
    local keys, lost = {}, {}
    for full in pairs(self._held) do keys[#keys + 1] = full end
    table.sort(keys)
    local left = #keys
    log.warn("etcd_lease_regranted", {node = self._node, lease = lease, records = left})
    if left == 0 then return cb({ttl = self._ttl, regranted = true, lost = lost}) end
    local failure
    for _, full in ipairs(keys) do
      local h = self._held[full]
      self._etcd:create(full, h.body, lease, function(ok, kv, code2)
        if ok == nil then
          failure = failure or {kv, code2}
        elseif not ok and kv.lease ~= lease then
          self._held[full] = nil
          lost[#lost + 1] = h.ns .. "/" .. h.key
          log.warn("etcd_record_lost", {node = self._node, record = h.ns .. "/" .. h.key,
                                        holder = owner_of(kv)})
        end
        left = left - 1
        if left > 0 then return end
        if failure then return cb(nil, failure[1], failure[2]) end
        table.sort(lost)
        cb({ttl = self._ttl, regranted = true, lost = lost})
      end)
    end
  end)
end

--- One keep-alive round: refreshes the node's lease; when it has lapsed,
-- grants a new lease and writes every record again (never reviving the
-- old one). `info = {ttl, regranted, lost = {"ns/key", ...}}`: lost are
-- records another node took while ours were gone.
Etcd.renew = async.adapt(function(self, cb)
  self:_check()
  local lease = self._lease
  if not lease then
    if next(self._held) == nil then return cb({regranted = false, lost = {}}) end
    return self:_regrant(nil, cb)
  end
  self._etcd:keepalive(lease, function(ttl, err, code)
    if not ttl then return cb(nil, err, code) end
    if ttl > 0 then return cb({ttl = ttl, regranted = false, lost = {}}) end
    self:_regrant(lease, cb)
  end)
end)

function Etcd:_record(kv)
  local ok, doc = pcall(cjson.decode, kv.value)
  if not ok or type(doc) ~= "table" then doc = {} end
  return {key = kv.key:sub(#self._prefix + 1):match("^[^/]+/(.*)$") or kv.key, value = doc.value,
          node = doc.node, lease = kv.lease}
end

--- Every node's records in ns, sorted by key, read linearizably.
-- @return[1] `{{key, value, node, lease}, ...}` and the etcd revision read at
-- @return[2] nil, msg, code (unreachable, timeout)
Etcd.list = async.adapt(function(self, ns, cb)
  self:_check()
  check_ns_key("list", ns, "-")
  self._etcd:range(self._prefix .. ns .. "/", {prefix = true}, function(res, err, code)
    if not res then return cb(nil, err, code) end
    local out = {}
    for i, kv in ipairs(res.kvs) do out[i] = self:_record(kv) end
    cb(out, res.revision)
  end)
end)

--- Follows every node's records in ns: fn{type = "put" | "delete" |
-- "reset", key, value, node}. A delete carries only the key (etcd keeps
-- no value for it). "reset": changes were compacted away; list again.
-- `after` (a revision, as list's second result): changes after it only.
function Etcd:watch(ns, fn, after)
  self:_check()
  check_ns_key("watch", ns, "-")
  if type(fn) ~= "function" then check.argerror("watch", 2, "function expected") end
  local opts = after and {start_revision = math.tointeger(tonumber(after)) + 1}
  return self._etcd:watch(self._prefix .. ns .. "/", opts, function(ev)
    if ev.type == "reset" then return fn(ev) end
    local r = self:_record(ev)
    fn({type = ev.type, key = r.key, value = r.value, node = r.node})
  end)
end

--- Keeps the lease alive: a renew round every ttl/3 seconds (errors are
-- logged; the next round retries). Returns self.
function Etcd:start()
  self:_check()
  if self._timer then return self end
  local period = math.max(200, self._ttl * 1000 // 3)
  self._timer = uv.new_timer()
  self._timer:start(period, period, async.safe(function()
    if self._renewing then return end
    self._renewing = true
    self:renew(function(info, err, code)
      self._renewing = false
      if not info then log.warn("etcd_renew_failed", {node = self._node, error = err, code = code}) end
    end)
  end, "etcd renew"))
  return self
end

--- Stops keeping the lease alive and revokes it: every record this node
-- holds goes at once. cb(true) or, when etcd is unreachable, cb(nil, msg,
-- code) (the records then go after the TTL). Idempotent.
function Etcd:close(cb)
  if not self._etcd then
    if cb then cb(true) end
    return
  end
  if self._timer then self._timer:stop(); self._timer:close(); self._timer = nil end
  local client, lease = self._etcd, self._lease
  self._etcd, self._lease, self._held = nil, nil, {}
  if not lease then
    client:close()
    if cb then cb(true) end
    return
  end
  client:revoke(lease, function(ok, err, code)
    client:close()
    if cb then cb(ok, err, code) end
  end)
end

--- Stops keeping the lease alive and closes the connection without
-- revoking: the records live out their TTL (a one-shot `portman alloc`).
function Etcd:detach()
  if not self._etcd then return end
  if self._timer then self._timer:stop(); self._timer:close(); self._timer = nil end
  self._etcd:close()
  self._etcd, self._lease, self._held = nil, nil, {}
end

--- The portman.etcd client underneath (its endpoints, for diagnostics).
function Etcd:client() return self._etcd end

--- The node's lease id (a string), or nil before the first claim.
function Etcd:lease() return self._lease end

-- Constructors -------------------------------------------------------------

local function check_node(fname, node)
  if node ~= nil and (type(node) ~= "string" or not node:match("^[%w_%.:%-]+$")) then
    check.argerror(fname, 1, "node: letters, digits, '.', ':', '_' or '-' expected")
  end
  return node or default_node()
end

--- Creates a backend.
-- @tparam table opts `kind` ("file" by default, or "etcd"), `node` (this
--   node's id, hostname:pid by default). file: `path` (the state file).
--   etcd: `endpoints` (URLs, a list or comma-separated), `cluster` (the
--   cluster's name: keys live under /portman/NAME/), `ttl` (the lease's
--   seconds, 10), and portman.etcd's `timeout`, `attempt_timeout`, `user`,
--   `password`, `cacert`, `cert`, `key`, `insecure`.
-- @return[1] a backend
-- @return[2] nil, msg, code
-- @raise on a bad or unknown option
function M.new(opts)
  check.table("new", 1, opts)
  local kind = check.oneof("new", 1, opts.kind or "file", {"file", "etcd"}, "kind")
  if kind == "file" then
    check.known("new", 1, opts, FILE_OPTS)
    if type(opts.path) ~= "string" then check.argerror("new", 1, "path: string expected") end
    return setmetatable({_path = opts.path, _node = check_node("new", opts.node), _watchers = {}}, File)
  end
  check.known("new", 1, opts, ETCD_OPTS)
  if type(opts.cluster) ~= "string" or not opts.cluster:match("^[%w_%.%-]+$") then
    check.argerror("new", 1, "cluster: name of letters, digits, '.', '_' or '-' expected")
  end
  local ttl = opts.ttl or 10
  if math.type(ttl) ~= "integer" or ttl < 1 then
    check.argerror("new", 1, "ttl: positive integer expected")
  end
  local node = check_node("new", opts.node)
  local eopts = {}
  for k in pairs(opts) do
    if k ~= "kind" and k ~= "cluster" and k ~= "node" and k ~= "ttl" then eopts[k] = opts[k] end
  end
  local client, err, code = require("portman.etcd").new(eopts)
  if not client then return nil, err, code end
  return setmetatable({_etcd = client, _prefix = "/portman/" .. opts.cluster .. "/",
                       _node = node, _ttl = ttl, _held = {}}, Etcd)
end

return M
