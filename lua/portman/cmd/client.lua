--- What the commands that talk to a running daemon share: the
-- --admin-socket and --timeout flags, and one request with its answer.
local admin = require "portman.admin"
local cmd = require "portman.cmd"

local M = {}

M.SOCKET = {"admin-socket", "PATH", "the daemon's admin socket (default: $XDG_RUNTIME_DIR/portman/admin.sock, "
  .. "/run/portman/admin.sock for root); its directory must be yours or root's and writable by no one else"}
M.TIMEOUT = {"timeout", "MS", "ms to wait for each answer of the daemon", kind = "int", default = admin.TIMEOUT}

--- Sends request to the daemon the flags name; returns its answer, or
-- nil, msg, code (the daemon's own error documents too).
function M.ask(opts, request)
  cmd.at_least(opts, "timeout", 1)
  local doc
  local ok, err, code = admin.talk(opts.admin_socket or admin.default_path(), request,
    function(reply) doc = reply end, {timeout = opts.timeout})
  if not ok then return nil, err, code end
  if not doc then return nil, "closed: the daemon sent no answer", "closed" end
  if doc.error then return nil, doc.error, doc.code or tostring(doc.error):match("^([%w_]+):") end
  return doc
end

return M
