--- The schema of the daemon's state file (docs/design.md, "The state
-- file"), as data, and the one validator that walks it. The file is read
-- from a directory that may have been written by someone else (or by a
-- crash), so every field is checked before any part of the daemon uses
-- it: `validate(doc)` gives true, or nil and the path of the first bad
-- field with what is wrong with it:
-- `mappings[3].external_port: 0 is not a port (1-65535)`.
--
-- A rule is a table: `kind` (one of the KINDS below) and, by kind,
-- `fields` (object: field name -> rule; a field is optional unless its
-- rule has `required`; unknown fields are refused), `of` (array, map:
-- each element's rule), `min`/`max` (integer), `values` (oneof), `max_len`
-- (string, bytes), `check` (a function(value) giving a reason or nil, and
-- the path below the value it is about; run once the kind matched).
local netaddr = require "portman.netaddr"
local json = require "portman.json"

local M = {}

M.MAX_STRING = 4096 -- bytes of a name, an address, a word
M.MAX_BITMAP = 1024 * 1024 -- bytes of a pool's bitmap text

-- A value as the message shows it: short, printable.
local function show(v)
  if v == json.null then return "null" end
  if type(v) == "number" and (v ~= v or v == math.huge or v == -math.huge) then
    return v ~= v and "NaN" or (v > 0 and "Infinity" or "-Infinity")
  end
  if type(v) == "string" then
    local s = v:sub(1, 40):gsub("[%c\128-\255]", "?")
    return ("'%s'%s"):format(s, #v > 40 and "..." or "")
  end
  if type(v) == "table" then return next(v) == nil and "an empty table" or "an object" end
  return tostring(v)
end

-- Is t a JSON array (keys 1..n, or empty)?
local function is_array(t)
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
  end
  return n == 0 or t[n] ~= nil
end

local KINDS = {}

function KINDS.string(v, rule)
  if type(v) ~= "string" then return "string expected, got " .. show(v) end
  if v == "" and not rule.empty then return "empty string" end
  if #v > (rule.max_len or M.MAX_STRING) then
    return ("%d bytes, more than %d"):format(#v, rule.max_len or M.MAX_STRING)
  end
end

function KINDS.integer(v, rule)
  local i = type(v) == "number" and math.tointeger(v)
  if not i then return "integer expected, got " .. show(v) end
  if (rule.min and i < rule.min) or (rule.max and i > rule.max) then
    return ("%s is out of range %s-%s"):format(show(v), tostring(rule.min or ""), tostring(rule.max or ""))
  end
end

function KINDS.port(v)
  local i = type(v) == "number" and math.tointeger(v)
  if not i or i < 1 or i > 65535 then return show(v) .. " is not a port (1-65535)" end
end

function KINDS.boolean(v)
  if type(v) ~= "boolean" then return "boolean expected, got " .. show(v) end
end

function KINDS.oneof(v, rule)
  for _, ok in ipairs(rule.values) do
    if v == ok then return nil end
  end
  return ("%s is not one of %s"):format(show(v), table.concat(rule.values, ", "))
end

function KINDS.ip(v)
  if type(v) ~= "string" or #v > 64 or not netaddr.normalize(v) then
    return show(v) .. " is not an IP address"
  end
end

M.MAX_DEPTH = 32 -- levels of a service's metadata

-- Why v (metadata's contents) cannot be written back as JSON, or nil:
-- NaN and the infinities (which the decoder takes), too deep a nesting.
local function unwritable(v, depth)
  if type(v) == "number" and (v ~= v or v == math.huge or v == -math.huge) then
    return show(v) .. " cannot be written as JSON"
  end
  if type(v) ~= "table" then return nil end
  if depth > M.MAX_DEPTH then return ("nested deeper than %d"):format(M.MAX_DEPTH) end
  for _, x in pairs(v) do
    local why = unwritable(x, depth + 1)
    if why then return why end
  end
end

-- metadata: any JSON object (its contents are the operator's) that a
-- save can write back
function KINDS.object_any(v)
  if type(v) ~= "table" then return "object expected, got " .. show(v) end
  return unwritable(v, 1)
end

local validate -- rule, value, path -> nil or "path: reason"

-- A field's path: a key that is not a plain short word (a map's name, an
-- unknown field's, from the file) shown as ['...'], cut short and with
-- its control bytes replaced, so that a message and the log line stay
-- one short line.
local function join(path, key)
  if math.type(key) == "integer" then return ("%s[%d]"):format(path, key) end
  if type(key) ~= "string" or not key:match("^[%w_%-]+$") or #key > 40 then
    return ("%s[%s]"):format(path, show(key))
  end
  return path == "" and key or path .. "." .. key
end

function KINDS.object(v, rule, path)
  if type(v) ~= "table" or (next(v) ~= nil and is_array(v)) then
    return nil, ("%s: object expected, got %s"):format(path, type(v) == "table" and "an array" or show(v))
  end
  for k in pairs(v) do
    if type(k) ~= "string" or not rule.fields[k] then return nil, join(path, k) .. ": unknown field" end
  end
  -- in a fixed order, so the same file always names the same field; a
  -- field that is wrong before one that is missing
  for _, name in ipairs(rule.order) do
    if v[name] ~= nil then
      local err = validate(rule.fields[name], v[name], join(path, name))
      if err then return nil, err end
    end
  end
  for _, name in ipairs(rule.order) do
    if v[name] == nil and rule.fields[name].required then return nil, join(path, name) .. ": missing" end
  end
end

function KINDS.array(v, rule, path)
  if type(v) ~= "table" or not is_array(v) then
    return nil, ("%s: array expected, got %s"):format(path, type(v) == "table" and "an object" or show(v))
  end
  for i = 1, #v do
    local err = validate(rule.of, v[i], join(path, i))
    if err then return nil, err end
  end
end

function KINDS.map(v, rule, path)
  if type(v) ~= "table" or (next(v) ~= nil and is_array(v)) then
    return nil, ("%s: object expected, got %s"):format(path, type(v) == "table" and "an array" or show(v))
  end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" or k == "" or #k > M.MAX_STRING then
      return nil, ("%s: %s is not a name"):format(path, show(k))
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local err = validate(rule.of, v[k], join(path, k))
    if err then return nil, err end
  end
end

local CONTAINERS = {object = true, array = true, map = true}

function validate(rule, v, path)
  local kind = KINDS[rule.kind]
  if CONTAINERS[rule.kind] then
    local _, err = kind(v, rule, path)
    if err then return err end
  else
    local why = kind(v, rule)
    if why then return ("%s: %s"):format(path, why) end
  end
  if rule.check then
    local why, sub = rule.check(v)
    if why then return ("%s%s: %s"):format(path, sub or "", why) end
  end
end

-- An object rule: fields given as a list of {name, rule}, so the order
-- of the checks is the order written here.
local function object(list)
  local rule = {kind = "object", fields = {}, order = {}}
  for _, f in ipairs(list) do
    rule.fields[f[1]] = f[2]
    rule.order[#rule.order + 1] = f[1]
  end
  return rule
end

local function req(rule)
  local r = {required = true}
  for k, v in pairs(rule) do r[k] = v end
  return r
end

local STRING, PORT, PROTO = {kind = "string"}, {kind = "port"}, {kind = "oneof", values = {"tcp", "udp"}}
local VERSION = {kind = "integer", check = function(v)
  if v ~= 1 then return ("unknown version %s (this portman reads 1)"):format(show(v)) end
end}

local POOL = object{
  {"version", req(VERSION)},
  {"range", req{kind = "array", of = PORT, check = function(r)
    if #r ~= 2 then return "{lo, hi} expected" end
    if r[1] > r[2] then return ("%d-%d is empty"):format(r[1], r[2]) end
  end}},
  {"strategy", req{kind = "oneof", values = {"sequential", "random", "hash"}}},
  {"node_id", STRING},
  {"allow_privileged", {kind = "boolean"}},
  {"cursor", req(PORT)},
  {"bitmap", req{kind = "string", max_len = M.MAX_BITMAP, check = function(s)
    if not s:match("^PMB1 %d+%-%d+") then return "not a PMB1 bitmap" end
  end}},
}

local SERVICE = object{
  {"name", req(STRING)},
  {"type", STRING},
  {"proto", PROTO},
  {"address", {kind = "ip"}},
  {"port", req(PORT)},
  {"metadata", {kind = "object_any"}},
}

-- each service name once: the registry holds one entry a name
local function unique_names(list)
  local seen = {}
  for i, s in ipairs(list) do
    if seen[s.name] then
      return ("%s is also [%d]'s name"):format(show(s.name), seen[s.name]), ("[%d].name"):format(i)
    end
    seen[s.name] = i
  end
end

local MAPPING = object{
  {"service", req(STRING)},
  {"method", {kind = "oneof", values = {"upnp", "natpmp", "pcp"}}},
  {"external_ip", {kind = "ip"}},
  {"external_port", req(PORT)},
  {"internal_ip", {kind = "ip"}},
  {"internal_port", PORT},
  {"proto", PROTO},
  {"description", {kind = "string", max_len = 256}},
  {"expires", {kind = "integer", min = 0}},
}

-- The router known at the last save (nat.known); nat.use_known checks
-- the values themselves (a LAN address, an http:// URL) before use.
local GATEWAY = object{
  {"preferred", {kind = "oneof", values = {"upnp", "natpmp", "pcp"}}},
  {"upnp", object{
    {"control_url", req{kind = "string", max_len = 1024}},
    {"service_type", req{kind = "string", max_len = 256}},
    {"lan_addr", {kind = "ip"}},
  }},
  {"natpmp", object{
    {"gateway", req{kind = "ip"}},
    {"supported", {kind = "boolean"}},
  }},
}

local PID = {kind = "integer", min = 2, max = 4194304} -- pid_max's limit
local PROGRAM = object{
  {"name", req(STRING)},
  {"pid", req(PID)},
  {"pgid", PID},
  {"started_at_boot_ticks", req{kind = "integer", min = 0}},
  {"boot_id", STRING},
}

--- The state file's schema (the rules above): an object, every field
-- optional (a state written by an older portman lacks the newer ones).
M.SCHEMA = object{
  {"version", VERSION},
  {"pools", {kind = "map", of = POOL}},
  {"registry", object{
    {"version", req(VERSION)},
    {"services", req{kind = "array", of = SERVICE, check = unique_names}},
  }},
  {"runtime", {kind = "array", of = STRING}},
  {"mappings", {kind = "array", of = MAPPING}},
  {"programs", {kind = "array", of = PROGRAM}},
  {"gateway", GATEWAY},
}

--- Checks a decoded state document against the schema.
-- @return[1] true
-- @return[2] nil, "PATH: what is wrong" (the first bad field)
function M.validate(doc)
  local err = validate(M.SCHEMA, doc, "")
  if err then return nil, err end
  return true
end

return M
