--- `portman stun` (the public address) and `portman nat-type` (RFC 5780).
local async = require "portman.async"
local stun = require "portman.stun"
local cmd = require "portman.cmd"

-- The servers named by --server, else by PORTMAN_STUN_SERVERS (names
-- separated by spaces or commas). There is no built-in public server:
-- portman sends nothing to a third party the operator did not name.
local function servers_of(list)
  if #list == 0 then
    local env = os.getenv("PORTMAN_STUN_SERVERS") or ""
    for name in env:gmatch("[^%s,]+") do list[#list + 1] = name end
  end
  if #list == 0 then cmd.usage_error("no STUN server: give --server HOST:PORT or set PORTMAN_STUN_SERVERS") end
  for _, s in ipairs(list) do
    if not stun.parse_server(s) then cmd.usage_error(("--server: HOST:PORT expected, got '%s'"):format(s)) end
  end
  return list
end

local SERVER_HELP = ("a STUN server, HOST[:PORT] or [IPv6][:PORT]; PORT defaults to %d"):format(stun.DEFAULT_PORT)

return {
  stun = {
    summary = "find this host's public address and port through STUN servers (RFC 8489)",
    flags = {
      {"server", "HOST:PORT", SERVER_HELP .. "; tried in turn (default: PORTMAN_STUN_SERVERS)", kind = "list"},
      {"timeout", "MS", "ms each server has, with RFC 8489 retransmissions inside", kind = "int", default = 3000},
    },
    json = true,
    run = function(opts)
      local servers = servers_of(opts.server or {})
      cmd.at_least(opts, "timeout", 1)
      local r, err, code = async.run(stun.query, {servers = servers, timeout = opts.timeout, cache_ttl = 0})
      if not r then return nil, err, code end
      return {json = r, text = ("%s (local %s via %s, %.1f ms)"):format(
        stun.format(r.external_ip, r.external_port), stun.format(r.local_ip, r.local_port), r.server, r.rtt_ms)}
    end,
  },
  ["nat-type"] = {
    summary = "classify the NAT's mapping and filtering behaviour (RFC 5780)",
    flags = {
      {"server", "HOST:PORT", SERVER_HELP .. "; it must offer OTHER-ADDRESS (two addresses)", required = true},
      {"timeout", "MS", "ms each test waits for an answer", kind = "int", default = 3000},
    },
    json = true,
    notes = "Mapping and filtering in RFC 5780's words: endpoint-independent, address-dependent, "
      .. "address-and-port-dependent.",
    run = function(opts)
      if not opts.server then cmd.usage_error("--server HOST:PORT is required") end
      servers_of({opts.server})
      cmd.at_least(opts, "timeout", 1)
      local r, err, code = async.run(stun.nat_type, {server = opts.server, timeout = opts.timeout})
      if not r then return nil, err, code end
      return {json = r, text = ("mapping: %s\nfiltering: %s\nexternal ip: %s\nhairpinning: %s"):format(
        r.mapping, r.filtering, r.external_ip, r.hairpinning and "yes" or "no")}
    end,
  },
}
