--- `portman map`, `unmap` and `mappings`: port mappings on the router
-- (UPnP IGD, NAT-PMP, PCP). In the host's own namespace they talk to its real
-- gateway.
local async = require "portman.async"
local json = require "portman.json"
local nat = require "portman.nat"
local cmd = require "portman.cmd"

local METHODS = {"auto", "upnp", "natpmp", "pcp"}
local PROTO = {"proto", "P", "tcp or udp", default = "tcp"}
local METHOD = {"method", "M", "auto (all at once, the first that maps wins), upnp, natpmp or pcp", default = "auto"}
local TIMEOUT = {"timeout", "MS", "ms for each operation against the router", kind = "int",
                 default = nat.DEFAULT_TIMEOUT}

local function common(opts)
  cmd.oneof("proto", opts.proto, {"tcp", "udp"})
  cmd.oneof("method", opts.method, METHODS)
  cmd.at_least(opts, "timeout", 1)
end

local function map_text(m)
  return ("%s %s:%d -> %s:%d (%s, %d s)"):format(m.proto, m.external_ip or "?", m.external_port,
    m.internal_ip or "?", m.internal_port, m.method, m.lifetime)
end

return {
  map = {
    summary = "map a port on the router to this host",
    args = {{"PORT", "the local (internal) port"}},
    flags = {
      {"external", "PORT", "the external port to ask for (default: PORT); the router may give another"},
      PROTO,
      {"lifetime", "S", "seconds the mapping lasts (it is not renewed after the command exits)",
        kind = "int", default = nat.DEFAULT_LIFETIME},
      METHOD, TIMEOUT,
    },
    json = true,
    run = function(opts)
      common(opts)
      cmd.at_least(opts, "lifetime", 1)
      local o = {internal_port = cmd.port("PORT", opts.port), proto = opts.proto, method = opts.method,
                 description = "portman map", timeout = opts.timeout, lifetime = opts.lifetime}
      if opts.external then o.external_port = cmd.port("--external", opts.external) end
      local m, err, code = async.run(function()
        local m, err, code = nat.map(o)
        if m then m:detach() end -- a one-shot command: no renewal
        return m, err, code
      end)
      if not m then return nil, err, code end
      local doc = {method = m.method, external_ip = m.external_ip, external_port = m.external_port,
                   internal_ip = m.internal_ip, internal_port = m.internal_port, proto = m.proto,
                   lifetime = m.lifetime}
      return {json = doc, text = map_text(doc)}
    end,
  },
  unmap = {
    summary = "delete a port mapping on the router",
    args = {{"EXTERNAL_PORT", "the mapping's external port"}},
    flags = {
      PROTO, METHOD,
      {"internal", "PORT", "NAT-PMP and PCP name a mapping by its internal port (default: EXTERNAL_PORT)"},
      {"nonce", "HEX", "PCP: the mapping's nonce, 24 hex digits (default: the one this host derives for it)"},
      TIMEOUT,
    },
    json = true,
    run = function(opts)
      common(opts)
      local o = {external_port = cmd.port("EXTERNAL_PORT", opts.external_port), proto = opts.proto,
                 method = opts.method, timeout = opts.timeout}
      if opts.internal then o.internal_port = cmd.port("--internal", opts.internal) end
      if opts.nonce then
        if not opts.nonce:match("^%x+$") or #opts.nonce ~= 24 then
          cmd.usage_error("--nonce: 24 hex digits expected")
        end
        o.nonce = opts.nonce
      end
      local ok, err, code = async.run(nat.unmap, o)
      if not ok then return nil, err, code end
      return {json = {external_port = o.external_port, proto = o.proto, deleted = true},
              text = ("deleted %s %d"):format(o.proto, o.external_port)}
    end,
  },
  mappings = {
    summary = "list the router's port mappings (UPnP)",
    flags = {TIMEOUT},
    json = true,
    table = true,
    run = function(opts)
      cmd.at_least(opts, "timeout", 1)
      local list, err, code = async.run(nat.mappings, {timeout = opts.timeout})
      if not list then return nil, err, code end
      local rows = {}
      for i, e in ipairs(list) do
        rows[i] = {e.proto, e.external_port, ("%s:%d"):format(e.internal_ip, e.internal_port),
                   e.lifetime .. " s", e.description}
      end
      return {json = json.array(list), header = {"PROTO", "EXTERNAL", "INTERNAL", "LIFETIME", "DESCRIPTION"},
              rows = rows, footer = #rows == 0 and "no mappings" or nil}
    end,
  },
}
