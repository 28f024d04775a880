--- `portman relay`: a relayed address on a TURN server (RFC 8656; TCP
-- relays RFC 6062), forwarded to a local port until SIGINT or SIGTERM.
-- The password comes from --password-file or PORTMAN_TURN_PASSWORD, never
-- from argv (which `ps` shows everyone).
local uv = require "luv"
local async = require "portman.async"
local errors = require "portman.errors"
local json = require "portman.json"
local log = require "portman.log"
local netaddr = require "portman.netaddr"
local resolver = require "portman.resolver"
local stun = require "portman.stun"
local turn = require "portman.turn"
local cmd = require "portman.cmd"

local MAX_PASSWORD = 1024

-- The password: the first line of the file, else the environment's.
local function password_of(opts)
  if opts.password_file then
    local f, err, errno = io.open(opts.password_file)
    if not f then
      local code = errors.code(errors.name(errno))
      return nil, ("%s: --password-file: %s"):format(code, err), code
    end
    local text = f:read(MAX_PASSWORD + 1) or ""
    f:close()
    if #text > MAX_PASSWORD then cmd.usage_error(("--password-file: over %d bytes"):format(MAX_PASSWORD)) end
    local pass = text:match("^([^\r\n]*)")
    if pass == "" then cmd.usage_error("--password-file: the first line is empty") end
    return pass
  end
  local env = os.getenv("PORTMAN_TURN_PASSWORD")
  if not env or env == "" then
    cmd.usage_error("no password: give --password-file FILE or set PORTMAN_TURN_PASSWORD")
  end
  return env
end

local function check(opts)
  local port = cmd.port("PORT", opts.port)
  if not opts.server or not stun.parse_server(opts.server) then
    cmd.usage_error(("--server: HOST:PORT expected, got '%s'"):format(tostring(opts.server)))
  end
  if not opts.user or opts.user == "" then cmd.usage_error("--user NAME is required") end
  cmd.oneof("proto", opts.proto, {"udp", "tcp"})
  cmd.at_least(opts, "timeout", 1)
  cmd.at_least(opts, "lifetime", 1)
  local allow = {}
  for _, ip in ipairs(opts.allow or {}) do
    local n = netaddr.normalize(ip)
    if not n then cmd.usage_error(("--allow: IP address expected, got '%s'"):format(ip)) end
    allow[#allow + 1] = n
  end
  if #allow == 0 then
    cmd.usage_error("--allow PEER_IP is required: a TURN server relays only from peers the client permits")
  end
  return port, allow
end

-- Waits for SIGINT or SIGTERM: cb(signal name); returns a function that
-- ends the wait at once with its arguments (the allocation was lost).
local function until_signal(cb)
  local signals = {}
  local finish = async.once(function(...)
    for _, s in ipairs(signals) do s:stop(); s:close() end
    cb(...)
  end)
  for i, name in ipairs({"sigint", "sigterm"}) do
    signals[i] = uv.new_signal()
    signals[i]:start(name, async.safe(finish, "relay signal"))
  end
  return finish
end

local function text_of(info)
  return ("%s %s relayed by %s (lifetime %d s)"):format(info.proto, stun.format(info.relayed_ip, info.relayed_port),
    info.server, info.lifetime)
end

return {relay = {
  summary = "relay a local port through a TURN server (RFC 8656, RFC 6062) until a signal",
  args = {{"PORT", "the local service's port on 127.0.0.1"}},
  flags = {
    {"server", "HOST:PORT", ("the TURN server; PORT defaults to %d"):format(stun.DEFAULT_PORT)},
    {"user", "NAME", "the TURN user (long-term credentials)"},
    {"password-file", "FILE", "the password: the file's first line (default: PORTMAN_TURN_PASSWORD)"},
    {"realm", "REALM", "refuse a server whose realm is another"},
    {"proto", "P", "the relayed transport: udp, or tcp (RFC 6062)", default = "udp"},
    {"allow", "PEER_IP", "a peer that may reach the service through the relay (repeat for more)", kind = "list"},
    {"lifetime", "S", "seconds of allocation lifetime to ask for; refreshed at half of it", kind = "int",
      default = turn.DEFAULT_LIFETIME},
    {"timeout", "MS", "ms each request to the server has", kind = "int", default = 5000},
  },
  json = true,
  notes = "Prints the relayed address, then forwards traffic between the relay and 127.0.0.1:PORT until SIGINT "
    .. "or SIGTERM, then deallocates. The password never goes in argv, logs or errors.",
  run = function(opts, ctx)
    local port, allow = check(opts)
    local password, perr, pcode = password_of(opts)
    if not password then return nil, perr, pcode end
    local host, sport = stun.parse_server(opts.server)
    return async.run(function()
      local ip, family_or_err, code = resolver.lookup(host)
      if not ip then return nil, ("%s: cannot resolve '%s'"):format(code, host), code end
      local stop -- ends the wait when the allocation is lost for good
      local r, err, rcode = turn.relay{server_ip = ip, server_port = sport, family = family_or_err,
        relay = opts.proto, user = opts.user, password = password, realm = opts.realm, lifetime = opts.lifetime,
        timeout = opts.timeout, port = port, allow = allow,
        on_event = function(name, fields)
          log.info("relay_" .. name, fields)
          if fields.fatal and stop then stop(nil, fields.error, fields.code) end
        end}
      if not r then return nil, err, rcode end
      ctx.out:write(opts.json and json.encode(r.info, {sorted = true}) or text_of(r.info), "\n")
      ctx.out:flush()
      local signame, lerr, lcode = async.await(function(cb) stop = until_signal(cb) end)
      local ok, cerr = r:close()
      log.info("relay_closed", {signal = signame, deallocated = ok == true, error = cerr})
      if not signame then return nil, lerr, lcode end
      return true
    end)
  end,
}}
