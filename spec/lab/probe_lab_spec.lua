-- Probes in a closed lab (root): two network namespaces made for this run, a
-- client and a target joined by a veth pair, nothing else. The target's
-- nftables drop some ports (filtered) and reject others with ICMP host
-- unreachable or admin prohibited (unreachable); a luv process in it listens
-- on a few. The probes run in the client namespace (spec/lab/probe_child.lua)
-- and print what they found. Everything is deleted in teardown, whatever
-- happened.
local helpers = require "helpers"
local cjson = require "cjson"

local tag = ("%d-%d"):format(helpers.pid(), math.random(1000000))
local CLIENT, TARGET = "pm-probe-c-" .. tag, "pm-probe-t-" .. tag
local V4, V6 = "10.77.0.2", "fd77::2"
local OPEN = {5000, 5001, 5002, 5003, 5004}

-- A command without the sanitizer preload (ip, nft and sysctl are not ours).
local function sh(cmd)
  local ok, _, code = os.execute("env -u LD_PRELOAD " .. cmd .. " >/dev/null 2>&1")
  return ok, code
end

local function must(cmd)
  local ok, code = sh(cmd)
  assert(ok, ("lab set-up failed (%s): %s"):format(tostring(code), cmd))
end

local function lua_cmd()
  local pre = os.getenv("LD_PRELOAD")
  return (pre and ("env LD_PRELOAD='%s' "):format(pre) or "") .. (os.getenv("PORTMAN_LUA") or "lua5.4")
end

-- Runs the child in ns (the client by default); returns its document.
local function child(mode, args, ns)
  local cmd = ("cd %s && env -u LD_PRELOAD ip netns exec %s %s spec/lab/probe_child.lua %s '%s' 2>&1")
    :format(helpers.root, ns or CLIENT, lua_cmd(), mode, cjson.encode(args or {}))
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  local ok, doc = pcall(cjson.decode, out:match("[^\n]*\n?$") or "")
  assert(ok and type(doc) == "table", "the lab child failed: " .. out)
  return doc
end

local NFT = [[
table inet pmprobe {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 1000-1199 drop
    tcp dport 2000-2019 reject with icmpx type host-unreachable
    tcp dport 2020-2039 reject with icmpx type admin-prohibited
    udp dport 3000 drop
  }
}
]]

