-- PCP (RFC 6887) against a real router: miniupnpd in the lab's IGD
-- namespace (its enable_natpmp serves NAT-PMP and PCP on 5351), portman in
-- the LAN namespace, clients in the WAN one. Each mapping is checked
-- against the router's own view: upnpc -l and miniupnpd's nftables DNAT
-- rules. Needs root.
local cjson = require "cjson"
local helpers = require "helpers"
local Lab = require "lab.lab"
local write = helpers.write

local LAN, WAN = Lab.LAN, Lab.WAN
-- miniupnpd refuses these internal ports (the "denied" case); it grants
-- PCP lifetimes of at least min_lifetime (120 s by default: 2 s here, so
-- that renewals come within the spec; a config line like the rules)
local RULES = {"min_lifetime=2", "deny 1024-65535 192.168.77.0/24 7000-7099"}

local has = Lab.entry
local function wait_log(lab, name, pattern) return lab:wait_log(name, pattern) end

-- The nftables DNAT rule miniupnpd wrote for ext -> LAN client:int.
local function dnat_rule(ext, int, proto)
  return ("@nh,72,8 0x%x th dport %d dnat ip to %s:%d"):format(proto == "udp" and 17 or 6, ext, LAN.client, int)
end

-- Starts a daemon in the LAN namespace with the policy's text; returns
-- its pid and directory.
local function daemon(lab, name, policy_text)
  local dir = lab.dir .. "/" .. name
  lab:sh("lan", "mkdir -m 700 -p " .. dir)
  write(dir .. "/policy.lua", policy_text)
  local args = ("run %s/policy.lua --state-dir %s --admin-socket %s/a.sock"):format(dir, dir, dir)
  return lab:portman_daemon("lan", name, args), dir, args
end

local function stop(lab, pid)
  lab:sh("lan", "kill -TERM " .. pid)
  lab:wait_for("the daemon to exit", function() return not Lab.alive(pid) end, 30)
end

