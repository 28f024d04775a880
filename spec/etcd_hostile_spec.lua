-- portman.etcd against a broken or hostile gateway: a small HTTP server on
-- loopback (spec/support/http_server.lua) answers what each case scripts.
-- Every bad answer fails its own call with `protocol`, every buffer has a
-- cap, and the loop keeps running.
local helpers = require "helpers"
local uv = require "luv"
local json = require "portman.json"
local log = require "portman.log"
local http_server = require "support.http_server"

local function b64(s) return require("portman.etcd").b64encode(s) end

describe("portman.etcd against a hostile gateway", function()
  local etcd, server, answers, seen, sigpipe

  setup(function()
    -- the server writes on after curl dropped a stream: EPIPE, not death
    sigpipe = uv.new_signal()
    sigpipe:start("sigpipe", function() end)
    sigpipe:unref()
    etcd = require "portman.etcd"
    server = http_server.start(function(req)
      seen[#seen + 1] = req
      local a = answers[req.path]
      if type(a) == "function" then a = a(req) end
      return a or {status = 404, body = "{}"}
    end)
  end)
  teardown(function()
    sigpipe:close()
    server.close()
    uv.run("nowait")
  end)
  local logged
  before_each(function()
    answers, seen, logged = {}, {}, {}
    log.setup{out = {write = function(_, ...) logged[#logged + 1] = table.concat({...}) end, flush = function() end}}
  end)
  after_each(function()
    log.close()
    server.drop()
    uv.run("nowait")
  end)

  local function client(opts)
    opts = opts or {}
    opts.endpoints = opts.endpoints or ("http://127.0.0.1:" .. server.port)
    opts.timeout = opts.timeout or 2000
    return assert(etcd.new(opts))
  end

  local function range_answer(body)
    answers["/v3/kv/range"] = {body = body}
    return helpers.run(function()
      local c <close> = client()
      return c:range("k")
    end)
  end

  it("fails a range whose kvs hold a number, naming the field", function()
    local res, err, code = range_answer('{"header":{"revision":"3"},"kvs":[5]}')
    assert.is_nil(res)
    assert.equal("protocol", code)
    assert.matches("kvs%[1%]: malformed %(number%)", err)
  end)

  it("fails a non-numeric revision, a key that is not base64 and a null key", function()
    local _, err, code = range_answer('{"header":{"revision":"abc"}}')
    assert.equal("protocol", code)
    assert.matches("header.revision", err)
    _, err, code = range_answer('{"header":{"revision":"3"},"kvs":[{"key":"!!!"}]}')
    assert.equal("protocol", code)
    assert.matches("kvs%[1%]%.key", err)
    _, err, code = range_answer('{"header":{"revision":"3"},"kvs":[{"key":null}]}')
    assert.equal("protocol", code)
    assert.matches("kvs%[1%]%.key", err)
  end)

  it("fails junk that is not JSON, and kvs that is an object", function()
    local _, err, code = range_answer("{not json")
    assert.equal("protocol", code)
    assert.matches("not JSON", err)
    _, err, code = range_answer('{"kvs":{"a":1}}')
    assert.equal("protocol", code)
    assert.matches("kvs: malformed", err)
  end)

  it("still reads a well-formed answer", function()
    local res = range_answer(json.encode({header = {revision = "9"},
      kvs = {{key = b64("k"), value = b64("v"), create_revision = "2", mod_revision = "4", version = "1"}}}))
    assert.same({kvs = {{key = "k", value = "v", create_revision = "2", mod_revision = "4", version = "1"}},
                 revision = "9"}, res)
  end)

  it("fails bad txn, grant and keepalive answers alone", function()
    answers["/v3/kv/txn"] = {body = '{"succeeded":"yes"}'}
    answers["/v3/lease/grant"] = {body = '{"ID":"x1","TTL":"10"}'}
    answers["/v3/lease/keepalive"] = {body = '{"result":{"TTL":-4}}'}
    local r = helpers.run(function()
      local c <close> = client()
      local out = {}
      out.create = table.pack(c:create("k", "v"))
      out.grant = table.pack(c:grant(10))
      out.keepalive = table.pack(c:keepalive("7"))
      return out
    end)
    for name, o in pairs(r) do
      assert.is_nil(o[1], name)
      assert.equal("protocol", o[3], name)
    end
    assert.matches("succeeded", r.create[2])
    assert.matches("ID", r.grant[2])
    assert.matches("result.TTL", r.keepalive[2])
  end)

  it("fails one malformed answer without holding up the others", function()
    answers["/v3/kv/range"] = function(req)
      local key = etcd.b64decode(json.decode(req.body).key)
      if key == "bad" then return {body = '{"kvs":[5]}'} end
      return {body = '{"header":{"revision":"1"}}'}
    end
    local results = {}
    local c = client()
    for _, k in ipairs({"a", "bad", "b", "c"}) do
      c:range(k, function(res, err, code) results[k] = {res, err, code} end)
    end
    assert.is_true(helpers.run_until(function()
      return results.a and results.bad and results.b and results.c and true
    end, 5000))
    c:close()
    assert.equal("protocol", results.bad[3])
    for _, k in ipairs({"a", "b", "c"}) do assert.equal("1", results[k][1].revision) end
  end)

  it("keeps the caller's own error its own: the rest of the batch is still answered", function()
    answers["/v3/kv/range"] = {body = '{"header":{"revision":"1"}}'}
    local answered = 0
    local c = client()
    for i = 1, 4 do
      c:range("k" .. i, function()
        answered = answered + 1
        if i == 1 then error("caller's bug") end
      end)
    end
    assert.is_true(helpers.run_until(function() return answered == 4 end, 5000))
    c:close()
    assert.matches("caller's bug", table.concat(logged))
  end)

  it("fails an answer over max_message, and a header block over 64 KiB", function()
    answers["/v3/kv/range"] = {body = '{"header":{"revision":"1"},"x":"' .. ("a"):rep(256 * 1024) .. '"}'}
    answers["/v3/kv/put"] = {headers = ("X-Junk: " .. ("b"):rep(1000) .. "\r\n"):rep(100),
                             body = '{"header":{"revision":"1"}}'}
    local r, p = helpers.run(function()
      local c <close> = client({max_message = 64 * 1024})
      return table.pack(c:range("k")), table.pack(c:put("k", "v"))
    end)
    assert.is_nil(r[1])
    assert.equal("protocol", r[3])
    assert.matches("body too large", r[2])
    assert.is_nil(p[1])
    assert.equal("protocol", p[3])
    assert.matches("headers too large", p[2])
  end)

  it("restarts a watch whose line never ends, with memory bounded and the loop running", function()
    local watches = 0
    answers["/v3/watch"] = function()
      watches = watches + 1
      if watches == 1 then return {endless = ("z"):rep(64 * 1024), limit = 64 * 1024 * 1024} end
      return {hang = true}
    end
    answers["/v3/kv/range"] = {body = '{"header":{"revision":"5"}}'}
    local c = client({max_message = 1024 * 1024})
    local peak = 0
    local w = c:watch("svc/", function() end)
    local answered
    c:range("k", function(res) answered = res end)
    assert.is_true(helpers.run_until(function()
      peak = math.max(peak, collectgarbage("count"))
      return watches >= 2 and answered ~= nil
    end, 10000, 5))
    w:close()
    c:close()
    assert.equal("5", answered.revision)
    assert.matches("etcd_watch_malformed.*line longer than 1048576 bytes", table.concat(logged))
    -- the line is dropped at 1 MiB: Lua's heap never held the 64 MiB sent
    assert.is_true(peak < 16 * 1024, ("Lua heap peaked at %.0f KiB"):format(peak))
  end)

  it("drops a malformed watch event and resumes after the last good one", function()
    local event = function(rev, key)
      return {type = "PUT", kv = {key = key, value = b64("v"), mod_revision = rev, create_revision = rev}}
    end
    local starts = {}
    answers["/v3/watch"] = function(req)
      starts[#starts + 1] = json.decode(req.body).create_request.start_revision or "now"
      if #starts == 1 then
        return {chunks = {json.encode({result = {created = true, header = {revision = "10"}}}) .. "\n",
                          json.encode({result = {events = {event("11", b64("svc/a"))}}}) .. "\n",
                          json.encode({result = {events = {event("12", "%%%")}}}) .. "\n"}}
      end
      return {hang = true}
    end
    local got = {}
    local c = client()
    local w = c:watch("svc/", function(ev) got[#got + 1] = ev end)
    assert.is_true(helpers.run_until(function() return #starts >= 2 end, 10000))
    w:close()
    c:close()
    assert.equal(1, #got)
    assert.equal("svc/a", got[1].key)
    assert.equal("12", starts[2]) -- after revision 11, the last one delivered
    assert.matches("result.events%[1%]%.kv%.key: malformed", table.concat(logged))
  end)

  it("takes credentials out of an endpoint URL: they log in, and no message shows them", function()
    local port = http_server.closed_port()
    local c = client({endpoints = "http://alice:s%33cret@127.0.0.1:" .. port, timeout = 300})
    local _, err = helpers.run(function() return c:range("k") end)
    c:close()
    assert.not_matches("s3cret", err)
    assert.not_matches("s%%33cret", err)
    assert.not_matches("alice", err)
    for _, e in ipairs(c:endpoints()) do assert.not_matches("alice", e) end
    assert.not_matches("s3cret", table.concat(logged))
    -- a password over plain http: said once
    local _, warnings = table.concat(logged):gsub("etcd_password_in_clear", "")
    assert.equal(1, warnings)
    -- the gateway gets them as etcd's own user
    answers["/v3/auth/authenticate"] = {body = '{"token":"T1"}'}
    answers["/v3/kv/range"] = {body = '{"header":{"revision":"2"}}'}
    local res = helpers.run(function()
      local c2 <close> = client({endpoints = "http://alice:s%33cret@127.0.0.1:" .. server.port})
      return c2:range("k")
    end)
    assert.equal("2", res.revision)
    assert.same({name = "alice", password = "s3cret"}, json.decode(seen[1].body))
    assert.equal("T1", seen[2].headers.authorization)
  end)
end)
