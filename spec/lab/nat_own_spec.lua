-- Router mappings that are portman's own, against miniupnpd in the lab:
-- another program's mapping on the same host is never taken or deleted,
-- a long router list is read whole, a known gateway is used without SSDP
-- discovery, and an orphan the router could not be told about is kept.
-- Needs root.
local cjson = require "cjson"
local helpers = require "helpers"
local Lab = require "lab.lab"
local write = helpers.write

local LAN = Lab.LAN

local has = Lab.entry
local function wait_log(lab, name, pattern) return lab:wait_log(name, pattern) end

describe("portman's own router mappings against miniupnpd #lab", function()
  local lab, desc_url

  -- M-SEARCH packets the router got from the LAN so far
  local function searches()
    local out = lab:sh("igd", "nft list chain inet pm_ssdp count")
    return tonumber(out:match("counter packets (%d+)"))
  end

  setup(function()
    lab = Lab.new{nat = false}
    lab:miniupnpd{}
    lab:nft("igd", [[
table inet pm_ssdp {
  chain count {
    type filter hook prerouting priority -300; policy accept;
    iifname "lan0" udp dport 1900 counter
  }
}
]])
    desc_url = lab:sh("lan", "timeout 20 upnpc -s"):match("desc: (http://%S+)")
    assert(desc_url, "no IGD description URL")
  end)

  teardown(function()
    if lab then lab:close() end
  end)

  -- another program of this host (upnpc, as a client like portman) holds ext
  local function other_app(ext, int)
    lab:sh("lan", ("timeout 20 upnpc -u %s -e other-app -a %s %d %d TCP 600"):format(desc_url, LAN.client, int, ext))
    local e = has(lab:upnpc_list("lan"), ext)
    assert.same({LAN.client, int, "other-app"}, {e.internal_ip, e.internal_port, e.description})
  end

  for _, method in ipairs{"upnp", "natpmp", "auto"} do
    it("never takes another program's mapping on the same host (" .. method .. ")", function()
      local ext = ({upnp = 19000, natpmp = 19100, auto = 19200})[method]
      other_app(ext, 9000)
      local ok, out, err = lab:portman("lan", ("map 8092 --external %d --method %s --lifetime 600 --json")
        :format(ext, method))
      assert.is_true(ok, err)
      local m = cjson.decode(out)
      assert.are_not.equal(ext, m.external_port)
      local list, raw = lab:upnpc_list("lan")
      -- the other program's mapping is as it was
      local theirs = has(list, ext)
      assert.truthy(theirs, raw)
      assert.same({LAN.client, 9000, "other-app"}, {theirs.internal_ip, theirs.internal_port, theirs.description})
      -- the port portman reports is the one the router really gave it
      local mine = has(list, m.external_port)
      assert.truthy(mine, raw)
      assert.same({LAN.client, 8092}, {mine.internal_ip, mine.internal_port})
      -- auto left nothing of the method that lost: one entry for 8092
      local n = 0
      for _, e in ipairs(list) do if e.internal_port == 8092 then n = n + 1 end end
      assert.equal(1, n, raw)
      assert.is_true(lab:portman("lan", ("unmap %d --method %s --internal 8092"):format(m.external_port, m.method)))
      list, raw = lab:upnpc_list("lan")
      assert.falsy(has(list, m.external_port), raw)
      assert.truthy(has(list, ext), raw)
      lab:sh("lan", ("timeout 20 upnpc -u %s -d %d TCP"):format(desc_url, ext))
    end)
  end

  it("maps the same port again over its own entry, and unmap leaves another program's alone", function()
    local ok, out, err = lab:portman("lan", "map 8093 --external 19300 --method upnp --json")
    assert.is_true(ok, err)
    assert.equal(19300, cjson.decode(out).external_port)
    ok, out, err = lab:portman("lan", "map 8093 --external 19300 --method upnp --json")
    assert.is_true(ok, err)
    assert.equal(19300, cjson.decode(out).external_port) -- its own entry: refreshed, not moved
    other_app(19301, 9001)
    ok, out, err = lab:portman("lan", "unmap 19301 --method upnp")
    assert.is_false(ok, out)
    assert.matches("^portman unmap: conflict: external port 19301/tcp is held by 192%.168%.77%.2:9001", err)
    assert.truthy(has(lab:upnpc_list("lan"), 19301))
    assert.is_true(lab:portman("lan", "unmap 19301 --method upnp --force"))
    assert.is_true(lab:portman("lan", "unmap 19300 --method upnp"))
    local list, raw = lab:upnpc_list("lan")
    assert.falsy(has(list, 19301), raw)
    assert.falsy(has(list, 19300), raw)
  end)

  it("lists a router holding 60 mappings completely, as upnpc -l does", function()
    for i = 0, 59 do
      lab:sh("lan", ("timeout 20 upnpc -u %s -e bulk-%d -a %s %d %d UDP 600 >/dev/null"):format(desc_url, i,
        LAN.client, 30000 + i, 30000 + i))
    end
    local theirs = lab:upnpc_list("lan")
    assert.is_true(#theirs >= 60)
    local ok, out, err = lab:portman("lan", "mappings --json")
    assert.is_true(ok, err)
    local doc = cjson.decode(out)
    assert.is_false(doc.partial)
    assert.equal(#theirs, #doc.mappings)
    for _, e in ipairs(theirs) do
      local mine = has(doc.mappings, e.external_port, e.proto)
      assert.truthy(mine, "missing " .. e.external_port)
      assert.same({e.internal_ip, e.internal_port, e.description}, {mine.internal_ip, mine.internal_port,
                   mine.description})
    end
    for i = 0, 59 do
      lab:sh("lan", ("timeout 20 upnpc -u %s -d %d UDP >/dev/null"):format(desc_url, 30000 + i))
    end
  end)

  it("a second map with a known gateway sends no SSDP search; a corrupt cache is ignored", function()
    local dir = lab.dir .. "/known"
    lab:sh("lan", "mkdir -m 700 -p " .. dir)
    local before = searches()
    local ok, out, err = lab:portman("lan", ("map 8094 --method upnp --state-dir %s --json"):format(dir))
    assert.is_true(ok, err)
    assert.equal(8094, cjson.decode(out).external_port)
    local after_first = searches()
    assert.is_true(after_first > before) -- nothing known yet: it searched
    local cache = cjson.decode(lab:sh("lan", "cat " .. dir .. "/gateway.json"))
    assert.matches("^http://192%.168%.77%.1:%d+/", cache.upnp.control_url)
    ok, out, err = lab:portman("lan", ("map 8094 --method upnp --state-dir %s --json"):format(dir))
    assert.is_true(ok, err)
    assert.equal(8094, cjson.decode(out).external_port)
    assert.equal(after_first, searches())
    -- the given description URL: no search either
    ok, out, err = lab:portman("lan", ("mappings --gateway-url %s --json"):format(desc_url))
    assert.is_true(ok, err)
    assert.truthy(has(cjson.decode(out).mappings, 8094), out)
    assert.equal(after_first, searches())
    -- a corrupt cache, or one pointing outside the LAN: a log line, then discovery
    for _, bad in ipairs{'{"upnp": {"control_url": 7', cjson.encode({upnp = {control_url = "http://11.22.33.1:80/ctl",
                         service_type = "urn:schemas-upnp-org:service:WANIPConnection:1"}})} do
      write(dir .. "/gateway.json", bad)
      local n = searches()
      ok, out, err = lab:portman("lan", ("unmap 8094 --method upnp --internal 8094 --state-dir %s"):format(dir))
      assert.is_true(ok, err)
      assert.matches("^deleted tcp 8094", out)
      assert.matches("gateway_cache_ignored", err)
      assert.is_true(searches() > n)
      assert.is_true(lab:portman("lan", ("map 8094 --method upnp --state-dir %s"):format(dir)))
    end
    assert.is_true(lab:portman("lan", "unmap 8094 --method upnp"))
  end)

  it("an orphan that could not be deleted stays in the state file and is deleted at the next start", function()
    local dir = lab.dir .. "/orphan"
    lab:sh("lan", "mkdir -m 700 -p " .. dir)
    local policy = dir .. "/policy.lua"
    write(policy, [[return {services = {
      {name = "a", port = 42130, check = false, map = {method = "upnp", lifetime = 600}}}}]])
    local args = ("run %s --state-dir %s --admin-socket %s/a.sock"):format(policy, dir, dir)
    local function saved_ports()
      local ports = {}
      for _, r in ipairs(assert(lab:saved_mappings("lan", dir))) do ports[#ports + 1] = r.external_port end
      return ports
    end
    local pid = lab:portman_daemon("lan", "orphan1", args)
    wait_log(lab, "orphan1", "mapping_added")
    lab:crash_after_saving("lan", dir, 1, pid)
    -- the router does not answer the LAN while the next run starts
    lab:nft("igd", [[
table inet pm_block {
  chain input {
    type filter hook input priority -10; policy accept;
    iifname "lan0" drop
  }
}
]])
    write(policy, [[return {services = {{name = "a", port = 42130, check = false}}}]])
    pid = lab:portman_daemon("lan", "orphan2", args)
    wait_log(lab, "orphan2", "daemon_started")
    assert.matches("orphan_mapping_left[^\n]*external_port=42130", lab:log("orphan2"))
    assert.same({42130}, saved_ports())
    lab:sh("lan", "kill -TERM " .. pid)
    lab:wait_for("the daemon to exit", function() return not Lab.alive(pid) end, 30)
    assert.same({42130}, saved_ports()) -- a clean stop keeps it too
    lab:sh("igd", "nft delete table inet pm_block")
    assert.truthy(has(lab:upnpc_list("lan"), 42130))
    pid = lab:portman_daemon("lan", "orphan3", args)
    wait_log(lab, "orphan3", "daemon_started")
    assert.matches("orphan_mapping_deleted[^\n]*external_port=42130", lab:log("orphan3"))
    assert.falsy(has(lab:upnpc_list("lan"), 42130))
    assert.same({}, saved_ports())
    lab:sh("lan", "kill -TERM " .. pid)
    lab:wait_for("the daemon to exit", function() return not Lab.alive(pid) end, 30)
  end)
end)
