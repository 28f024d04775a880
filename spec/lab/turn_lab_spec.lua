-- `portman relay` against a real TURN server (coturn) from behind a
-- symmetric NAT (nftables "masquerade fully-random") with no UPnP or
-- NAT-PMP on the router, in network namespaces this spec creates and
-- deletes. Needs root.
local cjson = require "cjson"
local Lab = require "lab.lab"

local USER, PASSWORD, REALM = "relayuser", "s3cret-Pa55-word", "lab.example"
local UDP_PORT, TCP_PORT = 7000, 7001
-- s: coturn's --max-allocate-lifetime, so that refresh must work. coturn
-- raises a LIFETIME under 600 s to 600, then caps it at its maximum: the
-- relay asks for an hour and gets this.
local LIFETIME = 8

-- The LAN's services on 127.0.0.1: a UDP echo and a TCP echo.
local ECHO = [[
local uv = require "luv"
local u = uv.new_udp()
assert(u:bind("127.0.0.1", tonumber(arg[1])))
u:recv_start(function(err, data, addr) if data and not err then u:send("echo " .. data, addr.ip, addr.port) end end)
local t = uv.new_tcp()
assert(t:bind("127.0.0.1", tonumber(arg[2])))
assert(t:listen(64, function()
  local c = uv.new_tcp()
  t:accept(c)
  c:read_start(function(err, data)
    if err or not data then return c:close() end
    c:write("echo " .. data)
  end)
end))
uv.run()
]]

-- A WAN peer (from WAN.server2): argv proto ip port message; prints each
-- answer on its own line. UDP retries each datagram until an answer or 10
-- tries; TCP sends once and waits for the echo.
local PEER = [[
local uv = require "luv"
local proto, ip, port, msg = arg[1], arg[2], tonumber(arg[3]), arg[4]
local deadline = uv.new_timer()
deadline:start(10000, 0, function() io.write("no answer\n") os.exit(1) end)
if proto == "udp" then
  local u = uv.new_udp()
  assert(u:bind(arg[5], 0))
  local tries = 0
  local resend = uv.new_timer()
  local function send()
    tries = tries + 1
    if tries > 10 then io.write("no answer\n") os.exit(1) end
    u:send(msg, ip, port)
    resend:start(500, 0, send)
  end
  u:recv_start(function(err, data)
    if data and not err then io.write(data, "\n") os.exit(0) end
  end)
  send()
else
  local t = uv.new_tcp()
  assert(t:bind(arg[5], 0))
  t:connect(ip, port, function(err)
    if err then io.write("connect failed: ", err, "\n") os.exit(1) end
    t:write(msg)
    local got = ""
    t:read_start(function(rerr, data)
      if rerr or not data then io.write("closed\n") os.exit(1) end
      got = got .. data
      if #got >= #msg + 5 then io.write(got, "\n") os.exit(0) end
    end)
  end)
end
uv.run()
]]

