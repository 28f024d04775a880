--- HTTP client on the luv loop, over the C core's curl engine.
-- The engine (portman.core's http_new) owns curl's multi handle and one
-- epoll fd; portman.engine drives it on the loop (docs/design.md, "The
-- engine contract"), and this file hands each finished transfer to its
-- callback. An idle client never keeps the loop alive.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local engine = require "portman.engine"
local log = require "portman.log"

local M = {}
local Client = {}
Client.__index = Client

local OPTIONS = {url = true, method = true, body = true, content_type = true, headers = true, timeout = true,
                 connect_timeout = true, stream = true, max_body = true, userpwd = true,
                 cacert = true, cert = true, key = true, insecure = true}

--- Creates a client.
-- @return[1] a client
-- @return[2] nil, msg, code (an errno name) when no epoll fd is left
function M.new()
  local eng, err, code = core.http_new()
  if not eng then return nil, err, code end
  local self = setmetatable({_engine = eng, _pending = {}, _count = 0}, Client)
  self._driver = engine.drive(eng, {name = "http", on_batch = function(batch) self:_deliver(batch) end,
                                    busy = function() return self._count > 0 end})
  return self
end

function Client:_check()
  if not self._engine then error("attempt to use a closed portman.http client", 3) end
end

-- Runs one transfer's callback; an error in it is logged and stays its
-- own, so the rest of the step's batch is still handed on (each of those
-- transfers is finished in the engine: its callback is its only news).
local function run(fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then log.error("callback_failed", {what = "http", error = err}) end
end

-- Hands a step's batch to the transfers' callbacks.
function Client:_deliver(batch)
  for _, ev in ipairs(batch) do
    local t = self._pending[ev.id]
    if t then
      if not ev.done then
        run(t.on_data, ev.body, ev.status)
      else
        if not ev.code and t.on_data and ev.body ~= "" then run(t.on_data, ev.body, ev.status) end
        if self._pending[ev.id] == t then -- on_data may have cancelled it: then no callback
          self._pending[ev.id] = nil
          self._count = self._count - 1
          if ev.code then
            run(t.cb, nil, ev.code .. ": " .. ev.error .. " (" .. t.url .. ")", ev.code)
          else
            run(t.cb, {status = ev.status, body = ev.body})
          end
        end
      end
    end
    if not self._engine then return end -- a callback closed the client
  end
end

--- Starts a request; cb(res) with `res = {status = n, body = s}` on any
-- HTTP answer (a 4xx or 5xx too), or cb(nil, msg, code) when the transfer
-- failed (`timeout`, `refused`, `unreachable`, `closed`, `denied`,
-- `unsupported`, `protocol`).
-- @tparam table opts `url` (required), `method` ("POST" with a body, "GET"
--   without), `body`, `content_type` ("application/json"), `headers` (a
--   list of up to 16 "Name: value" lines), `timeout` and
--   `connect_timeout` (ms), `on_data` (a function called with each chunk
--   of the body as it arrives: for streams, then `res.body` is ""),
--   `max_body` (bytes), `userpwd` ("user:password", basic auth), `cacert`,
--   `cert`, `key` (PEM files), `insecure` (skip TLS verification).
-- @return the request's id (for `cancel`); in a task without cb, the
--   answer: res, or nil, msg, code
-- @raise on a bad or unknown option, or a closed client
function Client:request(opts, cb)
  if cb == nil and async.in_task() then return async.await(self.request, self, opts) end
  self:_check()
  check.table("request", 1, opts)
  local on_data = opts.on_data
  local copy = {}
  for k, v in pairs(opts) do
    if k ~= "on_data" then
      if not OPTIONS[k] then check.argerror("request", 1, ("unknown option '%s'"):format(k)) end
      copy[k] = v
    end
  end
  if type(opts.url) ~= "string" then check.argerror("request", 1, "url: string expected") end
  if on_data ~= nil and type(on_data) ~= "function" then
    check.argerror("request", 1, "on_data: function expected")
  end
  if type(cb) ~= "function" then check.argerror("request", 2, "function expected") end
  copy.stream = on_data ~= nil
  local ok, id, err, code = pcall(self._engine.request, self._engine, copy)
  if not ok then check.argerror("request", 1, (tostring(id):gsub("^.-%((.*)%)$", "%1"))) end
  if not id then
    local t = uv.new_timer() -- the callback never runs before request returns
    t:start(0, 0, function()
      t:close()
      cb(nil, err, code)
    end)
    return nil
  end
  self._pending[id] = {cb = cb, on_data = on_data, url = opts.url}
  self._count = self._count + 1
  self._driver:arm()
  return id
end

--- Stops a request; its callback is never called. Returns true if it was live.
function Client:cancel(id)
  self:_check()
  if not self._pending[id] then return false end
  self._pending[id] = nil
  self._count = self._count - 1
  self._engine:cancel(id)
  self._driver:arm()
  return true
end

--- Requests in flight.
function Client:active()
  self:_check()
  return self._count
end

--- Stops every request (no callback is called) and frees the engine and its
-- fd. Idempotent.
function Client:close()
  if not self._engine then return end
  self._driver:close()
  self._engine:close()
  self._engine = nil
  self._pending = {}
  self._count = 0
end
Client.__close = Client.close

--- Is the client closed?
function Client:closed() return self._engine == nil end

return M
