--- Newline-framed input with a cap, in time linear in the bytes read:
-- each chunk is searched once, and a partial line is kept as a list of
-- pieces, joined only when its newline arrives.
--
--     local framer = lines.new(1024 * 1024)
--     local ok, err = framer:feed(data, function(line) ... end)
--     -- false, "protocol: line longer than 1048576 bytes", "protocol"
local M = {}
local Framer = {}
Framer.__index = Framer

--- A framer for lines of at most max bytes (without the newline).
function M.new(max)
  assert(math.type(max) == "integer" and max > 0, "max: positive integer expected")
  return setmetatable({_max = max, _parts = {}, _size = 0}, Framer)
end

local function too_long(self)
  self._parts, self._size = {}, 0
  return nil, ("protocol: line longer than %d bytes"):format(self._max), "protocol"
end

--- Feeds a chunk; calls on_line(line) for each complete line, in order.
-- on_line may return false to stop (the rest of the chunk is dropped).
-- @return[1] true
-- @return[2] nil, "protocol: line longer than ...", "protocol" once a line
--   outgrows the cap (what was buffered is dropped)
function Framer:feed(data, on_line)
  local start = 1
  while true do
    local nl = data:find("\n", start, true)
    if not nl then break end
    local line
    if self._size == 0 then
      line = data:sub(start, nl - 1)
    else
      self._parts[#self._parts + 1] = data:sub(start, nl - 1)
      line = table.concat(self._parts)
      self._parts, self._size = {}, 0
    end
    if #line > self._max then return too_long(self) end
    if on_line(line) == false then return true end
    start = nl + 1
  end
  if start <= #data then
    self._size = self._size + #data - start + 1
    if self._size > self._max then return too_long(self) end
    self._parts[#self._parts + 1] = data:sub(start)
  end
  return true
end

--- Bytes held for a line not finished yet.
function Framer:pending() return self._size end

return M
