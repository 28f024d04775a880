--- The state file: one JSON document, replaced atomically (docs/design.md,
-- "The state file"). Its directory may be shared and the file may have
-- been written by someone else or cut short by a crash, so a read takes
-- only a regular file, never through a symlink, and at most MAX_SIZE
-- bytes; the daemon's state is checked against portman.state_schema in
-- full before any of it is used.
local uv = require "luv"
local json = require "portman.json"
local core = require "portman.core"
local check = require "portman.check"
local schema = require "portman.state_schema"
local errors = require "portman.errors"

local M = {}

M.MAX_SIZE = 16 * 1024 * 1024 -- bytes; 10,000 services take about 1.5 MB
local PID_MAX = 4194304 -- the kernel's limit of pid_max

--- Writes tbl to path durably: a new temporary file beside it (created
-- with O_EXCL | O_NOFOLLOW, mode 0600, named PATH.tmp.PID), fsync, rename
-- over path, fsync of the directory.
-- @return[1] true
-- @return[2] nil, msg, code (the errno's code word, or its name)
function M.save(path, tbl)
  if type(path) ~= "string" then check.argerror("save", 1, "string expected, got " .. type(path)) end
  check.table("save", 2, tbl)
  return core.atomic_write(path, json.encode(tbl))
end

--- Decodes a state document's text (what `load` does past the read).
-- @return[1] the table
-- @return[2] nil, "protocol: WHAT is not a JSON state document", "protocol"
function M.parse(text, what)
  local ok, doc = pcall(json.decode, text)
  if not ok or type(doc) ~= "table" or not text:match("^%s*{") then -- an object, not an array
    return nil, ("protocol: %s is not a JSON state document"):format(what or "the text"), "protocol"
  end
  return doc
end

--- Reads path back. A missing file is an empty state ({}), not an error.
-- @return[1] the table, and the uid owning the file (nil when missing)
-- @return[2] nil, msg, code: "protocol" when the file is not a JSON object,
--   not a regular file or larger than MAX_SIZE; an errno's word (a
--   symlink is ELOOP)
function M.load(path)
  local text, uid_or_err, code = core.read_file(path, M.MAX_SIZE)
  if not text then
    if code == "not_found" then return {} end -- nothing saved yet
    return nil, uid_or_err, code
  end
  local doc, err
  doc, err, code = M.parse(text, path)
  if not doc then return nil, err, code end
  return doc, uid_or_err
end

-- nil, "protocol: corrupt state: FIELD: ... (in WHAT)" for a document
-- the schema refuses, else nil.
local function corrupt(doc, what)
  local ok, why = schema.validate(doc)
  if ok then return nil end
  return ("protocol: corrupt state: %s (in %s)"):format(why, what)
end

--- Decodes and checks a daemon state document's text (what
-- `load_checked` does past the read).
-- @return[1] the table
-- @return[2] nil, msg, "protocol"
function M.parse_checked(text, what)
  what = what or "the text"
  local doc, err, code = M.parse(text, what)
  if not doc then return nil, err, code end
  err = corrupt(doc, what)
  if err then return nil, err, "protocol" end
  return doc
end

--- Reads the daemon's state file and checks it in full: an owner that is
-- this process's uid or root, and the schema (portman.state_schema). A
-- missing file is an empty state.
-- @return[1] the table
-- @return[2] nil, msg, code: "protocol: corrupt state: FIELD: ... (in
--   PATH)" for a bad field; "denied" for a file someone else owns; as
--   `load` otherwise
function M.load_checked(path)
  local doc, owner, code = M.load(path)
  if not doc then return nil, owner, code end
  local _, uid = core.ids()
  if owner and owner ~= uid and owner ~= 0 then
    return nil, ("denied: %s is owned by uid %d, not by %d or root"):format(path, owner, uid), "denied"
  end
  local err = corrupt(doc, path)
  if err then return nil, err, "protocol" end
  return doc
end

-- Is pid a live process (kill(pid, 0) finds it, ours or not)?
local function alive(pid)
  local ok, err = uv.kill(pid, 0)
  return ok ~= nil or not tostring(err):match("^ESRCH")
end

-- The pids a leftover's name carries (PREFIX.PID or PREFIX.PID.tmp.PID),
-- or nil when the name is not of that form.
local function pids_of(name, prefix)
  if name:sub(1, #prefix) ~= prefix then return nil end
  local rest, pids = name:sub(#prefix + 1), {}
  local first, tail = rest:match("^(%d+)(.*)$")
  if not first then return nil end
  pids[1] = math.tointeger(tonumber(first))
  if tail ~= "" then
    local second = tail:match("^%.tmp%.(%d+)$")
    if not second then return nil end
    pids[2] = math.tointeger(tonumber(second))
  end
  return pids
end

--- Removes what runs killed while writing in dir left there: files
-- named PREFIX.PID or PREFIX.PID.tmp.PID for one of prefixes (save's
-- temporary files are "state.json.tmp." .. PID), where no process has
-- any of those pids any more. Nothing else is touched.
-- @return[1] the sorted list of names removed
-- @return[2] nil, msg, code when the directory cannot be read
function M.remove_stale(dir, prefixes)
  check.table("remove_stale", 2, prefixes)
  local req, err = uv.fs_scandir(dir)
  if not req then return errors.from(err, dir) end
  local removed = {}
  for name, kind in uv.fs_scandir_next, req do
    for _, prefix in ipairs(prefixes) do
      local pids = kind ~= "directory" and pids_of(name, prefix)
      local stale = pids and #pids > 0
      for _, pid in ipairs(pids or {}) do stale = stale and pid and pid > 0 and pid <= PID_MAX and not alive(pid) end
      if stale and os.remove(dir .. "/" .. name) then removed[#removed + 1] = name end
    end
  end
  table.sort(removed)
  return removed
end

return M
