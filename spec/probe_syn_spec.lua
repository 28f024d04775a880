-- The SYN scan's packets (csrc/syn.c through core.syn_packet and
-- core.syn_reply) and its arguments. The replies here are built by hand,
-- byte by byte, so that a reply with a wrong ack, a wrong port or a wrong
-- address can be shown to be ignored; the scan itself, against a real
-- host, is in spec/lab/probe_syn_lab_spec.lua.
local helpers = require "helpers"
local core = require "portman.core"
local probe = require "portman.probe"

local KEY = ("k"):rep(16)
local US, THEM = "10.77.0.1", "10.77.0.2"
local SPORT = 40123

local function ip4(text)
  local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

-- The Internet checksum, written here from RFC 1071 rather than taken
-- from the code under test.
local function checksum(data)
  if #data % 2 == 1 then data = data .. "\0" end
  local sum = 0
  for i = 1, #data, 2 do sum = sum + (data:byte(i) << 8 | data:byte(i + 1)) end
  while sum > 0xffff do sum = (sum & 0xffff) + (sum >> 16) end
  return ~sum & 0xffff
end

-- An IPv4 header (20 bytes, no options) for a payload of len bytes.
local function ipv4(src, dst, proto, len, opts)
  opts = opts or {}
  return string.pack(">BBI2I2I2BBI2", opts.vihl or 0x45, 0, opts.total or 20 + len, 1, opts.frag or 0, 64,
                     proto, 0) .. ip4(src) .. ip4(dst)
end

-- A TCP header from sport to dport with seq, ack and flags (no options).
local function tcp(sport, dport, seq, ack, flags)
  return string.pack(">I2I2I4I4BBI2I2I2", sport, dport, seq, ack, 5 << 4, flags, 1024, 0, 0)
end

local SYN, RST, ACK = 0x02, 0x04, 0x10

