--- A NAT-PMP gateway (RFC 6886) for spec/nat_spec.lua: answers address
-- and mapping requests on 127.0.0.1:5351 with `epoch`; drops the first
-- `drop` requests; records each. Port 5351 is the protocol's and fixed:
-- run it only in a network namespace of its own (helpers.in_netns).
-- opts: epoch (1000), drop (0), result (0: success), taken (an external
-- port the gateway gives the next one for), garbage (the answer to send)
local uv = require "luv"

local M = {}

function M.start(opts)
  opts = opts or {}
  local r = {epoch = opts.epoch or 1000, drop = opts.drop or 0, seen = {}, result = opts.result or 0,
             taken = opts.taken, garbage = opts.garbage}
  local u = uv.new_udp()
  assert(u:bind("127.0.0.1", 5351))
  r.udp = u
  u:recv_start(function(err, data, addr)
    if err or not data then return end
    local op = data:byte(2)
    r.seen[#r.seen + 1] = {op = op, data = data}
    if r.drop > 0 then
      r.drop = r.drop - 1
      return
    end
    local reply
    if r.garbage then
      reply = r.garbage
    elseif op == 0 then
      reply = string.pack(">BBI2I4BBBB", 0, 128, r.result, r.epoch, 203, 0, 113, 5)
    else
      local internal, external, life = string.unpack(">I2I2I4", data, 5)
      if r.taken == external and life > 0 then external = external + 1 end
      reply = string.pack(">BBI2I4I2I2I4", 0, 128 + op, r.result, r.epoch, internal, external, life)
      r.last = {internal = internal, external = external, lifetime = life, op = op}
    end
    u:send(reply, addr.ip, addr.port)
  end)
  function r.close() if not u:is_closing() then u:close() end end
  return r
end

return M
