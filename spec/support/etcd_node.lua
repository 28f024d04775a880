-- A cluster node for the lab specs, as a daemon would be one: claims ports
-- and registers a service through the etcd backend, prints one JSON line
-- {"node", "lease", "ports", "service"}, then keeps its lease alive until it
-- is killed.
-- usage: lua5.4 etcd_node.lua ENDPOINTS CLUSTER NODE TTL LO-HI COUNT
local root = arg[0]:match("^(.*)/spec/support/[^/]*$") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("PORTMAN_BUILD") or root .. "/build") .. "/?.so;" .. package.cpath
local cjson = require "cjson"
local async = require "portman.async"
local backend = require "portman.backend"

local endpoints, cluster, node, ttl, range, count = table.unpack(arg, 1, 6)
local lo, hi = range:match("^(%d+)%-(%d+)$")
async.run(function()
  local b = assert(backend.new{kind = "etcd", endpoints = endpoints, cluster = cluster, node = node,
                               ttl = math.tointeger(tonumber(ttl))})
  local ports = assert(b:claim_ports{range = {math.tointeger(tonumber(lo)), math.tointeger(tonumber(hi))},
                                     count = math.tointeger(tonumber(count))})
  local service = {name = "svc-" .. node, address = "127.0.0.1", port = ports[1], proto = "tcp"}
  assert(b:register(service))
  io.stdout:write(cjson.encode({node = node, lease = b:lease(), ports = ports, service = service.name}), "\n")
  io.stdout:flush()
  b:start()
end)
