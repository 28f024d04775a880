-- The SYN scan (method "syn") in a closed lab, root only: two network
-- namespaces made for this run, a client and a target joined by a veth
-- pair. The target's nftables drop some ports (filtered) and reject others
-- with an ICMP host unreachable; a luv process there listens on a few (open);
-- the rest are closed. The SYN scan must find what the connect scan finds
-- and what `nmap -sS` finds; without CAP_NET_RAW it is denied. The probes
-- run in the client namespace (spec/lab/probe_child.lua). Everything is
-- deleted in teardown (spec/lab/probe_pair.lua).
local helpers = require "helpers"
local cjson = require "cjson"
local lab = require "lab.lab"
local probe_pair = require "lab.probe_pair"

local V4 = "10.78.0.2"
local OPEN = {5000, 5001, 5002, 5003, 5004}
local PORTS = "1000-1019,2000-2009,4990-5010" -- 20 dropped, 10 rejected, 5 open, 16 closed
local pair -- the client and target namespaces (spec/lab/probe_pair.lua), made in setup

local function probe(method, opts, prefix)
  opts = opts or {}
  opts.method, opts.timeout = method, opts.timeout or 1500
  return pair:child("probe", {host = V4, ports = PORTS, opts = opts}, prefix)
end

-- the target's input chain (nftables)
local RULES = {"tcp dport 1000-1019 drop", "tcp dport 2000-2009 reject with icmpx type host-unreachable"}

local function range(a, b)
  local t = {}
  for p = a, b do t[#t + 1] = p end
  return t
end

describe("the SYN scan in a lab namespace #lab", function()
  -- not skipped without root: it fails, saying why
  assert(lab.is_root(), "this spec needs root: it makes network namespaces and raw sockets")

  setup(function()
    pair = probe_pair.new{name = "pm-syn", v4 = {"10.78.0.1", V4}, icmp_unlimited = true, input = RULES,
                          listen = {tcp = OPEN}}
  end)
  teardown(function() if pair then pair:close() end end)

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
    local out = pair:read("client", "nmap -sS -n -Pn -T4 -p 1000-1019,4990-5010 " .. V4 .. " -oG - 2>&1")
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
    local r = pair:child("range", {method = "syn"})
    assert.equals("syn", r.v4.method)
    assert.equals("connect", r.v6.method)
    assert.equals(65535, r.v4.scanned)
    assert.equals(180 + 30, #r.proc4)
    assert.same(r.proc4, r.v4.open)
    assert.equals(65535 - #r.proc4, r.v4.closed)
    assert.same(r.proc6, r.v6.open)
  end)

  it("cancels with SYNs in flight and leaves no socket behind", function()
    local r = pair:child("probe", {host = V4, ports = "1000-1019", opts = {method = "syn", timeout = 5000},
                                   cancel_after = 100})
    assert.is_true(r.cancelled)
    assert.equals(0, r.scanned)
    assert.equals(0, r.sockets_after)
  end)

  it("ignores forged replies: a SYN+ACK and a RST whose ack is not its SYN's", function()
    -- nping (nmap's packet crafter) in the target sends them to the scan's
    -- source port while the scan waits on two dropped ports
    local nping = "env -u LD_PRELOAD " .. pair:netns("target") .. " nping -N -q --tcp -c 1 -g %d --flags %s "
      .. "--ack 12345 -p SPORT " .. pair.v4[1] .. " >/dev/null 2>&1"
    local spoofer = nping:format(1000, "SYN,ACK") .. " && " .. nping:format(1001, "RST,ACK")
    local r = pair:child("spoofed", {host = V4, ports = "1000,1001", timeout = 1500, after = 200, spoofer = spoofer})
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
    local doc = cjson.decode(pair:lua("client", "bin/portman probe " .. V4
                                      .. " 1000-1004,2000-2004,5000 --json --timeout 300 --method syn"))
    assert.equals("syn", doc.method)
    assert.same(range(1000, 1004), doc.filtered)
    assert.same(range(2000, 2004), doc.unreachable)
    assert.same({5000}, doc.open)
  end)
end)
