--- `portman check POLICY.lua`: validates a policy without touching a
-- running daemon, as `nginx -t` does.
local daemon = require "portman.daemon"
local json = require "portman.json"
local cmd = require "portman.cmd"

local function count(t)
  local n = 0
  for _ in pairs(type(t) == "table" and t or {}) do n = n + 1 end
  return n
end

return {check = {
  summary = "check a policy file (syntax, options, pools, fixed ports against this host) without running it",
  args = {{"POLICY", "the policy file portman run would take"}},
  flags = {
    {"no-host", nil, "leave out the check of fixed ports against the sockets of this host"},
  },
  json = true,
  notes = "Exit status 0 when the policy is fine, 1 with every problem listed. The policy's chunk runs "
    .. "under the daemon's time budget.",
  run = function(opts)
    local policy, err, code = daemon.read_policy(opts.policy)
    local problems
    if policy then
      problems = daemon.check_policy(policy, {host = not opts.no_host})
    elseif code == "protocol" then
      problems = {(err:gsub("^protocol: policy: ", ""))}
    else
      return nil, err, code
    end
    local doc = {policy = opts.policy, ok = #problems == 0, problems = json.array(problems),
                 pools = policy and count(policy.pools) or 0, services = policy and #(policy.services or {}) or 0}
    local lines = {}
    if #problems == 0 then
      lines[1] = ("%s: ok (%s, %s)"):format(opts.policy, cmd.plural(doc.pools, "pool"),
        cmd.plural(doc.services, "service"))
    else
      lines[1] = ("%s: %s"):format(opts.policy, cmd.plural(#problems, "problem"))
      for _, p in ipairs(problems) do lines[#lines + 1] = "  " .. p end
    end
    return {json = doc, text = table.concat(lines, "\n"), exit = #problems == 0 and 0 or 1}
  end,
}}
