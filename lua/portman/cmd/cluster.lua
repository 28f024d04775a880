--- What the commands that talk to an etcd cluster share (alloc --etcd,
-- services): their flags, the backend they open, and holding claims until
-- a signal.
local uv = require "luv"
local async = require "portman.async"
local backend = require "portman.backend"
local log = require "portman.log"
local cmd = require "portman.cmd"

local M = {}

--- The flags every etcd command takes.
M.FLAGS = {
  {"etcd", "URL[,URL...]", "etcd members' client URLs (http:// or https://)"},
  {"cluster", "NAME", "the cluster's name: its keys live under /portman/NAME/"},
  {"timeout", "MS", "ms for each etcd request", kind = "int", default = 5000},
  {"cacert", "PEM", "CA certificate to verify etcd's TLS certificate"},
  {"cert", "PEM", "client certificate for TLS (with --key)"},
  {"key", "PEM", "client key for TLS (with --cert)"},
  {"user", "NAME", "etcd user; the password comes from PORTMAN_ETCD_PASSWORD, never argv"},
}

-- The flags the backend would refuse, checked here in the command line's words.
local function check_flags(opts)
  local n = 0
  for url in opts.etcd:gmatch("[^,%s]+") do
    n = n + 1
    if not url:match("^https?://[^/]+$") then
      cmd.usage_error(("--etcd: URL like http://127.0.0.1:2379 expected, got '%s'"):format(url))
    end
  end
  if n == 0 then cmd.usage_error("--etcd: at least one URL expected") end
  if not opts.cluster:match("^[%w_%.%-]+$") then
    cmd.usage_error("--cluster: letters, digits, '.', '_' or '-' expected")
  end
  if opts.node_id and not opts.node_id:match("^[%w_%.:%-]+$") then
    cmd.usage_error("--node-id: letters, digits, '.', ':', '_' or '-' expected")
  end
end

--- An etcd backend for the parsed flags, or nil, msg, code.
function M.backend(opts, ttl)
  if not opts.cluster then cmd.usage_error("--cluster is required with --etcd") end
  check_flags(opts)
  cmd.at_least(opts, "timeout", 1)
  if ttl and ttl < 1 then cmd.usage_error("--ttl: at least 1") end
  if (opts.cert ~= nil) ~= (opts.key ~= nil) then cmd.usage_error("--cert and --key go together") end
  return backend.new{kind = "etcd", endpoints = opts.etcd, cluster = opts.cluster,
                     node = opts.node_id, ttl = ttl, timeout = opts.timeout,
                     cacert = opts.cacert, cert = opts.cert, key = opts.key, user = opts.user,
                     password = opts.user and os.getenv("PORTMAN_ETCD_PASSWORD") or nil}
end

--- Waits for SIGINT or SIGTERM, then revokes the lease: the claims go at once.
function M.hold_until_signal(b, cb)
  local signals = {}
  local function stop(signame)
    for _, s in ipairs(signals) do s:stop(); s:close() end
    log.info("alloc_released", {signal = signame, node = b:node()})
    b:close(cb)
  end
  for i, name in ipairs({"sigint", "sigterm"}) do
    signals[i] = uv.new_signal()
    signals[i]:start(name, async.safe(stop, "alloc hold"))
  end
  b:start()
end

return M
