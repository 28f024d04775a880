-- STUN against a real server (coturn) behind a real NAT (nftables), in
-- network namespaces this spec creates and deletes. Needs root.
local cjson = require "cjson"
local Lab = require "lab.lab"

local function namespaces()
  local p = io.popen("ip netns list")
  local s = p:read("a")
  p:close()
  return s
end

describe("STUN in the lab #lab", function()
  local cases = {
    {nat = "masquerade", mapping = "endpoint-independent", filtering = "address-and-port-dependent"},
    {nat = "masquerade fully-random", mapping = "address-and-port-dependent",
     filtering = "address-and-port-dependent"},
  }
  for _, case in ipairs(cases) do
    describe("behind nftables '" .. case.nat .. "'", function()
      local lab, server

      setup(function()
        lab = Lab.new{nat = case.nat}
        server = lab:stun_server()
      end)

      teardown(function()
        if lab then lab:close() end
      end)

      it("portman stun sees the NAT's WAN address, not the LAN one", function()
        local ok, out, err = lab:portman("lan", "stun --server " .. server .. " --json")
        assert.is_true(ok, err)
        local doc = cjson.decode(out)
        assert.equal(Lab.WAN.igd, doc.external_ip)
        assert.equal(Lab.LAN.client, doc.local_ip)
        assert.equal(server, doc.server)
        assert.is_true(doc.external_port >= 1 and doc.external_port <= 65535)
      end)

      it("nat-type reports " .. case.mapping .. " mapping, as turnutils_natdiscovery does", function()
        local ok, out, err = lab:portman("lan", "nat-type --server " .. server .. " --json")
        assert.is_true(ok, err)
        local doc = cjson.decode(out)
        local mapping, filtering, ref = lab:natdiscovery("lan", Lab.WAN.server)
        assert.equal(case.mapping, mapping, ref)
        assert.equal(case.filtering, filtering, ref)
        assert.same({mapping = mapping, filtering = filtering, external_ip = Lab.WAN.igd,
                     hairpinning = false}, doc)
      end)

      it("falls through a dead server to coturn", function()
        local ok, out, err = lab:portman("lan", ("stun --server %s:3478 --server %s --timeout 300 --json")
          :format(Lab.WAN.igd, server))
        assert.is_true(ok, err)
        assert.equal(server, cjson.decode(out).server)
      end)
    end)
  end

  it("deletes its namespaces on close, and when building fails", function()
    local lab = Lab.new{nat = false}
    local names = lab.ns
    assert.truthy(namespaces():find(names.igd, 1, true))
    lab:close()
    lab:close() -- idempotent
    for _, n in pairs(names) do assert.falsy(namespaces():find(n, 1, true)) end
    local ok, err = pcall(Lab.new, {nat = "no-such-statement"})
    assert.is_false(ok)
    assert.matches("nft", err)
    local ours = lab.id:match("^(.*%-)%d+$") -- "pmlab-PID-": any lab of this process
    assert.falsy(namespaces():find(ours, 1, true))
  end)
end)
