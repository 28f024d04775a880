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
--     got, held = b:claim_many(ns, {[key] = value, ...})
--                          -- each key that is free, at once: got lists
--                          -- the keys now ours, held[key] = the node that
--                          -- holds a key already
--     info, err, code = b:renew()                  -- one keep-alive round
--     ok, err, code = b:release(ns, key)           -- drop a record we hold
--     records, err, code = b:list(ns)              -- {{key, value, node}, ...}
--     watcher = b:watch(ns, fn)                    -- fn{type, key, value, node}
--     b:start(); b:close()
--
-- On top of it, for both kinds: `register`, `register_many`, `deregister`,
-- `services`, `lookup` and `mirror` (the registry's records, and a live copy that
-- follows every node's changes) and `claim_ports` (cluster-wide
-- allocation).
--
-- This file is that shared part and `new`; each kind is a file of its own
-- (portman.backend.file, portman.backend.etcd), loaded when first used.
-- A kind's class indexes `backend.Base`, and its primitives check their
-- arguments with `backend.check_ns_key`, `backend.check_value` (or
-- `backend.encode_record`, which checks and encodes at once) and
-- `backend.check_recs`.
local uv = require "luv"
local async = require "portman.async"
local check = require "portman.check"
local json = require "portman.json"
local log = require "portman.log"
local allocator = require "portman.allocator"

local M = {}

--- The methods every backend shares; each kind adds the primitives.
local Base = {}
M.Base = Base

--- For kinds: raises unless ns is a namespace name and key a non-empty
-- string (arguments 1 and 2 of fname).
function M.check_ns_key(fname, ns, key)
  if type(ns) ~= "string" or not ns:match("^[%w_%-]+$") then
    check.argerror(fname, 1, "ns: name of letters, digits, '_' or '-' expected")
  end
  if type(key) ~= "string" or key == "" then
    check.argerror(fname, 2, "key: non-empty string expected")
  end
end

--- For kinds: raises unless value (argument n of fname) is a table JSON
-- can hold.
function M.check_value(fname, n, value)
  if type(value) ~= "table" then check.argerror(fname, n, "table expected, got " .. type(value)) end
  local ok, err = pcall(json.encode, value)
  if not ok then check.argerror(fname, n, "value not JSON-able: " .. tostring(err)) end
end
local check_value = M.check_value

--- For kinds: the JSON of a record (`{node, value}`), encoded once: raises
-- like check_value unless value (argument n of fname) is a table JSON can
-- hold.
function M.encode_record(fname, n, node, value)
  if type(value) ~= "table" then check.argerror(fname, n, "table expected, got " .. type(value)) end
  local ok, text = pcall(json.encode, {node = node, value = value})
  if not ok then check.argerror(fname, n, "value not JSON-able: " .. tostring(text)) end
  return text
end

