--- The command line (DESIGN.md's contract): `portman COMMAND [ARGS]`.
-- Exit status 0 on success, 1 when the operation failed (message on
-- stderr), 2 on bad usage. Every command prints a human form, or one JSON
-- document with --json.
--
-- Each command lives beside the concern it drives: COMMANDS maps a command
-- name to a module whose `cli[name]` is `{usage, flags, positional, run}`.
-- `run(opts, out, errout)` returns `{json = doc, text = human}` to print,
-- true when it printed everything itself, or nil, msg, code on failure.
local json = require "portman.json"

local M = {}

M.COMMANDS = {
  alloc = "portman.allocator",
  resolve = "portman.resolver",
  probe = "portman.firewall",
  run = "portman.daemon",
  status = "portman.admin",
  repl = "portman.admin",
  stun = "portman.stun",
  ["nat-type"] = "portman.stun",
  services = "portman.backend",
  map = "portman.nat",
  unmap = "portman.nat",
  mappings = "portman.nat",
}

local USAGE_MT = {__tostring = function(e) return e.msg end}

--- Raises a usage error (exit status 2) with msg.
function M.usage_error(msg)
  error(setmetatable({msg = msg}, USAGE_MT), 0)
end

local function convert(name, kind, value)
  if kind == "int" then
    local n = math.tointeger(tonumber(value))
    if not n then M.usage_error(("--%s: integer expected, got '%s'"):format(name, value)) end
    return n
  end
  return value
end

--- Parses argv against spec.flags (name -> "string" | "int" | "bool" |
-- "list") and spec.positional (names, in order; a trailing "..." takes the
-- rest). Returns a table keyed by flag (dashes become underscores) and
-- positional name.
function M.parse(argv, spec)
  local opts, pos = {}, {}
  local flags = spec.flags or {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^%-%-([%w%-]+)=(.*)$")
    name = name or a:match("^%-%-([%w%-]+)$")
    if name then
      local kind = flags[name]
      if not kind then M.usage_error("unknown option --" .. name) end
      local key = name:gsub("%-", "_")
      if kind == "bool" then
        if inline then M.usage_error("--" .. name .. " takes no value") end
        opts[key] = true
      else
        local value = inline
        if not value then
          i = i + 1
          value = argv[i]
          if value == nil then M.usage_error("--" .. name .. " needs a value") end
        end
        if kind == "list" then
          opts[key] = opts[key] or {}
          table.insert(opts[key], value)
        else
          opts[key] = convert(name, kind, value)
        end
      end
    elseif a:match("^%-%-?.") and a ~= "-" then
      M.usage_error("unknown option " .. a)
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  local names = spec.positional or {}
  for k, pname in ipairs(names) do
    if pname == "..." then
      opts.rest = table.move(pos, k, #pos, 1, {})
      return opts
    end
    if pos[k] == nil then M.usage_error("missing " .. pname) end
    opts[pname:lower()] = pos[k]
  end
  if #pos > #names then M.usage_error("unexpected argument '" .. pos[#names + 1] .. "'") end
  return opts
end

--- Parses "LO-HI" into two integers, or raises a usage error naming flag.
function M.range(flag, text)
  local lo, hi = tostring(text):match("^(%d+)%-(%d+)$")
  if not lo then M.usage_error(("--%s: LO-HI expected, got '%s'"):format(flag, text)) end
  return math.tointeger(tonumber(lo)), math.tointeger(tonumber(hi))
end

local function usage_text()
  local names = {}
  for name in pairs(M.COMMANDS) do names[#names + 1] = name end
  table.sort(names)
  return "usage: portman COMMAND [ARGS] [--json]\ncommands: " .. table.concat(names, ", ")
end

-- A raised error from the library is bad input from the command line:
-- strip Lua's position so the user sees only the message.
local function as_usage(err)
  if getmetatable(err) == USAGE_MT then return err.msg end
  local msg = tostring(err):gsub("^[^:]*:%d+: ", "")
  return msg:match("^bad argument #%d+ to '[^']*' %((.*)%)$") or msg
end

-- A peer that closes a socket while we write must give EPIPE, not kill the
-- process (the default action of SIGPIPE): a luv handler, unref'd so it
-- never keeps the loop alive.
local function ignore_sigpipe()
  local uv = require "luv"
  local s = uv.new_signal()
  s:start("sigpipe", function() end)
  s:unref()
end

--- Runs one command; returns the exit status.
-- @param argv the arguments after the program name
-- @param out, errout files to write to (io.stdout, io.stderr by default)
function M.main(argv, out, errout)
  out, errout = out or io.stdout, errout or io.stderr
  local name = argv[1]
  if name == nil or name == "help" or name == "--help" or name == "-h" then
    (name and out or errout):write(usage_text(), "\n")
    return name and 0 or 2
  end
  local modname = M.COMMANDS[name]
  if not modname then
    errout:write("portman: unknown command '", name, "'\n", usage_text(), "\n")
    return 2
  end
  ignore_sigpipe()
  local cmd = require(modname).cli[name]
  local args = table.move(argv, 2, #argv, 1, {})
  if args[1] == "--help" then
    out:write("usage: ", cmd.usage, "\n")
    return 0
  end
  local ok, opts = pcall(M.parse, args, cmd)
  if not ok then
    errout:write("portman ", name, ": ", as_usage(opts), "\nusage: ", cmd.usage, "\n")
    return 2
  end
  local results = table.pack(xpcall(cmd.run, function(e)
    if getmetatable(e) == USAGE_MT or type(e) == "string" and e:find("bad argument", 1, true) then
      return setmetatable({msg = as_usage(e)}, USAGE_MT)
    end
    return debug.traceback(e)
  end, opts, out, errout))
  if not results[1] then
    local e = results[2]
    if getmetatable(e) == USAGE_MT then
      errout:write("portman ", name, ": ", e.msg, "\nusage: ", cmd.usage, "\n")
      return 2
    end
    errout:write("portman ", name, ": internal error: ", tostring(e), "\n")
    return 1
  end
  local doc, err = results[2], results[3]
  if doc == nil then
    errout:write("portman ", name, ": ", tostring(err), "\n")
    return 1
  end
  if doc == true then return 0 end -- the command printed its own output
  if opts.json then
    out:write(json.encode(doc.json), "\n")
  else
    out:write(doc.text, "\n")
  end
  return 0
end

return M
