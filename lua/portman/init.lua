--- portman: port management for networked services.
-- `require "portman"` gives this table; each concern is a submodule loaded on
-- first use (`portman.allocator`, ...), and `portman.run` / `portman.spawn`
-- run coroutines on the luv loop (see portman.async).
local M = {version = "0.1.0"}

local SUBMODULES = {
  admin = true, allocator = true, async = true, backend = true, check = true, cmd = true,
  daemon = true, etcd = true, health = true, http = true, json = true,
  listener = true, listeners = true, log = true, manager = true, nat = true, netaddr = true,
  probe = true, registry = true, resolver = true, state = true, stun = true, supervisor = true, tunnel = true,
}

setmetatable(M, {__index = function(t, name)
  if not SUBMODULES[name] then return nil end
  local mod = require("portman." .. name)
  rawset(t, name, mod)
  return mod
end})

--- Runs fn(...) in a coroutine on the luv loop until the loop is idle.
function M.run(fn, ...) return M.async.run(fn, ...) end
--- Starts fn(...) in a coroutine on the luv loop; returns at its first wait.
function M.spawn(fn, ...) return M.async.spawn(fn, ...) end

return M
