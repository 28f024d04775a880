--- Two network namespaces for the probe specs (root): a client and a
-- target joined by one veth pair (veth0 in the client, veth1 in the
-- target), nothing else. The specs load the target's nftables rules, start
-- its listeners and run spec/lab/probe_child.lua (or any command) in the
-- client; close() kills the listeners and deletes both namespaces,
-- whatever happened.
--
--     local pair = probe_pair.new{name = "pm-probe", v4 = {"10.77.0.1", "10.77.0.2"},
--       input = {"tcp dport 1000 drop"}, listen = {tcp = {5000, 5001}, udp_echo = {5000}}}
--     local doc = pair:child("probe", {host = "10.77.0.2", ports = "1-100"})
--     pair:close()
local helpers = require "helpers"
local cjson = require "cjson"

local M = {}
M.__index = M

--- Runs a command on the host without the sanitizer preload (ip, nft,
-- sysctl and nmap are not ours), its output dropped; returns ok, exit code.
function M.host_sh(cmd)
  local ok, _, code = os.execute("env -u LD_PRELOAD " .. cmd .. " >/dev/null 2>&1")
  return ok, code
end

--- M.host_sh, raising when the command fails.
function M.host_must(cmd)
  local ok, code = M.host_sh(cmd)
  assert(ok, ("lab set-up failed (%s): %s"):format(tostring(code), cmd))
end

--- The shell words that run a command in namespace side ("client" or
-- "target").
function M:netns(side)
  return "ip netns exec " .. assert(self.ns[side], "no namespace " .. tostring(side))
end

--- Runs cmd in namespace side (M.host_sh); returns ok, exit code.
function M:sh(side, cmd) return M.host_sh(self:netns(side) .. " " .. cmd) end

--- Runs cmd in namespace side (M.host_must); raises when it fails.
function M:must(side, cmd) M.host_must(self:netns(side) .. " " .. cmd) end

-- Runs a shell command; returns its stdout and whether it exited 0.
local function output(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  return out, p:close() == true
end

--- Runs cmd in namespace side without the sanitizer preload; returns its
-- output (stdout; cmd redirects stderr if it wants it).
function M:read(side, cmd)
  return (output("env -u LD_PRELOAD " .. self:netns(side) .. " " .. cmd))
end

--- Runs this run's interpreter (the sanitizers' under asan, with their
-- preload) from the checkout in namespace side, after the shell words in
-- prefix if any; args are its arguments (and redirections). Returns its
-- output.
function M:lua(side, args, prefix)
  local pre = os.getenv("LD_PRELOAD")
  local lua = (pre and ("env LD_PRELOAD='%s' "):format(pre) or "") .. helpers.lua
  return (output(("cd %s && env -u LD_PRELOAD %s %s %s %s"):format(helpers.shell_quote(helpers.root),
    self:netns(side), prefix or "", lua, args)))
end

--- Runs spec/lab/probe_child.lua MODE ARGS in the client (after prefix, as
-- in M:lua); returns the JSON document it prints last, raising with its
-- output when there is none.
function M:child(mode, args, prefix)
  local out = self:lua("client", ("spec/lab/probe_child.lua %s '%s' 2>&1"):format(mode, cjson.encode(args or {})),
    prefix)
  local ok, doc = pcall(cjson.decode, out:match("[^\n]*\n?$") or "")
  assert(ok and type(doc) == "table", "the lab child failed: " .. out)
  return doc
end

--- Loads an nftables ruleset (text) in the target.
function M:nft(ruleset)
  local rules = os.tmpname()
  helpers.write(rules, ruleset)
  local ok = self:sh("target", "nft -f " .. rules)
  os.remove(rules)
  assert(ok, "nft rules failed to load")
end

--- Loads rules (a list of nftables rule lines) as the target's input
-- chain, everything else accepted.
function M:input(rules)
  self:nft(("table inet pmpair {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
    .. "%s\n  }\n}\n"):format(table.concat(rules, "\n")))
end

