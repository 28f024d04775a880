-- The SYN scan (method "syn") in a closed lab, root only: two network
-- namespaces made for this run, a client and a target joined by a veth
-- pair. The target's nftables drop some ports (filtered) and reject others
-- with an ICMP host unreachable; a luv process there listens on a few (open);
-- the rest are closed. The SYN scan must find what the connect scan finds
-- and what `nmap -sS` finds; without CAP_NET_RAW it is denied. The probes
-- run in the client namespace (spec/lab/probe_child.lua). Everything is
-- deleted in teardown.
local helpers = require "helpers"
local cjson = require "cjson"
local lab = require "lab.lab"

local tag = ("%d-%d"):format(helpers.pid(), math.random(1000000))
local CLIENT, TARGET = "pm-syn-c-" .. tag, "pm-syn-t-" .. tag
local V4 = "10.78.0.2"
local OPEN = {5000, 5001, 5002, 5003, 5004}
local PORTS = "1000-1019,2000-2009,4990-5010" -- 20 dropped, 10 rejected, 5 open, 16 closed

-- A command without the sanitizer preload (ip, nft, nmap are not ours).
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

-- Runs the lab child in the client namespace (after the shell words in
-- prefix, if any); returns its document.
local function child(mode, args, prefix)
  local cmd = ("cd %s && env -u LD_PRELOAD ip netns exec %s %s %s spec/lab/probe_child.lua %s '%s' 2>&1")
    :format(helpers.root, CLIENT, prefix or "", lua_cmd(), mode, cjson.encode(args or {}))
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  local ok, doc = pcall(cjson.decode, out:match("[^\n]*\n?$") or "")
  assert(ok and type(doc) == "table", "the lab child failed: " .. out)
  return doc
end

local function probe(method, opts, prefix)
  opts = opts or {}
  opts.method, opts.timeout = method, opts.timeout or 1500
  return child("probe", {host = V4, ports = PORTS, opts = opts}, prefix)
end

local NFT = [[
table inet pmsyn {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 1000-1019 drop
    tcp dport 2000-2009 reject with icmpx type host-unreachable
  }
}
]]

