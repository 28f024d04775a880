-- Driver of fuzz/admin_fuzz.c. The input is what a client writes to the
-- admin socket, cut into reads at points its first byte picks; it goes
-- through the daemon's framer (portman.lines, a small cap here) and each
-- line through admin.request with stand-in ops and REPL. The promise: a
-- line over the cap is a protocol failure, every line gets a reply that
-- json.encode can write (or none, for an interrupt), a reply that closes
-- the connection ends the reading, and nothing raises.
local admin = require "portman.admin"
local json = require "portman.json"
local lines = require "portman.lines"

local ops = {
  status = function() return {services = json.array(), pools = json.array()} end,
  events = function(req) return {events = json.array(), since = tostring(req.since)} end,
}
local stand_in_repl = {
  budget = 5,
  feed = function(_, text, opts)
    assert(type(text) == "string" and type(opts) == "table")
    return "", "> "
  end,
  complete = function(_, text) return {text} end,
  cancel = function() end,
}

return function(data)
  local server = {ops = ops}
  local session = {start_repl = function() return stand_in_repl end}
  local framer = lines.new(512)
  local step = (data:byte(1) or 1) % 61 + 1
  local closed = false
  local function on_line(line)
    local reply, closing = admin.request(server, session, line, false)
    if reply ~= nil then
      assert(type(reply) == "table", "a reply that is not a document")
      assert(type(json.encode(reply)) == "string")
    end
    if closing then closed = true return false end
  end
  local pos = 2
  while pos <= #data and not closed do
    local ok, err, code = framer:feed(data:sub(pos, pos + step - 1), on_line)
    if not ok then
      assert(code == "protocol" and err == "protocol: line longer than 512 bytes")
      return
    end
    pos = pos + step
  end
end
