--- `portman services`: every node's registrations in an etcd cluster.
local async = require "portman.async"
local json = require "portman.json"
local cmd = require "portman.cmd"
local cluster = require "portman.cmd.cluster"

return {services = {
  summary = "list the services every node of an etcd cluster registered",
  flags = cluster.FLAGS,
  json = true,
  table = true,
  run = function(opts)
    if not opts.etcd then cmd.usage_error("--etcd is required") end
    local b, err, code = cluster.backend(opts)
    if not b then return nil, err, code end
    local list, lerr, lcode = async.run(function()
      local l, e, c = b:services()
      b:close()
      return l, e, c
    end)
    if not list then return nil, lerr, lcode end
    local rows = {}
    for i, s in ipairs(list) do
      rows[i] = {s.name, s.node, ("%s:%s"):format(s.address, s.port), s.proto}
    end
    return {json = {cluster = opts.cluster, services = json.array(list)},
            header = {"SERVICE", "NODE", "ADDRESS", "PROTO"}, rows = rows}
  end,
}}
