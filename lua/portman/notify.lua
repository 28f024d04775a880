--- systemd's readiness protocol (sd_notify(3)) without libsystemd.
--
-- A service started with Type=notify finds NOTIFY_SOCKET in its
-- environment: a Unix datagram socket, a path, or an abstract name when it
-- starts with '@'. It tells systemd how it is doing with datagrams of
-- newline-separated assignments: READY=1, RELOADING=1, STOPPING=1,
-- STATUS=text, WATCHDOG=1, MAINPID=pid. With WatchdogSec= systemd also sets
-- WATCHDOG_USEC (and WATCHDOG_PID, the process meant) and restarts the
-- service when no WATCHDOG=1 comes within that time.
--
-- As sd_notify does, each message goes through a new socket, so a
-- notification socket that systemd made again is still reached. The
-- variables are unset once read (sd_notify's unset_environment), so the
-- daemon's children do not notify in its name. Sending never raises: the
-- first failure is logged, and every one returns nil, msg, code.
local uv = require "luv"
local core = require "portman.core"
local check = require "portman.check"
local async = require "portman.async"
local log = require "portman.log"

local M = {}
local Notifier = {}
local mt = {__index = Notifier, __name = "portman.notify"}

M.VARS = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
local MAX_NAME = 107 -- sun_path's 108 bytes less the path's NUL (or the name's lead NUL)

--- CLOCK_MONOTONIC in µs, as systemd wants it with RELOADING=1 (libuv's
-- hrtime reads that clock on Linux).
function M.monotonic_usec()
  return math.tointeger(uv.hrtime() // 1000)
end

-- NOTIFY_SOCKET as core.socket_open's address fields, or nil, why.
local function address(raw)
  local first, name = raw:sub(1, 1), raw:sub(2)
  if first == "/" then name = raw
  elseif first ~= "@" then return nil, "neither an absolute path nor '@' and an abstract name" end
  if name == "" or #name > MAX_NAME or name:find("%z") then
    return nil, ("a name of 1-%d bytes without NUL expected"):format(MAX_NAME)
  end
  return first == "/" and {path = name} or {abstract = name}
end

-- A plain positive decimal, as systemd writes its numbers; nil otherwise.
local function positive(s)
  local n = s and s:match("^%d+$") and math.tointeger(tonumber(s))
  return n and n > 0 and n or nil
end

--- Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
-- @tparam[opt] function getenv defaults to os.getenv; the variables are
--   then unset from the environment (given a getenv, it is left alone)
-- @tparam[opt] int pid this process's pid (uv.os_getpid()), which
--   WATCHDOG_PID must name for the watchdog to apply
-- @return a notifier, always: without NOTIFY_SOCKET (or with a malformed
--   one, logged) every method is a no-op returning false. Fields: `socket`
--   (NOTIFY_SOCKET as given, or nil), `watchdog_usec` (nil without a
--   watchdog for this process).
function M.new(getenv, pid)
  local from_env = getenv == nil
  getenv = getenv or os.getenv
  pid = pid or uv.os_getpid()
  local raw, usec, wpid = getenv("NOTIFY_SOCKET"), getenv("WATCHDOG_USEC"), getenv("WATCHDOG_PID")
  if from_env then
    for _, k in ipairs(M.VARS) do uv.os_unsetenv(k) end
  end
  local self = setmetatable({_closed = false}, mt)
  if raw and raw ~= "" then
    local addr, why = address(raw)
    if addr then
      self.socket, self._addr = raw, addr
    else
      log.warn("notify_socket_invalid", {socket = raw, error = why})
    end
  end
  -- sd_watchdog_enabled: WATCHDOG_PID, when set, must be this process
  if self.socket and usec then
    local u, p = positive(usec), positive(wpid)
    if not u then
      log.warn("watchdog_usec_invalid", {watchdog_usec = usec})
    elseif wpid and p ~= pid then
      log.debug("watchdog_other_pid", {watchdog_pid = wpid})
    else
      self.watchdog_usec = u
    end
  end
  return self
end

local function check_open(self, fname)
  if getmetatable(self) ~= mt then
    error(("bad self to '%s' (portman.notify expected)"):format(fname), 3)
  end
  if self._closed then error("attempt to use a closed notifier", 3) end
end

-- One assignment's value on one line: a newline would start another.
local function one_line(v)
  return (tostring(v):gsub("[\r\n]+", " "))
end

local function deliver(self, msg)
  local spec = {type = "dgram", connect = true, path = self._addr.path, abstract = self._addr.abstract}
  local sock, err, code = core.socket_open(spec)
  local sent
  if sock then
    sent, err, code = core.dgram_send(sock:fd(), msg)
    sock:close()
  end
  if sent then return true end
  if not self._warned then
    self._warned = true -- once: a watchdog would repeat it every few seconds
    log.warn("notify_failed", {socket = self.socket, message = msg, error = err})
  end
  return nil, err, code
end

--- Sends assignments ("KEY=value" strings) in one datagram.
-- @return[1] true when sent, false without NOTIFY_SOCKET
-- @return[2] nil, msg, code when sending failed (logged the first time)
-- @raise on a closed notifier
function Notifier:send(...)
  check_open(self, "send")
  if not self.socket then return false end
  local lines = {}
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    if a ~= nil then lines[#lines + 1] = one_line(a) end
  end
  local msg = table.concat(lines, "\n")
  log.debug("notify", {message = msg})
  return deliver(self, msg)
end

local function with_status(status)
  return status ~= nil and "STATUS=" .. one_line(status) or nil
end

--- READY=1: startup (or a reload) is complete; with a STATUS= when given.
function Notifier:ready(status)
  check_open(self, "ready")
  return self:send("READY=1", with_status(status))
end

--- RELOADING=1 with MONOTONIC_USEC (systemd 253+ wants it; older ones
-- ignore it). Send ready() when the reload is over, whatever its outcome.
function Notifier:reloading(status)
  check_open(self, "reloading")
  return self:send("RELOADING=1", "MONOTONIC_USEC=" .. M.monotonic_usec(), with_status(status))
end

--- STOPPING=1: shutdown has begun.
function Notifier:stopping(status)
  check_open(self, "stopping")
  return self:send("STOPPING=1", with_status(status))
end

--- STATUS=text: one line for `systemctl status` (newlines become spaces).
function Notifier:status(text)
  check_open(self, "status")
  if type(text) ~= "string" then check.argerror("status", 1, "string expected, got " .. type(text)) end
  return self:send(with_status(text))
end

--- MAINPID=pid: the service's main process is another one.
function Notifier:mainpid(pid)
  check_open(self, "mainpid")
  local p = math.tointeger(pid)
  if not p or p < 1 then check.argerror("mainpid", 1, "positive integer expected") end
  return self:send("MAINPID=" .. p)
end

--- EXTEND_TIMEOUT_USEC=usec: a start, reload or stop needs that much longer.
function Notifier:extend_timeout(usec)
  check_open(self, "extend_timeout")
  local u = math.tointeger(usec)
  if not u or u < 1 then check.argerror("extend_timeout", 1, "positive integer expected") end
  return self:send("EXTEND_TIMEOUT_USEC=" .. u)
end

--- WATCHDOG=1, once.
function Notifier:watchdog()
  check_open(self, "watchdog")
  return self:send("WATCHDOG=1")
end

--- Sends WATCHDOG=1 every WATCHDOG_USEC/2 from a luv timer that does not
-- keep the loop alive. Idempotent.
-- @return true when the watchdog runs, false when it does not apply (no
--   NOTIFY_SOCKET, no WATCHDOG_USEC, or WATCHDOG_PID names another process)
function Notifier:watchdog_start()
  check_open(self, "watchdog_start")
  if not self.watchdog_usec then return false end
  if self._timer then return true end
  local period = math.max(1, self.watchdog_usec // 2000) -- ms
  self.watchdog_period = period
  self._timer = uv.new_timer()
  self._timer:start(period, period, async.safe(function()
    if not self._closed then self:send("WATCHDOG=1") end
  end, "notify.watchdog"))
  self._timer:unref()
  return true
end

--- Stops the watchdog timer. Idempotent.
function Notifier:watchdog_stop()
  local t = self._timer
  self._timer = nil
  if not t then return end
  -- a handle closed by someone else (uv.walk at exit) and freed raises on
  -- is_closing: closed all the same
  local ok, closing = pcall(t.is_closing, t)
  if ok and not closing then t:close() end
end

--- Is this process under systemd's supervision (NOTIFY_SOCKET usable)?
function Notifier:enabled()
  return self.socket ~= nil and not self._closed
end

--- Stops the watchdog; later calls raise. Idempotent; also __close.
function Notifier:close()
  self:watchdog_stop()
  self._closed = true
end

mt.__close = Notifier.close
mt.__tostring = function(self)
  return ("portman.notify %s%s"):format(self.socket or "(off)", self._closed and " (closed)" or "")
end

--- Is v a notifier?
function M.is_notifier(v) return getmetatable(v) == mt end

return M
