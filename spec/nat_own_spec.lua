-- Router mappings without the lab: reading a router's list entry by entry
-- (a later entry that fails leaves what was read), against an IGD on
-- loopback reached through its description URL (no SSDP); and the checks
-- on a gateway kept from an earlier run.
local cjson = require "cjson"
local helpers = require "helpers"

describe("nat: the router's list, entry by entry", function()
  local uv = require "luv"
  local nat = require "portman.nat"
  local http_server = require "support.http_server"
  local soap = require "support.soap"
  local ST = "urn:schemas-upnp-org:service:WANIPConnection:1"
  local http = soap.http

  local DESC = '<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device>'
    .. "<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><deviceList><device>"
    .. "<deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><deviceList><device>"
    .. "<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><serviceList><service>"
    .. "<serviceType>" .. ST .. "</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>"
    .. "<controlURL>/ctl</controlURL><eventSubURL>/evt</eventSubURL><SCPDURL>/scpd.xml</SCPDURL>"
    .. "</service></serviceList></device></deviceList></device></deviceList></device></root>"

  local FAULT_713 = soap.fault(713, "SpecifiedArrayIndexInvalid")

  local function entry(i)
    local fields = {{"NewRemoteHost", ""}, {"NewExternalPort", 30000 + i}, {"NewProtocol", "TCP"},
      {"NewInternalPort", 8000 + i}, {"NewInternalClient", "192.168.1.10"}, {"NewEnabled", "1"},
      {"NewPortMappingDescription", "app " .. i}, {"NewLeaseDuration", "600"}}
    return soap.answer(ST, "GetGenericPortMappingEntry", fields)
  end

  -- An IGD with `n` entries whose entry `stall` (if any) is never answered.
  local function igd(n, stall)
    return http_server.start(function(req)
      if req.path == "/desc.xml" then return {raw = http(200, DESC)} end
      local i = tonumber(req.body:match("<NewPortMappingIndex>(%d+)<"))
      if i == stall then return {hang = true} end
      if i and i < n then return {raw = entry(i)} end
      return {raw = FAULT_713}
    end)
  end

  local function expected(n)
    local list = {}
    for i = 0, n - 1 do
      list[#list + 1] = {external_port = 30000 + i, internal_port = 8000 + i, internal_ip = "192.168.1.10",
                         proto = "tcp", description = "app " .. i, lifetime = 600, enabled = true}
    end
    return list
  end

  after_each(function()
    nat.gateway_url = nil
    nat.forget()
  end)

  it("reads every entry, one request each", function()
    local list, err, n = helpers.loop(function()
      local s = igd(70)
      nat.gateway_url = ("http://127.0.0.1:%d/desc.xml"):format(s.port)
      local list, err = nat.mappings{timeout = 1000}
      s.close()
      return list, err, s.requests
    end)
    assert.is_nil(err)
    assert.same(expected(70), list)
    assert.equal(72, n) -- the description, 70 entries, the end
  end)

  -- nat.mappings against igd(n, stall), 300 ms a request
  local function list_stalled(n, stall)
    return helpers.loop(function()
      local s = igd(n, stall)
      nat.gateway_url = ("http://127.0.0.1:%d/desc.xml"):format(s.port)
      local list, err, code = nat.mappings{timeout = 300}
      s.close()
      return list, err, code
    end)
  end

  it("returns what it read when a later entry gets no answer, with the failure", function()
    local list, err, code = list_stalled(5, 3)
    assert.same(expected(3), list)
    assert.equal("timeout", code)
    assert.matches("^timeout: ", err)
  end)

  it("fails when not even the first entry is read", function()
    local list, err, code = list_stalled(5, 0)
    assert.is_nil(list)
    assert.equal("timeout", code, err)
  end)

  it("portman mappings prints what it read, says it is partial and exits 1", function()
    local function cli(args)
      return helpers.loop(function()
        local s = igd(5, 2)
        local out, done = {}, false
        local stdout = uv.new_pipe()
        local status
        local proc = uv.spawn(helpers.lua, {args = {helpers.root .. "/bin/portman", "mappings", "--gateway-url",
          ("http://127.0.0.1:%d/desc.xml"):format(s.port), "--timeout", "300", table.unpack(args)},
          stdio = {nil, stdout, 2}}, function(code)
          status, done = code, true
        end)
        stdout:read_start(function(_, chunk) if chunk then out[#out + 1] = chunk end end)
        while not done do require("portman.async").sleep(20) end
        proc:close()
        stdout:close()
        s.close()
        return status, table.concat(out)
      end)
    end
    local status, out = cli({"--json"})
    assert.equal(1, status)
    local doc = cjson.decode(out)
    assert.same({true, "timeout", 2}, {doc.partial, doc.code, #doc.mappings})
    assert.matches("^timeout: ", doc.error)
    status, out = cli({})
    assert.equal(1, status)
    assert.matches("tcp%s+30001%s+192%.168%.1%.10:8001", out)
    assert.matches("\npartial: 2 entries read, then timeout: [^\n]+\n$", out)
  end)
  it("manager: an orphan it could not delete stays in the state file until the retry timer deletes it", function()
    local manager = require "portman.manager"
    local json = require "portman.json"
    local async = require "portman.async"
    local function answer(action, fields) return soap.answer(ST, action, fields) end
    local FAULT_714 = soap.fault(714, "NoSuchEntryInArray")
    local dir = helpers.tmpdir()
    local file = dir .. "/state.json"
    local function saved() return #json.decode(assert(helpers.read(file))).mappings end
    local old_retry = manager.ORPHAN_RETRY
    local kept, refused, deleted = helpers.loop(function()
      local broken, refused, deleted = true, 0, false
      local s = http_server.start(function(req)
        if req.path == "/desc.xml" then return {raw = http(200, DESC)} end
        local action = (req.headers.soapaction or ""):match("#(%w+)")
        if broken then
          refused = refused + 1
          return {raw = http(500, "")}
        end
        if action == "GetSpecificPortMappingEntry" then
          if deleted then return {raw = FAULT_714} end
          return {raw = answer(action, {{"NewInternalPort", "8080"}, {"NewInternalClient", "127.0.0.1"},
            {"NewEnabled", "1"}, {"NewPortMappingDescription", "portman web"}, {"NewLeaseDuration", "600"}})}
        elseif action == "DeletePortMapping" then
          deleted = true
          return {raw = answer(action, {})}
        end
        return {raw = http(500, "")}
      end)
      nat.gateway_url = ("http://127.0.0.1:%d/desc.xml"):format(s.port)
      manager.ORPHAN_RETRY = 50
      local m = manager.new{state_file = file}
      m:keep_orphans({{service = "web", method = "upnp", external_port = 18080, internal_port = 8080,
                       internal_ip = "127.0.0.1", proto = "tcp", description = "portman web"}})
      -- the router refuses a few tries: the record stays
      while refused < 3 do async.sleep(20) end
      local kept = saved()
      broken = false
      while saved() > 0 do async.sleep(20) end
      async.await(function(cb) m:shutdown(0, cb) end)
      s.close()
      return kept, refused, deleted
    end)
    manager.ORPHAN_RETRY = old_retry
    os.remove(file)
    os.remove(dir)
    assert.equal(1, kept)
    assert.is_true(refused >= 3)
    assert.is_true(deleted)
  end)
end)

describe("nat: a gateway kept from an earlier run", function()
  local nat = require "portman.nat"
  local ST = "urn:schemas-upnp-org:service:WANIPConnection:2"

  after_each(function() nat.forget() end)

  it("is used when it is a LAN router's, and known() gives it back", function()
    local t = {upnp = {control_url = "http://192.168.1.1:5000/ctl/IPConn", service_type = ST, lan_addr = "192.168.1.20"},
               natpmp = {gateway = "192.168.1.1", supported = false}, preferred = "upnp"}
    assert.is_true(nat.use_known(t))
    local known, changed = nat.known()
    assert.same(t, known)
    assert.is_false(changed)
  end)

  local BAD = {
    {"not a table", "x"},
    {"a public router", {upnp = {control_url = "http://11.22.33.1:80/ctl", service_type = ST}}},
    {"loopback", {upnp = {control_url = "http://127.0.0.1:80/ctl", service_type = ST}}},
    {"a host name", {upnp = {control_url = "http://router.lan/ctl", service_type = ST}}},
    {"https", {upnp = {control_url = "https://192.168.1.1/ctl", service_type = ST}}},
    {"no path", {upnp = {control_url = "http://192.168.1.1:80", service_type = ST}}},
    {"port 0", {upnp = {control_url = "http://192.168.1.1:0/ctl", service_type = ST}}},
    {"a space in the URL", {upnp = {control_url = "http://192.168.1.1/c tl", service_type = ST}}},
    {"another service", {upnp = {control_url = "http://192.168.1.1/ctl",
                                 service_type = "urn:schemas-upnp-org:service:Layer3Forwarding:1"}}},
    {"a bad LAN address", {upnp = {control_url = "http://192.168.1.1/ctl", service_type = ST, lan_addr = "x"}}},
    {"an unknown method", {preferred = "carrier-pigeon"}},
    {"a public NAT-PMP gateway", {natpmp = {gateway = "8.8.8.8", supported = true}}},
    {"a URL of 300 bytes", {upnp = {control_url = "http://192.168.1.1/" .. ("a"):rep(280), service_type = ST}}},
  }
  for _, c in ipairs(BAD) do
    it("is refused, all of it, when malformed (" .. c[1] .. ")", function()
      local ok, err, code = nat.use_known(c[2])
      assert.is_nil(ok)
      assert.equal("protocol", code)
      assert.matches("^protocol: known gateway: ", err)
      local known = nat.known()
      assert.same({}, known) -- nothing of it was used
    end)
  end
end)