--- For kinds: raises unless recs (argument 2 of fname) maps keys
-- (non-empty strings) to values (tables); returns its keys, sorted.
function M.check_recs(fname, recs)
  if type(recs) ~= "table" then check.argerror(fname, 2, "table of key = value expected") end
  local keys = {}
  for key, value in pairs(recs) do
    if type(key) ~= "string" or key == "" then check.argerror(fname, 2, "keys: non-empty strings expected") end
    if type(value) ~= "table" then
      check.argerror(fname, 2, ("value of %s: table expected, got %s"):format(key, type(value)))
    end
    keys[#keys + 1] = key
  end
  table.sort(keys)
  return keys
end

--- This backend's node id.
function Base:node() return self._node end

local REG_FIELDS = {name = true, address = true, port = true, proto = true, metadata = true, external = true}

-- The key and value of registration rec (argument n of fname).
local function registration(self, fname, n, rec)
  check.table(fname, n, rec)
  check.known(fname, n, rec, REG_FIELDS)
  if type(rec.name) ~= "string" or not rec.name:match("^[%w_%.%-]+$") then
    check.argerror(fname, n, "name: letters, digits, '.', '_' or '-' expected")
  end
  check.port(fname, n, rec.port, "port")
  local ext = rec.external
  if ext ~= nil then
    check.table(fname, n, ext)
    if type(ext.address) ~= "string" then check.argerror(fname, n, "external.address: string expected") end
    check.port(fname, n, ext.port, "external.port")
    if type(ext.method) ~= "string" then check.argerror(fname, n, "external.method: string expected") end
    ext = {address = ext.address, port = ext.port, method = ext.method}
  end
  local value = {name = rec.name, node = self._node, address = rec.address or "", port = rec.port,
                 proto = rec.proto or "tcp", metadata = rec.metadata, external = ext}
  check_value(fname, n, value)
  return rec.name .. "/" .. self._node, value
end

--- Registers a service of this node: `rec = {name, address, port, proto,
-- metadata, external}` (name and port required; `external = {address,
-- port, method}`: where the service is reached from outside, through a
-- router mapping or a TURN relay). A service registered again by the
-- same node replaces its record.
-- @return[1] true
-- @return[2] nil, msg, code
-- @raise on a bad record
Base.register = async.adapt(function(self, rec, cb)
  local key, value = registration(self, "register", 1, rec)
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

--- Registers several services of this node at once (each `rec` as
-- register's): the ones this node has not registered go in one
-- claim_many (one etcd txn a 128), the ones it has are replaced one by
-- one as register does.
-- @return[1] the names registered, and `{[name] = msg}` for each that was not
-- @return[2] nil, msg, code when none could be (etcd unreachable)
-- @raise on a bad record, or a name given twice
Base.register_many = async.adapt(function(self, recs, cb)
  check.table("register_many", 1, recs)
  local fresh, again, names = {}, {}, {}
  for i, rec in ipairs(recs) do
    local key, value = registration(self, "register_many", 1, rec)
    if names[key] then check.argerror("register_many", 1, ("recs[%d]: %s given twice"):format(i, rec.name)) end
    names[key] = rec.name
    if self:holds("services", key) then again[#again + 1] = rec else fresh[key] = value end
  end
  local done, failed, left = {}, {}, #again + 1
  local function finish()
    left = left - 1
    if left > 0 then return end
    table.sort(done)
    cb(done, failed)
  end
  for _, rec in ipairs(again) do
    self:register(rec, function(ok, err)
      if ok then done[#done + 1] = rec.name else failed[rec.name] = err end
      finish()
    end)
  end
  self:claim_many("services", fresh, function(got, held, code)
    if not got then
      if #again == 0 then return cb(nil, held, code) end
      for key in pairs(fresh) do failed[names[key]] = held end
      return finish()
    end
    for _, key in ipairs(got) do done[#done + 1] = names[key] end
    for key, node in pairs(held) do
      failed[names[key]] = ("conflict: services/%s is held by node %s"):format(key, node)
    end
    finish()
  end)
end)

--- Removes this node's registration of service name.
-- @return[1] true
-- @return[2] nil, msg, code (`not_found` when this node has none)
Base.deregister = async.adapt(function(self, name, cb)
  if type(name) ~= "string" then check.argerror("deregister", 1, "string expected") end
  self:release("services", name .. "/" .. self._node, cb)
end)

--- A registration read from the cluster, as another node (or anyone who
-- can write etcd) wrote it: the record when its fields have the shapes
-- register gives them, else nil and what is wrong. Nothing of a bad one is
-- used (docs/design.md, "Errors": answers from peers are checked).
function M.service_of(v)
  if type(v) ~= "table" then return nil, "not an object" end
  if type(v.name) ~= "string" or not v.name:match("^[%w_%.%-]+$") or #v.name > 255 then return nil, "name" end
  if type(v.node) ~= "string" or #v.node > 255 then return nil, "node" end
  if type(v.address) ~= "string" or #v.address > 255 then return nil, "address" end
  local port = math.tointeger(v.port)
  if not port or port < 1 or port > 65535 then return nil, "port" end
  if v.proto ~= "tcp" and v.proto ~= "udp" then return nil, "proto" end
  if v.metadata ~= nil and type(v.metadata) ~= "table" then return nil, "metadata" end
  local ext = v.external
  if ext ~= nil then
    local eport = type(ext) == "table" and math.tointeger(ext.port)
    if not eport or eport < 1 or eport > 65535 or type(ext.address) ~= "string" or #ext.address > 255
      or type(ext.method) ~= "string" or #ext.method > 32 then
      return nil, "external"
    end
    ext.port = eport
  end
  v.port = port
  return v
end

--- Every node's registrations, sorted by name then node; a record of the
-- wrong shape is left out (and logged).
-- @return[1] `{{name, node, address, port, proto, metadata}, ...}`
-- @return[2] nil, msg, code
Base.services = async.adapt(function(self, cb)
  self:list("services", function(records, err, code)
    if not records then return cb(nil, err, code) end
    local out = {}
    for _, r in ipairs(records) do
      local v, why = M.service_of(r.value)
      if v then
        out[#out + 1] = v
      else
        log.warn("cluster_record_malformed", {key = r.key, field = why})
      end
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

-- Marks in pool every port of its range that some node holds now.
local function mark_claimed(self, pool, cb)
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

-- Claims count ports from pool: batches of up to `batch` ports a call of
-- claim_many, up to concurrency calls in flight (see claim_ports).
local function claim_from(self, pool, count, opts, cb)
  local concurrency, batch = opts.concurrency, opts.batch
  local got, pending, inflight, conflicts, refreshes = {}, 0, 0, 0, 0
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
    mark_claimed(self, pool, function(ok, err, code)
      refreshing = false
      if not ok and not failure then failure = {err, code} end
      next_claim()
    end)
  end
  -- a claim_many of n ports answered: keys ours, held[key] another's
  -- (or nil, held = the message, code)
  local function claimed(n, keys, held, code)
    inflight, pending = inflight - 1, pending - n
    if not keys then
      if not failure then failure = {held, code} end
      return next_claim()
    end
    for _, key in ipairs(keys) do got[#got + 1] = math.tointeger(tonumber(key)) end
    local lost = 0
    for _ in pairs(held) do lost = lost + 1 end -- the pool keeps them marked
    conflicts = conflicts + lost
    if lost == 0 then
      streak = 0
    else
      streak = streak + lost
      if streak >= 2 * concurrency and not refreshing then return refresh() end
    end
    next_claim()
  end
  next_claim = function()
    while not failure and not refreshing and #got + pending < count and inflight < concurrency do
      local recs, n = {}, 0
      while n < batch and #got + pending + n < count do
        local p = pool:allocate()
        if not p then break end
        recs[tostring(p)], n = {port = p}, n + 1
      end
      if n == 0 then
        if inflight == 0 then
          local lo, hi = pool:range()
          failure = {("exhausted: %d of %d ports claimed, no free port left in %d-%d")
            :format(#got, count, lo, hi), "exhausted"}
        end
        break
      end
      inflight, pending = inflight + 1, pending + n
      self:claim_many("ports", recs, function(keys, held, code) claimed(n, keys, held, code) end)
    end
    if failure or #got == count then finish() end
  end
  next_claim()
end

-- Ports a claim_many of claim_ports: one etcd txn (etcd allows 128
-- operations a txn), small enough that a conflict costs one more round of
-- a few keys.
local DEFAULT_BATCH = 32

local ALLOC_OPTS = {range = true, count = true, strategy = true, node_id = true,
                    allow_privileged = true, concurrency = true, batch = true}

--- Claims count ports of range for this node, cluster-wide: reads what
-- is claimed, picks candidates with a local pool (the allocator's
-- strategies), and claims them in batches of up to `batch` ports (one
-- etcd txn, or one write of the state file, a batch), with up to
-- `concurrency` batches in flight; a port another node won meanwhile is
-- skipped, and after a run of such conflicts the claimed ports are read
-- again. On failure the ports already claimed are released (best effort).
-- @tparam table opts `range = {lo, hi}`, `count` (1), `strategy`,
--   `node_id`, `allow_privileged` (as allocator.new), `concurrency` (8),
--   `batch` (32; 1 claims one port a call)
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
  local batch = opts.batch or DEFAULT_BATCH
  if math.type(batch) ~= "integer" or batch < 1 then
    check.argerror("claim_ports", 1, "batch: positive integer expected")
  end
  local pool = allocator.new{range = opts.range, strategy = opts.strategy,
    node_id = opts.node_id or (opts.strategy == "hash" and self._node or nil),
    allow_privileged = opts.allow_privileged}
  mark_claimed(self, pool, function(ok, err, code)
    if not ok then return cb(nil, err, code) end
    claim_from(self, pool, count, {concurrency = concurrency, batch = batch}, cb)
  end)
end)

-- The constructor -----------------------------------------------------------

local KINDS = {"file", "etcd"}

local function check_node(fname, node)
  if node ~= nil and (type(node) ~= "string" or not node:match("^[%w_%.:%-]+$")) then
    check.argerror(fname, 1, "node: letters, digits, '.', ':', '_' or '-' expected")
  end
  return node or ("%s:%d"):format(uv.os_gethostname() or "localhost", uv.os_getpid())
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
  local kind = check.oneof("new", 1, opts.kind or "file", KINDS, "kind")
  local make = require("portman.backend." .. kind).new
  return make(opts, function(node) return check_node("new", node) end)
end

return M
