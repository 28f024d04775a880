--- Structured logs (docs/design.md, "Logs"): one event a line, as text
-- `time level event key=value ...` (the default) or as one JSON object
-- `{"event": ..., "level": ..., "time": ..., field: value, ...}`.
--
--     log.setup{level = "warn", format = "json", capture_stderr = true}
--     log.info("started", {port = 20000})
--     log.close() -- back to the defaults: info, text, io.stderr
--
-- With capture_stderr, what anything else writes to fd 2 (C libraries,
-- child processes, io.stderr) becomes `warn library_output text=...`
-- events, so that the log stays one event a line.
local uv = require "luv"
local core = require "portman.core"
local json = require "portman.json"
local check = require "portman.check"

local M = {}

local LEVELS = {debug = 1, info = 2, warn = 3, error = 4}
M.threshold = LEVELS.info
M.out = io.stderr
M.use_json = false
--- Captured lines longer than this many bytes are cut (the event says how
-- many bytes were dropped).
M.MAX_LINE = 4096

local ESCAPES = {["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\"}

-- A value as one token: quoted when it holds spaces, quotes, '=' or
-- control characters, which are escaped so that no value can end the line
-- or forge another event.
local function quote(v)
  v = tostring(v)
  if v:find("[%s%c\"=]") or v == "" then
    return '"' .. v:gsub('[%c"\\]', function(c) return ESCAPES[c] or ("\\x%02x"):format(c:byte()) end) .. '"'
  end
  return v
end

local function now() return os.date("!%Y-%m-%dT%H:%M:%SZ") end

--- Formats one line (without the newline); fields are written sorted.
function M.format(level, event, fields)
  local parts = {now(), level, event}
  if fields then
    local keys = {}
    for k in pairs(fields) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = fields[k]
      if v == nil then v = fields[math.tointeger(tonumber(k))] end
      parts[#parts + 1] = k .. "=" .. quote(v)
    end
  end
  return table.concat(parts, " ")
end

-- Text as valid UTF-8: each byte that does not start a valid sequence
-- becomes U+FFFD, so a JSON reader takes every line.
local function utf8_clean(s)
  if utf8.len(s) then return s end
  local out, i = {}, 1
  while i <= #s do
    local _, bad = utf8.len(s, i)
    if not bad then
      out[#out + 1] = s:sub(i)
      break
    end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    i = bad + 1
  end
  return table.concat(out)
end

-- A field's value as JSON: strings, finite numbers and booleans as they
-- are, anything else as its text (as the text format writes it).
local function json_value(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    return v
  end
  if t == "boolean" or v == json.null then return v end
  return utf8_clean(tostring(v))
end

local FIXED = {"time", "level", "event"}

--- Formats one line as a JSON object (without the newline): time, level,
-- event and the fields, keys sorted. A field named time, level or event
-- is written with a '_' appended (`level_`), as many as it takes to be
-- unique.
function M.format_json(level, event, fields)
  local obj = {}
  for k, v in pairs(fields or {}) do obj[tostring(k)] = json_value(v) end
  for _, k in ipairs(FIXED) do
    if obj[k] ~= nil then
      local renamed = k .. "_"
      while obj[renamed] ~= nil do renamed = renamed .. "_" end
      obj[renamed], obj[k] = obj[k], nil
    end
  end
  obj.time, obj.level, obj.event = now(), utf8_clean(tostring(level)), utf8_clean(tostring(event))
  return json.encode(obj, {sorted = true})
end

--- Writes an event at level ("debug", "info", "warn", "error"; an unknown
-- level passes as an error does).
function M.log(level, event, fields)
  if (LEVELS[level] or 4) >= M.threshold then
    local line = M.use_json and M.format_json(level, event, fields) or M.format(level, event, fields)
    M.out:write(line, "\n")
    M.out:flush()
  end
end

for name in pairs(LEVELS) do
  M[name] = function(event, fields) M.log(name, event, fields) end
end

-- The capture of fd 2 while one runs: {cap, poll, stream?}.
local capture

-- The lines the capture holds, as events. An empty line says nothing and
-- makes none.
local function drain(c)
  local batch = c.cap:step()
  if not batch then return end
  for i, text in ipairs(batch) do
    if text ~= "" then
      M.log("warn", "library_output", {text = text, truncated = batch.truncated and batch.truncated[i]})
    end
  end
  if batch.dropped then M.log("warn", "library_output_dropped", {bytes = batch.dropped}) end
end

local function start_capture(out)
  local cap, err, code = core.stderr_capture(M.MAX_LINE)
  if not cap then return nil, err, code end
  local c = {cap = cap}
  if out == io.stderr then
    -- the process's stderr as it was: the logger's own lines must not come
    -- back through the capture
    c.stream, err, code = cap:stream()
    if not c.stream then
      cap:close()
      return nil, err, code
    end
  end
  c.poll, err = uv.new_poll(cap:fd())
  if not c.poll then
    if c.stream then c.stream:close() end
    cap:close()
    return nil, "capture_stderr: " .. tostring(err), "EMFILE"
  end
  c.poll:start("r", function()
    local ok, e = pcall(drain, c)
    if not ok then pcall(M.log, "error", "callback_failed", {what = "stderr capture", error = e}) end
  end)
  c.poll:unref() -- never what keeps the loop alive
  capture = c
  if c.stream then M.out = c.stream end
  return true
end

-- An open file, or anything with write and flush.
local function writable(out)
  local kind = io.type(out)
  if kind then return kind == "file" end
  local ok, write, flush = pcall(function() return out.write, out.flush end)
  return ok and write ~= nil and flush ~= nil
end

local SETUP_KEYS = {level = true, format = true, out = true, capture_stderr = true}

local function shown(v)
  return type(v) == "string" and ("'%s'"):format(v) or tostring(v)
end

--- Configures the log (after undoing an earlier setup, as close does).
-- @tparam table opts `level`: "debug", "info" (default), "warn" or
--   "error": the least that is written; `format`: "text" (default) or
--   "json"; `out`: a file, or anything with write and flush (io.stderr by
--   default); `capture_stderr`: turn what fd 2 receives from anything but
--   the logger into events (a reader thread in the C core, drained on the
--   luv loop; the logger writes to its own copy of the original stderr)
-- @raise on a bad value, naming it
-- @return[1] true
-- @return[2] nil, msg, code when stderr cannot be captured
function M.setup(opts)
  check.table("setup", 1, opts)
  check.known("setup", 1, opts, SETUP_KEYS)
  local level, format, out = opts.level or "info", opts.format or "text", opts.out
  if not LEVELS[level] then
    check.argerror("setup", 1, "level: debug, info, warn or error expected, got " .. shown(level))
  end
  if format ~= "text" and format ~= "json" then
    check.argerror("setup", 1, "format: text or json expected, got " .. shown(format))
  end
  if out ~= nil and not writable(out) then
    check.argerror("setup", 1, "out: an open file or an object with write and flush expected, got "
      .. (io.type(out) or type(out)))
  end
  if opts.capture_stderr ~= nil and type(opts.capture_stderr) ~= "boolean" then
    check.argerror("setup", 1, "capture_stderr: boolean expected, got " .. type(opts.capture_stderr))
  end
  M.close()
  M.threshold, M.use_json, M.out = LEVELS[level], format == "json", out or io.stderr
  if opts.capture_stderr then
    local ok, err, code = start_capture(out or io.stderr)
    if not ok then return nil, err, code end
  end
  return true
end

--- Is fd 2 being captured?
function M.capturing() return capture ~= nil end

--- Ends what setup started: puts the original stderr back on fd 2 (the
-- lines captured until then are logged first), closes the logger's own
-- copy of it, and returns to the defaults (info, text, io.stderr).
-- Idempotent. Outside the loop, it runs the loop once (nowait) so that
-- the capture's poll handle finishes closing: luv 1.44 crashes when a Lua
-- state closes with a handle still closing.
function M.close()
  local c = capture
  capture = nil
  if c then
    c.cap:restore()
    pcall(drain, c)
    -- libuv lets go of a poll's fd when the handle is closed (epoll_ctl
    -- DEL in uv_close), so the fd can be closed right after
    if not c.poll:is_closing() then c.poll:close() end
    c.cap:close()
    if c.stream then c.stream:close() end
    if uv.loop_mode() == nil then uv.run("nowait") end
  end
  M.threshold, M.use_json, M.out = LEVELS.info, false, io.stderr
end

return M
