--- The command line: `portman COMMAND [ARGS]` (docs/design.md, "The
-- command line"). This file parses and dispatches; each command lives in
-- its own file under portman/cmd/ and returns a table of command specs:
--
--     {name = {summary = "...", args = {{"PORT", "what it is"}, ...},
--              flags = {{"timeout", "MS", "what it does", kind = "int", default = 5000}, ...},
--              json = true,       -- takes --json
--              table = true,      -- prints a table: takes -H/--no-header
--              notes = "...",     -- more help text
--              run = function(opts, ctx) ... end}}
--
-- A flag entry is {long name, metavar (nil: a switch), help, kind =
-- "int"|"list" (default: a string), default = shown in help and set when
-- absent, short = "X"}. The same tables give the help, the man page and the
-- bash completion (portman.cmd.doc).
--
-- `run(opts, ctx)` returns one of: `{json = doc, text = "..."}`; `{json =
-- doc, header = {...}, rows = {{...}, ...}, footer = "..."}` (a table sized
-- to its content); either with `exit = 1` for a document that reports a
-- failure (portman check); true when it printed everything itself; or nil,
-- msg, code when the operation failed. A command validates its own flags and
-- raises ctx.usage(msg) for bad usage (exit 2); anything else raised is an
-- internal error (exit 1), never blamed on the user.
local uv = require "luv"
local json = require "portman.json"
local portman = require "portman"
local commands = require "portman.cmd.commands"
local doc = require "portman.cmd.doc"

local M = {}

M.ORDER, M.command, M.flags = commands.ORDER, commands.command, commands.flags

local USAGE_MT = {__tostring = function(e) return e.msg end}

--- Raises a usage error: the command exits 2 with msg and its usage line.
function M.usage_error(msg)
  error(setmetatable({msg = msg}, USAGE_MT), 0)
end

local function is_usage(e) return getmetatable(e) == USAGE_MT end

local function find_flag(flags, name, short)
  for _, f in ipairs(flags) do
    if (name and f[1] == name) or (short and f.short == short) then return f end
  end
  return nil
end

local function key_of(f) return (f[1]:gsub("%-", "_")) end

local function convert(f, value)
  if f.kind == "int" then
    local n = math.tointeger(tonumber(value))
    if not n or not tostring(value):match("^%-?%d+$") then
      M.usage_error(("--%s: integer expected, got '%s'"):format(f[1], value))
    end
    return n
  end
  return value
end

local function take(opts, f, value)
  local key = key_of(f)
  if f.kind == "list" then
    opts[key] = opts[key] or {}
    table.insert(opts[key], value)
  else
    opts[key] = convert(f, value)
  end
end

-- One command-line word that starts with '-': consumes its value when the
-- flag takes one; returns the index of the next word.
local function parse_flag(argv, i, flags, opts)
  local a = argv[i]
  local name, inline = a:match("^%-%-([%w%-]+)=(.*)$")
  name = name or a:match("^%-%-([%w%-]+)$")
  local short = not name and a:match("^%-(%a)$")
  local f = (name or short) and find_flag(flags, name, short)
  if not f then M.usage_error("unknown option " .. a) end
  if not f[2] then
    if inline then M.usage_error("--" .. f[1] .. " takes no value") end
    opts[key_of(f)] = true
    return i + 1
  end
  local value = inline
  if not value then
    i = i + 1
    value = argv[i]
    if value == nil then M.usage_error("--" .. f[1] .. " needs a value") end
  end
  take(opts, f, value)
  return i + 1
end

--- Parses argv (the words after the command name) against spec. Returns
-- a table keyed by flag (dashes become underscores) and by argument name
-- (lower case); a trailing argument with `rest = true` takes a list.
-- Defaults are filled in. Raises a usage error.
function M.parse(argv, spec)
  local flags = M.flags(spec)
  local opts, pos = {}, {}
  local i, only_args = 1, false
  while i <= #argv do
    local a = argv[i]
    if only_args or not a:match("^%-.") then
      pos[#pos + 1] = a
      i = i + 1
    elseif a == "--" then
      only_args, i = true, i + 1
    else
      i = parse_flag(argv, i, flags, opts)
    end
  end
  for _, f in ipairs(flags) do
    local key = key_of(f)
    if opts[key] == nil and f.default ~= nil then opts[key] = f.default end
  end
  local args = spec.args or {}
  for k, a in ipairs(args) do
    local key = a[1]:lower():gsub("[^%w]", "_")
    if a.rest then
      opts[key] = table.move(pos, k, #pos, 1, {})
      return opts
    end
    if pos[k] == nil then
      if not a.optional then M.usage_error("missing " .. a[1]) end
    else
      opts[key] = pos[k]
    end
  end
  if #pos > #args then M.usage_error("unexpected argument '" .. pos[#args + 1] .. "'") end
  return opts
end

--- Is -h or --help among the words (before a `--`)?
function M.wants_help(argv)
  for _, a in ipairs(argv) do
    if a == "--" then return false end
    if a == "-h" or a == "--help" then return true end
  end
  return false
end

--- Parses "LO-HI" into two integers, or raises a usage error naming flag.
function M.range(flag, text)
  local lo, hi = tostring(text):match("^(%d+)%-(%d+)$")
  if not lo then M.usage_error(("--%s: LO-HI expected, got '%s'"):format(flag, text)) end
  lo, hi = math.tointeger(tonumber(lo)), math.tointeger(tonumber(hi))
  if lo < 1 or hi > 65535 then M.usage_error(("--%s: ports 1-65535 expected, got '%s'"):format(flag, text)) end
  if lo > hi then M.usage_error(("--%s: %d > %d"):format(flag, lo, hi)) end
  return lo, hi
end

--- A port number given on the command line, or a usage error naming what.
function M.port(what, value)
  local p = math.tointeger(tonumber(value))
  if not p or p < 1 or p > 65535 or not tostring(value):match("^%d+$") then
    M.usage_error(("%s: port 1-65535 expected, got '%s'"):format(what, tostring(value)))
  end
  return p
end

--- Checks that opts[key] is at least min when given; a usage error otherwise.
function M.at_least(opts, key, min)
  local v = opts[key]
  if v ~= nil and v < min then M.usage_error(("--%s: at least %d"):format(key:gsub("_", "-"), min)) end
  return v
end

--- Checks that value is one of list; a usage error naming flag otherwise.
function M.oneof(flag, value, list)
  for _, v in ipairs(list) do
    if v == value then return value end
  end
  M.usage_error(("--%s: %s expected, got '%s'"):format(flag, table.concat(list, ", "), tostring(value)))
end

--- "1 port", "2 ports": count and word, with the plural when count ~= 1.
function M.plural(n, word, words)
  return ("%d %s"):format(n, n == 1 and word or (words or word .. "s"))
end

--- A table sized to its content: columns padded to their widest cell, the
-- last column unpadded. header may be nil.
function M.format_table(header, rows)
  local all = {}
  if header then all[1] = header end
  for _, r in ipairs(rows) do all[#all + 1] = r end
  local widths = {}
  for _, r in ipairs(all) do
    for c, cell in ipairs(r) do widths[c] = math.max(widths[c] or 0, #tostring(cell)) end
  end
  local lines = {}
  for i, r in ipairs(all) do
    local cells = {}
    for c, cell in ipairs(r) do
      cell = tostring(cell)
      cells[c] = c < #r and cell .. (" "):rep(widths[c] - #cell) or cell
    end
    lines[i] = (table.concat(cells, "  "):gsub("%s+$", ""))
  end
  return table.concat(lines, "\n")
end

local function render(result, opts)
  if opts.json then return json.encode(result.json, {sorted = true}) end
  if result.rows then
    local parts = {}
    if #result.rows > 0 then
      parts[#parts + 1] = M.format_table(not opts.no_header and result.header or nil, result.rows)
    end
    if result.footer and not opts.no_header then parts[#parts + 1] = result.footer end
    return table.concat(parts, "\n")
  end
  return result.text
end

function M.main_usage()
  local lines = {"usage: portman COMMAND [ARGS] [--json]", "", "commands:"}
  for _, entry in ipairs(M.ORDER) do
    local spec = M.command(entry[1])
    lines[#lines + 1] = ("  %-10s %s"):format(entry[1], spec.summary)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "`portman help COMMAND` or `portman COMMAND --help` describes one; --version prints the version."
  return table.concat(lines, "\n")
end

local function help(name, out, errout)
  local spec = M.command(name)
  if not spec then
    errout:write("portman help: unknown command '", name, "'\n")
    return 2
  end
  out:write(doc.help(spec), "\n")
  return 0
end

-- A peer that closes a socket while we write must give EPIPE, not kill the
-- process (the default action of SIGPIPE): a luv handler, unref'd so it
-- never keeps the loop alive.
local function ignore_sigpipe()
  local s = uv.new_signal()
  s:start("sigpipe", function() end)
  s:unref()
end

-- Writes a failure: the message on stderr, and with --json an error
-- document on stdout too.
local function fail(ctx, status, msg, code, usage)
  ctx.errout:write("portman ", ctx.name, ": ", msg, "\n")
  if usage then ctx.errout:write(usage, "\n") end
  if ctx.json then
    ctx.out:write(json.encode({error = msg, code = code or "error"}, {sorted = true}), "\n")
  end
  return status
end

local function run_command(spec, args, ctx)
  local usage = "usage: " .. doc.synopsis(spec)
  local ok, opts = pcall(M.parse, args, spec)
  if not ok then
    if not is_usage(opts) then error(opts, 0) end
    return fail(ctx, 2, opts.msg, "usage", usage)
  end
  local r = table.pack(xpcall(spec.run, function(e)
    if is_usage(e) then return e end
    return debug.traceback(tostring(e), 2)
  end, opts, ctx))
  if not r[1] then
    if is_usage(r[2]) then return fail(ctx, 2, r[2].msg, "usage", usage) end
    return fail(ctx, 1, "internal error: " .. tostring(r[2]), "internal")
  end
  local result, err, code = r[2], r[3], r[4]
  if result == nil then
    return fail(ctx, 1, tostring(err), code or tostring(err):match("^([%w_]+):"))
  end
  if result ~= true then ctx.out:write(render(result, opts), "\n") end
  return result ~= true and result.exit or 0
end

local function has_json(argv)
  for _, a in ipairs(argv) do
    if a == "--" then return false end
    if a == "--json" then return true end
  end
  return false
end

--- Runs one command line; returns the exit status (0 done, 1 failed, 2 bad usage).
-- @param argv the words after the program name
-- @param out, errout files to write to (io.stdout, io.stderr by default)
function M.main(argv, out, errout)
  out, errout = out or io.stdout, errout or io.stderr
  local name = argv[1]
  if name == "--version" or name == "-V" then
    out:write("portman ", portman.version, "\n")
    return 0
  end
  if name == nil or name == "-h" or name == "--help" or (name == "help" and not argv[2]) then
    (name and out or errout):write(M.main_usage(), "\n")
    return name and 0 or 2
  end
  if name == "help" then return help(argv[2], out, errout) end
  local spec = M.command(name)
  if not spec then
    errout:write("portman: unknown command '", name, "'\n", M.main_usage(), "\n")
    return 2
  end
  local args = table.move(argv, 2, #argv, 1, {})
  if M.wants_help(args) then return help(name, out, errout) end
  ignore_sigpipe()
  local ctx = {name = name, out = out, errout = errout, usage = M.usage_error,
               json = spec.json and has_json(args)}
  return run_command(spec, args, ctx)
end

return M
