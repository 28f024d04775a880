-- The mapping metrics against a real router: a daemon in the lab's LAN
-- namespace maps two services on miniupnpd (UPnP IGD and NAT-PMP) with
-- short lifetimes; its /metrics (on loopback inside the namespace) then
-- shows each mapping up, its lifetime left and the renewals by method,
-- and promtool accepts the text. Needs root.
local helpers = require "helpers"
local Lab = require "lab.lab"
local write = helpers.write

local HTTP = "127.0.0.1:9207" -- inside the LAN namespace: never the host's

-- The value of the sample line that starts with prefix (nil when none).
local function sample(text, prefix)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #prefix + 1) == prefix .. " " then return tonumber(line:sub(#prefix + 2)) end
  end
end

describe("mapping metrics against miniupnpd #lab", function()
  local lab

  setup(function()
    lab = Lab.new{nat = false}
    lab:miniupnpd{}
  end)

  teardown(function()
    if lab then lab:close() end
  end)

  it("shows each mapping up, its lifetime left and its renewals by method", function()
    local dir = lab.dir .. "/metrics"
    lab:sh("lan", "mkdir -m 700 -p " .. dir)
    local policy = dir .. "/policy.lua"
    write(policy, ([[return {http = %q, services = {
      {name = "viaupnp", port = 42110, check = false, map = {method = "upnp", lifetime = 4}},
      {name = "viapmp", port = 42120, check = false, map = {method = "natpmp", lifetime = 4}}}}]]):format(HTTP))
    local pid = lab:portman_daemon("lan", "metrics", ("run %s --state-dir %s --admin-socket %s/a.sock")
      :format(policy, dir, dir))
    local text = ""
    local function scrape()
      local ok, out = lab:try("lan", "curl -s --max-time 5 http://" .. HTTP .. "/metrics")
      text = ok and out or ""
      return text
    end
    -- renewed at half the lifetime: both methods counted
    lab:wait_for("renewals in /metrics", function()
      scrape()
      return (sample(text, 'portman_mapping_renewals_total{method="upnp",result="renewed"}') or 0) >= 1
        and (sample(text, 'portman_mapping_renewals_total{method="natpmp",result="renewed"}') or 0) >= 1
    end, 30)
    assert.equal(1, sample(text, 'portman_mapping_up{service="viaupnp",method="upnp"}'))
    assert.equal(1, sample(text, 'portman_mapping_up{service="viapmp",method="natpmp"}'))
    for _, key in ipairs({'{service="viaupnp",method="upnp"}', '{service="viapmp",method="natpmp"}'}) do
      local left = sample(text, "portman_mapping_lifetime_remaining_seconds" .. key)
      assert.is_true(left ~= nil and left >= 0 and left <= 4, key .. ": " .. tostring(left))
    end
    local path = dir .. "/metrics.txt"
    write(path, text)
    local ok, out = lab:try("lan", "promtool check metrics < " .. path .. " 2>&1")
    assert.is_true(ok, out)
    lab:sh("lan", "kill -TERM " .. pid)
    lab:wait_for("the daemon to exit", function() return not Lab.alive(pid) end, 30)
  end)
end)
