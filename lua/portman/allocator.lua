--- Port pools: allocate, reserve and release ports within a range.
-- The bitmap, the pick strategies and the object's methods (snapshot
-- too) are C (portman.core); this file checks options and restores
-- snapshots. Strategies:
--
-- * `sequential`: the lowest free port at or after a rotating cursor, so a
--   port just released is not handed out again at once.
-- * `random`: a uniformly random free port from getrandom(2) (RFC 6056).
-- * `hash`: starts at `lo + FNV-1a-32(node_id) % size`, the same in every
--   process on every machine, then proceeds like sequential.
local core = require "portman.core"
local check = require "portman.check"

local M = {}
local STRATEGIES = {"sequential", "random", "hash"}
local OPTIONS = {range = true, strategy = true, node_id = true, allow_privileged = true}
local SNAPSHOT = {version = true, range = true, strategy = true, node_id = true,
                  allow_privileged = true, cursor = true, bitmap = true}

--- FNV-1a, 32 bits, of a string's bytes.
M.fnv1a32 = core.fnv1a32

--- The first port the hash strategy tries for node_id in lo..hi:
-- `lo + fnv1a32(node_id) % (hi - lo + 1)`.
M.hash_start = core.hash_start

local function check_range(fname, range)
  if type(range) ~= "table" then
    check.argerror(fname, 1, "range: {lo, hi} expected, got " .. type(range))
  end
  local lo = check.port(fname, 1, range[1], "range[1]")
  local hi = check.port(fname, 1, range[2], "range[2]")
  if lo > hi then
    check.argerror(fname, 1, ("range: lo %d > hi %d"):format(lo, hi))
  end
  return lo, hi
end

local function build(fname, opts)
  check.table(fname, 1, opts)
  check.known(fname, 1, opts, OPTIONS)
  local lo, hi = check_range(fname, opts.range)
  if lo < 1024 and not opts.allow_privileged then
    check.argerror(fname, 1, ("range %d-%d includes ports below 1024 (set allow_privileged = true)")
      :format(lo, hi))
  end
  local strategy = check.oneof(fname, 1, opts.strategy or "sequential", STRATEGIES, "strategy")
  local node_id = opts.node_id
  if node_id ~= nil and (type(node_id) ~= "string" or node_id == "") then
    check.argerror(fname, 1, "node_id: non-empty string expected")
  end
  if strategy == "hash" and not node_id then
    check.argerror(fname, 1, "strategy 'hash' needs node_id")
  end
  return core.allocator_new(lo, hi, strategy, node_id, opts.allow_privileged and true or nil)
end

--- Creates a pool.
-- @tparam table opts `range = {lo, hi}` (1-65535; below 1024 needs
--   `allow_privileged = true`), `strategy` ("sequential" by default,
--   "random" or "hash"), `node_id` (a string; required by "hash").
-- @return an allocator
-- @raise on a bad or unknown option, naming it
function M.new(opts)
  return build("new", opts)
end

--- Is v an allocator?
M.is_allocator = core.is_allocator

-- `pool:snapshot()` (C) gives a plain, JSON-safe table: version, range,
-- strategy, node_id, allow_privileged, cursor, and the allocated ports as a
-- text of runs ("PMB1 lo-hi a-b,c").

--- Rebuilds a pool from `a:snapshot()`.
-- @raise "bad argument #1 to 'restore' (corrupt snapshot: ...)" on anything
-- that a snapshot cannot hold.
function M.restore(snap)
  check.table("restore", 1, snap)
  for k in pairs(snap) do
    if not SNAPSHOT[k] then
      check.argerror("restore", 1, "corrupt snapshot: unknown field " .. tostring(k))
    end
  end
  if snap.version ~= 1 then check.argerror("restore", 1, "corrupt snapshot: version") end
  if type(snap.bitmap) ~= "string" then check.argerror("restore", 1, "corrupt snapshot: bitmap") end
  local a = build("restore", {range = snap.range, strategy = snap.strategy,
                              node_id = snap.node_id, allow_privileged = snap.allow_privileged})
  if not pcall(core.allocator_load, a, snap.bitmap) then
    check.argerror("restore", 1, "corrupt snapshot: bitmap")
  end
  local lo, hi = a:range()
  local cursor = math.tointeger(snap.cursor)
  if not cursor or cursor < lo or cursor > hi then
    check.argerror("restore", 1, "corrupt snapshot: cursor")
  end
  core.allocator_cursor(a, cursor)
  return a
end

return M
