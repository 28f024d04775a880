--- Shared spec helpers.
local M = {}

--- Paths of the checkout, whichever folder busted runs from.
M.root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helpers%.lua$")) or "."

--- The Lua interpreter to start portman's own child processes with: the
-- sanitizer run sets PORTMAN_LUA to its instrumented interpreter.
M.lua = os.getenv("PORTMAN_LUA") or "lua5.4"

--- The number of open fds of this process. Read in-process: a child
-- `ls` could list the popen pipe's other end before the parent closes it.
function M.fd_count()
  local uv = require "luv"
  local req = assert(uv.fs_scandir("/proc/self/fd"))
  local n = 0
  while uv.fs_scandir_next(req) do n = n + 1 end
  return n - 1 -- the directory fd scandir held while reading
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

return M
