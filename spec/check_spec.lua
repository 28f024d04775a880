-- portman.check: the argument checks every module raises through, in
-- Lua's own words, blaming the code that called portman.
local helpers = require "helpers"

-- "file:line: " of the caller's line, as error() writes it.
local function here()
  local info = debug.getinfo(2, "Sl")
  return info.short_src .. ":" .. info.currentline .. ": "
end

-- A function whose source is named as a module of portman's (name is
-- where it claims to live): check's blame passes over such frames. No
-- tail call: its frame must be on the stack when the check raises.
local function module_function(name, check)
  return assert(load([[
    local check = ...
    return function(v)
      local t = check.table("fake", 1, v)
      return t
    end
  ]], "@" .. name))(check)
end

describe("portman.check", function()
  local check

  setup(function()
    local before = helpers.globals()
    check = require "portman.check"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], "new global " .. k) end
    assert.equal(check, require("portman").check)
  end)

  describe("argerror", function()
    it("raises Lua's bad-argument words at the line that called it", function()
      local where, err = here(), helpers.raises(function() check.argerror("open", 2, "port: nope") end)
      assert.equal(where .. "bad argument #2 to 'open' (port: nope)", err)
    end)

    it("blames the code outside portman, past every frame of portman's own", function()
      local fake = module_function("lua/portman/fake.lua", check)
      local where, err = here(), helpers.raises(function() fake(5) end)
      assert.equal(where .. "bad argument #1 to 'fake' (table expected, got number)", err)
      -- an installed tree looks the same
      fake = module_function("/usr/local/share/lua/5.4/portman/fake.lua", check)
      where, err = here(), helpers.raises(function() fake(5) end)
      assert.equal(where .. "bad argument #1 to 'fake' (table expected, got number)", err)
      -- and a real module's check blames this spec
      local registry = require "portman.registry"
      where, err = here(), helpers.raises(function() registry.new(7) end)
      assert.equal(where .. "bad argument #1 to 'new' (table expected, got number)", err)
    end)

    it("does not take a file named like a module outside a portman folder for portman's", function()
      local foreign = module_function("lua/notportman/fake.lua", check)
      local err = helpers.raises(function() foreign(5) end)
      -- the foreign function made the bad call: it is blamed
      assert.equal("lua/notportman/fake.lua:3: bad argument #1 to 'fake' (table expected, got number)", err)
    end)

    -- The command line lives in lua/portman/cmd/ (one module a command): a
    -- module in a subfolder of portman's is portman's own too.
    it("passes over modules in portman's subfolders (lua/portman/cmd/...)", function()
      local fake = module_function("lua/portman/cmd/fake.lua", check)
      local where, err = here(), helpers.raises(function() fake(5) end)
      assert.equal(where .. "bad argument #1 to 'fake' (table expected, got number)", err)
    end)
  end)

  describe("table", function()
    it("returns a table and names the type of anything else", function()
      local t = {}
      assert.equal(t, check.table("f", 1, t))
      for _, case in ipairs{{nil, "nil"}, {"x", "string"}, {1, "number"}, {true, "boolean"},
                            {print, "function"}, {io.stdout, "userdata"}, {coroutine.create(print), "thread"}} do
        assert.equal(("bad argument #3 to 'f' (table expected, got %s)"):format(case[2]),
          helpers.raises(check.table, "f", 3, case[1]))
      end
    end)
  end)

  describe("known", function()
    local allowed = {a = true, b = true}

    it("accepts the allowed keys, any subset, and an empty table", function()
      assert.is_nil(check.known("f", 1, {a = 1, b = false}, allowed))
      assert.is_nil(check.known("f", 1, {}, allowed))
    end)

    it("names the unknown key, with the nested table's prefix", function()
      assert.equal("bad argument #1 to 'f' (unknown option 'c')", helpers.raises(check.known, "f", 1, {a = 1, c = 2}, allowed))
      assert.equal("bad argument #2 to 'add_service' (unknown option 'map.bogus')",
        helpers.raises(check.known, "add_service", 2, {bogus = 1}, allowed, "map."))
    end)

    it("names keys that are no strings, and hostile ones, as text", function()
      assert.equal("bad argument #1 to 'f' (unknown option '1')", helpers.raises(check.known, "f", 1, {"x"}, allowed))
      assert.equal("bad argument #1 to 'f' (unknown option 'true')", helpers.raises(check.known, "f", 1, {[true] = 1}, allowed))
      local key = "a' (x)\n\0"
      assert.equal("bad argument #1 to 'f' (unknown option '" .. key .. "')",
        helpers.raises(check.known, "f", 1, {[key] = 1}, allowed))
    end)
  end)

  describe("port", function()
    it("returns an integer port, an integral float made an integer", function()
      for _, p in ipairs{1, 80, 65535} do assert.equal(p, check.port("f", 1, p, "port")) end
      local p = check.port("f", 1, 443.0, "port")
      assert.equal(443, p)
      assert.equal("integer", math.type(p))
    end)

    it("refuses what is no integer, naming the value", function()
      local function msg(v) return helpers.raises(check.port, "f", 2, v, "ports[3]") end
      assert.equal("bad argument #2 to 'f' (ports[3]: integer port expected, got 1.5)", msg(1.5))
      assert.equal("bad argument #2 to 'f' (ports[3]: integer port expected, got inf)", msg(math.huge))
      assert.matches("^bad argument #2 to 'f' %(ports%[3%]: integer port expected, got %-?nan%)$", msg(0 / 0))
      assert.equal("bad argument #2 to 'f' (ports[3]: integer port expected, got string)", msg("80"))
      assert.equal("bad argument #2 to 'f' (ports[3]: integer port expected, got nil)", msg(nil))
      assert.equal("bad argument #2 to 'f' (ports[3]: integer port expected, got table)", msg({80}))
    end)

    it("refuses integers out of 1-65535", function()
      for _, v in ipairs{0, -1, 65536, 2 ^ 53, math.maxinteger, math.mininteger, -0.0} do
        assert.equal("bad argument #1 to 'f' (port: port out of range 1-65535)",
          helpers.raises(check.port, "f", 1, v, "port"), tostring(v))
      end
    end)
  end)

  describe("optional", function()
    it("returns an absent or fitting value, and names the key of any other", function()
      assert.is_nil(check.optional("f", 1, {}, "clock", "function"))
      assert.equal(print, check.optional("f", 1, {clock = print}, "clock", "function"))
      assert.equal("bad argument #2 to 'f' (clock: function expected, got number)",
        helpers.raises(check.optional, "f", 2, {clock = 5}, "clock", "function"))
    end)
  end)

  describe("oneof", function()
    it("returns a listed value", function()
      assert.equal("udp", check.oneof("f", 1, "udp", {"tcp", "udp"}, "proto"))
    end)

    it("refuses anything else, listing the choices", function()
      assert.equal("bad argument #1 to 'map' (unknown proto 'sctp' (tcp, udp))",
        helpers.raises(check.oneof, "map", 1, "sctp", {"tcp", "udp"}, "proto"))
      assert.equal("bad argument #1 to 'map' (unknown proto 'nil' (tcp, udp))",
        helpers.raises(check.oneof, "map", 1, nil, {"tcp", "udp"}, "proto"))
      -- no near miss: case and type count
      assert.has_error(function() check.oneof("f", 1, "TCP", {"tcp"}, "proto") end)
      assert.equal("bad argument #1 to 'f' (unknown n '1' (1))", helpers.raises(check.oneof, "f", 1, 1, {"1"}, "n"))
      assert.equal("bad argument #1 to 'f' (unknown kind 'x' ())", helpers.raises(check.oneof, "f", 1, "x", {}, "kind"))
    end)
  end)
end)
