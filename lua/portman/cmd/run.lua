--- `portman run POLICY.lua`: the daemon.
local daemon = require "portman.daemon"
local log = require "portman.log"
local cmd = require "portman.cmd"

local LEVELS = {"debug", "info", "warn", "error"}
local FORMATS = {"text", "json"}

-- The daemon with its log set up: stderr captured (docs/design.md, "Logs")
-- while it runs, and put back before the command line reports anything.
local function run(opts, ctx)
  cmd.oneof("log-level", opts.log_level, LEVELS)
  cmd.oneof("log-format", opts.log_format, FORMATS)
  local config = {level = opts.log_level, format = opts.log_format, capture_stderr = true}
  local ok, err = log.setup(config)
  if not ok then
    -- a log that cannot capture (fd 2 closed, no fds left) must not stop the daemon
    config.capture_stderr = false
    log.setup(config)
    log.warn("stderr_not_captured", {error = err})
  end
  -- closed however daemon.run ends, an error's traceback taken first
  local _ <close> = setmetatable({}, {__close = function() log.close() end})
  return daemon.run(opts.policy, opts, ctx.out)
end

return {run = {
  summary = "run the daemon with a policy file until SIGINT or SIGTERM (SIGHUP reloads it)",
  args = {{"POLICY", "a Lua file returning {pools = ..., services = ..., grace = ms, cluster = ..., http = ADDR}"}},
  flags = {
    {"state-dir", "DIR", "keep ports, registrations and router mappings across restarts in DIR/state.json"},
    {"admin-socket", "PATH", "the admin socket (default: $XDG_RUNTIME_DIR/portman/admin.sock, "
      .. "/run/portman/admin.sock for root)"},
    {"http", "ADDR", "serve /metrics (Prometheus), / (a status page), /status.json and /healthz over HTTP on "
      .. "ADDR (HOST:PORT, e.g. 127.0.0.1:9207; overrides the policy's http); off by default"},
    {"log-level", "LEVEL", "the least that is logged on stderr: debug, info, warn or error", default = "info"},
    {"log-format", "FORMAT", "text (time level event key=value ...) or json (one object a line); what "
      .. "libraries and child processes write to stderr is logged as library_output events", default = "text"},
  },
  run = run,
}}
