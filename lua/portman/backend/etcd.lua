--- The etcd kind of portman.backend (see there): records in an etcd cluster
-- under `/portman/<cluster>/`, each bound to the node's lease, which the
-- node keeps alive. A node that dies loses its records after the lease's
-- TTL. A claim is a txn that creates the key only if it does not exist:
-- of concurrent claims of one port, exactly one wins. When etcd is
-- unreachable or has no quorum, every call fails with `unreachable` or
-- `timeout`: never a silent local fallback that could hand a port out
-- twice.
local uv = require "luv"
local async = require "portman.async"
local check = require "portman.check"
local json = require "portman.json"
local log = require "portman.log"
local etcd = require "portman.etcd"
local backend = require "portman.backend"

local M = {}
local check_ns_key, encode_record = backend.check_ns_key, backend.encode_record

local Etcd = setmetatable({}, {__index = backend.Base})
Etcd.__index = Etcd

local ETCD_OPTS = {kind = true, endpoints = true, cluster = true, node = true, ttl = true,
                   timeout = true, attempt_timeout = true, user = true, password = true,
                   cacert = true, cert = true, key = true, insecure = true}

local regrant -- below: claim and renew both need it

local function check_open(self)
  if not self._etcd then error("attempt to use a closed portman.backend (etcd)", 3) end
end

local function full_key(self, ns, key) return self._prefix .. ns .. "/" .. key end

-- Calls cb(lease_id) once the node has a lease, granting one if needed;
-- concurrent callers share one grant.
local function with_lease(self, cb)
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
  return self._held[full_key(self, ns, key)] ~= nil
end

local function owner_of(kv)
  local doc = json.decode(kv.value or "")
  return type(doc) == "table" and doc.node or "?"
end

