--- The state file: one JSON document, replaced atomically (docs/design.md,
-- "The state file").
local json = require "portman.json"
local core = require "portman.core"
local check = require "portman.check"
local errors = require "portman.errors"

local M = {}

--- Writes tbl to path durably (temp file, fsync, rename, fsync dir).
-- @return[1] true
-- @return[2] nil, msg, code (the errno's code word, or its name)
function M.save(path, tbl)
  if type(path) ~= "string" then check.argerror("save", 1, "string expected, got " .. type(path)) end
  check.table("save", 2, tbl)
  return core.atomic_write(path, json.encode(tbl))
end

--- Reads path back. A missing file is an empty state ({}), not an error.
-- @return[1] the table
-- @return[2] nil, "protocol: ...", "protocol" when the file is not a JSON object
function M.load(path)
  local f, err, errno = io.open(path, "rb")
  if not f then
    if errno == 2 then return {} end -- ENOENT: nothing saved yet
    return errors.from(errors.name(errno) .. ": " .. (err:match(": ([^:]*)$") or err), path)
  end
  local text = f:read("a")
  f:close()
  local doc = json.decode(text)
  if type(doc) ~= "table" or not text:match("^%s*{") then -- an object, not an array
    return nil, ("protocol: %s is not a JSON state document"):format(path), "protocol"
  end
  return doc
end

return M
