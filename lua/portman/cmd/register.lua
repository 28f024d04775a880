--- `portman register` and `portman deregister`: registrations in a running
-- daemon's registry, made through its admin socket (logged and kept
-- across restarts like every change).
local cmd = require "portman.cmd"
local client = require "portman.cmd.client"

-- --meta k=v words as a table.
local function metadata(list)
  local meta = {}
  for _, kv in ipairs(list or {}) do
    local k, v = kv:match("^([^=]+)=(.*)$")
    if not k then cmd.usage_error(("--meta: KEY=VALUE expected, got '%s'"):format(kv)) end
    meta[k] = v
  end
  return meta
end

return {
  register = {
    summary = "register a service that runs elsewhere in a running daemon's registry",
    args = {{"NAME", "the service's name"}},
    flags = {
      {"port", "N", "its port", required = true},
      {"proto", "P", "tcp or udp", default = "tcp"},
      {"address", "IP", "the address it is bound to", default = "0.0.0.0"},
      {"type", "T", "its type (database, cluster, replication, admin, api or any word)", default = "custom"},
      {"meta", "KEY=VALUE", "metadata", kind = "list"},
      client.SOCKET, client.TIMEOUT,
    },
    json = true,
    run = function(opts)
      if not opts.port then cmd.usage_error("--port is required") end
      local port = cmd.port("--port", opts.port)
      cmd.oneof("proto", opts.proto, {"tcp", "udp"})
      local service = {name = opts.name, port = port, proto = opts.proto, address = opts.address, type = opts.type,
                       metadata = metadata(opts.meta)}
      local doc, err, code = client.ask(opts, {op = "register", service = service})
      if not doc then return nil, err, code end
      local e = doc.registered
      return {json = e, text = ("registered %s %s %s:%d"):format(e.name, e.proto, e.address, e.port)}
    end,
  },
  deregister = {
    summary = "remove a registration made with portman register (or at run time) from a running daemon",
    args = {{"NAME", "the registration's name"}},
    flags = {client.SOCKET, client.TIMEOUT},
    json = true,
    run = function(opts)
      local doc, err, code = client.ask(opts, {op = "deregister", name = opts.name})
      if not doc then return nil, err, code end
      return {json = {deregistered = opts.name}, text = "deregistered " .. opts.name}
    end,
  },
}
