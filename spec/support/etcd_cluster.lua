--- A throwaway etcd cluster on loopback for specs and benchmarks: n
-- members on free ports (found by binding port 0), data under a fresh
-- temporary directory, fast elections. Each member runs under
-- `timeout -s KILL`, so a crashed spec run cannot leave etcd behind for
-- long. Functions that wait run the luv loop themselves.
local uv = require "luv"
local async = require "portman.async"

local M = {}
local Cluster = {}
Cluster.__index = Cluster

-- Free loopback ports: bind port 0 n times, keep all open, then close.
local function free_ports(n)
  local socks, ports = {}, {}
  for i = 1, n do
    local s = uv.new_tcp()
    assert(s:bind("127.0.0.1", 0))
    socks[i] = s
    ports[i] = s:getsockname().port
  end
  for _, s in ipairs(socks) do s:close() end
  return ports
end

local function shell(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

-- Waits ms on a luv timer: inside a task by yielding, else by running
-- the loop (which must not be running already).
local function pause(ms)
  if async.in_task() then return async.sleep(ms) end
  local t = uv.new_timer()
  t:start(ms, 0, function() t:close() end)
  uv.run("once")
end

-- Waits until pred() is true or ms pass; returns pred().
local function wait_until(pred, ms, step)
  local deadline = uv.now() + ms
  local ok = pred()
  while not ok and uv.now() < deadline do
    pause(step or 50)
    uv.update_time()
    ok = pred()
  end
  return ok
end
M.wait_until = wait_until

--- Starts an n-member cluster (3 by default) and waits until it answers.
-- @param opts `n`, `fsync` (true: etcd's default durability; false by
--   default, for speed: kills in specs are process kills, not power loss),
--   `tls` (true: clients talk HTTPS with a self-signed certificate for
--   127.0.0.1, cluster.cert, which is also the CA to trust),
--   `client_cert_auth` (with tls: clients must show a certificate the CA
--   signed; cluster.cert and cluster.key serve as one)
function M.start(opts)
  opts = opts or {}
  local n = opts.n or 3
  local dir = shell("mktemp -d /tmp/portman-etcd.XXXXXX"):gsub("%s+$", "")
  local ports = free_ports(2 * n)
  local self = setmetatable({dir = dir, n = n, members = {}, fsync = opts.fsync,
                             client_cert_auth = opts.client_cert_auth}, Cluster)
  if opts.tls then
    self.cert, self.key = dir .. "/cert.pem", dir .. "/key.pem"
    shell(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 1 -subj /CN=127.0.0.1 "
      .. "-addext subjectAltName=IP:127.0.0.1 2>&1"):format(self.key, self.cert))
  end
  local peers = {}
  for i = 1, n do
    local m = {name = "m" .. i, client = ports[2 * i - 1], peer = ports[2 * i]}
    m.url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. m.client
    self.members[i] = m
    peers[i] = ("%s=http://127.0.0.1:%d"):format(m.name, m.peer)
  end
  self.initial = table.concat(peers, ",")
  self.token = "portman-" .. dir:match("[^.]+$")
  for i = 1, n do self:start_member(i) end
  if not self:wait_healthy(20000) then
    local logs = self:logs()
    self:stop()
    error("etcd cluster did not become healthy:\n" .. logs)
  end
  return self
end

--- The client URLs, comma-separated.
function Cluster:endpoints()
  local urls = {}
  for i, m in ipairs(self.members) do urls[i] = m.url end
  return table.concat(urls, ",")
end

--- (Re)starts member i with its data directory.
function Cluster:start_member(i)
  local m = self.members[i]
  local log = ("%s/%s.log"):format(self.dir, m.name)
  local fd = assert(uv.fs_open(log, "a", 420))
  local args = {"-s", "KILL", "900", "etcd", "--name", m.name, "--data-dir", self.dir .. "/" .. m.name,
    "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
    "--listen-peer-urls", "http://127.0.0.1:" .. m.peer,
    "--initial-advertise-peer-urls", "http://127.0.0.1:" .. m.peer,
    "--initial-cluster", self.initial, "--initial-cluster-token", self.token,
    "--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500",
    "--logger", "zap", "--log-level", "warn"}
  if not self.fsync then args[#args + 1] = "--unsafe-no-fsync" end
  if self.cert then
    table.move({"--cert-file", self.cert, "--key-file", self.key}, 1, 4, #args + 1, args)
  end
  if self.client_cert_auth then
    table.move({"--client-cert-auth", "--trusted-ca-file", self.cert}, 1, 3, #args + 1, args)
  end
  local handle, pid
  handle, pid = uv.spawn("timeout", {args = args, stdio = {nil, fd, fd}}, function()
    handle:close()
    m.running = false
  end)
  uv.fs_close(fd)
  assert(handle, pid)
  handle:unref() -- a running member must not keep portman.run's loop going
  m.running, m.wrapper = true, pid
  -- the etcd process itself: timeout's child
  wait_until(function()
    local f = io.open(("/proc/%d/task/%d/children"):format(pid, pid))
    local kids = f and f:read("a") or ""
    if f then f:close() end
    m.pid = math.tointeger(tonumber(kids:match("%d+")))
    return m.pid ~= nil
  end, 5000, 10)
end

--- Sends signal (a luv name: "sigkill", "sigterm", ...) to member i's etcd
-- and waits until it has exited.
function Cluster:kill(i, signal)
  local m = self.members[i]
  if not m.running then return end
  uv.kill(m.pid or m.wrapper, signal or "sigkill")
  assert(wait_until(function() return not m.running end, 10000), "member did not exit")
end

-- Is the member at url healthy (a leader, and serving)?
local function healthy(url, tls)
  local out = shell(("curl -s -m 1 %s %s/health 2>/dev/null"):format(tls, url))
  return out:find('"health":"true"', 1, true) ~= nil
end

--- The TLS flags curl and etcdctl take for this cluster ("" without TLS).
function Cluster:tls_flags()
  if not self.cert then return "" end
  if not self.client_cert_auth then return "--cacert " .. self.cert end
  return ("--cacert %s --cert %s --key %s"):format(self.cert, self.cert, self.key)
end

--- Runs etcdctl against the cluster with args; returns its output and
-- whether it succeeded.
function Cluster:etcdctl(args)
  local cmd = ("ETCDCTL_API=3 timeout 20 etcdctl --endpoints %s %s %s 2>&1"):format(self:endpoints(),
    self:tls_flags(), args)
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

--- Waits until every running member reports healthy; returns true or false.
function Cluster:wait_healthy(ms)
  return wait_until(function()
    for _, m in ipairs(self.members) do
      if m.running and not healthy(m.url, self:tls_flags()) then return false end
    end
    return true
  end, ms, 100)
end

--- Every member's log, for a failure message.
function Cluster:logs()
  return shell(("tail -n 20 %s/*.log 2>/dev/null"):format(self.dir))
end

--- Kills every member and deletes the data. Idempotent.
function Cluster:stop()
  for i, m in ipairs(self.members) do
    if m.running then pcall(self.kill, self, i, "sigkill") end
  end
  if self.dir and self.dir:match("^/tmp/portman%-etcd%.") then os.execute("rm -rf " .. self.dir) end
  self.dir = nil
end

return M
