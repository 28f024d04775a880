--- Selection policies for portman.resolver: pickers (round_robin,
-- weighted, priority, srv), RFC 2782's SRV order and RFC 8305's
-- interleaving of address families. portman.resolver re-exports `picker`,
-- `srv_order` and `interleave`.
local check = require "portman.check"

local M = {}

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
