--- Names and servers for portman.resolver: checking a name for a query,
-- converting an internationalized name to its ASCII form (IDNA2008, with
-- UTS #46 mapping: csrc/lua_idna.c over libidn2), and reading a DNS
-- server's address. portman.resolver re-exports `valid_name`, `to_ascii`
-- and `parse_server`.
local core = require "portman.core"

local M = {}

-- 64 characters that are not a dot: a label too long.
local LONG_LABEL = ("[^.]"):rep(64)

--- Reads a DNS server's address, "IP", "IP:PORT", "[IPv6]" or
-- "[IPv6]:PORT" (port 53 by default).
-- @return[1] c-ares' form of it ("192.0.2.1:53", "[2001:db8::1]:53")
-- @return[2] nil, and what is wrong
function M.parse_server(text)
  if type(text) ~= "string" then return nil, "string expected, got " .. type(text) end
  local host, port = text:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = text:match("^([%d%.]+):(%d+)$") end
  host = host or text:match("^%[([^%]]+)%]$") or text
  local family, ip = core.dns_parse_ip(host)
  port = math.tointeger(tonumber(port or 53))
  if not family or not port or port < 1 or port > 65535 then
    return nil, ("IP[:PORT] expected, got '%s'"):format(text)
  end
  return (family == "inet6" and "[%s]:%d" or "%s:%d"):format(ip, port)
end

--- Checks a name for a query: a DNS name in ASCII (labels of 1-63
-- characters, 253 in all; letters, digits, '-' and '_', which SRV owners
-- use), or a literal address. An internationalized name is checked in its
-- ASCII form (`to_ascii` first).
-- @return[1] name
-- @return[2] nil, and what is wrong
function M.valid_name(name)
  if type(name) ~= "string" then return nil, "string expected, got " .. type(name) end
  if core.dns_parse_ip(name) then return name end
  local bare = name:sub(-1) == "." and name:sub(1, -2) or name
  local ok = #bare > 0 and #bare <= 253 and bare:find("^[%w%-_%.]+$") ~= nil
  -- labels of 1-63: no empty one (at either end, or "..") and no run of 64
  ok = ok and bare:byte(1) ~= 46 and bare:byte(-1) ~= 46 and not bare:find("..", 1, true)
    and not bare:find(LONG_LABEL)
  if not ok then return nil, ("invalid domain name '%s'"):format(name) end
  return name
end

--- A name in the ASCII form DNS carries: an internationalized name
-- (UTF-8) becomes its IDNA2008 A-labels ("bücher.example" ->
-- "xn--bcher-kva.example", mapped as UTS #46 non-transitional processing
-- says: upper case to lower, "ß" kept); an ASCII name is returned as it is.
-- @return[1] the ASCII name
-- @return[2] nil, "protocol: invalid internationalized name '...': reason", "protocol"
--   (not UTF-8, a disallowed code point, a label too long once encoded, ...)
function M.to_ascii(name)
  if type(name) ~= "string" then
    return nil, "protocol: string expected, got " .. type(name), "protocol"
  end
  if not name:find("[\128-\255]") then return name end
  local ascii, err = core.idna_to_ascii(name)
  if not ascii then
    return nil, ("protocol: invalid internationalized name '%s' (%s)"):format(name, (err:gsub("^protocol: ", ""))),
      "protocol"
  end
  return ascii
end

-- Names already checked, as their ASCII form (false: a literal address)
-- and its lower case (the cache's key), so that a cache hit costs no
-- pattern matching, conversion or new string (cleared when it grows large:
-- it is only a shortcut).
local known, lowered, known_count = {}, {}, 0

local function remember(name, ascii, lower)
  if known_count >= 10000 then known, lowered, known_count = {}, {}, 0 end
  known[name], lowered[name], known_count = ascii, lower, known_count + 1
  return ascii, lower
end

--- A name for a query: its ASCII form (`to_ascii`, then `valid_name`), or
-- false for a literal address, and that form in lower case (nil for a
-- literal); the answer is remembered for name.
-- @return[1] the ASCII name or false, and its lower case
-- @return[2] nil, "invalid domain name '...'" (with the reason an
--   internationalized name failed, or its ASCII form)
function M.query_name(name)
  local ascii = known[name]
  if ascii ~= nil then return ascii, lowered[name] end
  if type(name) ~= "string" then return nil, "string expected, got " .. type(name) end
  local lower = core.dns_name(name) -- the common case in one C call: an ASCII name
  if lower then return remember(name, name, lower) end
  local converted = name
  if name:find("[\128-\255]") then
    local why
    converted, why = core.idna_to_ascii(name)
    if not converted then
      return nil, ("invalid domain name '%s' (%s)"):format(name, (why:gsub("^protocol: ", "")))
    end
  end
  local ok, err = M.valid_name(converted)
  if not ok then
    if converted ~= name then err = ("invalid domain name '%s' ('%s')"):format(name, converted) end
    return nil, err
  end
  ascii = not core.dns_parse_ip(converted) and converted
  return remember(name, ascii, ascii and ascii:lower() or nil)
end

return M