describe("portman relay through coturn behind a symmetric NAT #lab", function()
  local lab, server, pwfile, peer_script

  setup(function()
    lab = Lab.new{nat = "masquerade fully-random"}
    server = lab:turn_server{user = USER, password = PASSWORD, realm = REALM, max_lifetime = LIFETIME,
                             extra = "--stale-nonce=3"}
    lab:lua_daemon("lan", "echo", ECHO, UDP_PORT .. " " .. TCP_PORT)
    lab:wait_for("the echo services", function()
      return lab:udp_listening("lan", "127.0.0.1", UDP_PORT) and lab:tcp_listening("lan", "127.0.0.1", TCP_PORT)
    end)
    pwfile = lab:script("password", PASSWORD .. "\n") -- a file in the lab's directory
    peer_script = lab:script("peer", PEER)
  end)

  teardown(function()
    if lab then lab:close() end
  end)

  -- Starts `portman relay` in the LAN; returns its name and its JSON
  -- document once it printed one.
  local count = 0
  local function start_relay(args)
    count = count + 1
    local name = "relay" .. count
    lab:portman_daemon("lan", name, ("relay %s --server %s --user %s --password-file %s --allow %s --json")
      :format(args, server, USER, pwfile, Lab.WAN.server2))
    local doc
    lab:wait_for("portman relay's document", function()
      local line = lab:log(name):match("(%{[^\n]*\"relayed_ip\"[^\n]*%})")
      doc = line and cjson.decode(line)
      return doc ~= nil or lab:log(name):find("portman relay:", 1, true) ~= nil
    end, 20)
    assert.is_table(doc, lab:log(name))
    return name, doc
  end

  local function peer(proto, doc, msg)
    return lab:try("wan", ("lua5.4 %s %s %s %d '%s' %s"):format(peer_script, proto, doc.relayed_ip,
      doc.relayed_port, msg, Lab.WAN.server2))
  end

  local function stop(name)
    for _, d in ipairs(lab.daemons) do
      if d.name == name then os.execute("kill -TERM " .. d.pid) end
    end
    lab:wait_for(name .. " to deallocate", function()
      return lab:log(name):find("relay_closed", 1, true) ~= nil
    end, 20)
  end

  it("the router maps nothing: no UPnP, no NAT-PMP, no PCP", function()
    local ok, _, err = lab:portman("lan", "map 7000 --proto udp --timeout 500 --json")
    assert.is_false(ok)
    -- PCP's port is unreachable (not_found); UPnP's discovery times out
    assert.truthy(err:match("^portman map: not_found: ") or err:match("^portman map: timeout: "), err)
  end)

  it("relays a WAN peer's UDP datagrams to the LAN echo and back, past its first lifetime", function()
    local name, doc = start_relay(UDP_PORT .. " --proto udp --lifetime 3600")
    assert.equal(Lab.WAN.server, doc.relayed_ip)
    assert.is_true(doc.relayed_port >= 49152 and doc.relayed_port <= 49407)
    assert.same({"lifetime", "proto", "relayed_ip", "relayed_port", "server"},
      (function() local k = {} for key in pairs(doc) do k[#k + 1] = key end table.sort(k) return k end)())
    assert.equal("udp", doc.proto)
    assert.equal(server, doc.server)
    assert.equal(LIFETIME, doc.lifetime)
    local ok, out = peer("udp", doc, "hello")
    assert.is_true(ok, out .. lab:log(name))
    assert.equal("echo hello\n", out)
    -- the peer got a channel: later datagrams go as ChannelData
    lab:wait_for("the channel", function() return lab:log(name):find("relay_channel number=16384", 1, true) ~= nil end)
    -- two refreshes later the allocation still relays: refresh works
    lab:wait_for("two refreshes", function()
      local _, n = lab:log(name):gsub("relay_refreshed", "")
      return n >= 2
    end, LIFETIME * 3)
    -- coturn's nonces last 3 s: a refresh met 438 Stale Nonce and retried
    assert.matches("relay_nonce method=Refresh stale=true", lab:log(name))
    ok, out = peer("udp", doc, "again")
    assert.is_true(ok, out .. lab:log(name))
    assert.equal("echo again\n", out)
    stop(name)
    assert.matches("deallocated=true", lab:log(name))
    assert.falsy(lab:log(name):find(PASSWORD, 1, true))
    -- deallocated: the relayed port answers no more
    ok = peer("udp", doc, "gone")
    assert.is_false(ok)
  end)

  it("relays a WAN peer's TCP connection to the LAN service (RFC 6062)", function()
    local name, doc = start_relay(TCP_PORT .. " --proto tcp")
    assert.equal("tcp", doc.proto)
    assert.equal(Lab.WAN.server, doc.relayed_ip)
    local ok, out = peer("tcp", doc, "over tcp")
    assert.is_true(ok, out .. lab:log(name))
    assert.equal("echo over tcp\n", out)
    stop(name)
    assert.falsy(lab:log(name):find(PASSWORD, 1, true))
  end)

  it("exits 1 when the server goes away under a TCP relay (the allocation goes with the connection)", function()
    local name = start_relay(TCP_PORT .. " --proto tcp")
    local pid
    for _, d in ipairs(lab.daemons) do if d.name == name then pid = d.pid end end
    for _, d in ipairs(lab.daemons) do
      if d.name == "turnserver" then os.execute("kill -9 " .. d.pid) end
    end
    lab:wait_for("portman relay to exit", function() return not Lab.alive(pid) end, 20)
    assert.matches("relay_lost[^\n]*fatal=true", lab:log(name))
    assert.matches("portman relay: closed: ", lab:log(name))
    -- the next specs get a server again
    server = lab:turn_server{user = USER, password = PASSWORD, realm = REALM, max_lifetime = LIFETIME,
                             extra = "--stale-nonce=3"}
  end)

  it("refuses a wrong password with denied, and never shows the password", function()
    local helpers = require "helpers"
    local args = ("relay %d --server %s --user %s --allow %s --json"):format(UDP_PORT, server, USER, Lab.WAN.server2)
    local ok, _, err = lab:portman("lan", args)
    assert.is_false(ok) -- no password at all: a usage error that names where one comes from
    assert.matches("PORTMAN_TURN_PASSWORD", err)
    local wrong = "not-the-" .. PASSWORD
    local out
    ok, out = lab:try("lan", ("cd %s && PORTMAN_TURN_PASSWORD=%s %s bin/portman %s 2>&1")
      :format(helpers.root, wrong, helpers.lua, args))
    assert.is_false(ok)
    local doc = cjson.decode(out:match("(%{[^\n]*\"code\"[^\n]*%})"))
    assert.equal("denied", doc.code)
    assert.matches("401", doc.error)
    assert.falsy(out:find(wrong, 1, true))
    assert.falsy(out:find(PASSWORD, 1, true))
  end)

  it("a daemon falls back to its service's relay when the router maps nothing", function()
    local dir = lab.dir .. "/daemon"
    lab:sh("lan", "mkdir -m 700 -p " .. dir)
    local f = assert(io.open(dir .. "/policy.lua", "w"))
    f:write(([[return {services = {{name = "echo", port = 42100, proto = "tcp", check = false,
      map = {method = "natpmp", timeout = 500},
      relay = {server = %q, user = %q, password_file = %q, allow = {%q}},
      handler = function(c)
        c:read_start(function(err, data)
          if err or not data then return c:close() end
          c:write("echo " .. data)
        end)
      end}}}]]):format(server, USER, pwfile, Lab.WAN.server2))
    f:close()
    local sock = dir .. "/admin.sock"
    local pid = lab:portman_daemon("lan", "daemon", ("run %s/policy.lua --state-dir %s --admin-socket %s")
      :format(dir, dir, sock))
    lab:wait_for("relay_added", function() return lab:log("daemon"):find("relay_added", 1, true) ~= nil end, 30)
    assert.matches("mapping_failed", lab:log("daemon"))
    local ok, out, err = lab:portman("lan", "status --json --admin-socket " .. sock)
    assert.is_true(ok, err)
    local st = cjson.decode(out)
    local m = st.services[1].mapping
    assert.equal("turn", m.method)
    assert.equal(Lab.WAN.server, m.external_ip)
    assert.same({service = "echo", method = "turn", external_ip = m.external_ip, external_port = m.external_port},
      {service = st.mappings[1].service, method = st.mappings[1].method, external_ip = st.mappings[1].external_ip,
       external_port = st.mappings[1].external_port})
    local reply
    ok, reply = peer("tcp", {relayed_ip = m.external_ip, relayed_port = m.external_port}, "via policy")
    assert.is_true(ok, reply .. lab:log("daemon"))
    assert.equal("echo via policy\n", reply)
    assert.falsy((out .. lab:log("daemon")):find(PASSWORD, 1, true))
    lab:sh("lan", "kill -TERM " .. pid)
    lab:wait_for("the daemon to exit", function() return not Lab.alive(pid) end, 30)
    assert.falsy(lab:log("daemon"):find("relay_close_failed", 1, true))
    -- deallocated: the relayed port takes no connection
    ok = peer("tcp", {relayed_ip = m.external_ip, relayed_port = m.external_port}, "gone")
    assert.is_false(ok)
  end)

  it("refuses a server whose realm is not --realm", function()
    local ok, out = lab:portman("lan", ("relay %d --server %s --user %s --password-file %s --allow %s --realm other --json")
      :format(UDP_PORT, server, USER, pwfile, Lab.WAN.server2))
    assert.is_false(ok)
    assert.equal("denied", cjson.decode(out).code)
  end)
end)