-- The target's answer to our SYN to port: a TCP segment back to us.
local function answer(port, ack, flags, opts)
  opts = opts or {}
  local seg = tcp(port, opts.to_port or SPORT, 777, ack, flags)
  return ipv4(opts.from or THEM, opts.to or US, 6, #seg) .. seg
end

-- An ICMP error from a router quoting our SYN to port with seq.
local function icmp(type, code, port, seq, opts)
  opts = opts or {}
  local quoted = tcp(SPORT, port, seq, 0, SYN):sub(1, opts.quote or 8)
  local inner = ipv4(US, opts.inner_dst or THEM, 6, 24) .. quoted
  local msg = string.pack(">BBI2I4", type, code, 0, 0) .. inner
  return ipv4("10.77.0.254", US, 1, #msg) .. msg
end

local function reply(pkt) return core.syn_reply(pkt, KEY, US, THEM, SPORT) end

describe("the SYN scan's packets", function()
  local seg, seq = core.syn_packet(KEY, US, THEM, SPORT, 5000)

  it("builds a SYN with a valid checksum over the pseudo-header", function()
    assert.equals(24, #seg)
    local sport, dport, s, ack, off, flags = string.unpack(">I2I2I4I4BB", seg)
    assert.same({SPORT, 5000, seq, 0, 6 << 4, SYN}, {sport, dport, s, ack, off, flags})
    assert.equals("\2\4\5\180", seg:sub(21, 24)) -- MSS 1460
    local pseudo = ip4(US) .. ip4(THEM) .. string.pack(">BBI2", 0, 6, #seg)
    assert.equals(0, checksum(pseudo .. seg)) -- a correct checksum sums to 0
    local bad = seg:sub(1, 4) .. string.char(seg:byte(5) ~ 1) .. seg:sub(6)
    assert.not_equals(0, checksum(pseudo .. bad))
  end)

  it("derives the sequence number from the key, the addresses and the ports", function()
    assert.equals(seq, select(2, core.syn_packet(KEY, US, THEM, SPORT, 5000)))
    local others = {select(2, core.syn_packet(KEY, US, THEM, SPORT, 5001)),
                    select(2, core.syn_packet(KEY, US, "10.77.0.3", SPORT, 5000)),
                    select(2, core.syn_packet(KEY, US, THEM, SPORT + 1, 5000)),
                    select(2, core.syn_packet(("K"):rep(16), US, THEM, SPORT, 5000))}
    for i, other in ipairs(others) do assert.not_equals(seq, other, i) end
  end)

  it("counts a SYN+ACK acknowledging our SYN as open, a RST as closed", function()
    assert.equals("open", reply(answer(5000, seq + 1, SYN | ACK)))
    assert.equals("closed", reply(answer(5000, seq + 1, RST | ACK)))
  end)

  it("ignores a reply whose ack, ports or addresses are not those of our SYN", function()
    local cases = {
      {"ack one too far", answer(5000, seq + 2, SYN | ACK)},
      {"ack = seq", answer(5000, seq, SYN | ACK)},
      {"RST with a wrong ack", answer(5000, seq + 1000, RST | ACK)},
      {"another port's seq", answer(5001, seq + 1, SYN | ACK)},
      {"to another of our ports", answer(5000, seq + 1, SYN | ACK, {to_port = SPORT + 1})},
      {"from another host", answer(5000, seq + 1, SYN | ACK, {from = "10.77.0.3"})},
      {"to another address", answer(5000, seq + 1, SYN | ACK, {to = "10.77.0.9"})},
    }
    for _, c in ipairs(cases) do
      local state, why = reply(c[2])
      assert.is_nil(state, c[1])
      assert.equals("not ours", why, c[1])
    end
  end)

  it("refuses what is not an answer to a SYN, or is cut short", function()
    local good = answer(5000, seq + 1, SYN | ACK)
    local cases = {
      {"a bare SYN (ours, seen on loopback)", answer(5000, seq + 1, SYN)},
      {"a RST without ACK", answer(5000, seq + 1, RST)},
      {"SYN and RST together", answer(5000, seq + 1, SYN | RST | ACK)},
      {"a plain ACK", answer(5000, seq + 1, ACK)},
      {"cut in the TCP header", good:sub(1, 30)},
      {"cut in the IP header", good:sub(1, 12)},
      {"empty", ""},
      {"IPv6", "\x60" .. good:sub(2)},
      {"an IHL below 5", "\x44" .. good:sub(2)},
      {"an IHL past the end", "\x4f" .. good:sub(2)},
      {"a total length past the end", ipv4(THEM, US, 6, 20, {total = 100}) .. good:sub(21)},
      {"a later fragment", ipv4(THEM, US, 6, 20, {frag = 3}) .. good:sub(21)},
      {"UDP", ipv4(THEM, US, 17, 20) .. good:sub(21)},
    }
    for _, c in ipairs(cases) do
      local state, why = reply(c[2])
      assert.is_nil(state, c[1])
      assert.equals("malformed", why, c[1])
    end
  end)

  it("reads an ICMP error quoting our SYN as a connect() would", function()
    assert.same({"unreachable", "EHOSTUNREACH"}, {reply(icmp(3, 1, 5000, seq))})
    assert.same({"unreachable", "EHOSTUNREACH"}, {reply(icmp(3, 13, 5000, seq))}) -- admin prohibited
    assert.same({"unreachable", "ENETUNREACH"}, {reply(icmp(3, 0, 5000, seq))})
    assert.same({"unreachable", "EHOSTUNREACH"}, {reply(icmp(11, 0, 5000, seq))}) -- TTL exceeded
    assert.same({"closed"}, {reply(icmp(3, 3, 5000, seq))}) -- port unreachable
    assert.same({nil, "no state"}, {reply(icmp(3, 4, 5000, seq))}) -- fragmentation needed
    assert.same({nil, "not ours"}, {reply(icmp(3, 1, 5000, seq + 1))})
    assert.same({nil, "not ours"}, {reply(icmp(3, 1, 5000, seq, {inner_dst = "10.77.0.3"}))})
    assert.same({nil, "malformed"}, {reply(icmp(3, 1, 5000, seq, {quote = 7}))})
    assert.same({nil, "malformed"}, {reply(icmp(8, 0, 5000, seq))}) -- an echo request
  end)

  it("checks the arguments of syn_packet, syn_reply and syn_new", function()
    local function raises(f, ...) return helpers.raises(f, ...) end
    assert.matches("16-byte key expected", raises(core.syn_packet, "short", US, THEM, 1, 2), 1, true)
    assert.matches("numeric IPv4 address expected", raises(core.syn_packet, KEY, "::1", THEM, 1, 2), 1, true)
    assert.matches("port out of range", raises(core.syn_packet, KEY, US, THEM, 1, 65536), 1, true)
    assert.matches("numeric IPv4 address expected", raises(core.syn_reply, "", KEY, US, "x", 1), 1, true)
    assert.matches("numeric IPv4 address expected", raises(core.syn_new, "::1", {80}, 100, 0), 1, true)
    assert.matches("1 to 65535 ports expected", raises(core.syn_new, "127.0.0.1", {}, 100, 0), 1, true)
    assert.matches("port 2: integer in 1-65535 expected", raises(core.syn_new, "127.0.0.1", {80, 0}, 100, 0),
                   1, true)
    assert.matches("a port is listed twice", raises(core.syn_new, "127.0.0.1", {80, 81, 80}, 100, 0), 1, true)
    assert.matches("timeout out of range", raises(core.syn_new, "127.0.0.1", {80}, 0, 0), 1, true)
    assert.matches("concurrency out of range", raises(core.syn_new, "127.0.0.1", {80}, 100, -1), 1, true)
  end)

  it("takes a method for TCP probes, and syn for TCP only", function()
    local cb = function() end
    assert.matches("bad argument #3 to 'probe' (unknown method 'fin' (connect, syn, auto))",
                   helpers.raises(probe.probe, "127.0.0.1", "80", {method = "fin"}, cb), 1, true)
    assert.matches("bad argument #3 to 'probe' (method: syn probes TCP only)",
                   helpers.raises(probe.probe, "127.0.0.1", "80", {proto = "udp", method = "syn"}, cb), 1, true)
  end)
end)
