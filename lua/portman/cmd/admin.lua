--- `portman status` and `portman repl`: the admin socket's clients.
local uv = require "luv"
local admin = require "portman.admin"
local cmd = require "portman.cmd"
local json = require "portman.json"

local client = require "portman.cmd.client"

local SOCKET, TIMEOUT = client.SOCKET, client.TIMEOUT

-- How long ago unix time t was: "42s", "5m", "3h", "2d".
local function age(t)
  if type(t) ~= "number" then return "-" end
  local s = math.max(0, os.time() - t)
  if s < 120 then return s .. "s" end
  if s < 7200 then return s // 60 .. "m" end
  if s < 172800 then return s // 3600 .. "h" end
  return s // 86400 .. "d"
end

-- The status column's reason, on one short line.
local function short(reason)
  if type(reason) ~= "string" then return "" end
  reason = reason:gsub("%s+", " ")
  return #reason > 60 and reason:sub(1, 57) .. "..." or reason
end

local function service_rows(doc)
  local rows = {}
  for i, s in ipairs(doc.services or {}) do
    local status = s.status
    if s.holder then status = ("%s (pid %s %s)"):format(status, tostring(s.holder.pid), s.holder.program or "?") end
    rows[i] = {s.name, s.type or "-", s.proto, s.address, math.tointeger(s.port) or s.port or "-", status,
               age(s.since), s.pid and math.tointeger(s.pid) or "-", short(s.reason)}
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
  if doc.reload then lines[#lines + 1] = "last reload failed (the old policy runs): " .. short(doc.reload.error) end
  if doc.state then lines[#lines + 1] = "the state file cannot be written: " .. short(doc.state.error) end
  return #lines > 0 and table.concat(lines, "\n") or nil
end

-- ---- `portman repl`: reading lines ----
--
-- A reader's read(prompt) returns the line, nil at the end of the input
-- (Ctrl-D), or false when Ctrl-C was pressed at the prompt (the line is
-- dropped). On a terminal it waits in the loop (a poll on /dev/tty), so
-- that SIGINT reaches the REPL's signal handle: with readline through its
-- callback interface (history, line editing, Tab completion), else the
-- terminal's own line editing. From a pipe or a file it reads blocking,
-- without prompts (as lua.c does).

-- The completion word readline hands over may hold more than a name
-- (`x+manager:st`, `t[manager.na`): the tail that is a chain of names.
local function split_word(word)
  local tail = word:match("[%a_][%w_.:]*$") or ""
  return word:sub(1, #word - #tail), tail
end

-- Runs the loop until readable() or the REPL saw SIGINT; true when readable.
local function wait_tty(poll, state)
  local readable = false
  poll:start("r", function() readable = true end)
  while not readable and not state.sigint do uv.run("once") end
  poll:stop()
  return readable
end

local function readline_reader(rl, tty, state, complete)
  rl.set_options{histfile = "~/.portman_history", keeplines = 1000, completion = true}
  rl.set_readline_name("portman")
  rl.set_complete_function(function(line, from, to)
    rl.set_completion_append_character("") -- readline sets ' ' before each completion
    -- from..to-1 is the word before the cursor; an error must not cross readline
    local ok, list = pcall(function()
      local head, tail = split_word(line:sub(from, to - 1))
      if tail == "" and head ~= "" then return {} end
      local out = {}
      for i, c in ipairs(complete(tail)) do out[i] = head .. c end
      return out
    end)
    return ok and list or {}
  end)
  -- lua-readline's handler_remove closes its stream before readline
  -- restores the terminal through it (a use after free), unless the line
  -- is over: so it is called only from the line handler. Ctrl-C installs
  -- the handler anew instead (a fresh line; the binding keeps the old
  -- stream open).
  local poll, installed, previous = uv.new_poll(tty), false, nil
  local r = {}
  function r.read(prompt)
    local got, line = false, nil
    rl.handler_install(prompt, function(l)
      got, line, installed = true, l, false
      rl.handler_remove() -- the line is over: safe, and readline prompts no more
    end)
    installed = true
    while not got do
      if not wait_tty(poll, state) then -- Ctrl-C: drop the line, as bash and psql do
        if rl.sigcleanup then rl.sigcleanup() end
        io.stdout:write("^C\n")
        io.stdout:flush()
        return false
      end
      rl.read_char()
    end
    if line == nil then io.stdout:write("\n") end -- the shell's prompt on a line of its own
    if line and line:find("%S") and line ~= previous then
      rl.add_history(line)
      previous = line
    end
    return line
  end
  function r.close()
    -- a line left open only when something failed: the terminal may stay as readline set it
    if installed then io.stdout:write("\n") end
    poll:close()
    uv.fs_close(tty)
    rl.save_history()
  end
  return r
end

local function tty_reader(tty, state)
  local poll = uv.new_poll(tty)
  return {
    read = function(prompt)
      io.stdout:write(prompt)
      io.stdout:flush()
      if not wait_tty(poll, state) then
        io.stdout:write("\n")
        return false
      end
      local line = io.read("l")
      if line == nil then io.stdout:write("\n") end
      return line
    end,
    close = function()
      poll:close()
      uv.fs_close(tty)
    end,
  }
end

-- The reader for stdin: readline on a terminal when it is there (not with
-- TERM=dumb), the terminal's line editing else, plain lines from a pipe.
local function line_reader(state, complete)
  local tty = uv.guess_handle(0) == "tty" and uv.fs_open("/dev/tty", "r", 0)
  if not tty then
    return {read = function() return io.read("l") end, close = function() end}
  end
  local ok, rl = pcall(require, "readline")
  if ok and os.getenv("TERM") ~= "dumb" then return readline_reader(rl, tty, state, complete) end
  return tty_reader(tty, state)
end

-- The session: a reply's output is printed, the next line read and sent.
-- SIGINT while a line runs sends {"interrupt":true} (the daemon ends the
-- line); at the prompt it drops the line typed and any chunk left
-- incomplete ({"cancel":true}).
local function repl_session(conn, out, timeout)
  local state = {sigint = false, waiting = false, interrupted = false}
  local sigint = uv.new_signal()
  sigint:start("sigint", function()
    if state.waiting then
      state.interrupted = true
      conn:send_line('{"interrupt":true}')
    else
      state.sigint = true
    end
  end)
  local reader = line_reader(state, function(text)
    local reply, err, code = conn:request({complete = text}, timeout)
    -- a late answer would pass for the next one's: the session ends
    if not reply then state.failed = {err, code} end
    return reply and type(reply.candidates) == "table" and reply.candidates or {}
  end)
  local function converse()
    local reply, err, code = conn:request({op = "repl"})
    local budget = reply and math.tointeger(reply.budget) or 0
    while reply do
      if reply.error then return nil, reply.error, reply.error:match("^(%w+):") or "protocol" end
      if state.interrupted and uv.guess_handle(1) == "tty" then out:write("\n") end -- after the ^C
      if reply.out and reply.out ~= "" then out:write(reply.out, "\n") end
      out:flush()
      state.sigint, state.interrupted = false, false
      local line = reader.read(reply.prompt or "> ")
      if state.failed then return nil, state.failed[1], state.failed[2] end
      if line == false then
        reply, err, code = conn:request({cancel = true})
      elseif line == nil or line == ".exit" then
        return true
      else
        state.waiting = true
        reply, err, code = conn:request({["in"] = line}, timeout + budget)
        state.waiting = false
      end
    end
    return nil, err, code
  end
  -- whatever happens, the terminal is given back as it was
  local r = table.pack(xpcall(converse, debug.traceback))
  reader.close()
  sigint:close()
  conn:close()
  uv.run("nowait")
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

return {
  status = {
    summary = "show a running daemon's services, pools and router mappings",
    flags = {SOCKET, TIMEOUT},
    json = true,
    table = true,
    run = function(opts)
      local doc, err, code = client.ask(opts, {op = "status"})
      if not doc then return nil, err, code end
      -- lists stay lists when empty (a decoded [] is a table like {})
      for _, key in ipairs({"services", "pools", "mappings"}) do doc[key] = json.array(doc[key] or {}) end
      -- the table's rows only for the table (10,000 services: tens of ms)
      return {json = doc, header = {"SERVICE", "TYPE", "PROTO", "ADDRESS", "PORT", "STATUS", "SINCE", "PID", "REASON"},
              rows = not opts.json and service_rows(doc) or {}, footer = footer(doc)}
    end,
  },
  repl = {
    summary = "attach a Lua REPL to a running daemon (`manager` and `daemon` at hand; Ctrl-D leaves)",
    notes = "`help` at the prompt lists the names at hand and the common calls; Tab completes names and "
      .. "fields. A line runs at most the daemon's REPL budget (5000 ms unless the daemon says otherwise); "
      .. "Ctrl-C ends a line that runs, and drops the line typed at the prompt. The answer to a line is "
      .. "awaited for --timeout ms plus that budget.",
    flags = {SOCKET, TIMEOUT},
    run = function(opts, ctx)
      cmd.at_least(opts, "timeout", 1)
      local conn, err, code = admin.connect(opts.admin_socket or admin.default_path(), {timeout = opts.timeout})
      if not conn then return nil, err, code end
      return repl_session(conn, ctx.out, opts.timeout)
    end,
  },
}