describe("PCP against miniupnpd #lab", function()
  local lab

  setup(function()
    lab = Lab.new{nat = false}
    lab:miniupnpd{rules = RULES}
  end)

  teardown(function()
    if lab then lab:close() end
  end)

  for _, proto in ipairs{"tcp", "udp"} do
    it("maps " .. proto .. ": the router's list and its nftables rules agree; another process unmaps", function()
      local port = proto == "tcp" and 43100 or 43110
      local ok, out, err = lab:portman("lan", ("map %d --external %d --proto %s --method pcp --lifetime 600 --json")
        :format(port, port + 1, proto))
      assert.is_true(ok, err)
      local m = cjson.decode(out)
      assert.same({method = "pcp", external_ip = WAN.igd, external_port = port + 1, internal_ip = LAN.client,
                   internal_port = port, proto = proto}, {method = m.method, external_ip = m.external_ip,
                   external_port = m.external_port, internal_ip = m.internal_ip, internal_port = m.internal_port,
                   proto = m.proto})
      assert.is_true(m.lifetime > 0 and m.lifetime <= 600)
      local list, raw = lab:upnpc_list("lan")
      local e = has(list, port + 1, proto)
      assert.truthy(e, raw)
      -- miniupnpd names a PCP entry by its nonce
      assert.same({LAN.client, port}, {e.internal_ip, e.internal_port})
      assert.matches("^PCP MAP %x+$", e.description)
      assert.truthy(lab:upnp_rules():find(dnat_rule(port + 1, port, proto), 1, true), lab:upnp_rules())
      -- `portman unmap`, another process, holds the same nonce: the router lets it delete
      ok, _, err = lab:portman("lan", ("unmap %d --internal %d --proto %s --method pcp"):format(port + 1, port, proto))
      assert.is_true(ok, err)
      assert.falsy(has(lab:upnpc_list("lan"), port + 1, proto))
      assert.falsy(lab:upnp_rules():find(dnat_rule(port + 1, port, proto), 1, true))
    end)
  end

  it("gets another external port when another client holds the one suggested", function()
    lab:sh("lan", "timeout 20 upnpc -a 192.168.77.9 43200 43200 TCP 600")
    local ok, out, err = lab:portman("lan", "map 43201 --external 43200 --method pcp --json")
    assert.is_true(ok, err)
    local m = cjson.decode(out)
    assert.are_not.equal(43200, m.external_port)
    local list, raw = lab:upnpc_list("lan")
    assert.equal("192.168.77.9", has(list, 43200).internal_ip, raw)
    assert.same({LAN.client, 43201}, {has(list, m.external_port).internal_ip, has(list, m.external_port).internal_port})
    assert.is_true(lab:portman("lan", ("unmap %d --internal 43201 --method pcp"):format(m.external_port)))
    -- another program's entry: only --force deletes it
    assert.is_true(lab:portman("lan", "unmap 43200 --method upnp --force"))
  end)

  it("reports denied when the router's permission rules refuse", function()
    local ok, out, err = lab:portman("lan", "map 7000 --method pcp")
    assert.is_false(ok, out)
    assert.matches("^portman map: denied: .*NOT_AUTHORIZED", err)
    assert.falsy(has(lab:upnpc_list("lan"), 7000))
  end)

  it("a nonce it does not hold cannot delete a PCP mapping", function()
    assert.is_true(lab:portman("lan", "map 43300 --method pcp --lifetime 600"))
    local ok, _, err = lab:portman("lan", "unmap 43300 --method pcp --nonce 000000000000000000000000")
    assert.is_false(ok)
    assert.matches("denied: .*NOT_AUTHORIZED", err)
    assert.truthy(has(lab:upnpc_list("lan"), 43300))
    assert.is_true(lab:portman("lan", "unmap 43300 --method pcp"))
    assert.falsy(has(lab:upnpc_list("lan"), 43300))
  end)

  it("a daemon maps its service with pcp: a WAN client reaches the LAN listener; SIGTERM deletes", function()
    local pid, dir = daemon(lab, "fwd", [[return {services = {{name = "web", port = 43400, check = false,
      map = {method = "pcp", lifetime = 600},
      handler = function(c) c:write("hello over PCP\n", function() c:close() end) end}}}]])
    wait_log(lab, "fwd", "mapping_added")
    assert.truthy(lab:upnp_rules():find(dnat_rule(43400, 43400), 1, true), lab:upnp_rules())
    local reply = lab:sh("wan", ("timeout 10 bash -c 'exec 3<>/dev/tcp/%s/43400; head -n 1 <&3'"):format(WAN.igd))
    assert.equal("hello over PCP\n", reply)
    local saved = cjson.decode(lab:sh("lan", "cat " .. dir .. "/state.json"))
    assert.same({"pcp", 43400}, {saved.mappings[1].method, saved.mappings[1].external_port})
    stop(lab, pid)
    assert.falsy(has(lab:upnpc_list("lan"), 43400))
    assert.falsy(lab:upnp_rules():find("dport 43400", 1, true))
    assert.is_false(lab:try("wan", ("timeout 3 bash -c 'exec 3<>/dev/tcp/%s/43400'"):format(WAN.igd)))
  end)

  it("renews at half the lifetime and re-creates the mapping after miniupnpd restarts (epoch)", function()
    local pid = daemon(lab, "renew", [[return {services = {
      {name = "viapcp", port = 43500, check = false, map = {method = "pcp", lifetime = 4}}}}]])
    wait_log(lab, "renew", "mapping_added")
    wait_log(lab, "renew", "mapping_renewed external_port=43500")
    assert.truthy(has(lab:upnpc_list("lan"), 43500))
    -- the router restarts: its rules are gone, its epoch starts again
    lab:stop_miniupnpd()
    assert.falsy(lab:upnp_rules():find("dport 43500", 1, true))
    lab:miniupnpd{rules = RULES}
    wait_log(lab, "renew", "mapping_recreated external_port=43500")
    lab:wait_for("the mapping back", function() return has(lab:upnpc_list("lan"), 43500) ~= nil end, 30)
    assert.truthy(lab:upnp_rules():find(dnat_rule(43500, 43500), 1, true))
    stop(lab, pid)
    assert.falsy(has(lab:upnpc_list("lan"), 43500))
  end)

  it("kill -9, then a fresh start deletes the PCP mapping the killed run left", function()
    local pid, dir, args = daemon(lab, "crash1", [[return {services = {
      {name = "b", port = 43600, proto = "udp", check = false, map = {method = "pcp", lifetime = 600}}}}]])
    wait_log(lab, "crash1", "mapping_added")
    lab:crash_after_saving("lan", dir, 1, pid)
    assert.truthy(has(lab:upnpc_list("lan"), 43600, "udp"))
    write(dir .. "/policy.lua", [[return {services = {{name = "b", port = 43600, proto = "udp", check = false}}}]])
    local pid2 = lab:portman_daemon("lan", "crash2", args)
    wait_log(lab, "crash2", "daemon_started")
    assert.matches("orphan_mapping_deleted external_port=43600", lab:log("crash2"))
    assert.falsy(has(lab:upnpc_list("lan"), 43600, "udp"))
    stop(lab, pid2)
  end)

  it("auto in a daemon: the router's entry is the winner's, which deletes it on SIGTERM", function()
    local pid, _, _ = daemon(lab, "auto", [[return {services = {
      {name = "web", port = 43700, check = false, map = {method = "auto", lifetime = 600}}}}]])
    wait_log(lab, "auto", "mapping_added")
    local method = lab:log("auto"):match("mapping_added[^\n]-method=(%a+)")
    assert.truthy(method == "pcp" or method == "upnp", lab:log("auto"))
    -- both protocols answered; the entry ends with the winner's description
    local label = method == "pcp" and "^PCP MAP" or "^portman"
    lab:wait_for("the entry to be the winner's", function()
      local e = has(lab:upnpc_list("lan"), 43700)
      return e ~= nil and e.description:match(label) ~= nil
    end, 30)
    stop(lab, pid)
    assert.falsy(has(lab:upnpc_list("lan"), 43700))
    assert.falsy(lab:upnp_rules():find("dport 43700", 1, true))
  end)
end)
