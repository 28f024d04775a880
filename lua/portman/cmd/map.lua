--- `portman map`, `unmap` and `mappings`: port mappings on the router
-- (UPnP IGD, NAT-PMP, PCP). In the host's own namespace they talk to its real
-- gateway.
local uv = require "luv"
local async = require "portman.async"
local json = require "portman.json"
local log = require "portman.log"
local nat = require "portman.nat"
local state = require "portman.state"
local cmd = require "portman.cmd"

local METHODS = {"auto", "upnp", "natpmp", "pcp"}
local PROTO = {"proto", "P", "tcp or udp", default = "tcp"}
local METHOD = {"method", "M", "auto (all at once, the first that maps wins), upnp, natpmp or pcp", default = "auto"}
local TIMEOUT = {"timeout", "MS", "ms for each operation against the router", kind = "int",
                 default = nat.DEFAULT_TIMEOUT}

local GATEWAY_URL = {"gateway-url", "URL", "the IGD's root description URL (as upnpc -u): no discovery"}
local STATE_DIR = {"state-dir", "DIR", "where the known gateway is kept (default: $XDG_CACHE_HOME/portman)"}

-- The file that keeps the gateway found by an earlier command.
local function cache_file(opts)
  if opts.state_dir then return opts.state_dir .. "/gateway.json" end
  local base = os.getenv("XDG_CACHE_HOME")
  if not base or base:sub(1, 1) ~= "/" then
    local home = os.getenv("HOME")
    if not home or home:sub(1, 1) ~= "/" then return nil end
    base = home .. "/.cache"
  end
  return base .. "/portman/gateway.json"
end

-- Uses the gateway an earlier command found; a file that cannot be read
-- or is malformed is ignored (with a log line): discovery runs then.
local function load_known(path)
  if not path then return end
  local doc, err = state.load(path)
  local ok
  if doc then ok, err = nat.use_known(doc) end
  if not ok and doc and next(doc) == nil then return end -- nothing saved yet
  if ok then log.debug("gateway_cache_used", {path = path}) return end
  log.warn("gateway_cache_ignored", {path = path, error = err})
end

local function mkdirs(dir)
  if uv.fs_stat(dir) then return end
  local parent = dir:match("^(.+)/[^/]+$")
  if parent then mkdirs(parent) end
  uv.fs_mkdir(dir, tonumber("700", 8))
end

-- Keeps what this command learnt of the gateway for the next one; a
-- failure to write it only costs the next command a discovery.
local function save_known(path)
  local known, changed = nat.known()
  if not path or not changed then return end
  mkdirs(path:match("^(.+)/[^/]+$"))
  local ok, err = state.save(path, known)
  if not ok then log.debug("gateway_cache_unsaved", {path = path, error = err}) end
end

local function common(opts)
  if opts.proto then cmd.oneof("proto", opts.proto, {"tcp", "udp"}) end
  if opts.method then cmd.oneof("method", opts.method, METHODS) end
  cmd.at_least(opts, "timeout", 1)
  if opts.gateway_url then
    if not opts.gateway_url:match("^http://[^%s]+$") or #opts.gateway_url > 255 then
      cmd.usage_error("--gateway-url: an http:// URL (at most 255 bytes) expected")
    end
    nat.gateway_url = opts.gateway_url -- the user's gateway, not the cache's
    return nil
  end
  local path = cache_file(opts)
  load_known(path)
  return path
end

-- Runs fn inside the loop with the known gateway, and keeps what it learnt.
local function with_gateway(opts, fn, ...)
  local path = common(opts)
  local res = table.pack(async.run(fn, ...))
  save_known(path)
  return table.unpack(res, 1, res.n)
end

local function map_text(m)
  return ("%s %s:%d -> %s:%d (%s, %d s)"):format(m.proto, m.external_ip or "?", m.external_port,
    m.internal_ip or "?", m.internal_port, m.method, m.lifetime)
end

local function list_text(list, err)
  local rows = {}
  for i, e in ipairs(list) do
    rows[i] = {e.proto, e.external_port, ("%s:%d"):format(e.internal_ip, e.internal_port),
               e.lifetime .. " s", e.description}
  end
  local footer = #rows == 0 and "no mappings" or nil
  if err then footer = ("partial: %d entries read, then %s"):format(#rows, err) end
  return rows, footer
end

return {
  map = {
    summary = "map a port on the router to this host",
    args = {{"PORT", "the local (internal) port"}},
    flags = {
      {"external", "PORT", "the external port to ask for (default: PORT); when another program holds it, "
        .. "the router gives another"},
      PROTO,
      {"lifetime", "S", "seconds the mapping lasts (it is not renewed after the command exits)",
        kind = "int", default = nat.DEFAULT_LIFETIME},
      METHOD, TIMEOUT, GATEWAY_URL, STATE_DIR,
    },
    json = true,
    run = function(opts)
      cmd.at_least(opts, "lifetime", 1)
      local o = {internal_port = cmd.port("PORT", opts.port), proto = opts.proto, method = opts.method,
                 description = "portman map", timeout = opts.timeout, lifetime = opts.lifetime}
      if opts.external then o.external_port = cmd.port("--external", opts.external) end
      local m, err, code = with_gateway(opts, function()
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
    summary = "delete a port mapping portman made on the router",
    args = {{"EXTERNAL_PORT", "the mapping's external port"}},
    flags = {
      PROTO, METHOD,
      {"internal", "PORT", "the mapping's internal port (NAT-PMP and PCP name a mapping by it; "
        .. "default: EXTERNAL_PORT)"},
      {"nonce", "HEX", "PCP: the mapping's nonce, 24 hex digits (default: the one this host derives for it)"},
      {"force", nil, "delete a UPnP mapping that is not portman's (another program's)"},
      TIMEOUT, GATEWAY_URL, STATE_DIR,
    },
    json = true,
    run = function(opts)
      local o = {external_port = cmd.port("EXTERNAL_PORT", opts.external_port), proto = opts.proto,
                 method = opts.method, timeout = opts.timeout, force = opts.force or nil}
      if opts.internal then o.internal_port = cmd.port("--internal", opts.internal) end
      if opts.nonce then
        if not opts.nonce:match("^%x+$") or #opts.nonce ~= 24 then
          cmd.usage_error("--nonce: 24 hex digits expected")
        end
        o.nonce = opts.nonce
      end
      local ok, err, code = with_gateway(opts, nat.unmap, o)
      if not ok then return nil, err, code end
      return {json = {external_port = o.external_port, proto = o.proto, deleted = true},
              text = ("deleted %s %d"):format(o.proto, o.external_port)}
    end,
  },
  mappings = {
    summary = "list the router's port mappings (UPnP)",
    flags = {TIMEOUT, GATEWAY_URL, STATE_DIR},
    json = true,
    table = true,
    run = function(opts)
      local list, err, code = with_gateway(opts, nat.mappings, {timeout = opts.timeout})
      if not list then return nil, err, code end
      local rows, footer = list_text(list, err)
      local doc = {mappings = json.array(list), partial = err ~= nil, error = err, code = code}
      return {json = doc, header = {"PROTO", "EXTERNAL", "INTERNAL", "LIFETIME", "DESCRIPTION"},
              rows = rows, footer = footer, exit = err and 1 or nil}
    end,
  },
}
