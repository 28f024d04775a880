-- PCP map latency against miniupnpd in the lab (spec/lab: a LAN, an IGD
-- and a WAN namespace; needs root), each figure beside baselines measured
-- in the same run against the same router: portman's NAT-PMP (libnatpmp:
-- an address request, then the mapping), and natpmpc's (a process per
-- mapping, so its start-up is in its figure). Each op maps a fresh port
-- and deletes it again; min/median/max over the repetitions.
--
--     sudo LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH="build/?.so;;" lua5.4 bench/pcp.lua
package.path = "spec/?.lua;" .. package.path
local cjson = require "cjson"
local Lab = require "lab.lab"

local N = tonumber(os.getenv("N")) or 40
local ROUNDS = 3 -- the methods take turns, so a noisy moment hits each

local lab = Lab.new{nat = false}
local ok, err = pcall(function()
  lab:miniupnpd()
  local script = lab.dir .. "/bench.lua"
  local f = assert(io.open(script, "w"))
  f:write(([[
    local uv = require "luv"
    local nat = require "portman.nat"
    local portman = require "portman"
    local method, base, n = arg[1], tonumber(arg[2]), tonumber(arg[3])
    local times = {}
    portman.run(function()
      for i = 1, n do
        uv.update_time()
        local t0 = uv.hrtime()
        local m = assert(nat.map{internal_port = base + i, method = method, lifetime = 600})
        times[#times + 1] = (uv.hrtime() - t0) / 1e6
        assert(m:close())
      end
    end)
    io.write(require("cjson").encode(times))
  ]]))
  f:close()
  local root = assert(io.popen("pwd")):read("l")
  local env = ("cd '%s' && LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 %s")
    :format(root, script)
  local all = {pcp = {}, natpmp = {}, natpmpc = {}}
  local function add(list, more) for _, v in ipairs(more) do list[#list + 1] = v end end
  for round = 1, ROUNDS do
    local base = 44000 + round * 1000
    add(all.pcp, cjson.decode(lab:sh("lan", ("%s pcp %d %d"):format(env, base, N))))
    add(all.natpmp, cjson.decode(lab:sh("lan", ("%s natpmp %d %d"):format(env, base + 300, N))))
    -- natpmpc: one process per mapping, then one per delete (not timed)
    local out = lab:sh("lan", ([[for i in $(seq 1 %d); do p=$((%d + i)); t0=$(date +%%s%%N);
      natpmpc -g %s -a $p $p tcp 600 >/dev/null; t1=$(date +%%s%%N); echo $(( (t1 - t0) / 1000 ));
      natpmpc -g %s -a $p $p tcp 0 >/dev/null; done]]):format(N, base + 600, Lab.LAN.gateway, Lab.LAN.gateway))
    for us in out:gmatch("%d+") do all.natpmpc[#all.natpmpc + 1] = tonumber(us) / 1000 end
  end
  local function stats(t)
    table.sort(t)
    return t[1], t[(#t + 1) // 2], t[#t]
  end
  local _, base_med = stats(all.natpmp)
  print(("map latency against miniupnpd 2.x in the lab, ms (min / median / max over %d; ratio of medians to"
    .. " portman's NAT-PMP)"):format(N * ROUNDS))
  for _, row in ipairs{{"pcp", "PCP (portman, 1 round trip)"},
                       {"natpmp", "baseline: NAT-PMP (portman/libnatpmp, 2)"},
                       {"natpmpc", "baseline: natpmpc (a process, 2)"}} do
    local mn, med, mx = stats(all[row[1]])
    print(("  %-42s %7.3f / %7.3f / %7.3f   x%.2f"):format(row[2], mn, med, mx, med / base_med))
  end
end)
lab:close()
if not ok then error(err, 0) end
