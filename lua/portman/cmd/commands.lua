--- The table of commands: their names in the order help lists them, the
-- file under portman/cmd/ of each (loaded when the command runs), and the
-- flags every command takes besides its own.
local M = {}

M.ORDER = {
  {"alloc", "alloc"}, {"probe", "probe"}, {"resolve", "resolve"}, {"stun", "stun"},
  {"nat-type", "stun"}, {"map", "map"}, {"unmap", "map"}, {"mappings", "map"}, {"relay", "relay"},
  {"run", "run"}, {"check", "check"}, {"status", "admin"}, {"events", "events"}, {"register", "register"},
  {"deregister", "register"}, {"repl", "admin"}, {"services", "services"},
}

--- The spec of command name (see portman.cmd), or nil.
function M.command(name)
  for _, entry in ipairs(M.ORDER) do
    if entry[1] == name then
      local spec = require("portman.cmd." .. entry[2])[name] -- only the command that runs is loaded
      spec.name = name
      return spec
    end
  end
  return nil
end

local COMMON = {
  json = {"json", nil, "print one JSON document (errors too, on stdout)"},
  no_header = {"no-header", nil, "leave out the table's header line", short = "H"},
  help = {"help", nil, "show this help", short = "h"},
}

--- Every flag command spec takes, its own then the common ones.
function M.flags(spec)
  local list = {}
  for _, f in ipairs(spec.flags or {}) do list[#list + 1] = f end
  if spec.json then list[#list + 1] = COMMON.json end
  if spec.table then list[#list + 1] = COMMON.no_header end
  list[#list + 1] = COMMON.help
  return list
end

return M
