-- Driver of fuzz/etcd_fuzz.c. The first byte picks what the rest is:
-- even, the body of an answer to one of the gateway methods (the byte
-- names which); odd, a watch stream cut into chunks at the bytes the
-- second byte gives. The promise checked: a malformed answer fails its call
-- with `protocol`, a well-formed one gives values of the documented types,
-- and nothing raises.
local etcd = require "portman.etcd"
local json = require "portman.json"
local lines = require "portman.lines"

local METHODS = {"range", "put", "deleterange", "txn", "create", "grant", "keepalive", "create_many"}

local function digits(s) return type(s) == "string" and s:match("^%d+$") ~= nil end

local function check_kv(kv)
  assert(type(kv.key) == "string" and type(kv.value) == "string")
  assert(digits(kv.create_revision) and digits(kv.mod_revision) and digits(kv.version))
  assert(kv.lease == nil or digits(kv.lease))
end

-- What each method's caller may rely on when the call succeeds.
local PROMISE = {
  range = function(r)
    assert(digits(r.revision))
    for _, kv in ipairs(r.kvs) do check_kv(kv) end
  end,
  put = function(rev) assert(digits(rev)) end,
  deleterange = function(n) assert(math.type(n) == "integer" and n >= 0) end,
  txn = function(ok) assert(type(ok) == "boolean") end,
  create = function(ok, holder)
    assert(type(ok) == "boolean")
    if holder then check_kv(holder) end
  end,
  grant = function(l) assert(digits(l.id) and math.type(l.ttl) == "integer") end,
  keepalive = function(ttl) assert(math.type(ttl) == "integer" and ttl >= 0) end,
  create_many = function(ok, holders)
    assert(type(ok) == "boolean")
    if not ok then
      assert(#holders == 3, "a holder for each key")
      for _, h in ipairs(holders) do if h then check_kv(h) end end
    end
  end,
}

local function answer(method, body)
  local doc = json.decode(body)
  if type(doc) ~= "table" then return end -- classify() fails it before a reader runs
  local called = false
  local read = etcd._read[method]
  if method == "create_many" then read = function(res) return etcd._read.create_many(res, 3) end end
  etcd._reading("/fuzz", read, function(a, b, c)
    called = true
    if a == nil then
      assert(c == "protocol" and type(b) == "string", "a failure other than protocol")
    else
      PROMISE[method](a, b)
    end
  end)(doc)
  assert(called, "the callback never ran")
end

local function stream(data, cut)
  local framer = lines.new(4096)
  local pos = 1
  while pos <= #data do
    local n = (cut % 7) * 13 + 1
    local ok, err, code = framer:feed(data:sub(pos, pos + n - 1), function(line)
      local ok, m = pcall(etcd._read.watch, json.decode(line))
      if ok then
        for _, ev in ipairs(m.events) do
          assert(ev.type == "put" or ev.type == "delete")
          assert(digits(ev.mod_revision) and ev.mod_revision ~= "0" and type(ev.key) == "string")
        end
      else
        assert(type(m) == "string", "a reader raised a non-string")
      end
    end)
    if not ok then
      assert(code == "protocol" and err:match("^protocol: line longer than"))
      return
    end
    pos, cut = pos + n, cut + 1
  end
end

return function(data)
  local a = data:byte(1) or 0
  if a % 2 == 0 then
    answer(METHODS[a // 2 % #METHODS + 1], data:sub(2))
  else
    stream(data:sub(3), data:byte(2) or 0)
  end
end
