--- `portman status` and `portman repl`: the admin socket's clients.
local uv = require "luv"
local admin = require "portman.admin"
local cmd = require "portman.cmd"

local SOCKET = {"admin-socket", "PATH", "the daemon's admin socket (default: $XDG_RUNTIME_DIR/portman/admin.sock, "
  .. "/run/portman/admin.sock for root); its directory must be yours or root's and writable by no one else"}
local TIMEOUT = {"timeout", "MS", "ms to wait for each answer of the daemon", kind = "int", default = admin.TIMEOUT}

local function service_rows(doc)
  local rows = {}
  for i, s in ipairs(doc.services or {}) do
    rows[i] = {s.name, s.type or "-", s.proto, s.address, math.tointeger(s.port) or s.port, s.status}
  end
  return rows
end

local function footer(doc)
  local lines = {}
  for _, p in ipairs(doc.pools or {}) do
    lines[#lines + 1] = ("pool %s %d-%d: %d of %d allocated (%.1f%%)"):format(p.name, p.range[1], p.range[2],
      p.allocated, p.size, p.utilization)
  end
  for _, m in ipairs(doc.mappings or {}) do
    lines[#lines + 1] = ("mapping %s %s:%d -> %d (%s)"):format(m.proto, m.external_ip or "?", m.external_port,
      m.internal_port, m.method)
  end
  return #lines > 0 and table.concat(lines, "\n") or nil
end

-- Reads a line with readline (history, line editing) where available.
local function line_reader()
  local ok, rl = pcall(require, "readline")
  -- readline only on a terminal: fed from a pipe it would echo every line
  if ok and uv.guess_handle(0) == "tty" and os.getenv("TERM") ~= "dumb" then
    rl.set_options{histfile = "~/.portman_history", keeplines = 1000, completion = false}
    return function(prompt) return rl.readline(prompt) end, function() rl.save_history() end
  end
  local tty = uv.guess_handle(0) == "tty"
  return function(prompt)
    if tty then -- as lua.c: prompts only for a person at a terminal
      io.stdout:write(prompt)
      io.stdout:flush()
    end
    return io.read("l")
  end, function() end
end

return {
  status = {
    summary = "show a running daemon's services, pools and router mappings",
    flags = {SOCKET, TIMEOUT},
    json = true,
    table = true,
    run = function(opts)
      cmd.at_least(opts, "timeout", 1)
      local doc
      local ok, err, code = admin.talk(opts.admin_socket or admin.default_path(), {op = "status"},
        function(reply) doc = reply end, {timeout = opts.timeout})
      if not ok then return nil, err, code end
      if not doc then return nil, "closed: the daemon sent no status", "closed" end
      return {json = doc, header = {"SERVICE", "TYPE", "PROTO", "ADDRESS", "PORT", "STATUS"},
              rows = service_rows(doc), footer = footer(doc)}
    end,
  },
  repl = {
    summary = "attach a Lua REPL to a running daemon (`manager` and `daemon` at hand; Ctrl-D leaves)",
    flags = {SOCKET, TIMEOUT},
    run = function(opts, ctx)
      cmd.at_least(opts, "timeout", 1)
      local out = ctx.out
      local read, done = line_reader()
      local ok, err, code = admin.talk(opts.admin_socket or admin.default_path(), {op = "repl"}, function(reply)
        if reply.error then out:write(reply.error, "\n") return nil end
        if reply.out ~= "" then out:write(reply.out, "\n") end
        out:flush()
        local line = read(reply.prompt)
        if line == nil or line == ".exit" then return nil end
        return {["in"] = line}
      end, {timeout = opts.timeout})
      done()
      if not ok then return nil, err, code end
      return true
    end,
  },
}
