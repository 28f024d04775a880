--- The network-namespace lab (docs/design.md, "Tests and the lab"): a LAN namespace (the client),
-- an IGD namespace (the NAT) and a WAN namespace (the servers), joined
-- only to each other by veth pairs. Nothing in the lab can reach the
-- host's network. Needs root.
--
--     LAN eth0 192.168.77.2 --- lan0 192.168.77.1  IGD  wan0 11.22.33.1 --- eth0 WAN
--                                                              11.22.33.10 and .11
--
-- The WAN /24 looks public (miniupnpd refuses private ones) and exists only
-- in here. Names carry the pid and a counter, so runs never collide; close()
-- kills every daemon started through the lab and deletes the namespaces.
-- Later parts add their daemons with lab:daemon and their rules with
-- lab:nft; `Lab.new{nat = false}` leaves the IGD without NAT rules for a
-- caller that writes its own (miniupnpd wants its own inet filter table).
local cjson = require "cjson"
local helpers = require "helpers"

local M = {}
M.__index = M

M.PREFIX = "pmlab-"
M.LAN = {client = "192.168.77.2", gateway = "192.168.77.1", prefix = 24}
M.WAN = {igd = "11.22.33.1", server = "11.22.33.10", server2 = "11.22.33.11", prefix = 24}

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Runs a shell command; returns ok, output (stdout and stderr). The
-- sanitizer runtime that the asan specs preload is kept away from the
-- system's tools (ip, nft, daemons); M:portman hands it back to portman.
local function run(cmd)
  local p = io.popen("env -u LD_PRELOAD sh -c " .. q(cmd) .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok == true, out
end

local counter = 0

--- Is this process root (the lab needs it)?
function M.is_root()
  local _, out = run("id -u")
  return out:match("^0%s") ~= nil
end

--- Deletes namespaces that a lab of a dead process left behind (a crash,
-- a kill -9): their name carries the pid.
function M.sweep()
  local _, out = run("ip netns list")
  for name in out:gmatch("(" .. M.PREFIX:gsub("%-", "%%-") .. "[%w%-]+)") do
    local owner = name:match("^" .. M.PREFIX:gsub("%-", "%%-") .. "(%d+)%-")
    if owner and not io.open("/proc/" .. owner .. "/stat") then
      run("ip netns pids " .. q(name) .. " | xargs -r kill -9")
      run("ip netns del " .. q(name))
    end
  end
end

--- Runs cmd in namespace ns ("lan", "igd" or "wan"); raises on failure.
-- @return its output
function M:sh(ns, cmd)
  local ok, out = self:try(ns, cmd)
  if not ok then error(("lab: in %s: %s\n%s"):format(ns, cmd, out), 2) end
  return out
end

--- Runs cmd in namespace ns; returns ok, output.
function M:try(ns, cmd)
  local name = assert(self.ns[ns], "no namespace " .. tostring(ns))
  return run(("ip netns exec %s sh -c %s"):format(q(name), q(cmd)))
end

--- The command prefix that runs a program in namespace ns.
function M:exec_prefix(ns)
  return "ip netns exec " .. q(self.ns[ns]) .. " "
end

--- Runs the portman command line in namespace ns (with the build and the
-- interpreter of this run: PORTMAN_LUA is the sanitizer run's, and the
-- lab's own cache directory); returns ok, stdout and stderr.
function M:portman(ns, args)
  local err = ("%s/portman-%d.err"):format(self.dir, counter + 1)
  counter = counter + 1
  local ok, out = self:try(ns, ("cd %s && XDG_CACHE_HOME=%s %s bin/portman %s 2>%s"):format(q(helpers.root),
    q(self.dir .. "/cache"), q(helpers.lua), args, q(err)))
  local f = io.open(err)
  local stderr = f and f:read("a") or ""
  if f then f:close() end
  return ok, out, stderr
end

--- Starts `portman ARGS` (a daemon: `run POLICY ...`) in the background
-- in namespace ns, with this run's interpreter and build, its output in
-- DIR/NAME.log. Returns its pid (the interpreter's own).
function M:portman_daemon(ns, name, args)
  return self:daemon(ns, name, ("XDG_CACHE_HOME=%s %s %s/bin/portman %s"):format(q(self.dir .. "/cache"),
    q(helpers.lua), q(helpers.root), args))
end

--- Is process pid alive?
function M.alive(p)
  local f = io.open("/proc/" .. p .. "/stat")
  if not f then return false end
  local st = f:read("a"):match("^%d+ %b() (%a)")
  f:close()
  return st ~= "Z"
end

--- Loads an nftables ruleset (text, each closing brace on its own line)
-- into namespace ns.
function M:nft(ns, ruleset)
  counter = counter + 1
  local path = ("%s/rules-%d.nft"):format(self.dir, counter)
  local f = assert(io.open(path, "w"))
  f:write(ruleset)
  f:close()
  self:sh(ns, "nft -f " .. q(path))
end

--- Starts cmd in the background in namespace ns, its output in
-- DIR/NAME.log; close() kills it. Returns its pid.
function M:daemon(ns, name, cmd)
  local log = ("%s/%s.log"):format(self.dir, name)
  local out = self:sh(ns, ("%s >%s 2>&1 </dev/null & echo $!"):format(cmd, q(log)))
  local p = assert(out:match("(%d+)"), "no pid")
  self.daemons[#self.daemons + 1] = {name = name, pid = p, log = log}
  return p
end

--- The log of a daemon started with lab:daemon.
function M:log(name)
  local f = io.open(("%s/%s.log"):format(self.dir, name))
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

--- Polls test() until it returns true, for at most `seconds`; raises
-- "lab: timed out waiting for WHAT" after. Lab setup only: the specs
-- themselves never wait on wall time.
--- The entry of a router list (upnpc_list's) for external port and proto
-- ("tcp"), or nil.
function M.entry(list, port, proto)
  for _, e in ipairs(list) do
    if e.external_port == port and e.proto == (proto or "tcp") then return e end
  end
  return nil
end

--- Waits until daemon name has logged pattern; raises with its log if not.
function M:wait_log(name, pattern)
  local ok, err = pcall(self.wait_for, self, name .. " to log " .. pattern,
    function() return self:log(name):find(pattern) ~= nil end, 30)
  if not ok then error(err .. "\n" .. self:log(name), 2) end
end

function M:wait_for(what, test, seconds)
  for _ = 1, (seconds or 10) * 20 do
    if test() then return end
    run("sleep 0.05")
  end
  error(("lab %s: timed out waiting for %s"):format(self.id, what), 2)
end

--- The router mappings the state file in dir (in namespace ns) lists,
-- or nil while it is missing or half written.
function M:saved_mappings(ns, dir)
  local _, s = self:try(ns, "cat " .. dir .. "/state.json")
  local ok, doc = pcall(cjson.decode, s)
  return ok and type(doc) == "table" and doc.mappings or nil
end

--- Waits until a daemon run with --state-dir dir in namespace ns has saved
-- n router mappings, then kills it (SIGKILL) and waits until it is gone:
-- a crash that leaves its mappings on the router.
function M:crash_after_saving(ns, dir, n, pid)
  self:wait_for(("the state file to list %d mappings"):format(n), function()
    local mappings = self:saved_mappings(ns, dir)
    return mappings ~= nil and #mappings == n
  end)
  self:sh(ns, "kill -9 " .. pid)
  self:wait_for("the daemon to die", function() return not M.alive(pid) end)
end

--- Is a UDP socket bound to ip:port in namespace ns?
function M:udp_listening(ns, ip, port)
  local _, out = self:try(ns, "ss -Hlun")
  return out:find(ip .. ":" .. port .. " ", 1, true) ~= nil
end

local function build(self, opts)
  for _, role in ipairs{"lan", "igd", "wan"} do
    local ok, out = run("ip netns add " .. q(self.ns[role]))
    if not ok then error("lab: ip netns add: " .. out) end
    self.created[#self.created + 1] = self.ns[role]
    self:sh(role, "ip link set lo up")
  end
  local n = self.ns
  -- each pair is made with its ends already in their namespaces, so the
  -- host's own namespace never sees the links
  for _, pair in ipairs{{"lan", "eth0", "igd", "lan0"}, {"wan", "eth0", "igd", "wan0"}} do
    local ok, out = run(("ip -n %s link add %s type veth peer name %s netns %s"):format(
      q(n[pair[1]]), pair[2], pair[4], q(n[pair[3]])))
    if not ok then error("lab: veth: " .. out) end
  end
  local L, W = M.LAN, M.WAN
  self:sh("lan", ("ip addr add %s/%d dev eth0 && ip link set eth0 up && ip route add default via %s")
    :format(L.client, L.prefix, L.gateway))
  self:sh("igd", ("ip addr add %s/%d dev lan0 && ip link set lan0 up && "
    .. "ip addr add %s/%d dev wan0 && ip link set wan0 up && sysctl -qw net.ipv4.ip_forward=1")
    :format(L.gateway, L.prefix, W.igd, W.prefix))
  self:sh("wan", ("ip addr add %s/%d dev eth0 && ip addr add %s/%d dev eth0 && ip link set eth0 up")
    :format(W.server, W.prefix, W.server2, W.prefix))
  if opts.nat ~= false then
    self:nft("igd", ([[
table ip portman_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" %s
  }
}
]]):format(opts.nat or "masquerade"))
  end
end

--- Builds a lab; raises (having removed whatever it made) on failure.
-- @tparam[opt] table opts `nat`: the IGD's NAT rule for traffic leaving
--   wan0 ("masquerade" by default, "masquerade fully-random"), or false
--   for no NAT table at all
function M.new(opts)
  opts = opts or {}
  assert(M.is_root(), "lab: the lab needs root (network namespaces)")
  M.sweep()
  counter = counter + 1
  local id = ("%s%d-%d"):format(M.PREFIX, helpers.pid(), counter)
  local ok, dir = run("mktemp -d /tmp/" .. id .. "-XXXXXX")
  assert(ok, "lab: mktemp: " .. dir)
  local self = setmetatable({id = id, dir = dir:gsub("%s+$", ""), daemons = {}, created = {},
    ns = {lan = id .. "-lan", igd = id .. "-igd", wan = id .. "-wan"}}, M)
  local built, err = pcall(build, self, opts)
  if not built then
    self:close()
    error(err, 2)
  end
  return self
end

--- Runs coturn's turnutils_natdiscovery (mapping and filtering tests)
-- from namespace ns against ip; returns its verdicts in RFC 5780 words:
-- mapping, filtering (nil when it reached none), and its whole output.
function M:natdiscovery(ns, ip)
  local _, out = self:try(ns, "timeout 60 turnutils_natdiscovery -m -f " .. q(ip))
  local function verdict(what)
    local kind = out:match("NAT with ([%w ]-) " .. what .. "!")
    local words = {["Endpoint Independent"] = "endpoint-independent",
                   ["Address Dependent"] = "address-dependent",
                   ["Address and Port Dependent"] = "address-and-port-dependent"}
    return kind and words[kind]
  end
  return verdict("Mapping"), verdict("Filtering"), out
end

--- Starts coturn's turnserver on the WAN side as a STUN server with both
-- WAN addresses, port 3478 and alternate port 3479 (RFC 5780), and waits
-- until it listens. Returns "ip:port" of its primary address.
function M:stun_server()
  local W = M.WAN
  self:daemon("wan", "turnserver", ("turnserver -n -S -z --no-cli --no-tls --no-dtls -L %s -L %s "
    .. "--listening-port 3478 --alt-listening-port 3479 --pidfile %s/turnserver.pid "
    .. "--userdb %s/turndb --log-file stdout --simple-log"):format(W.server, W.server2, q(self.dir),
    q(self.dir)))
  self:wait_for("turnserver to listen", function()
    return self:udp_listening("wan", W.server, 3478) and self:udp_listening("wan", W.server, 3479)
      and self:udp_listening("wan", W.server2, 3478) and self:udp_listening("wan", W.server2, 3479)
  end)
  return W.server .. ":3478"
end

--- Starts coturn's turnserver in the WAN namespace as a TURN server with
-- long-term credentials on WAN.server:3478, relaying from WAN.server's
-- ports 49152-49407. Peers may only be on the WAN (the lab's one public
-- network): no loopback, no LAN. Waits until it listens (UDP and TCP).
-- @tparam table opts `user`, `password`, `realm`, `max_lifetime` (s; coturn's
--   --max-allocate-lifetime), `extra` (more turnserver flags)
-- @return "ip:port"
function M:turn_server(opts)
  local W = M.WAN
  local wan_net = W.server:gsub("%d+$", "")
  self:daemon("wan", "turnserver", ("turnserver -n --no-cli --no-tls --no-dtls -L %s --listening-port 3478 "
    .. "--relay-ip %s --min-port 49152 --max-port 49407 --lt-cred-mech --user %s -r %s "
    .. "--denied-peer-ip=0.0.0.0-255.255.255.255 --allowed-peer-ip=%s0-%s255 "
    .. "--max-allocate-lifetime=%d --pidfile %s/turnserver.pid --userdb %s/turndb --log-file stdout "
    .. "--simple-log %s"):format(W.server, W.server, q(opts.user .. ":" .. opts.password), q(opts.realm),
    wan_net, wan_net, opts.max_lifetime or 3600, q(self.dir), q(self.dir), opts.extra or ""))
  self:wait_for("turnserver to listen", function()
    local _, out = self:try("wan", "ss -Hltn")
    return self:udp_listening("wan", W.server, 3478) and out:find(W.server .. ":3478 ", 1, true) ~= nil
  end)
  return W.server .. ":3478"
end

--- Writes a Lua script into the lab's directory; returns its path.
function M:script(name, text)
  local path = ("%s/%s.lua"):format(self.dir, name)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

--- Starts a Lua script (the system's lua5.4 with luv) in namespace ns as
-- a daemon; its arguments are args (a string). Returns its pid.
function M:lua_daemon(ns, name, text, args)
  return self:daemon(ns, name, ("lua5.4 %s %s"):format(q(self:script(name, text)), args or ""))
end

--- Is a TCP socket listening on ip:port in namespace ns?
function M:tcp_listening(ns, ip, port)
  local _, out = self:try(ns, "ss -Hltn")
  return out:find(ip .. ":" .. port .. " ", 1, true) ~= nil
end

--- The IGD's own filter and NAT table in the layout miniupnpd-nftables
-- expects: forward jumps to miniupnpd, the nat hooks to
-- prerouting_miniupnpd / postrouting_miniupnpd, and LAN traffic leaving
-- wan0 is masqueraded. Forwarding is otherwise allowed: a test of a
-- mapping must see miniupnpd's DNAT rule at work, not a filter.
function M:upnp_tables()
  if self.upnp_tables_made then return end
  self:nft("igd", [[
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    oifname "wan0" masquerade
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
]])
  self.upnp_tables_made = true
end

--- Starts miniupnpd in the IGD namespace (UPnP IGD and NAT-PMP on lan0,
-- wan0 external) and waits until NAT-PMP listens. Call it again after
-- stop_miniupnpd to restart it (a router reboot: its mappings are gone).
-- @tparam[opt] table opts `rules`: permission lines placed before the
--   final "allow 1024-65535 LAN 1024-65535" and "deny all"
-- @return its pid
function M:miniupnpd(opts)
  opts = opts or {}
  self:upnp_tables()
  self.miniupnpd_opts = opts
  local conf = self.dir .. "/miniupnpd.conf"
  local f = assert(io.open(conf, "w"))
  local lines = {"ext_ifname=wan0", "listening_ip=lan0", "port=0", "enable_natpmp=yes",
    "enable_upnp=yes", "secure_mode=no", "system_uptime=no", "notify_interval=60",
    "clean_ruleset_interval=600", "uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b"}
  for _, r in ipairs(opts.rules or {}) do lines[#lines + 1] = r end
  lines[#lines + 1] = ("allow 1024-65535 %s/%d 1024-65535"):format(M.LAN.client:gsub("%d+$", "0"), M.LAN.prefix)
  lines[#lines + 1] = "deny 0-65535 0.0.0.0/0 0-65535"
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  self.miniupnpd_runs = (self.miniupnpd_runs or 0) + 1
  -- not -d: its debug log of a refused NAT-PMP request (one line per port
  -- it tries) would take a minute; it forks, its pid is in the pid file
  local pidfile = self.dir .. "/miniupnpd.pid"
  os.remove(pidfile)
  self:sh("igd", ("miniupnpd -f %s -P %s >%s/miniupnpd-%d.log 2>&1 </dev/null"):format(q(conf), q(pidfile),
    q(self.dir), self.miniupnpd_runs))
  local p
  self:wait_for("miniupnpd to serve NAT-PMP", function()
    local pf = io.open(pidfile)
    p = pf and pf:read("l")
    if pf then pf:close() end
    return p and p:match("^%d+$") and self:udp_listening("igd", M.LAN.gateway, 5351)
  end)
  self.daemons[#self.daemons + 1] = {name = "miniupnpd", pid = p}
  self.miniupnpd_pid = p
  return p
end

--- Stops miniupnpd (SIGTERM) and empties its chains, as a rebooting
-- router forgets its mappings; waits until it is gone.
function M:stop_miniupnpd()
  local p = assert(self.miniupnpd_pid, "miniupnpd is not running")
  run("kill " .. p)
  self:wait_for("miniupnpd to exit", function() return not M.alive(p) end)
  self.miniupnpd_pid = nil
  -- miniupnpd leaves its rules in place when it exits; a rebooting router
  -- loses them
  for _, chain in ipairs{"miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"} do
    self:sh("igd", "nft flush chain inet filter " .. chain)
  end
end

--- The router's own view of its mappings: upnpc -l from namespace ns
-- ("lan"), as a list of {external_port, internal_ip, internal_port, proto, description}.
function M:upnpc_list(ns)
  local _, out = self:try(ns or "lan", "timeout 20 upnpc -l")
  local list = {}
  -- " 0 TCP 40000->192.168.77.2:40000 'desc' '' 3600"
  for proto, ext, ip, int, desc in out:gmatch("%s*%d+%s+(%u+)%s+(%d+)%->([%d%.]+):(%d+)%s+'([^']*)'") do
    list[#list + 1] = {external_port = tonumber(ext), internal_ip = ip, internal_port = tonumber(int),
                       proto = proto:lower(), description = desc}
  end
  return list, out
end

--- The IGD's nftables rules that miniupnpd wrote (its DNAT chain).
function M:upnp_rules()
  local _, out = self:try("igd", "nft list chain inet filter prerouting_miniupnpd")
  return out
end

--- Kills the lab's daemons, deletes its namespaces and its directory.
-- Idempotent; never raises.
function M:close()
  if self.closed then return end
  self.closed = true
  for i = #self.daemons, 1, -1 do
    run("kill -9 " .. self.daemons[i].pid)
  end
  for _, name in ipairs(self.created) do
    -- anything still running in there (a child of a daemon) goes too
    run("ip netns pids " .. q(name) .. " | xargs -r kill -9")
    run("ip netns del " .. q(name))
  end
  if self.dir and self.dir:match("^/tmp/" .. M.PREFIX) then run("rm -rf " .. q(self.dir)) end
end

M.__close = M.close
M.__gc = M.close

return M
