-- `portman relay` in the lab (needs root): a LAN UDP echo reached from the
-- WAN through coturn and the relay, against the baseline measured in the
-- same run: the same echo reached directly through a port forward on the
-- router (what a mapping would give). Each of REPS repetitions measures
-- the round-trip time of PINGS sequential 64-byte datagrams (its median)
-- and the echo throughput of 1000-byte datagrams with WINDOW in flight for
-- SECONDS; the table shows min/median/max over the repetitions, and the
-- relay's median over the direct one.
--
--   sudo LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 bench/relay.lua
package.path = "spec/?.lua;spec/lab/?.lua;" .. package.path
local cjson = require "cjson"
local Lab = require "lab.lab"

local REPS, PINGS, WINDOW, SECONDS = 5, 300, 16, 2
local ECHO_PORT, DIRECT_PORT = 7000, 7100

-- The LAN's echo: on 127.0.0.1 for the relay, on the LAN address for the
-- router's port forward.
local ECHO = [[
local uv = require "luv"
local function echo(ip, port)
  local u = uv.new_udp()
  assert(u:bind(ip, port))
  u:recv_start(function(err, data, addr) if data and not err then u:send(data, addr.ip, addr.port) end end)
end
echo("127.0.0.1", tonumber(arg[1]))
echo(arg[3], tonumber(arg[2]))
uv.run()
]]

-- The WAN peer: argv ip port source pings window seconds; prints one JSON
-- document {rtt_us = median, rate = echoed datagrams per second}.
local PEER = [[
local uv = require "luv"
local ip, port, src = arg[1], tonumber(arg[2]), arg[3]
local pings, window, seconds = tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6])
local u = uv.new_udp()
assert(u:bind(src, 0))
local rtts, phase, sent_at, got = {}, "warm", 0, 0
local big = ("x"):rep(1000)
local deadline, retry = uv.new_timer(), uv.new_timer()
local function ping()
  sent_at = uv.hrtime()
  u:send(("p"):rep(64), ip, port)
  retry:start(1000, 0, ping) -- a lost datagram: send again
end
local function finish()
  table.sort(rtts)
  io.write(('{"rtt_us": %.1f, "rate": %.1f}\n'):format(rtts[(#rtts + 1) // 2], got / seconds))
  os.exit(0)
end
u:recv_start(function(err, data)
  if err or not data then return end
  if phase == "warm" or phase == "ping" then
    retry:stop()
    if phase == "ping" then rtts[#rtts + 1] = (uv.hrtime() - sent_at) / 1000 end
    if phase == "warm" then phase = "ping" end
    if #rtts == pings then
      phase = "rate"
      for _ = 1, window do u:send(big, ip, port) end
      deadline:start(seconds * 1000, 0, finish)
      return
    end
    return ping()
  end
  got = got + 1
  u:send(big, ip, port) -- one back, one out: the window stays full
end)
local refill = uv.new_timer() -- a lost datagram must not shrink the window for good
refill:start(200, 200, function() if phase == "rate" then u:send(big, ip, port) end end)
uv.new_timer():start(120000, 0, function() io.write("timeout\n") os.exit(1) end)
ping()
uv.run()
]]

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  return s[(#s + 1) // 2]
end

local function minmax(list)
  return math.min(table.unpack(list)), median(list), math.max(table.unpack(list))
end

local lab = Lab.new{nat = "masquerade fully-random"}
local ok, err = pcall(function()
  local W, L = Lab.WAN, Lab.LAN
  local server = lab:turn_server{user = "bench", password = "bench-pass", realm = "lab.example"}
  lab:lua_daemon("lan", "echo", ECHO, ("%d %d %s"):format(ECHO_PORT, DIRECT_PORT, L.client))
  lab:nft("igd", ([[
table ip bench_forward {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan0" udp dport %d dnat to %s:%d
  }
}
]]):format(DIRECT_PORT, L.client, DIRECT_PORT))
  local pw = lab:script("pw", "bench-pass\n")
  lab:portman_daemon("lan", "relay", ("relay %d --server %s --user bench --password-file %s --allow %s --json")
    :format(ECHO_PORT, server, pw, W.server2))
  local doc
  lab:wait_for("the relay", function()
    local line = lab:log("relay"):match("(%{[^\n]*\"relayed_ip\"[^\n]*%})")
    doc = line and cjson.decode(line)
    return doc ~= nil
  end, 20)
  local peer = lab:script("peer", PEER)
  local paths = {{"direct (router port forward)", W.igd, DIRECT_PORT},
                 {"relay (coturn + portman relay)", doc.relayed_ip, doc.relayed_port}}
  local results = {}
  for _, p in ipairs(paths) do results[p[1]] = {rtt = {}, rate = {}} end
  for _ = 1, REPS do
    for _, p in ipairs(paths) do -- alternated: both see the same load on the machine
      local out = lab:sh("wan", ("lua5.4 %s %s %d %s %d %d %d"):format(peer, p[2], p[3], W.server2, PINGS, WINDOW,
        SECONDS))
      local r = cjson.decode(out:match("(%b{})"))
      table.insert(results[p[1]].rtt, r.rtt_us)
      table.insert(results[p[1]].rate, r.rate)
    end
  end
  print(("UDP echo from the WAN to a LAN service behind a symmetric NAT, %d repetitions (min / median / max)")
    :format(REPS))
  print(("  %-32s %28s %34s"):format("path", "RTT, 64 B, median of " .. PINGS .. " (us)",
    ("echoes/s, 1000 B, window %d, %d s"):format(WINDOW, SECONDS)))
  for _, p in ipairs(paths) do
    local r = results[p[1]]
    local a, b, c = minmax(r.rtt)
    local d, e, f = minmax(r.rate)
    print(("  %-32s %8.1f / %8.1f / %8.1f %10.0f / %10.0f / %10.0f"):format(p[1], a, b, c, d, e, f))
  end
  local direct, relay = results[paths[1][1]], results[paths[2][1]]
  print(("  relay / direct (medians): RTT x%.2f (+%.1f us), throughput x%.2f"):format(
    median(relay.rtt) / median(direct.rtt), median(relay.rtt) - median(direct.rtt),
    median(relay.rate) / median(direct.rate)))
end)
lab:close()
if not ok then error(err, 0) end
