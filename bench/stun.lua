-- STUN codec throughput from Lua on one core: portman.stun encode, and
-- decode+verify, of a Binding success response with XOR-MAPPED-ADDRESS
-- and FINGERPRINT. Baselines in the same run: a C call that only looks at
-- the header (stun.is_stun), and a pure-Lua string.unpack of the header
-- and the one attribute, no checks.
local stun = require "portman.stun"

local tid = ("\1\2\3\4\5\6\7\8\9\10\11\12")
local msg = {class = "success", transaction_id = tid,
             xor_mapped_address = {ip = "192.0.2.1", port = 32853}, fingerprint = true}
local bytes = stun.encode(msg)
assert(stun.decode(bytes).xor_mapped_address.port == 32853)

local function rate(fn)
  local n, total, start = 200000, 0, os.clock()
  local t
  repeat
    for _ = 1, n do fn() end
    total = total + n
    t = os.clock() - start
  until t >= 1.0
  return total / t
end

local unpack, decode, encode, is_stun = string.unpack, stun.decode, stun.encode, stun.is_stun
local results = {
  {"encode", rate(function() return encode(msg) end)},
  {"decode+verify", rate(function()
    local m = decode(bytes)
    return m.xor_mapped_address.port
  end), "(target >= 1)"},
  {"baseline: C call (is_stun)", rate(function() return is_stun(bytes) end)},
  {"baseline: Lua string.unpack", rate(function()
    local t, len, cookie, id, at, al, fam, port = unpack(">I2I2I4c12I2I2xBI2", bytes)
    return t + len + cookie + #id + at + al + fam + port
  end)},
}
print(("STUN Binding response, XOR-MAPPED-ADDRESS + FINGERPRINT (%d bytes), Lua, one core"):format(#bytes))
for _, r in ipairs(results) do
  print(("  %-34s %8.2f M/s %s"):format(r[1], r[2] / 1e6, r[3] or ""))
end
