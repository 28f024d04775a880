--- The file kind of portman.backend (see there): records in the local state
-- file (portman.state, written atomically, docs/design.md, "The state
-- file"). One machine, one portman process writing the file; nothing
-- expires, and a watch sees this process's own changes.
local async = require "portman.async"
local check = require "portman.check"
local log = require "portman.log"
local state = require "portman.state"
local backend = require "portman.backend"

local M = {}
local check_ns_key, check_value = backend.check_ns_key, backend.check_value

local File = setmetatable({}, {__index = backend.Base})
File.__index = File

local FILE_OPTS = {kind = true, path = true, node = true}

-- Reads the records; cb-free: the file is local.
local function load(self)
  local doc, err, code = state.load(self._path)
  if not doc then return nil, err, code end
  if doc.records ~= nil and type(doc.records) ~= "table" then
    return nil, "protocol: " .. self._path .. ": records is not an object", "protocol"
  end
  doc.records = doc.records or {}
  return doc
end

local function save(self, doc)
  return state.save(self._path, doc)
end

-- Tells this backend's watchers of ns about a change.
local function notify(self, ev)
  for _, w in pairs(self._watchers) do
    if w.ns == ev.ns then
      local ok, err = xpcall(w.fn, debug.traceback, {type = ev.type, key = ev.key, value = ev.value,
                                                     node = ev.node})
      if not ok then log.error("watch_callback_failed", {error = err}) end
    end
  end
end

local function check_open(self)
  if self._closed then error("attempt to use a closed portman.backend (file)", 3) end
end

--- Does this node hold (ns, key)?
function File:holds(ns, key)
  local doc = load(self)
  local r = doc and doc.records[ns] and doc.records[ns][key]
  return r ~= nil and r.node == self._node
end

--- Claims (ns, key) for this node with value (a JSON-able table).
-- @return[1] true (also when this node holds it already)
-- @return[2] nil, "conflict: ns/key is held by node N", "conflict"; or
--   nil, msg, code when the state file cannot be read or written
File.claim = async.adapt(function(self, ns, key, value, cb)
  check_open(self)
  check_ns_key("claim", ns, key)
  check_value("claim", 3, value)
  local doc, err, code = load(self)
  if not doc then return cb(nil, err, code) end
  local space = doc.records[ns] or {}
  local held = space[key]
  if held and held.node == self._node then return cb(true) end
  if held then
    return cb(nil, ("conflict: %s/%s is held by node %s"):format(ns, key, tostring(held.node)), "conflict")
  end
  space[key] = {node = self._node, value = value}
  doc.records[ns] = space
  local ok, serr, scode = save(self, doc)
  if not ok then return cb(nil, serr, scode) end
  notify(self, {type = "put", ns = ns, key = key, value = value, node = self._node})
  cb(true)
end)

--- Claims for this node every key of recs (`{[key] = value, ...}`) that
-- no other node holds, in one write of the state file.
-- @return[1] got: the keys now held by this node (sorted, also those it
--   held already), and held: `{[key] = node}` for each key another node
--   holds
-- @return[2] nil, msg, code when the state file cannot be read or written
File.claim_many = async.adapt(function(self, ns, recs, cb)
  check_open(self)
  check_ns_key("claim_many", ns, "-")
  local keys = backend.check_recs("claim_many", recs)
  for _, key in ipairs(keys) do check_value("claim_many", 2, recs[key]) end
  local doc, err, code = load(self)
  if not doc then return cb(nil, err, code) end
  local space = doc.records[ns] or {}
  local got, held, new = {}, {}, {}
  for _, key in ipairs(keys) do
    local r = space[key]
    if not r then
      space[key] = {node = self._node, value = recs[key]}
      new[#new + 1] = key
    end
    if not r or r.node == self._node then got[#got + 1] = key else held[key] = tostring(r.node) end
  end
  if #new > 0 then
    doc.records[ns] = space
    local ok, serr, scode = save(self, doc)
    if not ok then return cb(nil, serr, scode) end
    for _, key in ipairs(new) do
      notify(self, {type = "put", ns = ns, key = key, value = recs[key], node = self._node})
    end
  end
  cb(got, held)
end)

--- Drops a record this node holds.
-- @return[1] true
-- @return[2] nil, "not_found: ...", "not_found" when this node holds none
File.release = async.adapt(function(self, ns, key, cb)
  check_open(self)
  check_ns_key("release", ns, key)
  local doc, err, code = load(self)
  if not doc then return cb(nil, err, code) end
  local space = doc.records[ns]
  local held = space and space[key]
  if not held or held.node ~= self._node then
    return cb(nil, ("not_found: node %s holds no %s/%s"):format(self._node, ns, key), "not_found")
  end
  space[key] = nil
  local ok, serr, scode = save(self, doc)
  if not ok then return cb(nil, serr, scode) end
  notify(self, {type = "delete", ns = ns, key = key, node = self._node})
  cb(true)
end)

--- Nothing in the state file expires: a round is a no-op.
File.renew = async.adapt(function(self, cb)
  check_open(self)
  cb({regranted = false, lost = {}})
end)

--- Every node's records in ns, sorted by key.
-- @return[1] `{{key, value, node}, ...}`
-- @return[2] nil, msg, code
File.list = async.adapt(function(self, ns, cb)
  check_open(self)
  check_ns_key("list", ns, "-")
  local doc, err, code = load(self)
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
  check_open(self)
  check_ns_key("watch", ns, "-")
  if type(fn) ~= "function" then check.argerror("watch", 2, "function expected") end
  local w = {ns = ns, fn = fn}
  self._watchers[w] = w
  return {close = function() self._watchers[w] = nil end}
end

function File:start() check_open(self) return self end

--- Stops the backend; the records stay in the file (they are this
-- machine's state across restarts).
function File:close(cb)
  self._closed = true
  self._watchers = {}
  if cb then cb(true) end
end
File.detach = File.close

--- A file backend (backend.new checks opts.kind; node_id(opts.node) checks
-- and defaults the node's id).
function M.new(opts, node_id)
  check.known("new", 1, opts, FILE_OPTS)
  if type(opts.path) ~= "string" then check.argerror("new", 1, "path: string expected") end
  return setmetatable({_path = opts.path, _node = node_id(opts.node), _watchers = {}}, File)
end

return M
