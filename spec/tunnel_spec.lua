-- portman.tunnel: the WebSocket and CONNECT heads, and check_proxy through
-- a loopback HTTP proxy this spec runs.
local helpers = require "helpers"
local uv = require "luv"

-- This process's sockets, after a collection has closed what garbage held
-- (helpers.fd_count counts every kind, the pipes libuv's threads open too).
local function fd_count()
  collectgarbage()
  collectgarbage()
  local p = io.popen("ls -l /proc/" .. helpers.pid() .. "/fd")
  local n = 0
  for line in p:lines() do
    if line:find("-> socket:", 1, true) then n = n + 1 end
  end
  p:close()
  return n
end

-- Ports that were just free: bound then closed (nothing listens there).
local function free_ports(host, n)
  local ports, handles = {}, {}
  for i = 1, n do
    local t = uv.new_tcp()
    assert(t:bind(host, 0))
    handles[i], ports[i] = t, t:getsockname().port
  end
  for _, h in ipairs(handles) do h:close() end
  uv.run("nowait")
  return ports
end

describe("portman.tunnel", function()
  local tunnel

  it("leaves _G alone when required", function()
    local before = helpers.globals()
    tunnel = require "portman.tunnel"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], k) end
    assert.equals(tunnel, require("portman").tunnel)
  end)

  describe("WebSocket and CONNECT helpers", function()
    it("hashes and encodes as RFC 3174, RFC 4648 and RFC 6455 say", function()
      local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
      assert.equals("da39a3ee5e6b4b0d3255bfef95601890afd80709", hex(tunnel.sha1("")))
      assert.equals("a9993e364706816aba3e25717850c26c9cd0d89d", hex(tunnel.sha1("abc")))
      assert.equals("84983e441c3bd26ebaae4aa1f95129e5e54670f1",
                    hex(tunnel.sha1("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
      local b64 = {[""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", fooba = "Zm9vYmE=",
                   foobar = "Zm9vYmFy"}
      for k, v in pairs(b64) do assert.equals(v, tunnel.base64(k)) end
      -- RFC 6455 section 1.3's example
      assert.equals("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", tunnel.websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="))
    end)

    it("agrees with openssl on every padding boundary", function()
      for _, n in ipairs({1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 200}) do
        local s = ("x"):rep(n - 1) .. string.char(n % 256)
        local path = os.tmpname()
        local f = assert(io.open(path, "wb"))
        f:write(s)
        f:close()
        local p = io.popen("env -u LD_PRELOAD openssl sha1 -binary < " .. path
                           .. " | env -u LD_PRELOAD openssl base64")
        local want = p:read("l")
        p:close()
        os.remove(path)
        assert.equals(want, tunnel.base64(tunnel.sha1(s)), "length " .. n)
      end
    end)

    it("builds and validates a WebSocket upgrade", function()
      local req, key = tunnel.websocket_request("::1", 8080, "/chat", {origin = "http://example.test"})
      assert.equals(24, #key)
      assert.equals(16, #(key:gsub("=", "")) * 3 // 4)
      assert.equals("GET /chat HTTP/1.1\r\nHost: [::1]:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    .. "Sec-WebSocket-Key: " .. key .. "\r\nSec-WebSocket-Version: 13\r\n"
                    .. "Origin: http://example.test\r\n\r\n", req)
      assert.not_equals(key, select(2, tunnel.websocket_request("h", 80)))
      local accept = tunnel.websocket_accept(key)
      local good = "HTTP/1.1 101 Switching Protocols\r\nUPGRADE: WebSocket\r\n"
                   .. "connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: " .. accept .. "\r\n\r\n"
      assert.is_true((tunnel.websocket_validate(good, key)))
      local function bad(text, protocols)
        local ok, msg, code = tunnel.websocket_validate(text, key, protocols)
        assert.is_nil(ok)
        assert.equals("protocol", code)
        return msg
      end
      local with_proto = good:gsub("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
      assert.equals("protocol: Sec-WebSocket-Accept mismatch",
                    bad((good:gsub(accept:gsub("%p", "%%%0"), "x" .. accept))))
      assert.equals("protocol: status 200, not 101", bad((good:gsub("101 Switching Protocols", "200 OK"))))
      assert.equals("protocol: no 'Upgrade: websocket'", bad((good:gsub("WebSocket", "h2c"))))
      assert.equals("protocol: no 'Connection: Upgrade'", bad((good:gsub("keep%-alive, Upgrade", "close"))))
      assert.equals("protocol: subprotocol 'chat' was not asked for", bad(with_proto, {"superchat"}))
      assert.is_true((tunnel.websocket_validate(with_proto, key, {"chat"})))
      assert.equals("protocol: an extension nobody asked for",
                    bad((good:gsub("\r\n\r\n", "\r\nSec-WebSocket-Extensions: x\r\n\r\n"))))
      assert.equals("protocol: incomplete response head", bad("HTTP/1.1 101 OK\r\n"))
      assert.equals("protocol: not an HTTP/1.x status line", bad("SSH-2.0-OpenSSH\r\n\r\n"))
      assert.equals("protocol: malformed header line", bad("HTTP/1.1 101 OK\r\nno colon\r\n\r\n"))
    end)

    it("builds and checks CONNECT", function()
      assert.equals("CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
                    tunnel.connect_request("example.test", 443))
      assert.equals("CONNECT [2001:db8::1]:80 HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n"
                    .. "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
                    tunnel.connect_request("2001:db8::1", 80, {user = "user", password = "pass"}))
      assert.is_true((tunnel.connect_validate("HTTP/1.1 200 Connection established\r\n\r\n")))
      local cases = {[407] = "denied", [403] = "denied", [502] = "unreachable", [503] = "unreachable",
                     [504] = "timeout", [500] = "refused", [301] = "refused"}
      for status, want in pairs(cases) do
        local ok, msg, code = tunnel.connect_validate(("HTTP/1.0 %d Nope\r\n\r\n"):format(status))
        assert.is_nil(ok)
        assert.equals(want, code)
        assert.equals(("%s: proxy answered %d Nope"):format(want, status), msg)
      end
      assert.matches("bad argument #1 to 'connect_request' (host: string without spaces expected)",
                     helpers.raises(tunnel.connect_request, "a b", 80), 1, true)
      assert.matches("bad argument #2 to 'connect_request' (port: port out of range 1-65535)",
                     helpers.raises(tunnel.connect_request, "a", 0), 1, true)
    end)

    it("never raises on hostile response bytes", function()
      local seed = {"HTTP/1.1 101 OK\r\n", "\r\n", ":", "Upgrade: websocket\r\n", "\0", "\255",
                    "HTTP/1.0 200 ", "Sec-WebSocket-Accept: ", " ", "\n"}
      math.randomseed(helpers.pid())
      for _ = 1, 3000 do
        local parts = {}
        for i = 1, math.random(0, 12) do
          parts[i] = math.random() < 0.7 and seed[math.random(#seed)] or string.char(math.random(0, 255))
        end
        local text = table.concat(parts)
        local head, off = tunnel.parse_response(text)
        assert.is_true(head == nil or type(head) == "table" and math.type(off) == "integer")
        local ok, _, code = tunnel.websocket_validate(text, "key")
        assert.is_true(ok == true or code == "protocol")
        ok, _, code = tunnel.connect_validate(text)
        assert.is_true(ok == true or code ~= nil)
      end
      assert.equals("protocol", select(3, tunnel.parse_response(("x"):rep(20000))))
    end)
  end)

  describe("check_proxy through a loopback HTTP proxy", function()
    -- An HTTP CONNECT proxy (answers `status` when given one) and a
    -- WebSocket server whose Sec-WebSocket-Accept comes from openssl, not
    -- from the code under test.
    local servers
    local function openssl_accept(key)
      local p = io.popen(("printf '%%s' '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' | env -u LD_PRELOAD "
                          .. "openssl sha1 -binary | env -u LD_PRELOAD openssl base64"):format(key))
      local v = p:read("l")
      p:close()
      return v
    end

    local function serve(on_conn)
      local s = uv.new_tcp()
      assert(s:bind("127.0.0.1", 0))
      assert(s:listen(16, function()
        local c = uv.new_tcp()
        s:accept(c)
        servers[#servers + 1] = c
        on_conn(c)
      end))
      s:unref() -- the task's own handles keep helpers.loop going, not the servers
      servers[#servers + 1] = s
      return s:getsockname().port
    end

    local function read_head(c, cb)
      local buf = ""
      c:read_start(function(err, data)
        if err or not data then return c:close() end
        buf = buf .. data
        local stop = buf:find("\r\n\r\n", 1, true)
        if stop then
          c:read_stop()
          cb(buf:sub(1, stop + 3))
        end
      end)
    end

    local function websocket_server(bad)
      return serve(function(c)
        read_head(c, function(head)
          local key = head:match("Sec%-WebSocket%-Key: ([^\r]+)")
          local accept = bad and "bogus" or openssl_accept(key)
          c:write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  .. "Sec-WebSocket-Accept: " .. accept .. "\r\n\r\n")
        end)
      end)
    end

    local function proxy(behaviour)
      return serve(function(c)
        if behaviour == "silent" then return c:read_start(function() end) end
        if behaviour == "hangup" then return c:close() end
        read_head(c, function(head)
          if type(behaviour) == "number" then
            return c:write(("HTTP/1.1 %d Nope\r\n\r\n"):format(behaviour))
          end
          local host, port = head:match("^CONNECT ([^ ]+):(%d+) HTTP/1%.1\r\n")
          local up = uv.new_tcp()
          servers[#servers + 1] = up
          up:connect(host, tonumber(port), function(err)
            if err then return c:write("HTTP/1.1 502 Bad Gateway\r\n\r\n") end
            c:write("HTTP/1.1 200 Connection established\r\n\r\n")
            c:read_start(function(e, data) if data and not e then up:write(data) end end)
            up:read_start(function(e, data) if data and not e then c:write(data) end end)
          end)
        end)
      end)
    end

    it("reaches a WebSocket server through the tunnel, and names each failure", function()
      local fds = fd_count()
      servers = {}
      local ws, ws_bad = websocket_server(false), websocket_server(true)
      local good, denied, silent, hangup = proxy("tunnel"), proxy(407), proxy("silent"), proxy("hangup")
      local nothing = free_ports("127.0.0.1", 2)
      local results = {}
      helpers.loop(function()
        local function try(name, ...) results[name] = table.pack(tunnel.check_proxy(...)) end
        try("ws", "127.0.0.1:" .. good, {host = "127.0.0.1", port = ws}, {websocket = "/", timeout = 2000})
        try("plain", {host = "127.0.0.1", port = good}, "127.0.0.1:" .. ws, {timeout = 2000})
        try("bad_accept", "127.0.0.1:" .. good, "127.0.0.1:" .. ws_bad, {websocket = "/x", timeout = 2000})
        try("denied", "127.0.0.1:" .. denied, "127.0.0.1:" .. ws, {timeout = 2000})
        try("gateway", "127.0.0.1:" .. good, "127.0.0.1:" .. nothing[1], {timeout = 2000})
        try("refused", "127.0.0.1:" .. nothing[2], "127.0.0.1:" .. ws, {timeout = 2000})
        try("timeout", "127.0.0.1:" .. silent, "127.0.0.1:" .. ws, {timeout = 100})
        try("closed", "127.0.0.1:" .. hangup, "127.0.0.1:" .. ws, {timeout = 2000})
        try("not_found", "no-such-host.invalid:" .. good, "127.0.0.1:" .. ws, {timeout = 2000})
        for _, h in ipairs(servers) do if not h:is_closing() then h:close() end end
      end)
      local ok = results.ws[1]
      assert.is_table(ok, tostring(results.ws[2]))
      assert.is_true(ok.websocket)
      assert.equals(200, ok.status)
      assert.equals("127.0.0.1:" .. ws, ok.target)
      assert.is_false(results.plain[1].websocket)
      local function code(name) return results[name][3] end
      assert.equals("protocol", code("bad_accept"))
      assert.equals("protocol: Sec-WebSocket-Accept mismatch", results.bad_accept[2])
      assert.equals("denied", code("denied"))
      assert.equals("denied: proxy answered 407 Nope", results.denied[2])
      assert.equals("unreachable", code("gateway"))
      assert.equals("refused", code("refused"))
      assert.matches("^refused: connect 127%.0%.0%.1:" .. nothing[2] .. ": ECONNREFUSED$", results.refused[2])
      assert.equals("timeout", code("timeout"))
      assert.equals(("timeout: no answer through 127.0.0.1:%d after 100 ms"):format(silent), results.timeout[2])
      assert.equals("closed", code("closed"))
      assert.equals("not_found", code("not_found"))
      assert.matches("^not_found: no%-such%-host%.invalid: no such name", results.not_found[2])
      uv.run("nowait")
      assert.equals(fds, fd_count())
    end)
  end)
end)
