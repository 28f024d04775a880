--- The admin socket and the REPL.
-- The daemon serves a Unix socket (mode 0600, in a directory of mode 0700)
-- that accepts only its own uid or root (SO_PEERCRED). A client sends one
-- JSON line: {"op":"status"} gets one JSON line back; {"op":"repl"} starts
-- a REPL: the server answers each {"in": line} with {"out": text,
-- "prompt": p}. The REPL evaluates Lua inside the daemon, with `manager`
-- and `daemon` at hand; an error in a typed line is printed, never raised.
local uv = require "luv"
local json = require "portman.json"
local core = require "portman.core"
local log = require "portman.log"
local async = require "portman.async"
local listener = require "portman.listener"
local portman = require "portman"
local errors = require "portman.errors"
local lines = require "portman.lines"

local M = {}

-- ---- printing values readably ----

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function show(v, indent, seen, depth)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) ~= "table" then return tostring(v) end
  if seen[v] then return "<cycle>" end
  if depth > 6 then return "{...}" end
  seen[v] = true
  local keys, n = {}, #v
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, key_order)
  local inner = indent .. "  "
  local parts = {}
  for i = 1, n do parts[#parts + 1] = show(v[i], inner, seen, depth + 1) end
  for _, k in ipairs(keys) do
    local name = is_identifier(k) and k or "[" .. show(k, inner, seen, depth + 1) .. "]"
    parts[#parts + 1] = name .. " = " .. show(v[k], inner, seen, depth + 1)
  end
  seen[v] = nil
  if #parts == 0 then return "{}" end
  local flat = "{" .. table.concat(parts, ", ") .. "}"
  if #flat <= 72 and not flat:find("\n") then return flat end
  return "{\n" .. inner .. table.concat(parts, ",\n" .. inner) .. "\n" .. indent .. "}"
end

--- A readable text for any value: tables with sorted keys, nested and
-- indented, cycles marked.
function M.show(v)
  return show(v, "", {}, 0)
end

-- ---- the REPL ----

local Repl = {}
Repl.__index = Repl

--- A REPL with a per-client environment (reads fall through to _G).
-- @tparam[opt] table vars names to have at hand (manager, daemon, ...)
function M.repl(vars)
  local env = setmetatable({}, {__index = _G})
  for k, v in pairs(vars or {}) do env[k] = v end
  env.print = function(...) -- print into the reply, not the daemon's stdout
    local t = table.pack(...)
    for i = 1, t.n do t[i] = tostring(t[i]) end
    env._out[#env._out + 1] = table.concat(t, "\t", 1, t.n)
  end
  return setmetatable({env = env, buffer = nil}, Repl)
end

-- Loads a chunk as an expression first (so `1 + 1` prints 2), then as
-- statements. Returns the function, or nil and the error.
function Repl:compile(source)
  local fn = load("return " .. source, "=repl", "t", self.env)
  if fn then return fn end
  return load(source, "=repl", "t", self.env)
end

local function results(...)
  local n = select("#", ...)
  local out = {}
  for i = 1, n do out[i] = M.show((select(i, ...))) end
  return table.concat(out, "\t")
end

--- Feeds one line; returns the output text and the next prompt ("> ", or
-- ">> " while a chunk is incomplete, as lua.c decides: a syntax error at
-- <eof>).
function Repl:feed(line)
  local source = self.buffer and (self.buffer .. "\n" .. line) or line
  local fn, err = self:compile(source)
  if not fn then
    if err:find("<eof>$") then
      self.buffer = source
      return "", ">> "
    end
    self.buffer = nil
    return err, "> "
  end
  self.buffer = nil
  self.env._out = {}
  local r = table.pack(xpcall(fn, debug.traceback))
  local out = self.env._out
  self.env._out = nil
  if not r[1] then
    -- the traceback down to the chunk typed, not the REPL's own frames
    out[#out + 1] = (tostring(r[2]):gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
  elseif r.n > 1 then
    out[#out + 1] = results(table.unpack(r, 2, r.n))
  end
  return table.concat(out, "\n"), "> "
end

-- ---- the server ----

--- The default socket path: $XDG_RUNTIME_DIR/portman/admin.sock, else
-- /run/portman/admin.sock for root, else /tmp/portman-UID/admin.sock.
function M.default_path()
  local _, uid = core.ids()
  local dir = os.getenv("XDG_RUNTIME_DIR")
  dir = dir and dir .. "/portman" or (uid == 0 and "/run/portman" or "/tmp/portman-" .. uid)
  return dir .. "/admin.sock"
end

-- A private directory for the socket: made 0700, or refused when it exists
-- with another owner or wider permissions.
local function private_dir(path)
  local dir = path:match("^(.*)/[^/]+$") or "."
  uv.fs_mkdir(dir, tonumber("700", 8))
  local st = uv.fs_stat(dir)
  local _, uid = core.ids()
  if not st or st.type ~= "directory" then
    return nil, "denied: " .. dir .. " is not a directory", "denied"
  end
  if st.uid ~= uid or st.mode & tonumber("077", 8) ~= 0 then
    return nil, ("denied: %s must be owned by uid %d with mode 0700"):format(dir, uid), "denied"
  end
  return true
end

M.MAX_REQUEST = 1024 * 1024   -- bytes in one request line
M.MAX_REPLY = 256 * 1024 * 1024 -- bytes in one reply line (a status of many services)
M.IDLE_TIMEOUT = 300000       -- ms a client may stay silent before it is closed

-- Writes doc as one line; after(), if given, runs once the write has gone
-- out (a close then never cuts a large reply short).
local function send(client, doc, after)
  if client:is_closing() then return end
  client:write(json.encode(doc) .. "\n", after and function() after() end or nil)
end

-- Serves one accepted connection: reads JSON lines, answers each. A line
-- over MAX_REQUEST or a client silent for IDLE_TIMEOUT is closed.
local function serve_client(server, client)
  local repl
  local framer = lines.new(server.max_request)
  local idle = uv.new_timer()
  local function close()
    if not idle:is_closing() then idle:close() end
    if not client:is_closing() then client:close() end
  end
  local function touch()
    idle:start(server.idle_timeout, 0, function()
      log.info("admin_idle_closed", {after_ms = server.idle_timeout})
      close()
    end)
  end
  local function on_line(line)
    local req = json.decode(line)
    if type(req) ~= "table" then
      send(client, {error = "protocol: request is not a JSON object"}, close)
      return false
    end
    local op = req.op ~= "repl" and server.ops[req.op]
    if op then
      send(client, op(req), close)
      return false
    elseif req.op == "repl" then
      repl = M.repl(server.vars)
      send(client, {out = "portman " .. portman.version .. " REPL: Lua inside the daemon; "
        .. "`manager` and `daemon` are at hand. Ctrl-D or .exit leaves.", prompt = "> "})
    elseif repl and type(req["in"]) == "string" then
      local out, prompt = repl:feed(req["in"])
      send(client, {out = out, prompt = prompt})
    else
      send(client, {error = "protocol: unknown request"}, close)
      return false
    end
  end
  touch()
  client:read_start(async.safe(function(err, data)
    if err or not data then return close() end
    touch()
    local ok, ferr = framer:feed(data, on_line)
    if not ok then
      log.warn("admin_request_refused", {error = ferr})
      client:read_stop()
      idle:stop()
      send(client, {error = ferr}, close)
    end
  end, "admin client"))
end

-- Accepts a client only from this process's uid or root.
local function allowed(client)
  local fd = client:fileno()
  local _, peer_uid = core.peercred(fd)
  local _, uid = core.ids()
  return peer_uid ~= nil and (peer_uid == uid or peer_uid == 0), peer_uid
end

--- Serves the admin socket at path.
-- @tparam table opts `ops` (op name -> function(request) returning the
--   reply document: "status", "events", ...; or just `status`), `vars`
--   (the REPL's names: manager, daemon, ...), `max_request` (bytes
--   in a request line, MAX_REQUEST), `idle_timeout` (ms, IDLE_TIMEOUT)
-- @return[1] a server with :close()
-- @return[2] nil, msg, code
function M.serve(path, opts)
  local ok, err, code = private_dir(path)
  if not ok then return nil, err, code end
  local l
  l, err, code = listener.open{proto = "unix", path = path, mode = tonumber("600", 8)}
  if not l then return nil, err, code end
  local server = {ops = opts.ops or {status = opts.status}, vars = opts.vars, listener = l, path = path,
                  max_request = opts.max_request or M.MAX_REQUEST, idle_timeout = opts.idle_timeout or M.IDLE_TIMEOUT}
  ok, err, code = l:serve(function(client)
    local permitted, peer = allowed(client)
    if not permitted then
      log.warn("admin_refused", {uid = tostring(peer)})
      return client:close()
    end
    serve_client(server, client)
  end)
  if not ok then
    l:close()
    return nil, err, code
  end
  function server.close() l:close() end
  return server
end

-- ---- the client ----

M.TIMEOUT = 5000 -- ms a client waits for each reply

-- The socket's directory must be the caller's (or root's) and writable by
-- no one else: else another user could have put a socket of theirs there.
local function trusted_dir(path)
  local dir = path:match("^(.*)/[^/]+$") or "."
  local st = uv.fs_stat(dir)
  if not st then return true end -- connect says not_found
  local _, uid = core.ids()
  if (st.uid ~= uid and st.uid ~= 0) or st.mode & tonumber("022", 8) ~= 0 then
    return errors.fail("denied", "admin socket %s: its directory must belong to uid %d or root and be "
      .. "writable by no one else", path, uid)
  end
  return true
end

-- The daemon at the other end must run as the caller or as root.
local function trusted_peer(pipe, path)
  local _, peer_uid = core.peercred(pipe:fileno())
  local _, uid = core.ids()
  if peer_uid == uid or peer_uid == 0 then return true end
  return errors.fail("denied", "admin socket %s is served by uid %s, not %d or root", path, tostring(peer_uid), uid)
end

--- Sends one request and calls on_reply(doc) for each reply line until
-- on_reply returns a request to send next, or nil to stop.
-- @tparam[opt] table opts `timeout`: ms to wait for each reply (TIMEOUT)
-- @return[1] true
-- @return[2] nil, msg, code: "not_found", "refused" (no daemon there),
--   "denied" (a socket the caller should not trust), "timeout", "closed",
--   "protocol"
function M.talk(path, request, on_reply, opts)
  local timeout = opts and opts.timeout or M.TIMEOUT
  local ok, err, code = trusted_dir(path)
  if not ok then return nil, err, code end
  local pipe, timer = uv.new_pipe(), uv.new_timer()
  local result, rerr, rcode = nil, "closed: the daemon closed the connection", "closed"
  local function finish(...)
    result, rerr, rcode = ...
    if not timer:is_closing() then timer:close() end
    if not pipe:is_closing() then pipe:close() end
  end
  local function ask(doc)
    pipe:write(json.encode(doc) .. "\n")
    timer:start(timeout, 0, function()
      finish(errors.fail("timeout", "admin socket %s: no answer in %d ms", path, timeout))
    end)
  end
  local framer = lines.new(M.MAX_REPLY)
  local function on_line(line)
    timer:stop()
    local doc = json.decode(line)
    if type(doc) ~= "table" then
      finish(errors.fail("protocol", "admin socket %s: a reply that is not a JSON object", path))
      return false
    end
    local nxt = on_reply(doc)
    if not nxt then
      finish(true)
      return false
    end
    ask(nxt)
  end
  pipe:connect(path, function(cerr)
    if cerr then return finish(errors.from(cerr, "admin socket " .. path)) end
    local trusted, terr, tcode = trusted_peer(pipe, path)
    if not trusted then return finish(nil, terr, tcode) end
    ask(request)
    pipe:read_start(function(rderr, data)
      if rderr or not data then return finish(result, rerr, rcode) end
      local fed, ferr, fcode = framer:feed(data, on_line)
      if not fed then finish(nil, ferr, fcode) end
    end)
  end)
  uv.run()
  return result, rerr, rcode
end

return M
