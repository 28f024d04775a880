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

local function send(client, doc)
  if not client:is_closing() then client:write(json.encode(doc) .. "\n") end
end

-- Serves one accepted connection: reads JSON lines, answers each.
local function serve_client(server, client)
  local repl, buffered = nil, ""
  local function on_line(line)
    local req = json.decode(line)
    if type(req) ~= "table" then
      send(client, {error = "protocol: request is not a JSON object"})
      return client:close()
    end
    if req.op == "status" then
      send(client, server.status())
      return client:close()
    elseif req.op == "repl" then
      repl = M.repl(server.vars)
      send(client, {out = "portman " .. portman.version .. " REPL: Lua inside the daemon; "
        .. "`manager` and `daemon` are at hand. Ctrl-D or .exit leaves.", prompt = "> "})
    elseif repl and type(req["in"]) == "string" then
      local out, prompt = repl:feed(req["in"])
      send(client, {out = out, prompt = prompt})
    else
      send(client, {error = "protocol: unknown request"})
      client:close()
    end
  end
  client:read_start(async.safe(function(err, data)
    if err or not data then return client:close() end
    buffered = buffered .. data
    for line in buffered:gmatch("([^\n]*)\n") do
      if client:is_closing() then return end
      on_line(line)
    end
    buffered = buffered:match("[^\n]*$")
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
-- @tparam table opts `status` (a function returning the status document),
--   `vars` (the REPL's names: manager, daemon, ...)
-- @return[1] a server with :close()
-- @return[2] nil, msg, code
function M.serve(path, opts)
  local ok, err, code = private_dir(path)
  if not ok then return nil, err, code end
  local l
  l, err, code = listener.open{proto = "unix", path = path, mode = tonumber("600", 8)}
  if not l then return nil, err, code end
  local server = {status = opts.status, vars = opts.vars, listener = l, path = path}
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

--- Sends one request and calls on_reply(doc) for each reply line until
-- on_reply returns a request to send next, or nil to stop.
-- @return[1] true
-- @return[2] nil, msg, code (the daemon is not there: "not_found", "refused", "denied")
function M.talk(path, request, on_reply)
  local pipe = uv.new_pipe()
  local result, rerr, rcode = true, nil, nil
  pipe:connect(path, function(err)
    if err then
      result, rerr, rcode = errors.from(err, "admin socket " .. path)
      return pipe:close()
    end
    pipe:write(json.encode(request) .. "\n")
    local buffered = ""
    pipe:read_start(function(rderr, data)
      if rderr or not data then return pipe:close() end
      buffered = buffered .. data
      for line in buffered:gmatch("([^\n]*)\n") do
        local nxt = on_reply(json.decode(line) or {error = "protocol: bad reply"})
        if nxt then pipe:write(json.encode(nxt) .. "\n") else return pipe:close() end
      end
      buffered = buffered:match("[^\n]*$")
    end)
  end)
  uv.run()
  return result, rerr, rcode
end

return M
