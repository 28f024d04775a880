--- Running code the daemon did not write (a policy file, a REPL line)
-- under a time budget. A count hook (csrc/lua_sandbox.c) looks at the
-- clock every few thousand instructions and, once the budget is spent or
-- the client asked for an interrupt, yields the chunk's coroutine from
-- inside the hook: no pcall in the chunk can catch that, and the chunk is
-- dropped. The hook is set on the chunk's own coroutine only.
local core = require "portman.core"

local M = {}

M.BUDGET = 2000 -- ms

local function pack(...) return {n = select("#", ...), ...} end

--- Runs fn(...) in a coroutine under a budget.
-- @tparam table opts `budget` (ms, BUDGET), `fd` (a client socket: a line
--   `{"interrupt":...}` waiting on it ends the chunk), `what` (for the
--   message: "policy", "REPL line")
-- @return[1] true, fn's results
-- @return[2] false, "timeout: <what> ran longer than N ms", "timeout";
--   false, "interrupted: ...", "interrupted"; false, "<what> yielded: ...",
--   "error" (a chunk may not wait for I/O); false, the error fn raised with
--   its traceback, "error"
function M.run(fn, opts, ...)
  opts = opts or {}
  local budget, what = opts.budget or M.BUDGET, opts.what or "the chunk"
  local co = coroutine.create(function(...) return pack(xpcall(fn, debug.traceback, ...)) end)
  core.sandbox_arm(co, budget, opts.fd)
  local ok, r = coroutine.resume(co, ...)
  local why = core.sandbox_why(co)
  if why == "timeout" then return false, ("timeout: %s ran longer than %d ms"):format(what, budget), "timeout" end
  if why == "interrupted" then return false, ("interrupted: %s was interrupted"):format(what), "interrupted" end
  if not ok then return false, tostring(r), "error" end
  if coroutine.status(co) ~= "dead" then
    return false, what .. " yielded: it may not wait for I/O here", "error"
  end
  if not r[1] then return false, r[2], "error" end
  return true, table.unpack(r, 2, r.n)
end

return M
