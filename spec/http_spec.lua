local helpers = require "helpers"

-- helpers.fd_count collects garbage first: a file another spec left to
-- the collector does not move the count
local settled_fds = helpers.fd_count
local uv = require "luv"
local async = require "portman.async"
local http_server = require "support.http_server"

local function handler(req)
  if req.path == "/echo" then
    return {body = req.method .. " " .. req.body .. " " .. (req.headers.authorization or "-")
      .. " " .. (req.headers["content-type"] or "-") .. " " .. (req.headers.expect or "-")}
  elseif req.path == "/missing" then
    return {status = 404, body = "nope"}
  elseif req.path == "/hang" then
    return {hang = true}
  elseif req.path == "/stream" then
    return {chunks = {"a\n", "b\n", "c\n"}}
  elseif req.path == "/big" then
    return {body = ("x"):rep(5000)}
  elseif req.path == "/garbage" then
    return {raw = "NOT HTTP AT ALL\r\n\r\n"}
  elseif req.path == "/drop" then
    return {close = true}
  end
  return {status = 500, body = "?"}
end

describe("portman.http", function()
  local http, server, base, fds

  setup(function()
    -- one TCP socket first: libuv keeps a reserve fd from then on
    server = http_server.start(handler)
    base = "http://127.0.0.1:" .. server.port
  end)
  teardown(function()
    server.close()
    uv.run("nowait")
  end)
  -- the fds of this process but the server's connections
  local function client_fds()
    server.drop()
    uv.run("nowait")
    return settled_fds()
  end
  before_each(function()
    fds = client_fds()
    http = require "portman.http"
  end)
  after_each(function()
    assert.equal(fds, client_fds())
  end)

  it("leaves _G alone", function()
    local before = helpers.globals()
    package.loaded["portman.http"] = nil
    require "portman.http"
    assert.same(before, helpers.globals())
  end)

  it("POSTs a body and gets the answer, with basic auth and no Expect wait", function()
    async.run(function()
      local c <close> = assert(http.new())
      local res = assert(c:request{url = base .. "/echo", body = ("b"):rep(2000), userpwd = "user:pw"})
      assert.equal(200, res.status)
      assert.equal("POST " .. ("b"):rep(2000) .. " Basic dXNlcjpwdw== application/json -", res.body)
      res = assert(c:request{url = base .. "/echo"})
      assert.equal("GET  - - -", res.body)
      res = assert(c:request{url = base .. "/echo", method = "PUT", body = "x", content_type = "text/plain"})
      assert.equal("PUT x - text/plain -", res.body)
    end)
  end)

  it("returns an HTTP error status as an answer", function()
    async.run(function()
      local c <close> = assert(http.new())
      local res = assert(c:request{url = base .. "/missing"})
      assert.same({status = 404, body = "nope"}, res)
    end)
  end)

  local failures = {
    {"a refused connection", function() return "http://127.0.0.1:" .. http_server.closed_port() .. "/" end,
     {}, "refused"},
    {"no answer before the timeout", function() return base .. "/hang" end, {timeout = 100}, "timeout"},
    {"a body over max_body", function() return base .. "/big" end, {max_body = 100}, "protocol"},
    {"an answer that is not HTTP", function() return base .. "/garbage" end, {}, "protocol"},
    {"a connection closed without an answer", function() return base .. "/drop" end, {}, "closed"},
    {"a scheme other than http(s)", function() return "ftp://127.0.0.1/" end, {}, "unsupported"},
  }
  for _, case in ipairs(failures) do
    it("fails with " .. case[4] .. " on " .. case[1], function()
      async.run(function()
        local c <close> = assert(http.new())
        local opts = {url = case[2]()}
        for k, v in pairs(case[3]) do opts[k] = v end
        local res, err, code = c:request(opts)
        assert.is_nil(res)
        assert.equal(case[4], code)
        assert.matches("^" .. case[4] .. ": .*%(" .. opts.url:gsub("%p", "%%%0") .. "%)$", err)
      end)
    end)
  end

  it("delivers a streamed body chunk by chunk", function()
    async.run(function()
      local c <close> = assert(http.new())
      local chunks = {}
      local res = assert(c:request{url = base .. "/stream", on_data = function(chunk, status)
        assert.equal(200, status)
        chunks[#chunks + 1] = chunk
      end})
      assert.equal("", res.body)
      assert.equal("a\nb\nc\n", table.concat(chunks))
      assert.truthy(#chunks >= 2) -- they came 20 ms apart
    end)
  end)

  it("runs many requests at once and reports them in batches", function()
    async.run(function()
      local c <close> = assert(http.new())
      local done = 0
      for i = 1, 200 do
        c:request({url = base .. "/echo", body = tostring(i)}, function(res)
          assert.equal("POST " .. i .. " - application/json -", res.body)
          done = done + 1
        end)
      end
      assert.equal(200, c:active())
      while done < 200 do async.sleep(5) end
      assert.equal(0, c:active())
    end)
  end)

  it("cancels a request: its callback never runs", function()
    local called = false
    local c = assert(http.new())
    local id = c:request({url = base .. "/hang"}, function() called = true end)
    assert.is_true(c:cancel(id))
    assert.is_false(c:cancel(id))
    assert.equal(0, c:active())
    uv.run() -- nothing keeps the loop alive once nothing is in flight
    assert.is_false(called)
    c:close()
  end)

  it("closes with requests in flight, twice, and raises on use after close", function()
    local called = false
    local c = assert(http.new())
    c:request({url = base .. "/hang"}, function() called = true end)
    c:close()
    c:close()
    uv.run()
    assert.is_false(called)
    assert.is_true(c:closed())
    assert.matches("attempt to use a closed portman.http client",
      helpers.raises(c.request, c, {url = base}, function() end))
    assert.matches("attempt to use a closed portman.http client", helpers.raises(c.active, c))
  end)

  it("raises on bad arguments, naming them", function()
    local c <close> = assert(http.new())
    local cb = function() end
    assert.matches("bad argument #1 to 'request' %(table expected, got string%)",
      helpers.raises(c.request, c, "x", cb))
    assert.matches("bad argument #1 to 'request' %(unknown option 'urll'%)",
      helpers.raises(c.request, c, {urll = base}, cb))
    assert.matches("bad argument #1 to 'request' %(url: string expected%)",
      helpers.raises(c.request, c, {}, cb))
    assert.matches("bad argument #2 to 'request' %(function expected%)",
      helpers.raises(c.request, c, {url = base}, 5))
    assert.matches("bad argument #1 to 'request' %(timeout: milliseconds expected %(0%-86400000%)%)",
      helpers.raises(c.request, c, {url = base, timeout = -1}, cb))
    assert.matches("bad argument #1 to 'request' %(body: string expected, got table%)",
      helpers.raises(c.request, c, {url = base, body = {}}, cb))
    assert.matches("bad argument #1 to 'request' %(on_data: function expected%)",
      helpers.raises(c.request, c, {url = base, on_data = 1}, cb))
    assert.equal(0, c:active())
  end)

  it("guards the core engine: closed use raises, close is idempotent", function()
    local core = require "portman.core"
    local e = assert(core.http_new())
    assert.matches("^portman.http %(0 active%)$", tostring(e))
    e:close()
    e:close()
    assert.equal("portman.http (closed)", tostring(e))
    assert.matches("attempt to use a closed portman.http", helpers.raises(e.step, e))
    assert.matches("calling 'fd' on bad self %(portman.http expected, got table%)",
      helpers.raises(function() local x = {fd = e.fd}; return x:fd() end))
  end)
end)
