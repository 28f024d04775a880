local helpers = require "helpers"

local function lines(cmd)
  local p = io.popen(cmd)
  local t = {}
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

describe("the build", function()
  it("lists every C source and Lua module in the rockspec", function()
    local f = assert(io.open(helpers.root .. "/rockspec/portman-scm-1.rockspec"))
    local rockspec = f:read("a")
    f:close()
    for _, c in ipairs(lines("cd " .. helpers.root .. " && ls csrc/*.c")) do
      assert.truthy(rockspec:find('"' .. c .. '"', 1, true), c .. " missing from the rockspec")
    end
    for _, l in ipairs(lines("cd " .. helpers.root .. " && ls lua/portman/*.lua")) do
      assert.truthy(rockspec:find('"' .. l .. '"', 1, true), l .. " missing from the rockspec")
    end
  end)

  it("exports only luaopen_portman_core from the module", function()
    local so = (os.getenv("PORTMAN_BUILD") or helpers.root .. "/build") .. "/portman/core.so"
    local exported = lines("nm -D --defined-only " .. so .. " | awk '$2 == \"T\" {print $3}'")
    assert.same({"luaopen_portman_core"}, exported)
  end)

  it("installs under PREFIX and DESTDIR, and the installed command runs", function()
    local dest = lines("mktemp -d")[1]
    local ok = os.execute(("make -s -C %s install DESTDIR=%s PREFIX=/opt/pm >/dev/null"):format(helpers.root, dest))
    assert.is_true(ok)
    local out = lines(dest .. "/opt/pm/bin/portman alloc --range 20000-20009 --count 2")
    os.execute("rm -rf " .. dest)
    assert.same({"20000", "20001"}, out)
  end)
end)
