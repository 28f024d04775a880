--- A STUN responder on loopback for the specs: real sockets, scripted
-- misbehaviour (loss, spoofing, silence), RFC 5780 alternate addresses.
local uv = require "luv"
local core = require "portman.core"

local M = {}
M.__index = M

local function bind(ip, port)
  local udp = uv.new_udp(ip:find(":", 1, true) and "inet6" or "inet")
  local ok, err = udp:bind(ip, port or 0)
  if not ok then udp:close(); return nil, err end
  return udp
end

--- Starts a responder on ip (127.0.0.1 by default).
-- opts: drop (requests to ignore first), silent, spoof (send forged
-- answers before the real one), alt_ip (RFC 5780: answer CHANGE-REQUEST
-- from alt_ip and/or the alternate port, and send OTHER-ADDRESS),
-- error_code (answer with this error), ignore_change (drop CHANGE-REQUESTs,
-- as a filtering NAT would drop their answers).
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({opts = opts, requests = 0, seen = {}, socks = {}}, M)
  local ip = opts.ip or "127.0.0.1"
  local primary = assert(bind(ip, 0))
  self.ip, self.port = ip, primary:getsockname().port
  self.socks.pp = primary
  if opts.alt_ip then
    -- the same port numbers on both addresses: retry until both bind
    for _ = 1, 20 do
      local alt = bind(ip, 0)
      local alt_port = alt:getsockname().port
      local ap, aa = bind(opts.alt_ip, self.port), bind(opts.alt_ip, alt_port)
      if ap and aa then
        self.alt_ip, self.alt_port = opts.alt_ip, alt_port
        self.socks.pa, self.socks.ap, self.socks.aa = alt, ap, aa
        break
      end
      for _, s in ipairs{alt, ap, aa} do if s then s:close() end end
    end
    assert(self.alt_port, "could not bind the alternate addresses")
  end
  -- unreferenced: the loop runs while the client under test waits, and
  -- stops when it is done, responders or not
  for name, sock in pairs(self.socks) do
    sock:unref()
    sock:recv_start(function(err, data, addr)
      if err or not data then return end
      self:_on_request(name, data, addr)
    end)
  end
  self.spoofer = assert(bind(ip, 0))
  self.spoofer:unref()
  return self
end

function M:server() return ("%s:%d"):format(self.ip, self.port) end

function M:_answer(sock, msg, addr, mapped)
  local resp = {class = "success", transaction_id = msg.transaction_id,
                xor_mapped_address = mapped or {ip = addr.ip, port = addr.port}, fingerprint = true}
  if self.opts.error_code then
    resp = {class = "error", transaction_id = msg.transaction_id,
            error_code = {code = self.opts.error_code, reason = "Go away"}}
  end
  if self.alt_ip then
    resp.other_address = {ip = self.alt_ip, port = self.alt_port}
    resp.response_origin = sock:getsockname()
  end
  sock:send(core.stun_encode(resp), addr.ip, addr.port, function() end)
end

function M:_on_request(name, data, addr)
  local msg = core.stun_decode(data)
  if not msg or msg.class ~= "request" then return end
  self.requests = self.requests + 1
  self.seen[#self.seen + 1] = {to = name, change = msg.change_request, from = addr}
  if self.opts.silent or self.requests <= (self.opts.drop or 0) then return end
  if self.opts.spoof then
    local bogus = {ip = "6.6.6.6", port = 666}
    local wrong_tid = {class = "success", transaction_id = ("x"):rep(12),
                       xor_mapped_address = bogus}
    self.socks.pp:send(core.stun_encode(wrong_tid), addr.ip, addr.port, function() end)
    self.socks.pp:send("not stun at all", addr.ip, addr.port, function() end)
    self:_answer(self.spoofer, msg, addr, bogus) -- right id, wrong source
  end
  local sock = self.socks[name]
  local change = msg.change_request
  if change and (change.ip or change.port) then
    if not self.alt_ip or self.opts.ignore_change then return end
    local key = (name:sub(1, 1) == "p") == not change.ip and "p" or "a"
    key = key .. ((name:sub(2, 2) == "p") == not change.port and "p" or "a")
    sock = self.socks[key]
  end
  self:_answer(sock, msg, addr)
end

function M:close()
  for _, s in pairs(self.socks) do if not s:is_closing() then s:close() end end
  if not self.spoofer:is_closing() then self.spoofer:close() end
end

return M
