-- Allocator benchmarks from Lua: allocate+release pairs a second, and one
-- allocation in a 99.9%-full 64K pool, beside a naive pure-Lua table
-- allocator (the baseline) in the same run.
local allocator = require "portman.allocator"

local clock = os.clock

-- The baseline: a table of used ports and a linear search from a cursor.
local Naive = {}
Naive.__index = Naive
function Naive.new(lo, hi) return setmetatable({lo = lo, hi = hi, cursor = lo, used = {}}, Naive) end
function Naive:allocate()
  local lo, hi, used = self.lo, self.hi, self.used
  local p = self.cursor
  for _ = lo, hi do
    if not used[p] then
      used[p] = true
      self.cursor = p < hi and p + 1 or lo
      return p
    end
    p = p < hi and p + 1 or lo
  end
  return nil, "exhausted"
end
function Naive:reserve(p) if self.used[p] then return nil end self.used[p] = true return true end
function Naive:release(p) local was = self.used[p] self.used[p] = nil return was == true end

local function pairs_per_second(a, n)
  local t = clock()
  for _ = 1, n do
    a:release(a:allocate())
  end
  return n / (clock() - t)
end

local function half_full(a)
  for p = 1024, 65535, 2 do a:reserve(p) end
  return a
end

print("allocate+release from Lua, pool 1024-65535 half full:")
local n = 5000000
for _, s in ipairs({"sequential", "hash", "random"}) do
  local a = half_full(allocator.new{range = {1024, 65535}, strategy = s, node_id = "bench"})
  print(("  %-30s %6.1f M pairs/s"):format("portman " .. s, pairs_per_second(a, n) / 1e6))
end
print(("  %-30s %6.1f M pairs/s"):format("baseline: naive Lua table",
  pairs_per_second(half_full(Naive.new(1024, 65535)), n) / 1e6))

-- 65 free ports of 65535, scattered the same way for both.
local function nearly_full(a)
  math.randomseed(7)
  local free = {}
  while #free < 65 do
    local p = math.random(1, 65535)
    if not free[p] then free[p] = true; free[#free + 1] = p end
  end
  for p = 1, 65535 do if not free[p] then a:reserve(p) end end
  return a
end

print("one allocation (+release) in a 99.9%-full 64K pool, from Lua:")
for _, s in ipairs({"sequential", "random"}) do
  local a = nearly_full(allocator.new{range = {1, 65535}, strategy = s, allow_privileged = true})
  print(("  %-30s %8.1f ns"):format("portman " .. s, 1e9 / pairs_per_second(a, 1000000)))
end
print(("  %-30s %8.1f ns"):format("baseline: naive Lua table",
  1e9 / pairs_per_second(nearly_full(Naive.new(1, 65535)), 5000)))