-- The target's sockets: TCP listeners, UDP echoes and UDP sockets that
-- never answer, on the wildcard address any.
local LISTENER = [[
local uv = require "luv"
local tcp, echo, silent, any = {%s}, {%s}, {%s}, %q
local keep = {}
for _, port in ipairs(tcp) do
  local t = uv.new_tcp()
  assert(t:bind(any, port, {ipv6only = false}))
  assert(t:listen(64, function() local c = uv.new_tcp() t:accept(c) c:close() end))
  keep[#keep + 1] = t
end
for _, port in ipairs(echo) do
  local u = uv.new_udp()
  assert(u:bind(any, port, {ipv6only = false}))
  u:recv_start(function(err, data, addr) if data and not err then u:send(data, addr.ip, addr.port) end end)
  keep[#keep + 1] = u
end
for _, port in ipairs(silent) do
  local u = uv.new_udp()
  assert(u:bind(any, port, {ipv6only = false}))
  u:recv_start(function() end)
  keep[#keep + 1] = u
end
io.write("ready\n")
io.flush()
uv.run()
]]

--- Starts a luv process in the target (the system's lua5.4) with
-- listeners on opts.tcp, UDP echoes on opts.udp_echo and UDP sockets that
-- never answer on opts.udp_silent (lists of ports), dual-stack when the
-- pair has IPv6; returns once they are all bound.
function M:listen(opts)
  local script = os.tmpname()
  helpers.write(script, LISTENER:format(table.concat(opts.tcp or {}, ", "), table.concat(opts.udp_echo or {}, ", "),
    table.concat(opts.udp_silent or {}, ", "), self.v6 and "::" or "0.0.0.0"))
  local p = io.popen(("exec env -u LD_PRELOAD %s sh -c 'echo $$; exec lua5.4 %s'"):format(self:netns("target"),
    script))
  -- p stays open: close() closes it (and waits for the process)
  self.listeners[#self.listeners + 1] = {pid = math.tointeger(tonumber(p:read("l"))), pipe = p}
  local ready = p:read("l")
  os.remove(script)
  assert(ready == "ready", "the target's listener did not start")
end

local function build(self, opts)
  local c, t = self.ns.client, self.ns.target
  for _, ns in ipairs({c, t}) do
    M.host_must("ip netns add " .. ns)
    self.created[#self.created + 1] = ns
  end
  for _, side in ipairs({"client", "target"}) do
    self:must(side, "ip link set lo up")
    -- no duplicate address detection: addresses (link-local ones too,
    -- which neighbour discovery needs) are usable at once
    if self.v6 then self:must(side, "sysctl -w net.ipv6.conf.default.accept_dad=0") end
  end
  if self.v6 then
    M.host_must(("ip -n %s link add veth0 address 02:77:00:00:00:01 type veth peer name veth1 "
      .. "address 02:77:00:00:00:02 netns %s"):format(c, t))
    -- fixed IPv6 neighbours: the first neighbour solicitation on a fresh
    -- veth can go unanswered for a second, longer than a probe waits
    M.host_must(("ip -n %s -6 neigh add %s lladdr 02:77:00:00:00:02 dev veth0 nud permanent"):format(c, self.v6[2]))
    M.host_must(("ip -n %s -6 neigh add %s lladdr 02:77:00:00:00:01 dev veth1 nud permanent"):format(t, self.v6[1]))
  else
    M.host_must(("ip -n %s link add veth0 type veth peer name veth1 netns %s"):format(c, t))
  end
  M.host_must(("ip -n %s addr add %s/24 dev veth0"):format(c, self.v4[1]))
  M.host_must(("ip -n %s addr add %s/24 dev veth1"):format(t, self.v4[2]))
  if self.v6 then
    M.host_must(("ip -n %s -6 addr add %s/64 dev veth0 nodad"):format(c, self.v6[1]))
    M.host_must(("ip -n %s -6 addr add %s/64 dev veth1 nodad"):format(t, self.v6[2]))
  end
  M.host_must(("ip -n %s link set veth0 up"):format(c))
  M.host_must(("ip -n %s link set veth1 up"):format(t))
  if opts.icmp_unlimited then
    -- the kernel rate-limits the ICMP errors it sends; the lab wants them all
    self:sh("target", "sysctl -w net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0")
    self:sh("target", "sysctl -w net.ipv4.icmp_msgs_per_sec=100000 net.ipv4.icmp_msgs_burst=100000")
  end
  if opts.input then self:input(opts.input) end
  if opts.listen then self:listen(opts.listen) end
end

--- Makes the pair; raises (having removed whatever it made) on failure.
-- @tparam table opts `name`: the namespaces' prefix (NAME-c-PID-N and
--   NAME-t-PID-N); `v4`: {client, target} addresses (a /24); `v6`
--   (optional): {client, target} addresses (a /64); `icmp_unlimited`: lift
--   the target's ICMP rate limits (the kernel's defaults otherwise);
--   `input`: the target's input rules, as M:input; `listen`: the target's
--   sockets, as M:listen
function M.new(opts)
  local tag = ("%d-%d"):format(helpers.pid(), math.random(1000000))
  local self = setmetatable({ns = {client = opts.name .. "-c-" .. tag, target = opts.name .. "-t-" .. tag},
    v4 = opts.v4, v6 = opts.v6, created = {}, listeners = {}}, M)
  self.client, self.target = self.ns.client, self.ns.target
  local ok, err = pcall(build, self, opts)
  if ok then return self end
  self:close()
  error(err, 2)
end

--- Kills the listeners and deletes both namespaces. Idempotent; never
-- raises.
function M:close()
  for _, l in ipairs(self.listeners) do
    if l.pid then os.execute("kill " .. l.pid .. " 2>/dev/null") end
    l.pipe:close()
  end
  for _, ns in ipairs(self.created) do M.host_sh("ip netns del " .. ns) end
  self.listeners, self.created = {}, {}
end

return M
