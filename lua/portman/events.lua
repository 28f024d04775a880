--- Event emitters: `obj:on(fn)` adds a listener, `emit(obj, ev)` calls
-- each with the event table. A listener that raises is logged and the
-- others still run: an event never breaks its emitter.
local check = require "portman.check"
local log = require "portman.log"

local M = {}

--- Adds M.on to the class table cls (its objects keep their listeners in
-- `_listeners`, made on first use).
function M.mixin(cls)
  cls.on = M.on
  return cls
end

--- Adds a listener; returns a function that removes it again.
-- @raise when fn is not a function
function M.on(self, fn)
  if type(fn) ~= "function" then check.argerror("on", 1, "function expected, got " .. type(fn)) end
  local list = self._listeners or {}
  self._listeners = list
  list[#list + 1] = fn
  return function()
    for i, f in ipairs(list) do
      if f == fn then return table.remove(list, i) end
    end
  end
end

--- Calls every listener of self with ev, in the order they were added.
function M.emit(self, ev)
  local list = self._listeners
  if not list then return end
  for _, fn in ipairs(list) do
    local ok, err = xpcall(fn, debug.traceback, ev)
    if not ok then log.error("event_listener_failed", {event = ev.event, error = err}) end
  end
end

return M
