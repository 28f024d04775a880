-- Router mapping latency (run by `make bench`, or on its own from the checkout:
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 bench/nat.lua
-- as root). It builds the spec lab (spec/lab/lab.lua: LAN, IGD and WAN
-- network namespaces, miniupnpd in the IGD one), so nothing leaves it.
--
-- One `portman map` per method with the gateway known (the cache file a
-- first run wrote: no SSDP discovery), wall time of the whole command,
-- beside in the same run: miniupnpc's `upnpc -u URL -a` (the IGD's URL
-- given: no discovery either), libnatpmp's `natpmpc -a`, the command line
-- starting and doing nothing (`portman help map`), and `portman map` with
-- nothing known (discovery each time). With PORTMAN_NAT_BEFORE=DIR (another
-- checkout, built), its `portman map --method upnp` too.
-- min / median / max over ROUNDS runs, interleaved.
local ROUNDS = tonumber(os.getenv("PORTMAN_NAT_ROUNDS") or "") or 15

package.path = "spec/?.lua;" .. package.path
local uv = require "luv"
local helpers = require "helpers"

local sh = helpers.output

local function stats(t)
  table.sort(t)
  return t[1], t[(#t + 1) // 2], t[#t]
end

-- Inside the LAN namespace: the timed runs (no `ip netns exec` in them).
local function inner()
  local nat = require "portman.nat"
  local portman = require "portman"
  local desc, dir, gw = os.getenv("PM_DESC"), os.getenv("PM_DIR"), os.getenv("PM_GW")
  local before = os.getenv("PORTMAN_NAT_BEFORE")
  local lua = os.getenv("PORTMAN_LUA") or "lua5.4"
  local client = os.getenv("PM_CLIENT")
  local function cli(args) return ("%s bin/portman %s >/dev/null 2>&1"):format(lua, args) end
  -- the cache file the timed runs use
  assert(os.execute(cli("map 45000 --method upnp --state-dir " .. dir)))
  local known = assert(sh("cat " .. dir .. "/gateway.json"))
  local function in_process(method, port)
    return function()
      nat.forget()
      assert(nat.use_known(require("portman.json").decode(known)))
      local m, err = portman.run(function()
        local m, err = nat.map{internal_port = port, method = method, lifetime = 600}
        if m then m:detach() end -- no renewal timer: the loop ends
        return m, err
      end)
      assert(m, err)
    end
  end
  local cases = {
    {"portman help map (the CLI starting, no router)", function() return cli("help map") end},
    {"portman map --method upnp, gateway known", function(i)
      return cli(("map %d --method upnp --lifetime 600 --state-dir %s"):format(45100 + i, dir))
    end},
    {"  baseline: upnpc -u URL -a", function(i)
      return ("upnpc -u %s -e bench -a %s %d %d TCP 600 >/dev/null"):format(desc, client, 45200 + i, 45200 + i)
    end},
    {"portman map --method natpmp", function(i)
      return cli(("map %d --method natpmp --lifetime 600 --state-dir %s"):format(45300 + i, dir))
    end},
    {"  baseline: natpmpc -a", function(i)
      return ("natpmpc -g %s -a %d %d tcp 600 >/dev/null"):format(gw, 45400 + i, 45400 + i)
    end},
    {"portman map --method auto, gateway known", function(i)
      return cli(("map %d --method auto --lifetime 600 --state-dir %s"):format(45500 + i, dir))
    end},
    {"portman map --method upnp, nothing known (SSDP)", function(i)
      return cli(("map %d --method upnp --lifetime 600 --state-dir %s/fresh%d"):format(45600 + i, dir, i))
    end},
    {"nat.map upnp in process, gateway known", function(i) return in_process("upnp", 45800 + i) end},
    {"nat.map natpmp in process", function(i) return in_process("natpmp", 45900 + i) end},
  }
  if before then
    cases[#cases + 1] = {"before: portman map --method upnp (" .. before .. ")", function(i)
      return ("cd %s && XDG_CACHE_HOME=%s/old %s bin/portman map %d --method upnp --lifetime 600 >/dev/null 2>&1")
        :format(before, dir, lua, 45700 + i)
    end}
  end
  local times = {}
  for i = 1, ROUNDS do
    for k, c in ipairs(cases) do
      local what = c[2](i)
      local t0 = uv.hrtime()
      if type(what) == "function" then what() else assert(os.execute(what), c[1] .. " failed") end
      times[k] = times[k] or {}
      times[k][#times[k] + 1] = (uv.hrtime() - t0) / 1e6
    end
  end
  print(("router mapping latency, the lab's miniupnpd, %d rounds interleaved (ms)"):format(ROUNDS))
  print(("%-52s %8s %8s %8s"):format("", "min", "median", "max"))
  for k, c in ipairs(cases) do
    print(("%-52s %8.1f %8.1f %8.1f"):format(c[1], stats(times[k])))
  end
end

if os.getenv("PM_DIR") then return inner() end

local Lab = require "lab.lab"
if not Lab.is_root() then
  print("nat bench: the lab needs root (network namespaces)")
  os.exit(0)
end

local lab = Lab.new{nat = false}
local ok, err = pcall(function()
  lab:miniupnpd{}
  local desc = assert(lab:sh("lan", "timeout 20 upnpc -s"):match("desc: (http://%S+)"), "no IGD found")
  local dir = lab.dir .. "/bench"
  lab:sh("lan", "mkdir -m 700 -p " .. dir)
  local env = ("PM_DESC=%s PM_DIR=%s PM_GW=%s PM_CLIENT=%s PORTMAN_NAT_ROUNDS=%d"):format(desc, dir,
    Lab.LAN.gateway, Lab.LAN.client, ROUNDS)
  local out = lab:sh("lan", ("cd %s && %s LUA_PATH=%q LUA_CPATH=%q %s bench/nat.lua"):format(uv.cwd(), env,
    os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;;", os.getenv("LUA_CPATH") or "build/?.so;;",
    arg[-1] or "lua5.4"))
  io.write(out)
end)
lab:close()
if not ok then
  print("nat bench: " .. tostring(err))
  os.exit(1)
end
