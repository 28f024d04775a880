--- Address helpers: textual IPv4/IPv6 forms, wildcards, the kernel's
-- /proc/net tables of bound sockets, and a test bind.
local uv = require "luv"
local core = require "portman.core"

local M = {}

-- The groups of "a:b:c" as numbers; nil when one is empty or not 1-4 hex
-- digits ("" has none).
local function hex_groups(part)
  local out = {}
  if part == "" then return out end
  for g in (part .. ":"):gmatch("([^:]*):") do
    if not g:match("^%x%x?%x?%x?$") then return nil end
    out[#out + 1] = tonumber(g, 16)
  end
  return out
end

-- The eight groups of an IPv6 address, or nil. "::" stands for one or more
-- zero groups, once at most.
local function expand6(addr)
  local head, tail = addr:match("^(.-)::(.*)$")
  if not head then
    local groups = hex_groups(addr)
    return groups and #groups == 8 and groups or nil
  end
  if tail:find("::", 1, true) then return nil end
  local groups, rest = hex_groups(head), hex_groups(tail)
  if not groups or not rest or #groups + #rest > 7 then return nil end
  for _ = 1, 8 - #groups - #rest do groups[#groups + 1] = 0 end
  for _, g in ipairs(rest) do groups[#groups + 1] = g end
  return groups
end

--- A canonical text for an IP address (IPv6 with its longest zero run
-- as "::", lower case), or nil when addr is not an IP address.
function M.normalize(addr)
  if type(addr) ~= "string" then return nil end
  local a, b, c, d = addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    for _, x in ipairs({a, b, c, d}) do
      if tonumber(x) > 255 or x:match("^0%d") then return nil end -- inet_pton refuses "01" too
    end
    return ("%d.%d.%d.%d"):format(a, b, c, d)
  end
  local groups = addr:find(":", 1, true) and expand6(addr:lower())
  if not groups then return nil end
  -- RFC 5952: compress the longest run of two or more zero groups
  local best, best_len, run, run_len = nil, 1, nil, 0
  for i = 1, 9 do
    if groups[i] == 0 then
      if not run then run, run_len = i, 0 end
      run_len = run_len + 1
    else
      if run and run_len > best_len then best, best_len = run, run_len end
      run = nil
    end
  end
  local parts = {}
  for i, g in ipairs(groups) do parts[i] = ("%x"):format(g) end
  if not best then return table.concat(parts, ":") end
  return table.concat(parts, ":", 1, best - 1) .. "::" .. table.concat(parts, ":", best + best_len, 8)
end

--- 4 or 6.
function M.family(addr)
  return addr:find(":", 1, true) and 6 or 4
end

--- Do two bind addresses (normalized) take a common address? "::" is
-- dual-stack by default, so it overlaps IPv4 addresses too.
function M.overlap(a, b)
  if a == b or a == "::" or b == "::" then return true end
  if a == "0.0.0.0" then return M.family(b) == 4 end
  if b == "0.0.0.0" then return M.family(a) == 4 end
  return false
end

-- The kernel prints addresses as 32-bit words in host (little-endian) order.
local function proc_addr(hex)
  if #hex == 8 then
    local n = tonumber(hex, 16)
    return ("%d.%d.%d.%d"):format(n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >> 24)
  end
  local groups = {}
  for w = 0, 3 do
    local n = tonumber(hex:sub(w * 8 + 1, w * 8 + 8), 16)
    local le = ((n & 0xff) << 24) | (((n >> 8) & 0xff) << 16) | (((n >> 16) & 0xff) << 8) | (n >> 24)
    groups[#groups + 1] = ("%x:%x"):format(le >> 16, le & 0xffff)
  end
  return M.normalize(table.concat(groups, ":"))
end

--- The sockets bound on this host for proto ("tcp": listening sockets,
-- "udp": every bound socket), from /proc/net/{proto,proto6}.
-- @return a list of {address, port}
function M.bound(proto)
  local found = {}
  for _, file in ipairs({"/proc/net/" .. proto, "/proc/net/" .. proto .. "6"}) do
    local f = io.open(file)
    if f then
      f:read("l") -- the header
      for line in f:lines() do
        local addr, port, state, inode =
          line:match("^%s*%d+: (%x+):(%x+) %x+:%x+ (%x%x) %x+:%x+ %x+:%x+ %x+%s+%d+%s+%d+%s+(%d+)")
        if addr and (proto ~= "tcp" or state == "0A") then
          found[#found + 1] = {address = proc_addr(addr), port = tonumber(port, 16), inode = tonumber(inode)}
        end
      end
      f:close()
    end
  end
  return found
end

--- The local ports of every socket in the kernel's tables for proto
-- ("tcp" or "udp": /proc/net/{proto,proto6}), whatever its state or
-- address: for TCP the listeners, the connections (an outgoing one's local
-- port too) and TIME_WAIT; for UDP every bound socket. A plain bind()
-- (no SO_REUSEADDR) on any address fails on each of these ports. A TCP
-- socket that is bound but neither listens nor connects is in no table:
-- try_bind sees it. One read of each file, only the ports parsed.
-- @return a set: {[port] = true}
function M.ports_in_use(proto)
  local used = {}
  for _, file in ipairs({"/proc/net/" .. proto, "/proc/net/" .. proto .. "6"}) do
    local f = io.open(file)
    if f then
      local text = f:read("a")
      f:close()
      -- "  12: 0100007F:1F90 00000000:0000 0A ...": the line's first port is its local one
      for port in text:gmatch("\n%s*%d+: %x+:(%x+) ") do used[tonumber(port, 16)] = true end
    end
  end
  return used
end

local function test_socket(proto, host, port)
  local spec = {type = proto == "udp" and "dgram" or "stream", host = host, port = port, backlog = 0}
  if host == "::" then spec.options = {v6only = false} end
  local s, err, code = core.socket_open(spec)
  if not s then return nil, err, code end
  s:close()
  return true
end

--- Does a plain bind of port/proto ("tcp" or "udp") succeed now? A socket
-- without SO_REUSEADDR is bound to "::" with IPV6_V6ONLY off, which the
-- kernel refuses while any socket of either family holds the port on any
-- address ("0.0.0.0" where the host has no IPv6), and closed at once. The
-- C core binds and listens in one step, so a TCP port listens for that
-- moment (backlog 0).
-- @return true, or nil, msg, code ("conflict" when the port is in use;
--   "denied" for a privileged port without the right to bind it)
function M.try_bind(proto, port)
  local ok, err, code = test_socket(proto, "::", port)
  if not ok and code == "unsupported" then return test_socket(proto, "0.0.0.0", port) end
  return ok, err, code
end

-- The bound_by_port answers of this turn of the luv loop, per proto: a
-- prepare and a check handle (unreferenced: they keep no loop alive) drop
-- them at each turn's two ends, so a socket closed since is never seen. A
-- handle closed by someone else (a uv.walk at exit) is made anew.
local by_port_cache = {}
local turn_handles

local function watch_turns()
  if turn_handles and not turn_handles[1]:is_closing() and not turn_handles[2]:is_closing() then return end
  by_port_cache = {}
  local function drop() by_port_cache = {} end
  turn_handles = {uv.new_prepare(), uv.new_check()}
  for _, h in ipairs(turn_handles) do
    h:start(drop)
    h:unref()
  end
end

--- The bound sockets of proto as port -> {entries of bound()}, read once
-- per turn of the luv loop: registering 10,000 services in one batch
-- reads /proc/net once, not 10,000 times.
function M.bound_by_port(proto)
  watch_turns()
  local cached = by_port_cache[proto]
  if cached then return cached end
  local ports = {}
  for _, b in ipairs(M.bound(proto)) do
    local list = ports[b.port] or {}
    ports[b.port] = list
    list[#list + 1] = b
  end
  by_port_cache[proto] = ports
  return ports
end

-- The names in folder path (none when it cannot be read).
local function entries(path)
  local req = uv.fs_scandir(path)
  return function()
    if req then return (uv.fs_scandir_next(req)) end
  end
end

-- The process that holds socket inode: {pid, program}, or nil (gone, or
-- another user's /proc/PID/fd we may not read).
local function socket_owner(inode)
  local target = "socket:[" .. inode .. "]"
  for pid in entries("/proc") do
    if pid:match("^%d+$") then
      for fd in entries("/proc/" .. pid .. "/fd") do
        if uv.fs_readlink("/proc/" .. pid .. "/fd/" .. fd) == target then
          local f = io.open("/proc/" .. pid .. "/comm")
          local program = f and f:read("l")
          if f then f:close() end
          return {pid = math.tointeger(tonumber(pid)), program = program}
        end
      end
    end
  end
  return nil
end

--- Who holds port/proto on an address overlapping address: {pid,
-- program} from /proc, or nil when /proc does not tell.
function M.holder(proto, port, address)
  for _, b in ipairs(M.bound(proto)) do
    if b.port == port and (not address or M.overlap(b.address, M.normalize(address) or address)) and b.inode ~= 0 then
      return socket_owner(b.inode)
    end
  end
  return nil
end

return M
