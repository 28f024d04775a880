--- `portman run POLICY.lua`: the daemon.
local daemon = require "portman.daemon"

return {run = {
  summary = "run the daemon with a policy file until SIGINT or SIGTERM (SIGHUP reloads it)",
  args = {{"POLICY", "a Lua file returning {pools = ..., services = ..., grace = ms, cluster = ...}"}},
  flags = {
    {"state-dir", "DIR", "keep ports, registrations and router mappings across restarts in DIR/state.json"},
    {"admin-socket", "PATH", "the admin socket (default: $XDG_RUNTIME_DIR/portman/admin.sock, "
      .. "/run/portman/admin.sock for root)"},
  },
  run = function(opts, ctx) return daemon.run(opts.policy, opts, ctx.out) end,
}}