local LISTENER = [[
local uv = require "luv"
local keep = {}
for _, port in ipairs({%s}) do
  local t = uv.new_tcp()
  assert(t:bind("0.0.0.0", port))
  assert(t:listen(64, function() local c = uv.new_tcp() t:accept(c) c:close() end))
  keep[#keep + 1] = t
end
io.write("ready\n")
io.flush()
uv.run()
]]

local function range(a, b)
  local t = {}
  for p = a, b do t[#t + 1] = p end
  return t
end

describe("the SYN scan in a lab namespace #lab", function()
  -- not skipped without root: it fails, saying why
  assert(lab.is_root(), "this spec needs root: it makes network namespaces and raw sockets")
  local listener

  setup(function()
    must("ip netns add " .. CLIENT)
    must("ip netns add " .. TARGET)
    for _, ns in ipairs({CLIENT, TARGET}) do must("ip -n " .. ns .. " link set lo up") end
    must(("ip -n %s link add veth0 type veth peer name veth1 netns %s"):format(CLIENT, TARGET))
    must("ip -n " .. CLIENT .. " addr add 10.78.0.1/24 dev veth0")
    must("ip -n " .. TARGET .. " addr add 10.78.0.2/24 dev veth1")
    must("ip -n " .. CLIENT .. " link set veth0 up")
    must("ip -n " .. TARGET .. " link set veth1 up")
    -- the lab wants every ICMP error the target sends
    sh("ip netns exec " .. TARGET .. " sysctl -w net.ipv4.icmp_ratelimit=0")
    local rules = os.tmpname()
    helpers.write(rules, NFT)
    local ok = sh(("ip netns exec %s nft -f %s"):format(TARGET, rules))
    os.remove(rules)
    assert(ok, "nft rules failed to load")
    local script = os.tmpname()
    helpers.write(script, LISTENER:format(table.concat(OPEN, ", ")))
    local p = io.popen(("exec env -u LD_PRELOAD ip netns exec %s sh -c 'echo $$; exec lua5.4 %s'")
      :format(TARGET, script))
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

  local syn -- the SYN scan's document, kept for the comparisons below

  it("tells open, closed, filtered and unreachable apart", function()
    syn = probe("syn")
    assert.is_nil(syn.err)
    assert.equals("syn", syn.method)
    assert.equals(51, syn.scanned)
    assert.same(OPEN, syn.open)
    assert.same(range(1000, 1019), syn.filtered)
    assert.same(range(2000, 2009), syn.unreachable)
    assert.same({open = 5, closed = 16, filtered = 20, unreachable = 10, error = 0, ["open|filtered"] = 0},
                syn.counts)
    assert.equals("EHOSTUNREACH", syn.errors[1][2])
    assert.equals(0, syn.sockets_after)
  end)

  it("finds what the connect scan finds", function()
    local conn = probe("connect")
    assert.equals("connect", conn.method)
    for _, k in ipairs({"open", "filtered", "unreachable", "counts", "errors", "closed"}) do
      assert.same(conn[k], syn[k], k)
    end
  end)

  it("finds the open, closed and filtered ports nmap -sS finds", function()
    local p = io.popen(("env -u LD_PRELOAD ip netns exec %s nmap -sS -n -Pn -T4 -p 1000-1019,4990-5010 %s -oG - 2>&1")
      :format(CLIENT, V4))
    local out = p:read("a")
    p:close()
    local states = {}
    for port, state in (out:match("Ports: ([^\t\n]*)") or ""):gmatch("(%d+)/([%a|]+)/tcp") do
      states[state] = states[state] or {}
      table.insert(states[state], tonumber(port))
    end
    assert.same(OPEN, states.open, out)
    assert.same(range(1000, 1019), states.filtered, out)
    assert.equals(16, #states.closed, out)
    assert.equals(syn.closed, 16)
  end)

  it("finds exactly the listening ports over 1-65535 of 127.0.0.1 (::1 with connects)", function()
    local r = child("range", {method = "syn"})
    assert.equals("syn", r.v4.method)
    assert.equals("connect", r.v6.method)
    assert.equals(65535, r.v4.scanned)
    assert.equals(180 + 30, #r.proc4)
    assert.same(r.proc4, r.v4.open)
    assert.equals(65535 - #r.proc4, r.v4.closed)
    assert.same(r.proc6, r.v6.open)
  end)

  it("cancels with SYNs in flight and leaves no socket behind", function()
    local r = child("probe", {host = V4, ports = "1000-1019", opts = {method = "syn", timeout = 5000},
                              cancel_after = 100})
    assert.is_true(r.cancelled)
    assert.equals(0, r.scanned)
    assert.equals(0, r.sockets_after)
  end)

  it("ignores forged replies: a SYN+ACK and a RST whose ack is not its SYN's", function()
    -- nping (nmap's packet crafter) in the target sends them to the scan's
    -- source port while the scan waits on two dropped ports
    local nping = "env -u LD_PRELOAD ip netns exec " .. TARGET .. " nping -N -q --tcp -c 1 -g %d --flags %s "
      .. "--ack 12345 -p SPORT 10.78.0.1 >/dev/null 2>&1"
    local spoofer = nping:format(1000, "SYN,ACK") .. " && " .. nping:format(1001, "RST,ACK")
    local r = child("spoofed", {host = V4, ports = "1000,1001", timeout = 1500, after = 200, spoofer = spoofer})
    assert.is_true(r.spoofer_ok)
    assert.equals("syn", r.method)
    assert.same({["1000"] = "filtered", ["1001"] = "filtered"}, r.ports)
    assert.is_true(r.ignored >= 2, "the forged replies reached the scan: " .. tostring(r.ignored))
  end)

  it("closes its sockets and epoll fd, run to the end, cancelled or collected", function()
    local counts = helpers.in_netns([[
      local helpers = require "helpers"
      local core = require "portman.core"
      local uv = require "luv"
      local kinds = {kinds = {"socket", "eventpoll"}}
      local base = helpers.fd_count(kinds)
      local s = assert(core.syn_new("127.0.0.1", {1, 2, 3}, 100, 0))
      local open = helpers.fd_count(kinds)
      while not s:done() do
        s:step()
        local t = s:timeout()
        if t and t > 0 then uv.sleep(t) end
      end
      s:close()
      local after_run = helpers.fd_count(kinds)
      s = assert(core.syn_new("127.0.0.1", {1, 2, 3}, 5000, 0))
      s:step()
      s:cancel()
      s:close()
      local after_cancel = helpers.fd_count(kinds)
      s = assert(core.syn_new("127.0.0.1", {1, 2, 3}, 5000, 0))
      s = nil
      local after_gc = helpers.fd_count(kinds)
      return {open - base, after_run - base, after_cancel - base, after_gc - base}
    ]])
    -- raw TCP, raw ICMP, the port-holding TCP socket, the epoll instance
    assert.same({4, 0, 0, 0}, counts)
  end)

  it("is denied without CAP_NET_RAW; auto then probes with connects", function()
    local drop = "setpriv --inh-caps=-all --bounding-set=-net_raw"
    local r = probe("syn", nil, drop)
    assert.equals("denied", r.code)
    assert.matches("^denied: syn scan: a raw socket needs CAP_NET_RAW", r.err)
    local auto = probe("auto", nil, drop)
    assert.equals("connect", auto.method)
    assert.same(syn.open, auto.open)
    assert.same(syn.counts, auto.counts)
    local with_cap = probe("auto")
    assert.equals("syn", with_cap.method)
    assert.same(syn.counts, with_cap.counts)
  end)

  it("prints the method through `portman probe --method syn --json`", function()
    local cmd = ("cd %s && env -u LD_PRELOAD ip netns exec %s %s bin/portman probe %s "
                 .. "1000-1004,2000-2004,5000 --json --timeout 300 --method syn")
      :format(helpers.root, CLIENT, lua_cmd(), V4)
    local p = io.popen(cmd)
    local doc = cjson.decode(p:read("a"))
    p:close()
    assert.equals("syn", doc.method)
    assert.same(range(1000, 1004), doc.filtered)
    assert.same(range(2000, 2004), doc.unreachable)
    assert.same({5000}, doc.open)
  end)
end)
