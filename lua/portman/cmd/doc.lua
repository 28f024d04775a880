--- Help texts, the man page and the bash completion, all made from the
-- command specs under portman/cmd/ (see portman.cmd), so none can drift
-- from what the parser accepts.
local portman = require "portman"
local cmd = require "portman.cmd.commands"

local M = {}

local function flag_words(f)
  local words = "--" .. f[1] .. (f[2] and " " .. f[2] or "")
  if f.short then words = "-" .. f.short .. ", " .. words end
  return words
end

local function flag_help(f)
  local text = f[3]
  if f.default ~= nil then text = text .. (" (default: %s)"):format(tostring(f.default)) end
  if f.kind == "list" then text = text .. "; may be repeated" end
  return text
end

--- The synopsis: `portman NAME ARGS --required X [options]`.
function M.synopsis(spec)
  local parts = {"portman", spec.name}
  for _, a in ipairs(spec.args or {}) do
    local word = a.rest and a[1] .. "..." or a[1]
    parts[#parts + 1] = a.optional and "[" .. word .. "]" or word
  end
  for _, f in ipairs(spec.flags or {}) do
    if f.required then parts[#parts + 1] = "--" .. f[1] .. " " .. f[2] end
  end
  parts[#parts + 1] = "[options]"
  return table.concat(parts, " ")
end

local function wrap(text, width, indent)
  local lines, line = {}, ""
  for word in text:gmatch("%S+") do
    if #line > 0 and #line + 1 + #word > width then
      lines[#lines + 1] = line
      line = word
    else
      line = #line > 0 and line .. " " .. word or word
    end
  end
  if #line > 0 then lines[#lines + 1] = line end
  return table.concat(lines, "\n" .. indent)
end

--- The text `portman help NAME` prints.
function M.help(spec)
  local summary = spec.summary:gsub("^%l", string.upper) .. "."
  local out = {"usage: " .. M.synopsis(spec), "", wrap(summary, 78, "")}
  if spec.notes then out[#out + 1] = "\n" .. wrap(spec.notes, 78, "") end
  if spec.args and #spec.args > 0 then
    out[#out + 1] = "\narguments:"
    for _, a in ipairs(spec.args) do
      out[#out + 1] = ("  %-22s %s"):format(a[1], wrap(a[2], 54, (" "):rep(25)))
    end
  end
  out[#out + 1] = "\noptions:"
  for _, f in ipairs(cmd.flags(spec)) do
    local words = flag_words(f)
    local text = wrap(flag_help(f), 54, (" "):rep(25))
    if #words > 22 then
      out[#out + 1] = "  " .. words
      out[#out + 1] = (" "):rep(25) .. text
    else
      out[#out + 1] = ("  %-22s %s"):format(words, text)
    end
  end
  return table.concat(out, "\n")
end

-- roff: a leading dot or quote is a request, a backslash an escape.
local function roff(text)
  text = text:gsub("\\", "\\e"):gsub("%-", "\\-")
  return (text:gsub("\n([.'])", "\n\\&%1"):gsub("^([.'])", "\\&%1"))
end

local function man_command(spec, out)
  out[#out + 1] = ".SS " .. roff(M.synopsis(spec))
  out[#out + 1] = roff(spec.summary .. ".")
  if spec.notes then out[#out + 1] = ".PP\n" .. roff(spec.notes) end
  for _, a in ipairs(spec.args or {}) do
    out[#out + 1] = ".TP\n.I " .. roff(a[1]) .. "\n" .. roff(a[2])
  end
  for _, f in ipairs(cmd.flags(spec)) do
    if f[1] ~= "help" then
      out[#out + 1] = ".TP\n.B " .. roff(flag_words(f)) .. "\n" .. roff(flag_help(f))
    end
  end
end

--- The man page portman(1), in roff.
function M.man()
  local version = portman.version
  local out = {
    ('.TH PORTMAN 1 "" "portman %s" "User Commands"'):format(version),
    ".SH NAME", "portman \\- manage the network ports of services",
    ".SH SYNOPSIS", ".B portman", ".I COMMAND", "[\\fIARGS\\fR] [\\fB\\-\\-json\\fR]",
    ".br", ".B portman help", ".I COMMAND", ".br", ".B portman \\-\\-version",
    ".SH DESCRIPTION",
    roff("portman hands out ports from pools, opens listeners, finds the public address (STUN), "
      .. "maps ports on the router (UPnP IGD, NAT-PMP, PCP), probes reachability, resolves peers and "
      .. "keeps a registry of which service owns which port. Every command prints a human-readable "
      .. "form, or one JSON document with --json; every command takes -h or --help anywhere."),
    ".SH COMMANDS",
  }
  for _, entry in ipairs(cmd.ORDER) do man_command(cmd.command(entry[1]), out) end
  out[#out + 1] = ".SH EXIT STATUS"
  out[#out + 1] = roff("0 on success, 1 when the operation failed (the message on stderr; with --json "
    .. "also {\"code\", \"error\"} on stdout), 2 on bad usage.")
  out[#out + 1] = ".SH ENVIRONMENT"
  out[#out + 1] = ".TP\n.B PORTMAN_STUN_SERVERS\n" .. roff("STUN servers for portman stun when no --server is given.")
  out[#out + 1] = ".TP\n.B PORTMAN_ETCD_PASSWORD\n" .. roff("the etcd password for --user.")
  out[#out + 1] = ".TP\n.B PORTMAN_TURN_PASSWORD\n"
    .. roff("the TURN password for portman relay without --password-file.")
  out[#out + 1] = ".TP\n.B XDG_RUNTIME_DIR\n" .. roff("holds the default admin socket, portman/admin.sock.")
  out[#out + 1] = ".SH SEE ALSO"
  out[#out + 1] = "upnpc(1), natpmpc(1), nmap(1), dig(1), etcdctl(1)"
  return table.concat(out, "\n") .. "\n"
end

--- A bash completion script for portman.
function M.bash()
  local names, cases = {}, {}
  for _, entry in ipairs(cmd.ORDER) do
    local spec = cmd.command(entry[1])
    names[#names + 1] = entry[1]
    local words = {}
    for _, f in ipairs(cmd.flags(spec)) do
      words[#words + 1] = "--" .. f[1]
      if f.short then words[#words + 1] = "-" .. f.short end
    end
    cases[#cases + 1] = ("    %s) opts=%q ;;"):format(entry[1], table.concat(words, " "))
  end
  return table.concat({
    "# bash completion for portman (made by portman.cmd.doc from the command specs)",
    "_portman() {",
    "  local cur=${COMP_WORDS[COMP_CWORD]} opts",
    "  if [ \"$COMP_CWORD\" -eq 1 ]; then",
    ("    COMPREPLY=($(compgen -W %q -- \"$cur\"))"):format(table.concat(names, " ") .. " help --version --help"),
    "    return",
    "  fi",
    "  case ${COMP_WORDS[1]} in",
    ("    help) opts=%q ;;"):format(table.concat(names, " ")),
    table.concat(cases, "\n"),
    "    *) opts= ;;",
    "  esac",
    "  case $cur in",
    "    -*|'') COMPREPLY=($(compgen -W \"$opts\" -- \"$cur\")) ;;",
    "  esac",
    "  [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- \"$cur\"))",
    "}",
    "complete -F _portman portman",
  }, "\n") .. "\n"
end

return M
