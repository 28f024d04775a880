-- The layers of lua/portman (docs/design.md, "Layers"), read from the
-- source: domain modules never require the command line, the daemon or
-- the admin socket, and no two modules require each other in a circle.
local helpers = require "helpers"

local ROOT = helpers.root .. "/lua"

local function lua_files(dir, out)
  out = out or {}
  local p = io.popen(("find %s -name '*.lua' | sort"):format(dir))
  for path in p:lines() do out[#out + 1] = path end
  p:close()
  return out
end

local function module_of(path)
  local m = path:sub(#ROOT + 2, -5):gsub("/", ".")
  return (m:gsub("%.init$", ""))
end

-- Every module a file requires with a literal name (require "x",
-- require("x"), require 'x'), in code rather than comments.
local function requires_of(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  local found = {}
  for line in text:gmatch("[^\n]+") do
    local code = line:gsub("%-%-.*$", "")
    for name in code:gmatch("require%s*%(?%s*[\"']([%w_.]+)[\"']") do
      if name:match("^portman") then found[name] = true end
    end
  end
  return found
end

local function graph()
  local g = {}
  for _, path in ipairs(lua_files(ROOT .. "/portman")) do g[module_of(path)] = requires_of(path) end
  return g
end

-- The command line, the daemon and the admin socket: the layer on top.
local function is_front(m)
  return m == "portman.cmd" or m:match("^portman%.cmd%.") ~= nil or m == "portman.daemon" or m == "portman.admin"
end

-- A cycle through the modules of g, as a list of names, or nil.
local function find_cycle(g)
  local state, stack = {}, {}
  local function visit(m)
    state[m] = "open"
    stack[#stack + 1] = m
    local names = {}
    for r in pairs(g[m] or {}) do names[#names + 1] = r end
    table.sort(names)
    for _, r in ipairs(names) do
      if state[r] == "open" then
        local i = #stack
        while stack[i] ~= r do i = i - 1 end
        local cycle = table.move(stack, i, #stack, 1, {})
        cycle[#cycle + 1] = r
        return cycle
      elseif state[r] == nil and g[r] then
        local c = visit(r)
        if c then return c end
      end
    end
    stack[#stack] = nil
    state[m] = "done"
  end
  local names = {}
  for m in pairs(g) do names[#names + 1] = m end
  table.sort(names)
  for _, m in ipairs(names) do
    if not state[m] then
      local c = visit(m)
      if c then return c end
    end
  end
  return nil
end

-- The front modules a domain module requires: "a requires b" lines.
local function upward(g)
  local bad = {}
  for m, reqs in pairs(g) do
    if not is_front(m) then
      for r in pairs(reqs) do
        if is_front(r) then bad[#bad + 1] = m .. " requires " .. r end
      end
    end
  end
  table.sort(bad)
  return bad
end

describe("the layers of lua/portman", function()
  it("reads the graph from the source", function()
    local g = graph()
    assert.truthy(g["portman.cmd"]["portman.json"])
    assert.truthy(g["portman.cmd.probe"]["portman.cmd"])
    assert.truthy(g["portman.daemon"]["portman.manager"])
  end)

  it("keeps domain modules below the command line, the daemon and the admin socket", function()
    assert.same({}, upward(graph()))
  end)

  it("has no cycle", function()
    assert.is_nil(find_cycle(graph()))
  end)

  -- The checks themselves must catch what they are for.
  it("would catch a domain module that requires a command, and a cycle", function()
    local g = {["portman.a"] = {["portman.cmd.alloc"] = true}, ["portman.cmd.alloc"] = {}}
    assert.same({"portman.a requires portman.cmd.alloc"}, upward(g))
    g = {["portman.a"] = {["portman.b"] = true}, ["portman.b"] = {["portman.c"] = true},
         ["portman.c"] = {["portman.a"] = true}}
    assert.same({"portman.a", "portman.b", "portman.c", "portman.a"}, find_cycle(g))
    assert.is_nil(find_cycle({["portman.a"] = {["portman.b"] = true}, ["portman.b"] = {}}))
  end)

  it("leaves no require inside a function in the domain modules", function()
    local inside = {}
    for _, path in ipairs(lua_files(ROOT .. "/portman")) do
      local f = assert(io.open(path))
      local n = 0
      for line in f:lines() do
        n = n + 1
        local code = line:gsub("%-%-.*$", "")
        -- a literal name only: loading a command or a submodule by a
        -- computed name on first use is lazy on purpose
        local lit = code:match("^%s+.*require%s*%(?%s*[\"']portman")
        local dynamic = code:match("require%s*%(?%s*[\"']portman[%w_.]*[\"']%s*%.%.")
        if (lit and not dynamic) or code:match("^%s+.*require%s*%(?%s*[\"']luv") then
          inside[#inside + 1] = module_of(path) .. ":" .. n
        end
      end
      f:close()
    end
    assert.same({}, inside)
  end)
end)
