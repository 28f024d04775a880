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
  local lua = os.getenv("PORTMAN_LUA") or "lua5.4"
  local function portman(root, args)
    return ("cd %s && %s bin/portman %s >/dev/null"):format(root, lua, args)
  end
  local here = uv.cwd()
  local before = os.getenv("PORTMAN_NAT_BEFORE")
  local client = Lab.LAN.client
  -- the cache file the timed runs use
  assert(lab:try("lan", portman(here, "map 45000 --method upnp --state-dir " .. dir)))
  local cases = {
    {"portman help map (start, no router)", portman(here, "help map")},
    {"portman map --method upnp, gateway known", function(i)
      return portman(here, ("map %d --method upnp --lifetime 600 --state-dir %s"):format(45100 + i, dir))
    end},
    {"upnpc -u URL -a (baseline)", function(i)
      return ("upnpc -u %s -e bench -a %s %d %d TCP 600 >/dev/null"):format(desc, client, 45200 + i, 45200 + i)
    end},
    {"portman map --method natpmp", function(i)
      return portman(here, ("map %d --method natpmp --lifetime 600 --state-dir %s"):format(45300 + i, dir))
    end},
    {"natpmpc -a (baseline)", function(i)
      return ("natpmpc -g %s -a %d %d tcp 600 >/dev/null"):format(Lab.LAN.gateway, 45400 + i, 45400 + i)
    end},
    {"portman map --method auto, gateway known", function(i)
      return portman(here, ("map %d --method auto --lifetime 600 --state-dir %s"):format(45500 + i, dir))
    end},
    {"portman map --method upnp, nothing known", function(i)
      return portman(here, ("map %d --method upnp --lifetime 600 --state-dir %s/fresh%d"):format(45600 + i, dir, i))
    end},
  }
  if before then
    cases[#cases + 1] = {"before (" .. before .. "): portman map --method upnp", function(i)
      return ("cd %s && XDG_CACHE_HOME=%s/old %s bin/portman map %d --method upnp --lifetime 600 >/dev/null")
        :format(before, dir, lua, 45700 + i)
    end}
  end
  local times = {}
  for i = 1, ROUNDS do
    for k, c in ipairs(cases) do
      local cmd = type(c[2]) == "function" and c[2](i) or c[2]
      local t0 = uv.hrtime()
      local done, out = lab:try("lan", cmd)
      local ms = (uv.hrtime() - t0) / 1e6
      if not done then error(c[1] .. " failed: " .. out) end
      times[k] = times[k] or {}
      times[k][#times[k] + 1] = ms
    end
  end
  print(("router mapping latency, lab miniupnpd, %d rounds (ms; each includes `ip netns exec`)"):format(ROUNDS))
  print(("%-52s %8s %8s %8s"):format("", "min", "median", "max"))
  for k, c in ipairs(cases) do
    local t = times[k]
    table.sort(t)
    print(("%-52s %8.1f %8.1f %8.1f"):format(c[1], t[1], t[(#t + 1) // 2], t[#t]))
  end
end)
lab:close()
if not ok then
  print("nat bench: " .. tostring(err))
  os.exit(1)
end