-- The target's listeners: TCP on OPEN and a UDP echo on 5000, dual-stack.
local LISTENER = [[
local uv = require "luv"
local keep = {}
for _, port in ipairs({%s}) do
  local t = uv.new_tcp()
  assert(t:bind("::", port, {ipv6only = false}))
  assert(t:listen(64, function() local c = uv.new_tcp() t:accept(c) c:close() end))
  keep[#keep + 1] = t
end
local u = uv.new_udp()
assert(u:bind("::", 5000))
u:recv_start(function(err, data, addr) if data and not err then u:send(data, addr.ip, addr.port) end end)
io.write("ready\n")
io.flush()
uv.run()
]]

describe("probes in a lab namespace #lab", function()
  local listener -- {pid, pipe} of the target's listener process

  setup(function()
    must("ip netns add " .. CLIENT)
    must("ip netns add " .. TARGET)
    for _, ns in ipairs({CLIENT, TARGET}) do
      must("ip -n " .. ns .. " link set lo up")
      -- no duplicate address detection: addresses (link-local ones too,
      -- which neighbour discovery needs) are usable at once
      must("ip netns exec " .. ns .. " sysctl -w net.ipv6.conf.default.accept_dad=0")
    end
    must(("ip -n %s link add veth0 address 02:77:00:00:00:01 type veth peer name veth1 "
          .. "address 02:77:00:00:00:02 netns %s"):format(CLIENT, TARGET))
    -- fixed IPv6 neighbours: the first neighbour solicitation on a fresh
    -- veth can go unanswered for a second, longer than a probe waits
    must("ip -n " .. CLIENT .. " -6 neigh add fd77::2 lladdr 02:77:00:00:00:02 dev veth0 nud permanent")
    must("ip -n " .. TARGET .. " -6 neigh add fd77::1 lladdr 02:77:00:00:00:01 dev veth1 nud permanent")
    must("ip -n " .. CLIENT .. " addr add 10.77.0.1/24 dev veth0")
    must("ip -n " .. TARGET .. " addr add 10.77.0.2/24 dev veth1")
    must("ip -n " .. CLIENT .. " -6 addr add fd77::1/64 dev veth0 nodad")
    must("ip -n " .. TARGET .. " -6 addr add fd77::2/64 dev veth1 nodad")
    must("ip -n " .. CLIENT .. " link set veth0 up")
    must("ip -n " .. TARGET .. " link set veth1 up")
    -- the kernel rate-limits the ICMP errors it sends; the lab wants them all
    sh("ip netns exec " .. TARGET .. " sysctl -w net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0")
    sh("ip netns exec " .. TARGET .. " sysctl -w net.ipv4.icmp_msgs_per_sec=100000 net.ipv4.icmp_msgs_burst=100000")
    local rules = os.tmpname()
    local f = assert(io.open(rules, "w"))
    f:write(NFT)
    f:close()
    local ok = sh(("ip netns exec %s nft -f %s"):format(TARGET, rules))
    os.remove(rules)
    assert(ok, "nft rules failed to load")
    local script = os.tmpname()
    f = assert(io.open(script, "w"))
    f:write(LISTENER:format(table.concat(OPEN, ", ")))
    f:close()
    local p = io.popen(("exec env -u LD_PRELOAD ip netns exec %s sh -c 'echo $$; exec lua5.4 %s'")
      :format(TARGET, script))
    -- p stays open: it is closed (and waited for) in teardown
    listener = {pid = math.tointeger(tonumber(p:read("l"))), pipe = p}
    local ready = p:read("l")
    os.remove(script)
    assert(ready == "ready", "the target's listener did not start")
  end)

  teardown(function()
    if listener then
      if listener.pid then os.execute("kill " .. listener.pid .. " 2>/dev/null") end
      listener.pipe:close()
    end
    sh("ip netns del " .. CLIENT)
    sh("ip netns del " .. TARGET)
  end)

  local function probe(host, ports, opts, extra)
    local args = {host = host, ports = ports, opts = opts}
    for k, v in pairs(extra or {}) do args[k] = v end
    return child("probe", args)
  end

  local function set(list)
    local s = {}
    for _, v in ipairs(list) do s[v] = true end
    return s
  end

  for _, host in ipairs({V4, V6}) do
    it("tells open, closed, filtered and unreachable apart over " .. host, function()
      -- a generous timeout: on a loaded machine an ICMP error may come late,
      -- and a late one would read as filtered
      local r = probe(host, "1000-1019,2000-2039,4990-5010", {timeout = 1500})
      assert.is_nil(r.err)
      assert.equals(host, r.address)
      assert.equals(81, r.scanned)
      assert.same(OPEN, r.open)
      local filtered, unreachable = set(r.filtered), set(r.unreachable)
      for p = 1000, 1019 do assert.is_true(filtered[p], "filtered " .. p) end
      for p = 2000, 2039 do assert.is_true(unreachable[p], "unreachable " .. p) end
      assert.same({open = 5, closed = 16, filtered = 20, unreachable = 40, error = 0,
                   ["open|filtered"] = 0}, r.counts)
      local errors = {}
      for _, e in ipairs(r.errors) do errors[e[1]] = e[2] end
      assert.equals("EHOSTUNREACH", errors[2000])
      assert.equals(host == V4 and "EHOSTUNREACH" or "EACCES", errors[2020])
      assert.equals(0, r.sockets_after)
    end)
  end

  it("prints the same through `portman probe --json`", function()
    local cmd = ("cd %s && env -u LD_PRELOAD ip netns exec %s %s bin/portman probe %s "
                 .. "1000-1004,2000-2004,5000 --json --timeout 300")
      :format(helpers.root, CLIENT, lua_cmd(), V4)
    local p = io.popen(cmd)
    local doc = cjson.decode(p:read("a"))
    p:close()
    assert.same({1000, 1001, 1002, 1003, 1004}, doc.filtered)
    assert.same({2000, 2001, 2002, 2003, 2004}, doc.unreachable)
    assert.same({5000}, doc.open)
    assert.same({open = 1, closed = 0, filtered = 5, unreachable = 5, error = 0}, doc.counts)
  end)

  it("keeps at most `concurrency` sockets open while 200 ports time out", function()
    local r = probe(V4, "1000-1199", {timeout = 100, concurrency = 16})
    assert.equals(200, #r.filtered)
    assert.equals(16, r.most_sockets)
    assert.equals(0, r.sockets_after)
  end)

  it("cancels with sockets in flight and closes them", function()
    local r = probe(V4, "1000-1199", {timeout = 5000, concurrency = 50}, {cancel_after = 100})
    assert.is_true(r.cancelled)
    assert.equals(0, r.scanned)
    assert.equals(50, r.most_sockets)
    assert.equals(0, r.sockets_after)
  end)

  it("probes UDP: an echo is open, a drop open|filtered, nothing there closed", function()
    for _, host in ipairs({V4, V6}) do
      local r = probe(host, "3000,3001,5000", {proto = "udp", payload = "hello", timeout = 300})
      assert.same({5000}, r.open, host)
      assert.same({3000}, r.open_filtered, host)
      assert.equals(1, r.closed, host)
    end
  end)

  it("finds exactly the listening ports over 1-65535 of 127.0.0.1 and ::1", function()
    local r = child("range")
    assert.equals(310, r.listeners)
    assert.equals(65535, r.v4.scanned)
    assert.equals(65535, r.v6.scanned)
    assert.equals(180 + 30, #r.proc4) -- 127.0.0.1, 0.0.0.0 and the dual-stack ::
    assert.equals(130, #r.proc6) -- ::1 and ::
    assert.same(r.proc4, r.v4.open)
    assert.same(r.proc6, r.v6.open)
    assert.equals(65535 - #r.proc4, r.v4.closed)
    assert.equals(65535 - #r.proc6, r.v6.closed)
  end)

  it("counts a socket connected to itself as closed", function()
    -- one ephemeral port: a connect to 127.0.0.1:40000 from 40000 meets itself
    must(("ip netns exec %s sysctl -w net.ipv4.ip_local_port_range='40000 40000'"):format(CLIENT))
    local r = child("selfconnect", {port = 40000})
    assert.equals("connected from port 40000", r.naive) -- what a plain connect() believes
    assert.equals("closed", r.state)
    assert.is_nil(r.error)
  end)
end)
