-- The child of helpers.in_netns: runs the chunk in file arg[1] with the
-- arguments after arg[2], and writes what it returns to file arg[2] as
-- JSON ({n = count, ...}, nil as JSON null). A raise ends it with status 1.
local cjson = require "cjson"
local json = require "portman.json"

local chunk = assert(loadfile(arg[1]))
local results = table.pack(xpcall(chunk, debug.traceback, table.unpack(arg, 3)))
if not results[1] then
  io.stderr:write(tostring(results[2]), "\n")
  os.exit(1)
end
local doc = {n = results.n - 1}
for i = 2, results.n do
  local v = results[i]
  if v == nil then v = cjson.null end
  doc[tostring(i - 1)] = v
end
local f = assert(io.open(arg[2], "w"))
f:write(json.encode(doc))
f:close()
