--- `portman alloc`: ports from a range, on this machine or claimed
-- cluster-wide through etcd.
local allocator = require "portman.allocator"
local async = require "portman.async"
local json = require "portman.json"
local cmd = require "portman.cmd"
local cluster = require "portman.cmd.cluster"

local STRATEGIES = {"sequential", "random", "hash"}

local flags = {
  {"range", "LO-HI", "the ports to choose from, 1-65535", required = true},
  {"strategy", "S", "sequential (lowest free after a cursor), random (getrandom, RFC 6056) or hash "
    .. "(starts at LO + FNV-1a(node id) % size, the same on every machine)", default = "sequential"},
  {"node-id", "ID", "the node's id, for --strategy hash"},
  {"count", "N", "how many ports", kind = "int", default = 1},
  {"allow-privileged", nil, "allow ports below 1024 in the range"},
  {"ttl", "S", "with --etcd: seconds the claims live without --hold", kind = "int", default = 60},
  {"hold", nil, "with --etcd: keep the claims until SIGINT or SIGTERM, then release them"},
}
for _, f in ipairs(cluster.FLAGS) do flags[#flags + 1] = f end

-- The checks the allocator would raise on, made here so that the user is
-- told in the command line's words.
local function check_flags(opts)
  if not opts.range then cmd.usage_error("--range is required") end
  local lo, hi = cmd.range("range", opts.range)
  cmd.oneof("strategy", opts.strategy, STRATEGIES)
  if opts.strategy == "hash" and not opts.node_id then cmd.usage_error("--strategy hash needs --node-id") end
  if lo < 1024 and not opts.allow_privileged then
    cmd.usage_error(("--range %d-%d includes ports below 1024 (add --allow-privileged)"):format(lo, hi))
  end
  cmd.at_least(opts, "count", 1)
  if not opts.etcd then
    for _, flag in ipairs({"cluster", "hold", "cacert", "cert", "key", "user"}) do
      if opts[flag] then cmd.usage_error("--" .. flag .. " needs --etcd") end
    end
  end
  return lo, hi
end

local function local_ports(opts, lo, hi)
  local a = allocator.new{range = {lo, hi}, strategy = opts.strategy, node_id = opts.node_id,
                          allow_privileged = opts.allow_privileged}
  local ports = {}
  for i = 1, opts.count do
    local p, err, code = a:allocate()
    if not p then return nil, err, code end
    ports[i] = p
  end
  return ports
end

-- Claims cluster-wide: without --hold the claims last the lease's TTL;
-- with --hold the command keeps the lease alive until a signal.
local function cluster_ports(opts, lo, hi, ctx)
  local b, err, code = cluster.backend(opts, opts.ttl)
  if not b then return nil, err, code end
  return async.run(function()
    local ports, cerr, ccode = b:claim_ports{range = {lo, hi}, count = opts.count, strategy = opts.strategy,
      node_id = opts.node_id, allow_privileged = opts.allow_privileged}
    if not ports then
      b:close()
      return nil, cerr, ccode
    end
    if not opts.hold then
      b:detach()
      return ports
    end
    local doc = {ports = ports, range = {lo, hi}, strategy = opts.strategy}
    ctx.out:write(opts.json and json.encode(doc, {sorted = true}) or table.concat(ports, "\n"), "\n")
    ctx.out:flush()
    async.await(cluster.hold_until_signal, b)
    return true
  end)
end

return {alloc = {
  summary = "hand out free ports from a range (cluster-wide with --etcd)",
  flags = flags,
  json = true,
  notes = "Prints one port a line. With --etcd and --cluster the ports are claimed in etcd under the "
    .. "node's lease, so no two nodes of the cluster get the same port.",
  run = function(opts, ctx)
    local lo, hi = check_flags(opts)
    local ports, err, code
    if opts.etcd then
      ports, err, code = cluster_ports(opts, lo, hi, ctx)
      if ports == true then return true end
    else
      ports, err, code = local_ports(opts, lo, hi)
    end
    if not ports then return nil, err, code end
    return {json = {ports = json.array(ports), range = {lo, hi}, strategy = opts.strategy},
            text = table.concat(ports, "\n")}
  end,
}}
