--- `portman resolve NAME`: addresses (A and AAAA) or SRV records, through
-- portman's own resolver (c-ares) as the daemon would see them.
local async = require "portman.async"
local json = require "portman.json"
local resolver = require "portman.resolver"
local cmd = require "portman.cmd"

local TYPES = {A = "inet", AAAA = "inet6", SRV = "srv"}
local FAMILY_TYPE = {inet = "A", inet6 = "AAAA"}

local function lookup(r, name, rtype)
  if rtype == "SRV" then
    local records, err, code = r:srv(name)
    if not records then return nil, err, code end
    return resolver.srv_order(records) -- the order a client tries them (RFC 2782)
  end
  return r:resolve(name, {family = TYPES[rtype] or "any"})
end

local function document(name, rtype, records)
  local out = json.array()
  for i, rec in ipairs(records) do
    if rec.target then
      out[i] = {target = rec.target, port = rec.port, priority = rec.priority, weight = rec.weight, ttl = rec.ttl}
    else
      out[i] = {address = rec.address, type = FAMILY_TYPE[rec.family], ttl = rec.ttl}
    end
  end
  return {name = name, type = rtype or "A,AAAA", records = out}
end

local function rows_of(records)
  local rows = {}
  for i, rec in ipairs(records) do
    if rec.target then
      rows[i] = {rec.priority, rec.weight, rec.port, rec.target, rec.ttl}
    else
      rows[i] = {rec.address, FAMILY_TYPE[rec.family], rec.ttl}
    end
  end
  return rows
end

return {resolve = {
  summary = "look up a name's addresses (A and AAAA) or SRV records",
  args = {{"NAME", "a DNS name (an internationalized name is converted to IDNA), or an address; "
    .. "for SRV, _service._proto.domain"}},
  flags = {
    {"type", "T", "A, AAAA or SRV (default: both A and AAAA, as getaddrinfo asks)"},
    {"server", "IP[:PORT]", "ask this DNS server (port 53 by default) and skip the hosts file, as dig @server "
      .. "does (default: /etc/resolv.conf's servers)"},
    {"timeout", "MS", "ms the first try waits; c-ares doubles it for the second", kind = "int", default = 2000},
  },
  json = true,
  table = true,
  notes = "SRV records are listed in the order RFC 2782 has a client try them: by priority, then by "
    .. "weighted random choice.",
  run = function(opts)
    local rtype = opts.type and opts.type:upper()
    if rtype and not TYPES[rtype] then cmd.usage_error("--type: A, AAAA or SRV expected, got '" .. opts.type .. "'") end
    cmd.at_least(opts, "timeout", 1)
    local name, err, code = resolver.to_ascii(opts.name)
    if not name then return nil, err, code end
    local ok, why = resolver.valid_name(name)
    if not ok then cmd.usage_error("NAME: " .. why) end
    local server
    if opts.server then
      server, why = resolver.parse_server(opts.server)
      if not server then cmd.usage_error("--server: " .. why) end
    end
    local r = resolver.new{servers = server and {server} or nil, hosts = (server and false) or nil,
                           timeout = opts.timeout}
    local records
    records, err, code = async.run(lookup, r, name, rtype)
    r:close()
    if not records then return nil, err, code end
    local header = rtype == "SRV" and {"PRIORITY", "WEIGHT", "PORT", "TARGET", "TTL"} or {"ADDRESS", "TYPE", "TTL"}
    return {json = document(name, rtype, records), header = header, rows = rows_of(records)}
  end,
}}
