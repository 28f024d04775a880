--- Coroutines on the luv loop.
-- An I/O function in portman takes a callback as its last argument, or,
-- called from a coroutine that `spawn`/`run` started, yields until its
-- result is ready and returns it. `adapt` gives a function both forms.
local uv = require "luv"
local log = require "portman.log"

local M = {}
local tasks = setmetatable({}, {__mode = "k"}) -- coroutines we started
local pack, unpack = table.pack, table.unpack

local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    -- an error escaping a luv callback would end the process: log it instead
    log.error("task_failed", {error = debug.traceback(co, tostring(err))})
  end
  return ok, err
end

--- Starts fn(...) in a new coroutine; returns the coroutine.
function M.spawn(fn, ...)
  local co = coroutine.create(fn)
  tasks[co] = true
  resume(co, ...)
  return co
end

--- Runs fn(...) in a coroutine and the loop until nothing is left to do;
-- returns fn's results (or raises its error).
function M.run(fn, ...)
  local results
  M.spawn(function(...)
    results = pack(xpcall(fn, debug.traceback, ...))
  end, ...)
  uv.run()
  if not results then error("portman.run: the task never finished (loop idle)", 2) end
  if not results[1] then error(results[2], 0) end
  return unpack(results, 2, results.n)
end

--- Is the caller inside a coroutine started by spawn or run?
function M.in_task()
  local co, main = coroutine.running()
  return not main and tasks[co] == true
end

--- Calls start(..., cb) and waits for cb(...): its arguments are returned.
-- A callback that fires before the yield is handled; it counts once only.
function M.await(start, ...)
  if not M.in_task() then
    error("not inside portman.run or portman.spawn: pass a callback", 3)
  end
  local co = coroutine.running()
  local args = pack(...)
  local result, waiting = nil, false
  args[args.n + 1] = function(...)
    if result then return end
    result = pack(...)
    if waiting then resume(co, ...) end
  end
  start(unpack(args, 1, args.n + 1))
  if result then return unpack(result, 1, result.n) end
  waiting = true
  return coroutine.yield()
end

--- Makes start(args..., cb) callable as f(args..., cb) or, in a task, as
-- `local a, b = f(args...)`.
function M.adapt(start)
  return function(...)
    local n = select("#", ...)
    if n > 0 and type(select(n, ...)) == "function" then return start(...) end
    return M.await(start, ...)
  end
end

--- Wraps a callback for luv: an error in it is logged, never raised.
function M.safe(fn, what)
  return function(...)
    local ok, err = xpcall(fn, debug.traceback, ...)
    if not ok then log.error("callback_failed", {what = what or "?", error = err}) end
  end
end

--- A function that calls fn with its arguments the first time it is
-- called, and does nothing after that.
function M.once(fn)
  local called = false
  return function(...)
    if called then return end
    called = true
    return fn(...)
  end
end

--- Races a callback against a timer: returns `done`, a once-function that
-- stops the timer and calls cb with its arguments. When ms pass first, cb
-- gets nil, "timeout: <what> after <ms> ms", "timeout" (through
-- on_timeout(), if given, which may release resources first).
-- @return done, and the timer (anchored until done runs)
function M.with_timeout(ms, cb, what, on_timeout)
  local timer = uv.new_timer()
  local done = M.once(function(...)
    if not timer:is_closing() then timer:close() end
    return cb(...)
  end)
  uv.update_time() -- a stale clock after blocking work fires timers at once
  timer:start(ms, 0, M.safe(function()
    if on_timeout then on_timeout() end
    done(nil, ("timeout: %s after %d ms"):format(what or "no answer", ms), "timeout")
  end, "timeout of " .. tostring(what)))
  return done, timer
end

--- Waits ms milliseconds (a task), or calls cb after them.
M.sleep = M.adapt(function(ms, cb)
  local t = uv.new_timer()
  t:start(ms, 0, function()
    t:close()
    cb()
  end)
end)

return M
