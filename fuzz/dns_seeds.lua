-- Writes the seed answers for dns_fuzz.c into seeds/dns/ (committed; run
-- again after changing this: `lua5.4 dns_seeds.lua` in fuzz/). Each is a
-- whole DNS answer as a server sends it, built by hand: the common shapes
-- (A, AAAA, a CNAME chain, SRV, no data) and the hostile ones the readers
-- must refuse or skip (a short RDATA, a count past the end, a pointer
-- loop, a TTL with its top bit set, another class).
local dir = (arg[1] or "seeds/dns") .. "/"

local T = {A = 1, CNAME = 5, SOA = 6, AAAA = 28, SRV = 33}

-- A name in wire form: "web.pm.test" -> "\3web\2pm\4test\0".
local function name(text)
  if text == "." or text == "" then return "\0" end
  local out = {}
  for label in text:gmatch("[^.]+") do out[#out + 1] = string.pack("s1", label) end
  return table.concat(out) .. "\0"
end

local function ptr(offset) return string.pack(">I2", 0xC000 | offset) end

local QNAME = 12 -- where the question's name starts: a pointer to it is ptr(QNAME)

-- A message: header (id 0x1234, a response, recursion available, rcode),
-- one question, then the answer and authority records (strings).
local function message(qname, qtype, answers, authority, rcode, ancount)
  authority = authority or {}
  local head = string.pack(">I2I2I2I2I2I2", 0x1234, 0x8180 | (rcode or 0), 1, ancount or #answers, #authority, 0)
  return head .. name(qname) .. string.pack(">I2I2", qtype, 1) .. table.concat(answers) .. table.concat(authority)
end

local function rr(owner, rtype, ttl, rdata, class)
  return owner .. string.pack(">I2I2I4s2", rtype, class or 1, ttl, rdata)
end

local function ipv4(text)
  local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

local function srv(prio, weight, port, target)
  return string.pack(">I2I2I2", prio, weight, port) .. target
end

local seeds = {
  ["a"] = message("web.pm.test", T.A, {rr(ptr(QNAME), T.A, 300, ipv4("10.0.0.1"))}),
  ["a-many"] = message("web.pm.test", T.A, {
    rr(ptr(QNAME), T.A, 300, ipv4("10.0.0.1")), rr(ptr(QNAME), T.A, 200, ipv4("192.0.2.255")),
    rr(ptr(QNAME), T.A, 100, ipv4("0.0.0.0")),
  }),
  ["a-uncompressed-upper-case"] = message("web.pm.test", T.A, {rr(name("WEB.Pm.TesT"), T.A, 60, ipv4("10.9.8.7"))}),
  ["aaaa"] = message("v6.pm.test", T.AAAA, {
    rr(ptr(QNAME), T.AAAA, 120, "\xfd\0" .. ("\0"):rep(13) .. "\x66"),
    rr(ptr(QNAME), T.AAAA, 120, ("\0"):rep(10) .. "\xff\xff\1\2\3\4"), -- ::ffff:1.2.3.4
    rr(ptr(QNAME), T.AAAA, 120, ("\0"):rep(12) .. "\1\2\3\4"), -- ::1.2.3.4
    rr(ptr(QNAME), T.AAAA, 120, "\x20\x01\x0d\xb8\0\0\0\0\0\1\0\0\0\0\0\1"), -- 2001:db8::1:0:0:1
  }),
  -- alias.pm.test -> target.pm.test (the target's name at 12 + 15 + 4 + 12)
  ["cname-chain"] = message("alias.pm.test", T.A, {
    rr(ptr(QNAME), T.CNAME, 5, name("target.pm.test")),
    rr(ptr(QNAME + 15 + 4 + 12), T.A, 100, ipv4("10.0.0.7")),
  }),
  ["cname-chain-aaaa-and-a"] = message("alias.pm.test", T.AAAA, {
    rr(ptr(QNAME), T.CNAME, 50, name("target.pm.test")),
    rr(name("target.pm.test"), T.A, 100, ipv4("10.0.0.7")),
    rr(name("target.pm.test"), T.AAAA, 40, ("\0"):rep(15) .. "\1"),
    rr(name("other.pm.test"), T.AAAA, 40, ("\0"):rep(15) .. "\2"),
  }),
  ["srv"] = message("_sip._udp.pm.test", T.SRV, {
    rr(ptr(QNAME), T.SRV, 42, srv(10, 60, 5060, name("sip1.pm.test"))),
    rr(ptr(QNAME), T.SRV, 42, srv(10, 40, 5061, "\4sip2" .. ptr(QNAME + 10))),
    rr(ptr(QNAME), T.SRV, 30, srv(20, 0, 5062, name("sip3.pm.test"))),
  }),
  ["srv-cname"] = message("_sip._udp.alias.test", T.SRV, {
    rr(ptr(QNAME), T.CNAME, 7, name("_sip._udp.pm.test")),
    rr(name("_sip._udp.pm.test"), T.SRV, 42, srv(1, 1, 5060, name("sip1.pm.test"))),
  }),
  ["srv-root-target"] = message("_none._tcp.pm.test", T.SRV, {rr(ptr(QNAME), T.SRV, 42, srv(0, 0, 0, name(".")))}),
  ["nodata-soa"] = message("web.pm.test", T.AAAA, {}, {
    rr(name("pm.test"), T.SOA, 600, name("ns.pm.test") .. name("admin.pm.test")
      .. string.pack(">I4I4I4I4I4", 1, 1200, 180, 1209600, 30)),
  }),
  ["nxdomain"] = message("nx.pm.test", T.A, {}, nil, 3),
  ["bad-rdata"] = message("web.pm.test", T.A, {rr(ptr(QNAME), T.A, 60, "\1\2\3")}),
  ["bad-truncated"] = message("web.pm.test", T.A, {}, nil, 0, 5),
  ["bad-rdlength-past-end"] = message("web.pm.test", T.A, {rr(ptr(QNAME), T.A, 60, ipv4("10.0.0.1"))}):sub(1, -3),
  ["bad-pointer-loop"] = message("web.pm.test", T.A, {
    -- the owner is a pointer to itself (at 12 + 13 + 4)
    rr(ptr(QNAME + 13 + 4), T.A, 60, ipv4("10.0.0.1")),
  }),
  ["bad-pointer-forward"] = message("web.pm.test", T.A, {rr(ptr(0x3fff), T.A, 60, ipv4("10.0.0.1"))}),
  ["ttl-top-bit"] = message("web.pm.test", T.A, {rr(ptr(QNAME), T.A, 0x80000001, ipv4("10.0.0.1"))}),
  ["other-class"] = message("web.pm.test", T.A, {rr(ptr(QNAME), T.A, 60, ipv4("10.0.0.1"), 3)}),
  ["two-questions"] = message("web.pm.test", T.A, {rr(ptr(QNAME), T.A, 60, ipv4("10.0.0.1"))})
    :gsub("^(....)\0\1", "%1\0\2"),
}

for file, bytes in pairs(seeds) do
  local f = assert(io.open(dir .. file, "wb"))
  f:write(bytes)
  f:close()
end
print(("%d seeds in %s"):format((function() local n = 0; for _ in pairs(seeds) do n = n + 1 end; return n end)(), dir))
