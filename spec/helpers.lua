--- Shared spec helpers.
local M = {}

--- Paths of the checkout, whichever folder busted runs from.
M.root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helpers%.lua$")) or "."

--- The Lua interpreter to start portman's own child processes with: the
-- sanitizer run sets PORTMAN_LUA to its instrumented interpreter.
M.lua = os.getenv("PORTMAN_LUA") or "lua5.4"

--- The number of open fds of this process.
function M.fd_count()
  local n = 0
  local p = io.popen("ls /proc/" .. M.pid() .. "/fd")
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n - 1 -- the pipe that ls writes into is ours while we count
end

--- This process's pid (lua5.4 has no getpid; /proc/self is the reader's).
function M.pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  return math.tointeger(tonumber(pid))
end

--- Names of globals, to check that a require leaves _G alone.
function M.globals()
  local names = {}
  for k in pairs(_G) do names[k] = true end
  return names
end

--- Runs the portman command line in a child process.
-- @return exit status, stdout, stderr
function M.portman(args, env)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("%s %s %s/bin/portman %s >%s 2>%s"):format(env or "", M.lua, M.root, args, out, err)
  local _, _, status = os.execute(cmd)
  local function slurp(path)
    local f = assert(io.open(path))
    local s = f:read("a")
    f:close()
    os.remove(path)
    return s
  end
  return status, slurp(out), slurp(err)
end

--- The error message of fn(...), which must raise.
function M.raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(err)
end

--- Runs the luv loop until pred() is true or ms (5000) pass; returns pred().
function M.run_until(pred, ms)
  local uv = require "luv"
  local expired = false
  local t = uv.new_timer()
  t:start(ms or 5000, 0, function() expired = true end)
  while not pred() and not expired do uv.run("once") end
  t:close()
  uv.run("nowait")
  return pred()
end

return M
