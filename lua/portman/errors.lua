--- The error convention (docs/design.md, "Errors"): an operational failure
-- is `nil, msg, code`, where code is a stable word and msg starts with it.
-- The words for errnos come from the one table the C core uses too
-- (core.errno_codes: EADDRINUSE -> conflict, EACCES -> denied, ...), so a
-- failure reads the same whether C or luv saw it.
local core = require "portman.core"

local M = {}

local CODES, NAMES = core.errno_codes, core.errno_names

--- The name of an errno number (13 -> "EACCES"), as io.open's third
-- result gives it; "EUNKNOWN" for one the table lacks.
function M.name(errno)
  return NAMES[errno] or "EUNKNOWN"
end

--- The code word for an errno name or a luv error ("ECONNREFUSED" or
-- "ECONNREFUSED: connection refused"): refused, denied, ...; an errno
-- without a word is its own name; anything else is "error".
function M.code(err)
  local name = tostring(err):match("^(E%u[%u%d]*)")
  if not name then return "error" end
  return CODES[name] or name
end

--- nil, "code: <formatted>", code.
function M.fail(code, fmt, ...)
  return nil, code .. ": " .. (select("#", ...) > 0 and fmt:format(...) or fmt), code
end

--- A luv (or errno-named) error as a failure, worded as the C core words
-- one: nil, "refused: connect 127.0.0.1:80: ECONNREFUSED: connection
-- refused", "refused" (an errno without a word: "EMFILE: accept: ...").
function M.from(err, what)
  err = tostring(err)
  local name, rest = err:match("^(E%u[%u%d]*):%s*(.*)$")
  local code = M.code(err)
  local parts = {code}
  if what then parts[#parts + 1] = what end
  if name and name ~= code then parts[#parts + 1] = name end
  parts[#parts + 1] = rest or err
  return nil, table.concat(parts, ": "), code
end

return M
