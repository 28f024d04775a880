--- `portman alloc`: ports from a range, on this machine or claimed
-- cluster-wide through etcd.
local allocator = require "portman.allocator"
local async = require "portman.async"
local json = require "portman.json"
local netaddr = require "portman.netaddr"
local cmd = require "portman.cmd"
local cluster = require "portman.cmd.cluster"

local STRATEGIES = {"sequential", "random", "hash"}
local PROTOS = {tcp = {"tcp"}, udp = {"udp"}, both = {"tcp", "udp"}}

local flags = {
  {"range", "LO-HI", "the ports to choose from, 1-65535", required = true},
  {"strategy", "S", "sequential (lowest free after a cursor), random (getrandom, RFC 6056) or hash "
    .. "(starts at LO + FNV-1a(node id) % size, the same on every machine)", default = "sequential"},
  {"node-id", "ID", "the node's id, for --strategy hash"},
  {"count", "N", "how many ports", kind = "int", default = 1},
  {"allow-privileged", nil, "allow ports below 1024 in the range"},
  {"proto", "P", "the host check's protocol: tcp, udp or both (a port must be free in both)", default = "tcp"},
  {"no-host-check", nil, "hand out ports this host's sockets use too"},
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
  cmd.oneof("proto", opts.proto, {"tcp", "udp", "both"})
  if opts.etcd then
    for _, flag in ipairs({"no-host-check", opts.proto ~= "tcp" and "proto" or nil}) do
      if opts[flag:gsub("%-", "_")] then cmd.usage_error("--" .. flag .. ": --etcd checks no host's sockets") end
    end
  else
    for _, flag in ipairs({"cluster", "hold", "cacert", "cert", "key", "user"}) do
      if opts[flag] then cmd.usage_error("--" .. flag .. " needs --etcd") end
    end
  end
  return lo, hi
end

-- The host check (docs/cli.md, "portman alloc"): every port in lo..hi
-- that a socket of protos holds, in any state, as the kernel's tables say
-- (read once), is reserved in a before it allocates. Returns how many.
local function reserve_used(a, protos, lo, hi)
  local n = 0
  for _, proto in ipairs(protos) do
    for port in pairs(netaddr.ports_in_use(proto)) do
      if port >= lo and port <= hi and not a:is_allocated(port) then
        a:reserve(port)
        n = n + 1
      end
    end
  end
  return n
end

-- Does a plain bind of port succeed now, for each of protos? false when a
-- socket the tables do not list holds it (TCP, bound and not listening);
-- true when only the right to bind a privileged port is missing (that is
-- not another user); nil, msg, code when the test socket fails otherwise.
local function binds(protos, port)
  for _, proto in ipairs(protos) do
    local ok, err, code = netaddr.try_bind(proto, port)
    if not ok and code == "conflict" then return false end
    if not ok and code ~= "denied" then return nil, err, code end
  end
  return true
end

local function local_ports(opts, lo, hi)
  local a = allocator.new{range = {lo, hi}, strategy = opts.strategy, node_id = opts.node_id,
                          allow_privileged = opts.allow_privileged}
  local protos = not opts.no_host_check and PROTOS[opts.proto]
  local skipped = protos and reserve_used(a, protos, lo, hi) or 0
  local ports = {}
  while #ports < opts.count do
    local p, err, code = a:allocate()
    if not p then
      if skipped > 0 then
        err = ("%s (%s in use on this host; see --no-host-check)"):format(err,
          cmd.plural(skipped, "port"))
      end
      return nil, err, code
    end
    local ok, berr, bcode = true, nil, nil
    if protos then ok, berr, bcode = binds(protos, p) end
    if ok == nil then return nil, berr, bcode end
    if ok then ports[#ports + 1] = p else skipped = skipped + 1 end
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
  notes = "Prints one port a line. Without --etcd it skips the ports this host uses, so each port it prints "
    .. "binds at that moment with a plain bind() (no SO_REUSEADDR) on any address: it reads the kernel's "
    .. "socket tables once (/proc/net/tcp, tcp6, udp, udp6, as --proto says) and passes over every port "
    .. "a socket holds, TCP in any state (listening, connected, TIME_WAIT), then test-binds each port it "
    .. "picks, which finds TCP sockets bound but not listening (no table lists them). A port in use can "
    .. "still be taken by another program before yours binds it. --no-host-check hands out any port of the "
    .. "range. With --etcd and --cluster the ports are claimed in etcd under the node's lease, so no two "
    .. "nodes of the cluster get the same port; the host is not checked.",
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
