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
local sandbox = require "portman.sandbox"
local check = require "portman.check"

local M = {}

-- ---- printing values readably ----

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

-- tostring that does not raise (a closed luv handle's __tostring does)
local function text_of(v)
  local ok, s = pcall(tostring, v)
  return ok and type(s) == "string" and s or "<" .. type(v) .. ">"
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return text_of(a) < text_of(b)
end

local function show(v, indent, seen, depth)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) ~= "table" then return text_of(v) end
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

M.REPL_BUDGET = 5000 -- ms a REPL line may run (the daemon's setting; see M.serve)

-- The sandbox's hook is set on the line's own coroutine; a coroutine the
-- line makes has the hook without a budget. So the REPL's `coroutine`
-- arms each coroutine it resumes while a line runs with what is left of
-- the line's budget (and disarms it after: resumed later, by the daemon,
-- it runs free). Coroutines made by the daemon's own modules
-- (portman.spawn) are not covered.
local function line_coroutines(repl)
  local lib = {}
  for k, v in pairs(coroutine) do lib[k] = v end
  function lib.resume(co, ...)
    local deadline = repl.deadline
    if not deadline or type(co) ~= "thread" or coroutine.status(co) ~= "suspended" then
      return coroutine.resume(co, ...)
    end
    core.sandbox_arm(co, math.max(1, (deadline - uv.hrtime()) // 1000000), repl.fd)
    local r = table.pack(coroutine.resume(co, ...))
    local why = core.sandbox_why(co)
    debug.sethook(co)
    -- the budget is spent (or an interrupt waits): the line's own hook
    -- ends the line within its next few thousand instructions
    if why then while true do end end
    return table.unpack(r, 1, r.n)
  end
  function lib.wrap(fn)
    local co = coroutine.create(fn)
    return function(...)
      local r = table.pack(lib.resume(co, ...))
      if not r[1] then
        coroutine.close(co)
        error(r[2], 0)
      end
      return table.unpack(r, 2, r.n)
    end
  end
  return lib
end

--- A REPL with a per-client environment (reads fall through to _G).
-- @tparam[opt] table vars names to have at hand (manager, daemon, ...)
-- @tparam[opt] table opts `budget` (ms a line may run, REPL_BUDGET), `fd`
--   (the client's socket: an interrupt line waiting on it ends the line)
function M.repl(vars, opts)
  opts = opts or {}
  local env = setmetatable({}, {__index = _G})
  for k, v in pairs(vars or {}) do env[k] = v end
  env.print = function(...) -- print into the reply, not the daemon's stdout
    local t = table.pack(...)
    for i = 1, t.n do t[i] = tostring(t[i]) end
    if env._out then env._out[#env._out + 1] = table.concat(t, "\t", 1, t.n) end
  end
  local budget = opts.budget or M.REPL_BUDGET
  if math.type(budget) ~= "integer" or budget < 1 then
    check.argerror("repl", 2, "budget: positive integer ms expected, got " .. tostring(budget))
  end
  local repl = setmetatable({env = env, buffer = nil, budget = budget, fd = opts.fd}, Repl)
  env.coroutine = line_coroutines(repl)
  return repl
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

-- What `help` says of the names the daemon puts at hand; any other name
-- in the environment is shown with its type.
local DESCRIBE = {
  manager = "the manager (portman.manager): pools, services, checks, mappings, state",
  daemon = "the daemon: policy (the policy loaded), path (its file), manager, stop()",
  print = "prints into this REPL's output",
}

local CALLS = {
  {"manager:status()", "the document of `portman status`"},
  {"manager:names()", "the names of the running services"},
  {"manager:service(name)", "one service's status entry"},
  {"manager:register{name = ..., port = ..., type = ...}", "registers a service another process runs"},
  {"manager:unregister(name)", "removes such a registration"},
  {"manager:add_service{name = ..., pool = ...}", "starts a service"},
  {"manager:stop_service(name)", "stops a service"},
}

--- The text `help` prints: the names at hand, the common calls, the keys.
function Repl:help()
  local names = {}
  for k in pairs(self.env) do
    if type(k) == "string" and k ~= "_out" and k ~= "coroutine" then names[#names + 1] = k end
  end
  table.sort(names)
  local out = {"Lua inside the running daemon: a line is an expression (its value is printed) or statements.",
               "Names at hand:"}
  for _, k in ipairs(names) do
    out[#out + 1] = ("  %-9s %s"):format(k, DESCRIBE[k] or type(rawget(self.env, k)))
  end
  out[#out + 1] = "Common calls:"
  for _, c in ipairs(CALLS) do out[#out + 1] = ("  %-52s %s"):format(c[1], c[2]) end
  out[#out + 1] = ("A line may run %d ms; Ctrl-C interrupts it, and at the prompt drops the line typed.")
    :format(self.budget)
  out[#out + 1] = "Tab completes names and fields. .exit or Ctrl-D leaves. (A variable named help hides this text.)"
  return table.concat(out, "\n")
end

--- Feeds one line; returns the output text and the next prompt ("> ", or
-- ">> " while a chunk is incomplete, as lua.c decides: a syntax error at
-- <eof>). A complete chunk runs under portman.sandbox: at most `budget`
-- ms, and an interrupt from the client ends it; the daemon goes on either
-- way. `help` alone on a line prints help (unless a variable named help
-- exists: then it is Lua like any other line).
-- @tparam[opt] table opts `interrupted`: the client already asked to
--   interrupt this line (its interrupt came along with it): it does not run
function Repl:feed(line, opts)
  if not self.buffer and line:match("^%s*help%s*$") and self.env.help == nil then
    return self:help(), "> "
  end
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
  if opts and opts.interrupted then return "interrupted: REPL line was interrupted", "> " end
  self.env._out = {}
  self.deadline = uv.hrtime() + self.budget * 1000000
  local r = table.pack(sandbox.run(fn, {budget = self.budget, fd = self.fd, what = "REPL line"}))
  local out = self.env._out
  self.env._out = nil
  if not r[1] then
    -- the traceback down to the chunk typed, not the REPL's own frames
    out[#out + 1] = (tostring(r[2]):gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
  elseif r.n > 1 then
    -- showing runs code too (__tostring, __pairs): under what is left of the budget
    local left = math.max(1, (self.deadline - uv.hrtime()) // 1000000)
    local ok, text = sandbox.run(results, {budget = left, fd = self.fd, what = "REPL line"}, table.unpack(r, 2, r.n))
    out[#out + 1] = ok and text or "error showing the result: " .. tostring(text)
  end
  self.deadline = nil
  return table.concat(out, "\n"), "> "
end

--- Drops a chunk left incomplete (Ctrl-C at the ">> " prompt).
function Repl:cancel()
  self.buffer = nil
end

-- ---- completion: names are walked, never evaluated ----

local MAX_CANDIDATES = 1000

-- v[k] through raw tables and __index tables only: no metamethod runs.
local function field(v, k)
  for _ = 1, 16 do
    if type(v) == "table" then
      local r = rawget(v, k)
      if r ~= nil then return r end
    end
    local mt = debug.getmetatable(v)
    local idx = type(mt) == "table" and rawget(mt, "__index")
    if type(idx) ~= "table" then return nil end
    v = idx
  end
  return nil
end

local function callable(v)
  if type(v) == "function" then return true end
  local mt = debug.getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

-- The identifier keys of v, its __index tables' and theirs, each with its
-- first value: key -> value.
local function keys(v)
  local found, seen = {}, {}
  for _ = 1, 16 do
    if type(v) == "table" and not seen[v] then
      seen[v] = true
      for k, x in next, v do
        if is_identifier(k) and found[k] == nil then found[k] = x end
      end
    end
    local mt = debug.getmetatable(v)
    local idx = type(mt) == "table" and rawget(mt, "__index")
    if type(idx) ~= "table" or seen[idx] then break end
    v = idx
  end
  return found
end

--- Completions of text: a name (the environment's and _G's), or a chain
-- `a.b.c`, `a.b:c` whose last part is being typed. Fields come from the
-- value's table and its metatable's __index tables; after `:` only
-- functions. Names starting with `_` only when the part typed does.
-- @return a sorted list of whole texts (`manager:status`, ...)
function Repl:complete(text)
  local head, sep, part = text:match("^(.-)([.:]?)([%w_]*)$")
  if not head then return {} end
  local v = self.env
  if sep ~= "" then
    for name in (head .. "."):gmatch("([^.]*)%.") do
      if not is_identifier(name) then return {} end
      v = field(v, name)
      if v == nil then return {} end
    end
  elseif head ~= "" then
    return {}
  end
  local out = {}
  for k, x in pairs(keys(v)) do
    if k:sub(1, #part) == part and (part:sub(1, 1) == "_" or k:sub(1, 1) ~= "_")
      and (sep ~= ":" or callable(x)) then
      out[#out + 1] = head .. sep .. k
      if #out >= MAX_CANDIDATES then break end
    end
  end
  table.sort(out)
  return out
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
-- Admin connections at once: at most this, and at most a quarter of the
-- fd limit, so that idle clients can never take the fds the services and
-- their health checks need.
M.MAX_CLIENTS = 64
M.MAX_REPLY = 256 * 1024 * 1024 -- bytes in one reply line (a status of many services)
M.IDLE_TIMEOUT = 300000       -- ms a client may stay silent before it is closed

--- Collects the garbage and gives the freed pages back to the system
-- (glibc keeps them, counted in the RSS, until asked): after a start or a
-- large reply, so that a daemon's memory is what it holds.
function M.release_memory()
  collectgarbage()
  core.trim_memory()
end

M.LARGE_REPLY = 64 * 1024 -- bytes: after a reply this large is sent, the garbage is collected

-- Writes doc as one line; after(), if given, runs once the write has gone
-- out (a close then never cuts a large reply short). The text's pieces
-- and its newline go out as they are (no copy of a large text). A large reply
-- (a status of a thousand services or more) leaves megabytes of garbage: it is
-- collected once the reply is out, so that the daemon's memory does not
-- grow by it for good. timing ({op, t0 = uv.hrtime(), cpu0 = os.clock()
-- when the op began}), if given, is logged at debug level with the time
-- the daemon spent: `ms` (and `cpu_ms` of CPU) to build and encode the
-- reply, `sent_ms` until the client had it all.
local function send(client, doc, after, timing)
  if client:is_closing() then return end
  local text = json.encode_pieces(doc) -- written as they are: a large text is never joined
  local encoded, cpu = timing and uv.hrtime(), timing and os.clock()
  local bytes = 1
  for _, piece in ipairs(text) do bytes = bytes + #piece end
  text[#text + 1] = "\n"
  local large = bytes > M.LARGE_REPLY
  if not (after or large or timing) then return client:write(text) end
  client:write(text, function()
    if timing then
      log.debug("admin_request", {op = timing.op, bytes = bytes,
        ms = ("%.2f"):format((encoded - timing.t0) / 1e6), cpu_ms = ("%.2f"):format((cpu - timing.cpu0) * 1e3),
        sent_ms = ("%.2f"):format((uv.hrtime() - timing.t0) / 1e6)})
    end
    text = nil
    -- on the next turn: luv holds the written strings until this callback returns
    if large then
      local later = uv.new_timer()
      later:start(0, 0, function()
        later:close()
        M.release_memory()
      end)
    end
    if after then after() end
  end)
end

local INTERRUPT = '{"interrupt"' -- how an interrupt line starts (the sandbox's hook peeks for it)

-- Reads one request line of a connection (session: its REPL, if any, and
-- start_repl() to make one). Returns the reply document (nil: none),
-- whether the connection closes once it is written, and the op's timing.
-- In a REPL, {"interrupt": ...} ends the line running (the sandbox sees it
-- on the socket); read afterwards, or with nothing running, it is ignored.
-- interrupted: an interrupt line came in the same read, after this one.
function M.request(server, session, line, interrupted)
  local req = json.decode(line)
  if type(req) ~= "table" then return {error = "protocol: request is not a JSON object"}, true end
  local op = req.op ~= "repl" and server.ops[req.op]
  local repl = session.repl
  if op then
    local timing = {op = req.op, t0 = uv.hrtime(), cpu0 = os.clock()}
    return op(req), true, timing
  elseif req.op == "repl" then
    session.repl = session.start_repl()
    return {out = "portman " .. portman.version .. " REPL: Lua inside the daemon; "
      .. "`manager` and `daemon` are at hand. `help` says more; Ctrl-D or .exit leaves.", prompt = "> ",
      budget = session.repl.budget}
  elseif repl and req.interrupt ~= nil then
    return nil -- nothing runs now
  elseif repl and type(req["in"]) == "string" then
    local out, prompt = repl:feed(req["in"], {interrupted = interrupted})
    return {out = out, prompt = prompt}
  elseif repl and type(req.complete) == "string" then
    return {candidates = json.array(repl:complete(req.complete))}
  elseif repl and req.cancel ~= nil then
    repl:cancel()
    return {out = "", prompt = "> "}
  end
  return {error = "protocol: unknown request"}, true
end

-- Serves one accepted connection: reads JSON lines, answers each
-- (M.request). A line over MAX_REQUEST or a client silent for IDLE_TIMEOUT
-- is closed.
local function serve_client(server, client)
  local session = {start_repl = function()
    return M.repl(server.vars, {budget = server.repl_budget, fd = client:fileno()})
  end}
  local framer = lines.new(server.max_request)
  local idle = uv.new_timer()
  server.clients = server.clients + 1
  local function close()
    if not idle:is_closing() then idle:close() end
    if not client:is_closing() then
      client:close()
      server.clients = server.clients - 1
    end
  end
  local function touch()
    idle:start(server.idle_timeout, 0, function()
      log.info("admin_idle_closed", {after_ms = server.idle_timeout})
      close()
    end)
  end
  local function on_line(line, interrupted)
    local reply, closing, timing = M.request(server, session, line, interrupted)
    if reply == nil then return end
    send(client, reply, closing and close or nil, timing)
    if closing then return false end
  end
  touch()
  client:read_start(async.safe(function(err, data)
    if err or not data then return close() end
    touch()
    local batch = {}
    local ok, ferr = framer:feed(data, function(line) batch[#batch + 1] = line end)
    for i, line in ipairs(batch) do
      if client:is_closing() then break end
      local later = false
      for j = i + 1, #batch do
        if batch[j]:sub(1, #INTERRUPT) == INTERRUPT then later = true break end
      end
      if on_line(line, later) == false then return end
    end
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

local function max_clients(asked)
  local cap = math.max(4, (core.fd_limit() or 4096) // 4)
  return math.min(asked or M.MAX_CLIENTS, cap)
end

--- Serves the admin socket at path.
-- @tparam table opts `ops` (op name -> function(request) returning the
--   reply document: "status", "events", ...; or just `status`), `vars`
--   (the REPL's names: manager, daemon, ...), `repl_budget` (ms a REPL
--   line may run, REPL_BUDGET), `max_request` (bytes in a request line,
--   MAX_REQUEST), `idle_timeout` (ms, IDLE_TIMEOUT), `max_clients`
--   (connections at once: MAX_CLIENTS, and never above a quarter of the
--   fd limit; one more is told `exhausted` and closed)
-- @return[1] a server with :close()
-- @return[2] nil, msg, code
function M.serve(path, opts)
  if opts.repl_budget ~= nil and (math.type(opts.repl_budget) ~= "integer" or opts.repl_budget < 1) then
    check.argerror("serve", 2, "repl_budget: positive integer ms expected, got " .. tostring(opts.repl_budget))
  end
  local ok, err, code = private_dir(path)
  if not ok then return nil, err, code end
  local l
  l, err, code = listener.open{proto = "unix", path = path, mode = tonumber("600", 8)}
  if not l then return nil, err, code end
  local server = {ops = opts.ops or {status = opts.status}, vars = opts.vars, listener = l, path = path,
                  repl_budget = opts.repl_budget,
                  max_request = opts.max_request or M.MAX_REQUEST, idle_timeout = opts.idle_timeout or M.IDLE_TIMEOUT,
                  clients = 0, max_clients = max_clients(opts.max_clients)}
  ok, err, code = l:serve(function(client)
    local permitted, peer = allowed(client)
    if not permitted then
      log.warn("admin_refused", {uid = tostring(peer)})
      return client:close()
    end
    if server.clients >= server.max_clients then
      log.warn("admin_busy", {clients = server.clients})
      local msg = ("exhausted: %d admin connections already open"):format(server.clients)
      return send(client, {error = msg, code = "exhausted"}, function() client:close() end)
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

local Conn = {}
Conn.__index = Conn

-- Runs the loop until done() is true or ms pass; true, or false on timeout.
local function wait(conn, done, ms)
  local expired = false
  uv.update_time()
  conn.timer:start(ms, 0, function() expired = true end)
  while not done() and not expired do uv.run("once") end
  conn.timer:stop()
  return not expired or done()
end

--- Connects to the admin socket, running the loop until connected: the
-- caller then drives the conversation, one request and reply at a time
-- (conn:request), and may run its own handles meanwhile.
-- @tparam[opt] table opts `timeout`: ms to wait for each reply (TIMEOUT)
-- @return[1] a connection: :send(doc), :send_line(text), :receive([ms]),
--   :request(doc[, ms]), :close()
-- @return[2] nil, msg, code: "not_found", "refused" (no daemon there),
--   "denied" (a socket the caller should not trust), "timeout"
function M.connect(path, opts)
  local ok, err, code = trusted_dir(path)
  if not ok then return nil, err, code end
  local conn = setmetatable({path = path, timeout = opts and opts.timeout or M.TIMEOUT, pipe = uv.new_pipe(),
                             timer = uv.new_timer(), replies = {}, framer = lines.new(M.MAX_REPLY)}, Conn)
  local connected
  conn.pipe:connect(path, function(cerr) connected = {cerr or true} end)
  if not wait(conn, function() return connected end, conn.timeout) then
    conn:close()
    return errors.fail("timeout", "admin socket %s: no connection in %d ms", path, conn.timeout)
  end
  if connected[1] ~= true then
    conn:close()
    return errors.from(connected[1], "admin socket " .. path)
  end
  ok, err, code = trusted_peer(conn.pipe, path)
  if not ok then
    conn:close()
    return nil, err, code
  end
  conn.pipe:read_start(function(rderr, data)
    if rderr or not data then
      conn.ended = true
      return
    end
    local fed, ferr, fcode = conn.framer:feed(data, function(line)
      local doc = json.decode(line)
      if type(doc) ~= "table" then
        doc = {_failed = {errors.fail("protocol", "admin socket %s: a reply that is not a JSON object", path)}}
      end
      conn.replies[#conn.replies + 1] = doc
    end)
    if not fed then conn.replies[#conn.replies + 1] = {_failed = {nil, ferr, fcode}} end
  end)
  return conn
end

--- Writes doc as one JSON line.
function Conn:send(doc)
  return self:send_line(json.encode(doc))
end

--- Writes text and a newline as they are.
function Conn:send_line(text)
  if self.pipe:is_closing() or self.ended then return end
  self.pipe:write(text .. "\n")
end

--- Waits up to ms (the connection's timeout) for the next reply.
-- @return[1] the reply
-- @return[2] nil, msg, code: "timeout", "closed" (the daemon closed the
--   connection), "protocol"
function Conn:receive(ms)
  ms = ms or self.timeout
  wait(self, function() return #self.replies > 0 or self.ended end, ms)
  local doc = table.remove(self.replies, 1)
  if doc and doc._failed then return table.unpack(doc._failed, 1, 3) end
  if doc then return doc end
  if self.ended then return nil, "closed: the daemon closed the connection", "closed" end
  return errors.fail("timeout", "admin socket %s: no answer in %d ms", self.path, ms)
end

--- Sends doc and waits for its reply (Conn:receive).
function Conn:request(doc, ms)
  self:send(doc)
  return self:receive(ms)
end

function Conn:close()
  if not self.timer:is_closing() then self.timer:close() end
  if not self.pipe:is_closing() then self.pipe:close() end
end

--- Sends one request and calls on_reply(doc) for each reply line until
-- on_reply returns a request to send next, or nil to stop.
-- @tparam[opt] table opts `timeout`: ms to wait for each reply (TIMEOUT)
-- @return[1] true
-- @return[2] nil, msg, code: "not_found", "refused" (no daemon there),
--   "denied" (a socket the caller should not trust), "timeout", "closed",
--   "protocol"
function M.talk(path, request, on_reply, opts)
  local conn, err, code = M.connect(path, opts)
  if not conn then return nil, err, code end
  local doc, reply = request, nil
  while doc do
    reply, err, code = conn:request(doc)
    if not reply then break end
    doc = on_reply(reply)
  end
  conn:close()
  uv.run("nowait") -- the close callbacks
  if not reply then return nil, err, code end
  return true
end

return M