--- Claims (ns, key) for this node with value (a JSON-able table): a txn
-- that creates the key only if its create_revision is 0, bound to the
-- node's lease (granted on first use). A claim whose earlier attempt
-- landed (a timeout after the commit) is recognised by its lease.
-- @return[1] true (also when this node's lease holds it already)
-- @return[2] nil, "conflict: ns/key is held by node N", "conflict"; or
--   nil, "unreachable: ..." / "timeout: ..." when etcd has no quorum
Etcd.claim = async.adapt(function(self, ns, key, value, cb)
  check_open(self)
  check_ns_key("claim", ns, key)
  local body = encode_record("claim", 3, self._node, value)
  local full = full_key(self, ns, key)
  local retried = false
  local function try()
    with_lease(self, function(lease, err, code)
      if not lease then return cb(nil, err, code) end
      -- create_many of one: the txn create sends, with the C core's base64
      self._etcd:create_many({{full, body}}, lease, function(ok, holders, ecode)
        if ok then
          self._held[full] = {ns = ns, key = key, body = body}
          return cb(true)
        end
        if ok == nil then
          if ecode == "not_found" and not retried and self._lease == lease then
            -- the lease lapsed (an outage longer than the TTL): a new one
            retried = true
            return regrant(self, lease, function() try() end)
          end
          return cb(nil, holders, ecode)
        end
        local kv = holders[1] or {key = full}
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

-- Claims every free key of keys (at most MAX_TXN_OPS): a txn that creates
-- them all if none exists; when one does, the txn's failure branch reads
-- each key, and the next round claims the ones that were free, until a
-- round succeeds or none is left. Each round is atomic and takes at least
-- one key out, so nothing is half-claimed and the rounds end. Adds to
-- acc.got (keys now ours) and acc.held (key -> another node); a lapsed
-- lease is granted anew once unless acc.regranted. done(true) or
-- done(nil, msg, code).
local function claim_chunk(self, ns, keys, bodies, acc, done)
  local retried = acc.regranted
  local function round(part)
    if #part == 0 then return done(true) end
    with_lease(self, function(lease, err, code)
      if not lease then return done(nil, err, code) end
      local items = {}
      for i, key in ipairs(part) do items[i] = {full_key(self, ns, key), bodies[key]} end
      self._etcd:create_many(items, lease, function(ok, holders, ecode)
        if ok == nil then
          if ecode == "not_found" and not retried and self._lease == lease then
            retried = true -- the lease lapsed: a new one, as claim does
            return regrant(self, lease, function() round(part) end)
          end
          return done(nil, holders, ecode)
        end
        local free = {}
        for i, key in ipairs(part) do
          local kv = not ok and holders[i]
          if ok or (kv and kv.lease == lease) then -- ours (maybe an earlier attempt's)
            self._held[items[i][1]] = {ns = ns, key = key, body = bodies[key]}
            acc.got[#acc.got + 1] = key
          elseif kv then
            acc.held[key] = owner_of(kv)
          else
            free[#free + 1] = key
          end
        end
        if #free == #part then -- the txn failed, yet every key reads free
          return done(nil, "protocol: etcd refused a txn of free keys under " .. self._prefix .. ns, "protocol")
        end
        round(free)
      end)
    end)
  end
  round(keys)
end

-- Runs claim_chunk over keys of ns, MAX_TXN_OPS at a time, one after the
-- other; with acc.keep_going, a failed chunk does not stop the next ones.
-- done(true) or done(nil, msg, code) (the first failure).
local function claim_chunks(self, ns, keys, bodies, acc, done)
  local first, failure = 1, nil
  local function next_chunk()
    if first > #keys or (failure and not acc.keep_going) then
      if failure then return done(nil, failure[1], failure[2]) end
      return done(true)
    end
    local last = math.min(first + etcd.MAX_TXN_OPS - 1, #keys)
    local part = table.move(keys, first, last, 1, {})
    first = last + 1
    claim_chunk(self, ns, part, bodies, acc, function(ok, err, code)
      if not ok then failure = failure or {err, code} end
      next_chunk()
    end)
  end
  next_chunk()
end

--- Claims for this node every key of recs (`{[key] = value, ...}`) that
-- no other node holds, in as few txns as it can: one txn of up to
-- MAX_TXN_OPS keys creates them all when all are free; otherwise the
-- free ones are claimed and the taken ones reported. Never half a txn:
-- each key is either ours (bound to the lease) or another node's.
-- @return[1] got: the keys now held by this node (sorted), and held:
--   `{[key] = node}` for each key another node holds
-- @return[2] nil, msg, code (unreachable, timeout): the keys this call
--   claimed are released first (best effort)
Etcd.claim_many = async.adapt(function(self, ns, recs, cb)
  check_open(self)
  check_ns_key("claim_many", ns, "-")
  local keys = backend.check_recs("claim_many", recs)
  local bodies = {}
  for _, key in ipairs(keys) do bodies[key] = encode_record("claim_many", 2, self._node, recs[key]) end
  local acc = {got = {}, held = {}}
  claim_chunks(self, ns, keys, bodies, acc, function(ok, err, code)
    local got = acc.got
    if ok then
      table.sort(got)
      return cb(got, acc.held)
    end
    local left = #got
    if left == 0 then return cb(nil, err, code) end
    for _, key in ipairs(got) do
      self:release(ns, key, function()
        left = left - 1
        if left == 0 then cb(nil, err, code) end
      end)
    end
  end)
end)

--- Drops a record this node holds (a txn on the key's lease: never
-- another node's).
-- @return[1] true
-- @return[2] nil, "not_found: ...", "not_found"; or unreachable, timeout
Etcd.release = async.adapt(function(self, ns, key, cb)
  check_open(self)
  check_ns_key("release", ns, key)
  local full = full_key(self, ns, key)
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

-- The lease lapsed: grant a new one and write every record again with it,
-- up to MAX_TXN_OPS records a txn. A record another node took meanwhile
-- is lost (never overwritten).
function regrant(self, old, cb)
  if self._lease == old then self._lease = nil end
  with_lease(self, function(lease, err, code)
    if not lease then return cb(nil, err, code) end
    local by_ns, names, count = {}, {}, 0
    for _, h in pairs(self._held) do
      if not by_ns[h.ns] then by_ns[h.ns], names[#names + 1] = {keys = {}, bodies = {}}, h.ns end
      local group = by_ns[h.ns]
      group.keys[#group.keys + 1], group.bodies[h.key] = h.key, h.body
      count = count + 1
    end
    table.sort(names)
    log.warn("etcd_lease_regranted", {node = self._node, lease = lease, records = count})
    local lost, failure, i = {}, nil, 0
    local function next_ns()
      i = i + 1
      local ns = names[i]
      if not ns then
        if failure then return cb(nil, failure[1], failure[2]) end
        table.sort(lost)
        return cb({ttl = self._ttl, regranted = true, lost = lost})
      end
      local group = by_ns[ns]
      table.sort(group.keys)
      local acc = {got = {}, held = {}, regranted = true, keep_going = true}
      claim_chunks(self, ns, group.keys, group.bodies, acc, function(ok, cerr, ccode)
        if not ok then failure = failure or {cerr, ccode} end
        for key, holder in pairs(acc.held) do
          self._held[full_key(self, ns, key)] = nil
          lost[#lost + 1] = ns .. "/" .. key
          log.warn("etcd_record_lost", {node = self._node, record = ns .. "/" .. key, holder = holder})
        end
        next_ns()
      end)
    end
    next_ns()
  end)
end

--- One keep-alive round: refreshes the node's lease; when it has lapsed,
-- grants a new lease and writes every record again (never reviving the
-- old one). `info = {ttl, regranted, lost = {"ns/key", ...}}`: lost are
-- records another node took while ours were gone.
Etcd.renew = async.adapt(function(self, cb)
  check_open(self)
  local lease = self._lease
  if not lease then
    if next(self._held) == nil then return cb({regranted = false, lost = {}}) end
    return regrant(self, nil, cb)
  end
  self._etcd:keepalive(lease, function(ttl, err, code)
    if not ttl then return cb(nil, err, code) end
    if ttl > 0 then return cb({ttl = ttl, regranted = false, lost = {}}) end
    regrant(self, lease, cb)
  end)
end)

-- A key's JSON value as a record: {key (without prefix and ns), value,
-- node, lease}.
local function record(self, kv)
  local doc = json.decode(kv.value)
  if type(doc) ~= "table" then doc = {} end
  return {key = kv.key:sub(#self._prefix + 1):match("^[^/]+/(.*)$") or kv.key, value = doc.value,
          node = doc.node, lease = kv.lease}
end

--- Every node's records in ns, sorted by key, read linearizably.
-- @return[1] `{{key, value, node, lease}, ...}` and the etcd revision read at
-- @return[2] nil, msg, code (unreachable, timeout)
Etcd.list = async.adapt(function(self, ns, cb)
  check_open(self)
  check_ns_key("list", ns, "-")
  self._etcd:range(self._prefix .. ns .. "/", {prefix = true}, function(res, err, code)
    if not res then return cb(nil, err, code) end
    local out = {}
    for i, kv in ipairs(res.kvs) do out[i] = record(self, kv) end
    cb(out, res.revision)
  end)
end)

--- Follows every node's records in ns: fn{type = "put" | "delete" |
-- "reset", key, value, node}. A delete carries only the key (etcd keeps
-- no value for it). "reset": changes were compacted away; list again.
-- `after` (a revision, as list's second result): changes after it only.
function Etcd:watch(ns, fn, after)
  check_open(self)
  check_ns_key("watch", ns, "-")
  if type(fn) ~= "function" then check.argerror("watch", 2, "function expected") end
  local opts = after and {start_revision = math.tointeger(tonumber(after)) + 1}
  return self._etcd:watch(self._prefix .. ns .. "/", opts, function(ev)
    if ev.type == "reset" then return fn(ev) end
    local r = record(self, ev)
    fn({type = ev.type, key = r.key, value = r.value, node = r.node})
  end)
end

--- Keeps the lease alive: a renew round every ttl/3 seconds (errors are
-- logged; the next round retries). Returns self.
function Etcd:start()
  check_open(self)
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

--- An etcd backend (backend.new checks opts.kind; node_id(opts.node) checks
-- and defaults the node's id).
-- @return[1] the backend
-- @return[2] nil, msg, code when no epoll fd is left
function M.new(opts, node_id)
  check.known("new", 1, opts, ETCD_OPTS)
  if type(opts.cluster) ~= "string" or not opts.cluster:match("^[%w_%.%-]+$") then
    check.argerror("new", 1, "cluster: name of letters, digits, '.', '_' or '-' expected")
  end
  local ttl = opts.ttl or 10
  if math.type(ttl) ~= "integer" or ttl < 1 then
    check.argerror("new", 1, "ttl: positive integer expected")
  end
  local node = node_id(opts.node)
  local eopts = {}
  for k in pairs(opts) do
    if k ~= "kind" and k ~= "cluster" and k ~= "node" and k ~= "ttl" then eopts[k] = opts[k] end
  end
  local client, err, code = etcd.new(eopts)
  if not client then return nil, err, code end
  return setmetatable({_etcd = client, _prefix = "/portman/" .. opts.cluster .. "/",
                       _node = node, _ttl = ttl, _held = {}}, Etcd)
end

return M
