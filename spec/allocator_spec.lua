local helpers = require "helpers"
local cjson = require "cjson"

describe("portman.allocator", function()
  local allocator

  setup(function()
    local before = helpers.globals()
    allocator = require "portman.allocator"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)

  local function pool(lo, hi, strategy, extra)
    local opts = {range = {lo, hi}, strategy = strategy}
    for k, v in pairs(extra or {}) do opts[k] = v end
    return allocator.new(opts)
  end

  describe("the object", function()
    it("has exactly the documented methods, none of them internal", function()
      local a = pool(20000, 20009)
      local names = {}
      for name in pairs(getmetatable(a).__index) do
        assert.is_nil(name:match("^_"), "internal method " .. name)
        names[#names + 1] = name
      end
      table.sort(names)
      assert.same({"allocate", "allocated", "free", "is_allocated", "ports", "range", "release", "reserve",
                   "size", "snapshot", "strategy", "utilization"}, names)
      assert.is_nil(require("portman.core").allocator_methods)
    end)

    it("is told apart from other values", function()
      assert.is_true(allocator.is_allocator(pool(20000, 20009)))
      assert.is_false(allocator.is_allocator({}))
      assert.is_false(allocator.is_allocator(io.stdout))
      assert.is_false(allocator.is_allocator(nil))
    end)
  end)

  describe("new", function()
    it("makes a sequential pool by default", function()
      local a = pool(20000, 20009)
      assert.equal("sequential", a:strategy())
      assert.same({20000, 20009}, {a:range()})
      assert.equal(10, a:size())
      assert.equal(10, a:free())
      assert.equal(0, a:allocated())
      assert.equal(0, a:utilization())
      assert.equal("portman.allocator 20000-20009 sequential (0 of 10 allocated)", tostring(a))
    end)

    local bad = {
      {"not a table", 5, "table expected, got number"},
      {"an unknown option", {range = {20000, 20010}, stratgy = "random"}, "unknown option 'stratgy'"},
      {"no range", {}, "range: {lo, hi} expected, got nil"},
      {"lo > hi", {range = {30000, 20000}}, "range: lo 30000 > hi 20000"},
      {"port 0", {range = {0, 100}, allow_privileged = true}, "range[1]: port out of range 1-65535"},
      {"port 65536", {range = {20000, 65536}}, "range[2]: port out of range 1-65535"},
      {"a fractional port", {range = {20000.5, 20010}}, "range[1]: integer port expected, got 20000.5"},
      {"a string port", {range = {"20000", 20010}}, "range[1]: integer port expected, got string"},
      {"privileged ports", {range = {80, 2000}}, "range 80-2000 includes ports below 1024 (set allow_privileged = true)"},
      {"an unknown strategy", {range = {20000, 20010}, strategy = "best"},
       "unknown strategy 'best' (sequential, random, hash)"},
      {"hash without node_id", {range = {20000, 20010}, strategy = "hash"}, "strategy 'hash' needs node_id"},
      {"an empty node_id", {range = {20000, 20010}, strategy = "hash", node_id = ""},
       "node_id: non-empty string expected"},
    }
    for _, case in ipairs(bad) do
      it("raises on " .. case[1], function()
        local err = helpers.raises(function() allocator.new(case[2]) end)
        assert.matches("allocator_spec.lua:%d+: bad argument #1 to 'new' %(" .. case[3]:gsub("%p", "%%%0") .. "%)$", err)
      end)
    end

    it("accepts privileged ports when asked and integral floats", function()
      local a = allocator.new{range = {80.0, 81}, allow_privileged = true}
      assert.equal(80, a:allocate())
      assert.equal(math.type(a:allocate()), "integer")
    end)
  end)

  describe("sequential", function()
    it("hands out ports in order and not a just-released one", function()
      local a = pool(20000, 20004)
      assert.equal(20000, a:allocate())
      assert.equal(20001, a:allocate())
      assert.is_true(a:release(20000))
      assert.equal(20002, a:allocate())
    end)

    it("wraps around to the free ports below the cursor", function()
      local a = pool(20000, 20004)
      for p = 20000, 20004 do assert.equal(p, a:allocate()) end
      a:release(20001)
      a:release(20003)
      assert.equal(20001, a:allocate())
      assert.equal(20003, a:allocate())
    end)

    it("returns exhausted on a full pool", function()
      local a = pool(20000, 20002)
      for _ = 1, 3 do assert.is_number(a:allocate()) end
      local p, err, code = a:allocate()
      assert.is_nil(p)
      assert.equal("exhausted: no free port in 20000-20002", err)
      assert.equal("exhausted", code)
      assert.equal(100, a:utilization())
    end)

    it("finds the last free ports of a 99.9% full 64K pool", function()
      local a = pool(1, 65535, "sequential", {allow_privileged = true})
      local keep = {[7] = true, [4096] = true, [40000] = true, [65535] = true}
      for p = 1, 65535 do
        if not keep[p] then assert.is_true(a:reserve(p)) end
      end
      assert.equal(4, a:free())
      local got = {}
      for i = 1, 4 do got[i] = a:allocate() end
      table.sort(got)
      assert.same({7, 4096, 40000, 65535}, got)
      assert.equal("exhausted", select(3, a:allocate()))
    end)
  end)

  describe("reserve, release, is_allocated", function()
    it("reserves a port that allocate then skips", function()
      local a = pool(20000, 20002)
      assert.is_true(a:reserve(20000))
      assert.is_true(a:is_allocated(20000))
      assert.is_false(a:is_allocated(20001))
      assert.equal(20001, a:allocate())
    end)

    it("reports a conflict on an allocated port", function()
      local a = pool(20000, 20002)
      a:reserve(20001)
      assert.same({nil, "conflict: port 20001 is already allocated", "conflict"}, {a:reserve(20001)})
    end)

    it("returns false when releasing a free port, changing nothing", function()
      local a = pool(20000, 20002)
      a:allocate()
      assert.is_false(a:release(20002))
      assert.equal(1, a:allocated())
      assert.equal(2, a:free())
    end)

    it("raises on ports outside the pool or not integers", function()
      local a = pool(20000, 20002)
      assert.matches("bad argument #1 to 'reserve' %(port 19999 outside the pool 20000%-20002%)",
        helpers.raises(function() a:reserve(19999) end))
      assert.matches("bad argument #1 to 'release' %(port out of range 1%-65535%)",
        helpers.raises(function() a:release(70000) end))
      assert.matches("bad argument #1 to 'is_allocated' %(number has no integer representation%)",
        helpers.raises(function() a:is_allocated(20000.5) end))
      assert.matches("bad argument #1 to 'reserve' %(number expected, got no value%)",
        helpers.raises(function() a:reserve() end))
      assert.matches("bad argument #1 to 'allocate' %(portman.allocator expected, got table%)",
        helpers.raises(function() a.allocate({}) end))
    end)
  end)

  describe("counts and iteration", function()
    it("counts and iterates the allocated ports in order", function()
      local a = pool(20000, 20199)
      for _, p in ipairs({20150, 20003, 20064, 20199, 20000}) do a:reserve(p) end
      local seen = {}
      for p in a:ports() do seen[#seen + 1] = p end
      assert.same({20000, 20003, 20064, 20150, 20199}, seen)
      assert.equal(5, a:allocated())
      assert.equal(5, #a)
      assert.equal(195, a:free())
      assert.near(2.5, a:utilization(), 1e-9)
    end)

    it("agrees with a plain table model under random operations", function()
      -- ranges that cross word and summary boundaries, and the whole port space
      local cases = {}
      for _, r in ipairs({{20000, 20000}, {20000, 20063}, {20000, 20064}, {1000, 5095}, {1, 65535}}) do
        cases[#cases + 1] = {r[1], r[2], "sequential"}
        cases[#cases + 1] = {r[1], r[2], "random"}
      end
      for _, r in ipairs(cases) do
        local a = pool(r[1], r[2], r[3], {allow_privileged = true})
        local model, count = {}, 0
        local size = r[2] - r[1] + 1
        for _ = 1, 20000 do
          local p = r[1] + math.random(0, size - 1)
          local op = math.random(3)
          if op == 1 then
            local got = a:reserve(p)
            assert.equal(not model[p], got == true)
            if not model[p] then model[p], count = true, count + 1 end
          elseif op == 2 then
            assert.equal(model[p] == true, a:release(p))
            if model[p] then model[p], count = nil, count - 1 end
          else
            local got = a:allocate()
            if count == size then
              assert.is_nil(got)
            else
              assert.is_nil(model[got])
              model[got], count = true, count + 1
            end
          end
          assert.equal(count, a:allocated())
        end
        for p in a:ports() do assert.is_true(model[p]) end
      end
    end)
  end)

  describe("hash", function()
    it("uses FNV-1a 32 (its published test values)", function()
      assert.equal(0x811c9dc5, allocator.fnv1a32(""))
      assert.equal(0xe40c292c, allocator.fnv1a32("a"))
      assert.equal(0xbf9cf968, allocator.fnv1a32("foobar"))
    end)

    it("starts at lo + fnv1a32(node_id) % size, then goes on sequentially", function()
      local a = pool(20000, 20999, "hash", {node_id = "db-7"})
      local start = 20000 + allocator.fnv1a32("db-7") % 1000
      assert.equal(start, allocator.hash_start("db-7", 20000, 20999))
      assert.equal(start, a:allocate())
      assert.equal(start + 1, a:allocate())
    end)

    it("gives the same start in two separate processes", function()
      local code = [[local a = require("portman.allocator").new{range = {30000, 39999},
        strategy = "hash", node_id = "node-42"} print(a:allocate())]]
      local cmd = ("cd %s && LUA_PATH='lua/?.lua;;' LUA_CPATH='%s/?.so;;' %s -e '%s'")
        :format(helpers.root, os.getenv("PORTMAN_BUILD") or "build", helpers.lua, code)
      local function first_port()
        local p = io.popen(cmd)
        local out = p:read("a")
        p:close()
        return math.tointeger(tonumber(out))
      end
      local first, second = first_port(), first_port()
      assert.is_not_nil(first)
      assert.equal(first, second)
      assert.equal(30000 + allocator.fnv1a32("node-42") % 10000, first)
    end)

    it("differs between node ids", function()
      assert.not_equal(allocator.hash_start("node-1", 20000, 29999), allocator.hash_start("node-2", 20000, 29999))
    end)
  end)

  describe("random", function()
    -- chi-square critical value for 39 degrees of freedom at p = 1e-6
    -- (Wilson-Hilferty): a uniform picker exceeds it once in a million runs.
    local CRITICAL_39 = 96.6

    local function chi_square(counts, free, draws)
      local expected, x2 = draws / #free, 0
      for _, p in ipairs(free) do x2 = x2 + (counts[p] - expected) ^ 2 / expected end
      return x2
    end

    -- A pool of 100 ports with 40 taken in one run and 20 scattered, 40 free: a picker
    -- that takes "the next free port after a random one" favours 20040.
    local function fragmented(strategy)
      local a = pool(20000, 20099, strategy)
      for p = 20000, 20039 do a:reserve(p) end
      for p = 20041, 20080, 2 do a:reserve(p) end
      local free = {}
      for p = 20000, 20099 do if not a:is_allocated(p) then free[#free + 1] = p end end
      return a, free
    end

    it("picks every free port with equal chance (chi-square)", function()
      local a, free = fragmented("random")
      assert.equal(40, #free)
      local counts, draws = {}, 40000
      for _, p in ipairs(free) do counts[p] = 0 end
      for _ = 1, draws do
        local p = a:allocate()
        assert.is_not_nil(counts[p], "picked an allocated port")
        counts[p] = counts[p] + 1
        a:release(p)
      end
      assert.is_true(chi_square(counts, free, draws) < CRITICAL_39)
    end)

    it("the same test rejects a biased picker", function()
      local a, free = fragmented("sequential")
      local counts, draws = {}, 40000
      for _, p in ipairs(free) do counts[p] = 0 end
      for _ = 1, draws do
        -- biased: the first free port at or after a uniformly random port
        local p = 20000 + math.random(0, 99)
        while a:is_allocated(p) do p = p == 20099 and 20000 or p + 1 end
        counts[p] = counts[p] + 1
      end
      assert.is_true(chi_square(counts, free, draws) > CRITICAL_39)
    end)

    it("covers the whole range before it is exhausted", function()
      local a = pool(40000, 40999, "random")
      local seen = {}
      for _ = 1, 1000 do
        local p = assert(a:allocate())
        assert.is_nil(seen[p])
        seen[p] = true
      end
      assert.equal("exhausted", select(3, a:allocate()))
    end)
  end)

  describe("snapshot and restore", function()
    it("round-trips through JSON", function()
      local a = pool(20000, 20999, "hash", {node_id = "db-7"})
      for _ = 1, 10 do a:allocate() end
      a:reserve(20999)
      a:release(a:allocate())
      local copy = allocator.restore(cjson.decode(cjson.encode(a:snapshot())))
      assert.equal(a:allocated(), copy:allocated())
      assert.equal("hash", copy:strategy())
      local x, y = {}, {}
      for p in a:ports() do x[#x + 1] = p end
      for p in copy:ports() do y[#y + 1] = p end
      assert.same(x, y)
      assert.equal(a:allocate(), copy:allocate()) -- the cursor came along
      assert.same(copy:snapshot().node_id, "db-7")
    end)

    it("keeps node_id and allow_privileged, and leaves out what was not given", function()
      local snap = pool(1000, 1009, "sequential", {allow_privileged = true, node_id = "n1"}):snapshot()
      assert.same({version = 1, range = {1000, 1009}, strategy = "sequential", node_id = "n1",
                   allow_privileged = true, cursor = 1000, bitmap = "PMB1 1000-1009"}, snap)
      assert.same({version = 1, range = {20000, 20009}, strategy = "random", cursor = 20000,
                   bitmap = "PMB1 20000-20009"}, pool(20000, 20009, "random"):snapshot())
      assert.is_true(allocator.restore(snap):snapshot().allow_privileged)
    end)

    it("keeps an empty pool empty", function()
      local snap = pool(20000, 20009):snapshot()
      assert.equal("PMB1 20000-20009", snap.bitmap)
      assert.equal(0, allocator.restore(snap):allocated())
    end)

    local function corrupt(change)
      local a = pool(20000, 20009)
      a:reserve(20003)
      local snap = a:snapshot()
      change(snap)
      return helpers.raises(allocator.restore, snap)
    end

    local cases = {
      {"another range in the bitmap", function(s) s.bitmap = "PMB1 20000-20010 20003" end, "bitmap"},
      {"a port outside the range", function(s) s.bitmap = "PMB1 20000-20009 20010" end, "bitmap"},
      {"overlapping runs", function(s) s.bitmap = "PMB1 20000-20009 20001-20004,20003" end, "bitmap"},
      {"a descending run", function(s) s.bitmap = "PMB1 20000-20009 20004-20001" end, "bitmap"},
      {"trailing garbage", function(s) s.bitmap = "PMB1 20000-20009 20003," end, "bitmap"},
      {"a leading zero", function(s) s.bitmap = "PMB1 20000-20009 020003" end, "bitmap"},
      {"no magic", function(s) s.bitmap = "20000-20009 20003" end, "bitmap"},
      {"a missing bitmap", function(s) s.bitmap = nil end, "bitmap"},
      {"a cursor outside the range", function(s) s.cursor = 30000 end, "cursor"},
      {"an unknown version", function(s) s.version = 2 end, "version"},
      {"an unknown field", function(s) s.extra = 1 end, "unknown field extra"},
    }
    for _, case in ipairs(cases) do
      it("raises on " .. case[1], function()
        assert.matches("bad argument #1 to 'restore' %(corrupt snapshot: " .. case[3] .. "%)",
          corrupt(case[2]))
      end)
    end

    it("raises on a bad range in the snapshot", function()
      assert.matches("bad argument #1 to 'restore' %(range: lo 5 > hi 4%)",
        corrupt(function(s) s.range = {5, 4} end))
    end)
  end)
end)
