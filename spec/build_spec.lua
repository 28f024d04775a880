local helpers = require "helpers"

local function lines(cmd)
  local p = io.popen(cmd)
  local t = {}
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

-- The rockspec as LuaRocks reads it: a Lua chunk that sets globals.
local function load_rockspec(path)
  local env = {}
  assert(load(read(path), "@" .. path, "t", env))()
  return env
end

local function set(list)
  local t = {}
  for _, v in ipairs(list) do t[v] = true end
  return t
end

-- The module require finds at a file under lua/: portman/x/init.lua is portman.x.
local function module_name(file)
  return (file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", "."))
end

-- The Lua files under DIR/lua/portman, in every subdirectory, as {module = path}.
local function lua_modules(dir)
  local t = {}
  for _, f in ipairs(lines("cd " .. dir .. " && find lua/portman -name '*.lua'")) do
    t[module_name(f)] = f
  end
  return t
end

-- The Lua modules a rockspec lists, as {module = path}.
local function listed_modules(rockspec)
  local t = {}
  for name, m in pairs(rockspec.build.modules) do
    if type(m) == "string" and m:match("%.lua$") then t[name] = m end
  end
  return t
end

describe("the build", function()
  local rockspec_path = helpers.root .. "/rockspec/portman-scm-1.rockspec"

  it("lists every C source in the rockspec", function()
    local rockspec = load_rockspec(rockspec_path)
    assert.same(set(lines("cd " .. helpers.root .. " && ls csrc/*.c")),
      set(rockspec.build.modules["portman.core"].sources))
  end)

  it("names a module after its file, init.lua after its directory", function()
    assert.equal("portman", module_name("lua/portman/init.lua"))
    assert.equal("portman.cli", module_name("lua/portman/cli.lua"))
    assert.equal("portman.cmd", module_name("lua/portman/cmd/init.lua"))
    assert.equal("portman.resolver.cache", module_name("lua/portman/resolver/cache.lua"))
  end)

  it("lists every Lua module under lua/portman, in subdirectories too, in the rockspec", function()
    local modules = lua_modules(helpers.root)
    assert.truthy(modules["portman"] and modules["portman.cmd"])
    assert.same(modules, listed_modules(load_rockspec(rockspec_path)),
      "the rockspec's modules are not lua/portman's files: run make rockspec")
    assert.is_true(os.execute(helpers.root .. "/scripts/rockspec-modules --check"))
  end)

  it("make rockspec writes a module in a subdirectory, and an init.lua, under their names", function()
    local dir = lines("mktemp -d")[1]
    os.execute(("mkdir -p %s/scripts %s/rockspec && cp %s/scripts/rockspec-modules %s/scripts/ && cp %s %s/rockspec/ "
      .. "&& cp -r %s/lua %s/ && mkdir -p %s/lua/portman/cmd && touch %s/lua/portman/cmd/init.lua %s/lua/portman/cmd/x.lua")
      :format(dir, dir, helpers.root, dir, rockspec_path, dir, helpers.root, dir, dir, dir, dir))
    local ok = os.execute(dir .. "/scripts/rockspec-modules >/dev/null")
    local listed = listed_modules(load_rockspec(dir .. "/rockspec/portman-scm-1.rockspec"))
    local expected = lua_modules(dir)
    os.execute("rm -rf " .. dir)
    assert.is_true(ok)
    assert.equal("lua/portman/cmd/init.lua", listed["portman.cmd"])
    assert.equal("lua/portman/cmd/x.lua", listed["portman.cmd.x"])
    assert.same(expected, listed)
  end)

  it("includes csrc/visibility.h last in every C file, so that it hides all but the entry point", function()
    for _, c in ipairs(lines("cd " .. helpers.root .. " && ls csrc/*.c")) do
      local last
      for l in read(helpers.root .. "/" .. c):gmatch("[^\n]*") do
        last = l:match('^%s*#%s*include%s*(%S+)') or last
      end
      assert.equal('"visibility.h"', last, c .. " must include \"visibility.h\" after its other includes")
    end
  end)

  it("exports only luaopen_portman_core from the module", function()
    local so = (os.getenv("PORTMAN_BUILD") or helpers.root .. "/build") .. "/portman/core.so"
    assert.same({"luaopen_portman_core"}, lines("nm -D --defined-only " .. so .. " | awk '{print $NF}'"))
  end)

  it("installs under PREFIX and DESTDIR, every Lua file in lua/portman, and the installed command runs", function()
    local dest = lines("mktemp -d")[1]
    local ok = os.execute(("make -s -C %s install DESTDIR=%s PREFIX=/opt/pm >/dev/null"):format(helpers.root, dest))
    assert.is_true(ok)
    local luadir = dest .. "/opt/pm/share/lua/5.4"
    local installed = lines("cd " .. luadir .. " && find portman -name '*.lua' | sort")
    local checkout = lines("cd " .. helpers.root .. "/lua && find portman -name '*.lua' | sort")
    local out = lines("cd / && " .. dest .. "/opt/pm/bin/portman alloc --range 20000-20009 --count 2")
    local man = lines(("MANWIDTH=80 man -l %s/opt/pm/share/man/man1/portman.1 2>/dev/null | head -n 4"):format(dest))
    local completion = lines(("bash -c 'source %s/opt/pm/share/bash-completion/completions/portman && complete -p portman'")
      :format(dest))
    os.execute("rm -rf " .. dest)
    assert.same(checkout, installed)
    assert.same({"20000", "20001"}, out)
    assert.matches("^NAME", man[3] or man[2])
    assert.same({"complete -F _portman portman"}, completion)
  end)

  it("runs the checkout's command through a symlink to it from anywhere", function()
    local dir, root = lines("mktemp -d")[1], lines("cd " .. helpers.root .. " && pwd")[1]
    os.execute(("mkdir %s/a %s/b && ln -s %s/bin/portman %s/a/portman && ln -s ../a/portman %s/b/pm")
      :format(dir, dir, root, dir, dir))
    local out = lines(("cd / && %s %s/b/pm alloc --range 20000-20009 --count 2"):format(helpers.lua, dir))
    os.execute("rm -rf " .. dir)
    assert.same({"20000", "20001"}, out)
  end)
end)
