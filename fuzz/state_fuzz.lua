-- Driver of fuzz/state_fuzz.c. The state file is read from a directory
-- that others may have written, so any bytes must give a checked state or
-- nil and a message, and never raise (state.parse_checked, what
-- state.load_checked does past the read). A state it takes must also be
-- usable: each saved service registers without raising, and the state
-- writes back as JSON that reads back the same way; a refusal's message is
-- one short printable line (it is logged and printed).
local state = require "portman.state"
local registry = require "portman.registry"
local json = require "portman.json"

return function(text)
  local doc, err, code = state.parse_checked(text, "fuzz")
  if doc == nil then
    assert(type(err) == "string" and code == "protocol" and err:match("^protocol: "), "failure shape")
    assert(#err <= 600 and not err:find("[%c\128-\255]"), "message: " .. err:sub(1, 200))
    return
  end
  assert(type(doc) == "table" and err == nil, "success shape")
  local reg = registry.new{check_host = false}
  for _, s in ipairs(doc.registry and doc.registry.services or {}) do
    reg:register(s) -- nil, conflict is fine; a raise is not
  end
  local back, berr = state.parse_checked(json.encode(doc), "again")
  assert(back, berr)
end
