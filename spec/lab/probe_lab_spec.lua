-- Probes in a closed lab (root): two network namespaces made for this run, a
-- client and a target joined by a veth pair, nothing else. The target's
-- nftables drop some ports (filtered) and reject others with ICMP host
-- unreachable or admin prohibited (unreachable); a luv process in it listens
-- on a few. The probes run in the client namespace (spec/lab/probe_child.lua)
-- and print what they found. Everything is deleted in teardown, whatever
-- happened (spec/lab/probe_pair.lua).
local cjson = require "cjson"
local probe_pair = require "lab.probe_pair"

local V4, V6 = "10.77.0.2", "fd77::2"
local OPEN = {5000, 5001, 5002, 5003, 5004}

-- the target's input chain (nftables)
local RULES = {
  "tcp dport 1000-1199 drop",
  "tcp dport 2000-2019 reject with icmpx type host-unreachable",
  "tcp dport 2020-2039 reject with icmpx type admin-prohibited",
  "udp dport 3000 drop",
}

describe("probes in a lab namespace #lab", function()
  local pair

  -- the target's listeners: TCP on OPEN and a UDP echo on 5000, dual-stack
  setup(function()
    pair = probe_pair.new{name = "pm-probe", v4 = {"10.77.0.1", V4}, v6 = {"fd77::1", V6}, icmp_unlimited = true,
                          input = RULES, listen = {tcp = OPEN, udp_echo = {5000}}}
  end)
  teardown(function() if pair then pair:close() end end)

  local function probe(host, ports, opts, extra)
    local args = {host = host, ports = ports, opts = opts}
    for k, v in pairs(extra or {}) do args[k] = v end
    return pair:child("probe", args)
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
    local doc = cjson.decode(pair:lua("client", "bin/portman probe " .. V4
                                      .. " 1000-1004,2000-2004,5000 --json --timeout 300"))
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
    local r = pair:child("range")
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
    pair:must("client", "sysctl -w net.ipv4.ip_local_port_range='40000 40000'")
    local r = pair:child("selfconnect", {port = 40000})
    assert.equals("connected from port 40000", r.naive) -- what a plain connect() believes
    assert.equals("closed", r.state)
    assert.is_nil(r.error)
  end)
end)
