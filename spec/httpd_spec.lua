-- portman.httpd: the request head parser (core.httpd_parse) on good,
-- malformed and partial heads, and the server on loopback (a port the
-- kernel picks) against real luv clients: answers, keep-alive and
-- pipelining, HEAD, 404/405/400/431/408/503/500, and close.
local helpers = require "helpers"
local uv = require "luv"
local core = require "portman.core"
local httpd = require "portman.httpd"
local log = require "portman.log"

local parse = core.httpd_parse

describe("core.httpd_parse", function()
  it("parses a whole head and says how long it is", function()
    local head = "GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9207\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    local r = assert(parse(head .. "GET /next"))
    assert.same({method = "GET", target = "/metrics?x=1", minor = 1, head = #head, chunked = false, close = true,
                 keep_alive = false}, r)
  end)

  it("takes bare LF line ends, HTTP/1.0 without Host, and empty lines before the request line", function()
    local r = assert(parse("\r\n\nGET / HTTP/1.0\nConnection: Keep-Alive\n\n"))
    assert.equal(0, r.minor)
    assert.is_true(r.keep_alive)
    assert.equal(#"\r\n\nGET / HTTP/1.0\nConnection: Keep-Alive\n\n", r.head)
    assert.equal(5, parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").content_length)
  end)

  it("asks for more while every line so far is good, whatever the cut", function()
    local head = "GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: spec\r\n\r\n"
    for cut = 0, #head - 1 do
      assert.equal(false, parse(head:sub(1, cut)), "cut at " .. cut)
    end
    assert.equal(#head, parse(head).head)
  end)

  local bad = {
    ["garbage"] = "\1\2\3 garbage\r\n\r\n",
    ["a space in the method"] = "G ET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ["no target"] = "GET HTTP/1.1\r\n\r\n",
    ["HTTP/2.0"] = "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    ["a bare CR"] = "GET / HTTP/1.1\rHost: x\r\n\r\n",
    ["obsolete line folding"] = "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  more\r\n\r\n",
    ["a space before the colon"] = "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    ["a control character in a value"] = "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\1b\r\n\r\n",
    ["two Host fields"] = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ["HTTP/1.1 without Host"] = "GET / HTTP/1.1\r\n\r\n",
    ["two Content-Lengths"] = "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ["a Content-Length that is no number"] = "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ["Content-Length and Transfer-Encoding"] =
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
  }
  for what, head in pairs(bad) do
    it("refuses " .. what .. " with a protocol error", function()
      local r, err, code = parse(head)
      assert.is_nil(r)
      assert.equal("protocol", code)
      assert.matches("^protocol: ", err)
    end)
  end

  it("refuses garbage as soon as its first line is wrong, before the head is whole", function()
    assert.equal("protocol", select(3, parse("\0\0\0")))
    assert.equal("protocol", select(3, parse("GET / FTP")))
  end)
end)

-- A luv client connection to port; st.got collects what it reads, st.closed
-- says the server closed.
local function open(port)
  local st = {tcp = uv.new_tcp(), got = ""}
  st.tcp:connect("127.0.0.1", port, function(err)
    st.err, st.connected = err, true
    if err then return end
    st.tcp:read_start(function(rerr, data)
      if data then st.got = st.got .. data else st.closed, st.rerr = true, rerr end
    end)
  end)
  assert(helpers.run_until(function() return st.connected end))
  assert.is_nil(st.err)
  function st.send(s) st.tcp:write(s) end
  function st.close() if not st.tcp:is_closing() then st.tcp:close() end end
  return st
end

-- The whole answers in text: a list of {status, headers, body}. It walks
-- the text by position (no copies of the rest): wait_answers calls it on
-- every loop turn while 1000 answers arrive.
local function answers(text)
  local out, pos = {}, 1
  while true do
    local stop = text:find("\r\n\r\n", pos, true)
    if not stop then return out end
    local head = text:sub(pos, stop + 1)
    local status = tonumber(head:match("^HTTP/1%.1 (%d%d%d) "))
    local headers = {}
    for k, v in head:gmatch("\r\n([%w-]+): ([^\r]*)") do headers[k:lower()] = v end
    local len = tonumber(headers["content-length"]) or 0
    local body_at = stop + 4
    if #text - body_at + 1 < len then return out end
    out[#out + 1] = {status = status, headers = headers, body = text:sub(body_at, body_at + len - 1)}
    pos = body_at + len
  end
end

local function wait_answers(st, n, ms)
  helpers.run_until(function() return #answers(st.got) >= n or st.closed end, ms or 5000)
  return answers(st.got)
end

describe("portman.httpd", function()
  local server, calls
  local function start(opts)
    calls = 0
    server = assert(httpd.serve("127.0.0.1:0", {
      ["/"] = function() calls = calls + 1 return 200, "text/plain", "hello\n" end,
      ["/boom"] = function() error("boom") end,
    }, opts))
    return server
  end
  after_each(function()
    if server then server.close() end
    server = nil
    uv.run("nowait")
  end)

  it("answers GET, keeps the connection, and answers pipelined requests in order", function()
    start()
    assert.is_true(server.port > 0)
    local c = open(server.port)
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /?q HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    local a = wait_answers(c, 3)
    assert.equal(3, #a)
    assert.same({200, 200, 404}, {a[1].status, a[2].status, a[3].status})
    assert.equal("hello\n", a[1].body)
    assert.equal("keep-alive", a[1].headers.connection)
    assert.is_nil(c.closed)
    assert.equal(2, calls)
    c.close()
  end)

  it("answers 1000 pipelined requests sent at once (more bytes than a head may have), in order", function()
    start()
    local c = open(server.port)
    local one = "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: pipelining spec\r\n\r\n"
    c.send(one:rep(1000))
    assert.is_true(#one * 1000 > httpd.MAX_HEAD * 4) -- past the point where reading pauses
    local a = wait_answers(c, 1000, 20000)
    assert.equal(1000, #a)
    for i = 1, 1000 do assert.equal(200, a[i].status) end
    assert.is_nil(c.closed)
    assert.equal(1000, calls)
    c.close()
  end)

  it("answers HEAD with the head only, and HTTP/1.0 closes after the answer", function()
    start()
    local c = open(server.port)
    c.send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    helpers.run_until(function() return c.got:find("\r\n\r\n", 1, true) ~= nil end)
    assert.matches("^HTTP/1%.1 200 OK\r\n", c.got)
    assert.matches("Content%-Length: 6\r\n", c.got)
    assert.equal("", c.got:match("\r\n\r\n(.*)$"))
    c.close()
    local d = open(server.port)
    d.send("GET / HTTP/1.0\r\n\r\n")
    helpers.run_until(function() return d.closed end)
    assert.equal(200, answers(d.got)[1].status)
    assert.equal("close", answers(d.got)[1].headers.connection)
    d.close()
  end)

  it("refuses other methods (405 with Allow), bodies and garbage (400), and closes", function()
    start()
    local cases = {
      {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", 405},
      {"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405},
      {"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", 400},
      {"\22\3\1\0\165garbage\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\n\r\n", 400},
    }
    for _, case in ipairs(cases) do
      local c = open(server.port)
      c.send(case[1])
      helpers.run_until(function() return c.closed end, 8000)
      local a = answers(c.got)
      assert.equal(1, #a, case[1])
      assert.equal(case[2], a[1].status, case[1])
      assert.equal("close", a[1].headers.connection)
      if case[2] == 405 then assert.equal("GET, HEAD", a[1].headers.allow) end
      c.close()
    end
    assert.equal(0, calls)
  end)

  it("answers 431 to a 1 MiB head and still lets the client read it", function()
    start()
    local c = open(server.port)
    c.send("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("a"):rep(1024 * 1024) .. "\r\n\r\n")
    helpers.run_until(function() return c.closed end, 10000)
    local a = answers(c.got)
    assert.equal(431, a[1] and a[1].status)
    c.close()
  end)

  it("answers 408 to a client that sends part of a head and stops, and closes an idle one", function()
    start{idle_ms = 300} -- a short deadline, so the spec does not wait 10 s
    local slow = open(server.port)
    slow.send("GET / HT")
    local idle = open(server.port)
    helpers.run_until(function() return slow.closed and idle.closed end, 10000)
    assert.equal(408, answers(slow.got)[1].status)
    assert.equal("", idle.got)
    slow.close()
    idle.close()
    helpers.run_until(function() return server.count == 0 end)
    assert.equal(0, server.count)
  end)

  it("answers 503 past max_connections, and takes new ones once others left", function()
    start{max_connections = 2}
    local a, b = open(server.port), open(server.port)
    helpers.run_until(function() return server.count == 2 end)
    local c = open(server.port)
    helpers.run_until(function() return c.closed end)
    assert.equal(503, answers(c.got)[1].status)
    c.close()
    a.close()
    helpers.run_until(function() return server.count < 2 end)
    local d = open(server.port)
    d.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, wait_answers(d, 1)[1].status)
    b.close()
    d.close()
  end)

  it("answers 500 when a handler raises, and logs it", function()
    start()
    local lines = {}
    log.setup{level = "error", out = {write = function(_, ...) lines[#lines + 1] = table.concat({...}) end,
                                      flush = function() end}}
    local c = open(server.port)
    c.send("GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    helpers.run_until(function() return c.closed end)
    log.setup{}
    assert.equal(500, answers(c.got)[1].status)
    assert.matches("http_handler_failed", table.concat(lines, "\n"))
    c.close()
  end)

  it("closes its connections on close, and refuses a bad address or a port in use", function()
    start()
    local c = open(server.port)
    helpers.run_until(function() return server.count == 1 end)
    server.close()
    helpers.run_until(function() return c.closed end)
    assert.is_true(c.closed)
    c.close()
    local r, err, code = httpd.serve("nonsense", {})
    assert.is_nil(r)
    assert.equal("protocol", code)
    assert.matches("HOST:PORT", err)
    start()
    r, err, code = httpd.serve("127.0.0.1:" .. server.port, {})
    assert.is_nil(r)
    assert.equal("conflict", code, err)
  end)

  it("splits addresses", function()
    assert.same({"127.0.0.1", 9207}, {httpd.parse_address("127.0.0.1:9207")})
    assert.same({"::1", 80}, {httpd.parse_address("[::1]:80")})
    assert.is_nil(httpd.parse_address("127.0.0.1"))
    assert.is_nil(httpd.parse_address("127.0.0.1:70000"))
    assert.is_nil(httpd.parse_address(9207))
  end)
end)
