--- The Lua side of a C I/O engine (docs/design.md, "The engine contract").
-- An engine owns one pollable fd and offers `step()` (do the ready work,
-- return a batch of results) and `timeout()` (ms until it next needs a
-- step, nil when idle). A driver polls the fd on the luv loop, arms a timer
-- from timeout(), steps, hands each batch on, and stops both handles when
-- the engine is idle, so an idle engine never keeps the loop alive.
local uv = require "luv"
local log = require "portman.log"

local M = {}
local Driver = {}
Driver.__index = Driver

--- Drives engine eng on the loop.
-- @tparam table opts `on_batch(batch)` (required): each step's result;
--   `step(eng)`: how to step (default `eng:step()`); `busy()`: whether the
--   owner still waits for results (default: timeout() is not nil; an engine
--   whose transfers can wait on the fd alone, with no timer, says so here);
--   `on_idle()`: called when it is no longer busy; `name` (for logs).
-- @return a driver with :arm() (call after giving the engine work) and :close()
function M.drive(eng, opts)
  local self = setmetatable({_eng = eng, _on_batch = opts.on_batch, _on_idle = opts.on_idle,
                             _step = opts.step or eng.step, _busy = opts.busy, _name = opts.name or "engine",
                             _poll = uv.new_poll(eng:fd()), _timer = uv.new_timer(), _polling = false}, Driver)
  self._ready = function() self:_run() end
  return self
end

-- One step: the batch to the owner, then the handles re-armed. An error in
-- the owner's code is logged; the driver goes on.
function Driver:_run()
  if self._closed then return end
  local ok, err = xpcall(function()
    self._on_batch(self._step(self._eng))
  end, debug.traceback)
  if not ok then log.error("callback_failed", {what = self._name, error = err}) end
  if not self._closed then self:arm() end
end

--- Arms the poll and the timer from the engine's timeout(); stops both when
-- it has nothing to do.
function Driver:arm()
  if self._closed then return end
  local ms = self._eng.timeout and self._eng:timeout() -- an engine may have no timers at all
  if ms and ms < 0 then ms = nil end
  local busy
  if self._busy then busy = self._busy() else busy = ms ~= nil end
  if not busy then
    if self._polling then
      self._poll:stop()
      self._polling = false
    end
    self._timer:stop()
    if self._on_idle then self._on_idle() end
    return
  end
  if not self._polling then
    self._poll:start("r", self._ready)
    self._polling = true
  end
  if ms then self._timer:start(ms, 0, self._ready) else self._timer:stop() end
end

--- Stops and closes the poll and the timer (not the engine: its owner
-- closes it after this, or in after(), called once libuv has let go of
-- the fd, so that a new handle on a reused fd number never meets the old
-- one). Idempotent.
function Driver:close(after)
  if self._closed then return end
  self._closed = true
  self._poll:stop()
  self._poll:close(after)
  self._timer:close()
end

function Driver:closed() return self._closed == true end

return M
