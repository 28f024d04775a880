-- portman.etcd without etcd: codecs, options, and failover against fake
-- gateway members (the real cluster is in spec/lab/etcd_spec.lua).
local helpers = require "helpers"

-- helpers.fd_count collects garbage first: a file another spec left to
-- the collector does not move the count
local settled_fds = helpers.fd_count
local uv = require "luv"
local cjson = require "cjson"
local async = require "portman.async"
local http_server = require "support.http_server"

local RANGE_OK = cjson.encode({header = {revision = "7"}, count = "1",
  kvs = {{key = "L2E=", value = "MQ==", create_revision = "5", mod_revision = "6", version = "2",
          lease = "99"}}})

describe("portman.etcd", function()
  local etcd, fds

  setup(function()
    http_server.closed_port() -- libuv keeps a reserve fd after its first TCP socket
    uv.run("nowait")
  end)
  before_each(function()
    etcd = require "portman.etcd"
    fds = settled_fds()
  end)
  after_each(function()
    uv.run("nowait")
    assert.equal(fds, settled_fds())
  end)

  it("leaves _G alone", function()
    local before = helpers.globals()
    package.loaded["portman.etcd"] = nil
    require "portman.etcd"
    assert.same(before, helpers.globals())
  end)

  it("has exactly the documented methods, none of them internal", function()
    local c = assert(etcd.new{endpoints = "http://127.0.0.1:1"})
    local names = {}
    for k in pairs(getmetatable(c).__index) do
      if not k:match("^__") then names[#names + 1] = k end
    end
    table.sort(names)
    assert.same({"close", "create", "create_many", "delete", "delete_if_lease", "endpoints", "grant", "keepalive", "put", "range",
                 "revoke", "watch"}, names)
    c:close()
  end)

  it("encodes and decodes base64 as RFC 4648 does", function()
    local vectors = {[""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
                     fooba = "Zm9vYmE=", foobar = "Zm9vYmFy"}
    for plain, coded in pairs(vectors) do
      assert.equal(coded, etcd.b64encode(plain))
      assert.equal(plain, etcd.b64decode(coded))
    end
    math.randomseed(11)
    for _ = 1, 200 do
      local bytes = {}
      for i = 1, math.random(0, 40) do bytes[i] = string.char(math.random(0, 255)) end
      local s = table.concat(bytes)
      assert.equal(s, etcd.b64decode(etcd.b64encode(s)))
    end
  end)

  it("returns nil for any text that is not base64, never raising", function()
    for _, bad in ipairs({"Zg=", "Z===", "Zg=a", "Zm9v!A==", "Zg==Zg==", "====", {}, 5}) do
      assert.is_nil(etcd.b64decode(bad))
    end
    math.randomseed(12)
    for _ = 1, 500 do
      local bytes = {}
      for i = 1, math.random(0, 16) do bytes[i] = string.char(math.random(0, 255)) end
      local ok = pcall(etcd.b64decode, table.concat(bytes))
      assert.is_true(ok)
    end
  end)

  it("computes etcd's prefix range end", function()
    assert.equal("/portman/b", etcd.prefix_end("/portman/a"))
    assert.equal("b", etcd.prefix_end("a\255"))
    assert.equal("\0", etcd.prefix_end("\255\255"))
  end)

  it("raises on bad options, naming them", function()
    local function msg(opts) return helpers.raises(etcd.new, opts) end
    assert.matches("bad argument #1 to 'new' %(table expected, got nil%)", msg(nil))
    assert.matches("bad argument #1 to 'new' %(unknown option 'endpoint'%)", msg({endpoint = "x"}))
    assert.matches("bad argument #1 to 'new' %(endpoints: non%-empty list of URLs expected%)", msg({endpoints = {}}))
    assert.matches("bad argument #1 to 'new' %(endpoints%[2%]: URL like http://127.0.0.1:2379 expected, got ftp://x%)",
      msg({endpoints = "http://a:1,ftp://x"}))
    assert.matches("bad argument #1 to 'new' %(timeout: positive integer %(ms%) expected%)",
      msg({endpoints = "http://a:1", timeout = 0}))
    assert.matches("bad argument #1 to 'new' %(user: string expected%)", msg({endpoints = "http://a:1", user = 1}))
  end)

  it("fails with unreachable when no member accepts a connection", function()
    async.run(function()
      local c <close> = assert(etcd.new{endpoints = {"http://127.0.0.1:" .. http_server.closed_port(),
        "http://127.0.0.1:" .. http_server.closed_port()}, timeout = 300})
      local res, err, code = c:range("/a")
      assert.is_nil(res)
      assert.equal("unreachable", code)
      assert.matches("^unreachable: no etcd member answered /v3/kv/range within 300 ms %(%d+ attempts; last: refused: ", err)
    end)
  end)

  it("fails with timeout when a member is reachable but never answers (no quorum)", function()
    local hang = http_server.start(function() return {hang = true} end)
    async.run(function()
      local c <close> = assert(etcd.new{endpoints = "http://127.0.0.1:" .. hang.port, timeout = 300,
                                        attempt_timeout = 100})
      local res, err, code = c:put("/a", "1")
      assert.is_nil(res)
      assert.equal("timeout", code)
      assert.matches("^timeout: no etcd member answered /v3/kv/put within 300 ms", err)
    end)
    hang.close()
  end)

  it("passes a call to the next member when one has no leader, and stays there", function()
    local sick = http_server.start(function()
      return {status = 503, body = '{"error":"etcdserver: no leader","code":14}'}
    end)
    local seen
    local good = http_server.start(function(req)
      seen = cjson.decode(req.body)
      return {body = RANGE_OK}
    end)
    async.run(function()
      local c <close> = assert(etcd.new{endpoints = {"http://127.0.0.1:" .. sick.port,
                                                     "http://127.0.0.1:" .. good.port}})
      local res = assert(c:range("/a", {prefix = true}))
      assert.same({key = "L2E=", range_end = "L2I="}, seen)
      assert.same({revision = "7", kvs = {{key = "/a", value = "1", create_revision = "5",
        mod_revision = "6", version = "2", lease = "99"}}}, res)
      local _, current = c:endpoints()
      assert.equal(2, current)
      assert(c:range("/a"))
      assert.equal(1, sick.requests)
      assert.equal(2, good.requests)
    end)
    sick.close()
    good.close()
  end)

  local answers = {
    {"a lapsed lease (gRPC NotFound)", 404, '{"error":"etcdserver: requested lease not found","code":5}',
     "not_found"},
    {"a refused login", 401, '{"error":"etcdserver: invalid auth token","code":16}', "denied"},
    {"a 200 that is not JSON", 200, "<html>", "protocol"},
    {"a 400 without JSON", 400, "bad", "protocol"},
  }
  for _, case in ipairs(answers) do
    it("fails with " .. case[4] .. " on " .. case[1] .. ", without trying other members", function()
      local member = http_server.start(function() return {status = case[2], body = case[3]} end)
      local other = http_server.start(function() return {body = RANGE_OK} end)
      async.run(function()
        local c <close> = assert(etcd.new{endpoints = {"http://127.0.0.1:" .. member.port,
                                                       "http://127.0.0.1:" .. other.port}})
        local res, err, code = c:put("/a", "1", {lease = "5"})
        assert.is_nil(res)
        assert.equal(case[4], code)
        assert.equal(case[4], err:match("^([%a_]+): "))
        assert.equal(0, other.requests)
      end)
      member.close()
      other.close()
    end)
  end

  it("builds the gateway's txn for an atomic create and reads the holder on failure", function()
    local bodies = {}
    local member = http_server.start(function(req)
      bodies[#bodies + 1] = cjson.decode(req.body)
      if #bodies == 1 then return {body = '{"header":{"revision":"3"},"succeeded":true}'} end
      return {body = '{"header":{"revision":"3"},"responses":[{"response_range":{"kvs":'
        .. '[{"key":"L2E=","value":"eA==","create_revision":"2","lease":"77"}]}}]}'}
    end)
    async.run(function()
      local c <close> = assert(etcd.new{endpoints = "http://127.0.0.1:" .. member.port})
      assert.is_true(c:create("/a", "v", "42"))
      local ok, holder = c:create("/a", "v", "42")
      assert.is_false(ok)
      assert.equal("x", holder.value)
      assert.equal("77", holder.lease)
    end)
    assert.same({compare = {{key = "L2E=", result = "EQUAL", target = "CREATE", create_revision = "0"}},
                 success = {{request_put = {key = "L2E=", value = "dg==", lease = "42"}}},
                 failure = {{request_range = {key = "L2E="}}}}, bodies[1])
    member.close()
  end)

  it("builds one txn for several creates, reads each key on failure, and refuses a short answer", function()
    local bodies = {}
    local replies = {
      '{"header":{"revision":"3"},"succeeded":true}',
      '{"header":{"revision":"3"},"responses":[{"response_range":{"header":{}}},{"response_range":{"kvs":'
        .. '[{"key":"L2I=","value":"eA==","create_revision":"2","lease":"77"}]}}]}',
      '{"header":{"revision":"3"},"responses":[{"response_range":{}}]}',
    }
    local member = http_server.start(function(req)
      bodies[#bodies + 1] = cjson.decode(req.body)
      return {body = replies[#bodies]}
    end)
    async.run(function()
      local c <close> = assert(etcd.new{endpoints = "http://127.0.0.1:" .. member.port})
      local items = {{"/a", "v"}, {"/b", "w"}}
      assert.is_true(c:create_many(items, "42"))
      local ok, holders = c:create_many(items, "42")
      assert.is_false(ok)
      assert.is_false(holders[1]) -- free: the other key failed the txn
      assert.equal("/b", holders[2].key)
      assert.equal("x", holders[2].value)
      assert.equal("77", holders[2].lease)
      local none, err, code = c:create_many(items, "42")
      assert.is_nil(none)
      assert.equal("protocol", code)
      assert.equal("protocol: etcd's answer to /v3/kv/txn: responses: 1 for a txn of 2 ranges", err)
    end)
    assert.same({compare = {{key = "L2E=", result = "EQUAL", target = "CREATE", create_revision = "0"},
                            {key = "L2I=", result = "EQUAL", target = "CREATE", create_revision = "0"}},
                 success = {{request_put = {key = "L2E=", value = "dg==", lease = "42"}},
                            {request_put = {key = "L2I=", value = "dw==", lease = "42"}}},
                 failure = {{request_range = {key = "L2E="}}, {request_range = {key = "L2I="}}}}, bodies[1])
    member.close()
  end)

  it("follows a watch stream, resumes after the last revision on another member", function()
    local starts = {}
    local first = http_server.start(function(req)
      starts[#starts + 1] = cjson.decode(req.body).create_request
      return {raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
        .. '{"result":{"header":{"revision":"10"},"created":true}}\n'
        .. '{"result":{"header":{"revision":"11"},"events":[{"kv":{"key":"L3AvMQ==","value":"eA==",'
        .. '"mod_revision":"11"}}]}}\n'}
    end)
    local second = http_server.start(function(req)
      starts[#starts + 1] = cjson.decode(req.body).create_request
      return {chunks = {'{"result":{"header":{"revision":"12"},"created":true}}\n',
        '{"result":{"header":{"revision":"12"},"events":[{"type":"DELETE","kv":{"key":"L3AvMQ==",'
        .. '"mod_revision":"12"}}]}}\n'}}
    end)
    local events = {}
    local c = assert(etcd.new{endpoints = {"http://127.0.0.1:" .. first.port, "http://127.0.0.1:" .. second.port}})
    local w = c:watch("/p/", function(ev) events[#events + 1] = ev end)
    async.run(function()
      while #events < 2 do async.sleep(10) end
      w.close()
      w.close()
      c:close()
    end)
    assert.same({{type = "put", key = "/p/1", value = "x", mod_revision = "11"},
                 {type = "delete", key = "/p/1", value = "", mod_revision = "12"}}, events)
    assert.same({key = "L3Av", range_end = "L3Aw"}, starts[1])
    assert.same({key = "L3Av", range_end = "L3Aw", start_revision = "12"}, starts[2])
    first.close()
    second.close()
  end)

  it("closes twice and raises on use after close", function()
    local c = assert(etcd.new{endpoints = "http://127.0.0.1:1"})
    c:close()
    c:close()
    assert.matches("attempt to use a closed portman.etcd client", helpers.raises(c.range, c, "/a", function() end))
  end)

  it("raises on bad call arguments", function()
    local c <close> = assert(etcd.new{endpoints = "http://127.0.0.1:1"})
    local cb = function() end
    assert.matches("bad argument #1 to 'range' %(key: non%-empty string expected%)", helpers.raises(c.range, c, "", cb))
    assert.matches("bad argument #2 to 'put' %(string expected, got number%)", helpers.raises(c.put, c, "/a", 1, cb))
    assert.matches("bad argument #1 to 'grant' %(ttl: positive integer expected%)", helpers.raises(c.grant, c, 0, cb))
    assert.matches("bad argument #1 to 'keepalive' %(lease id %(string%) expected%)",
      helpers.raises(c.keepalive, c, 5, cb))
    assert.matches("bad argument #3 to 'watch' %(function expected%)", helpers.raises(c.watch, c, "/p/"))
    assert.matches("bad argument #1 to 'create_many' %(list of 1 to 128 {key, value} expected%)",
      helpers.raises(c.create_many, c, {}, cb))
    local many = {}
    for i = 1, 129 do many[i] = {"/k" .. i, ""} end
    assert.matches("bad argument #1 to 'create_many' %(list of 1 to 128", helpers.raises(c.create_many, c, many, cb))
    assert.matches("bad argument #1 to 'create_many' %(items%[2%]: {non%-empty key, value} %(strings%) expected%)",
      helpers.raises(c.create_many, c, {{"/a", "v"}, {"", "v"}}, cb))
  end)
end)
