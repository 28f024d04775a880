--- A dnsmasq for specs: started on 127.0.0.1 (and ::1) at a free
-- unprivileged port, answering only from the records it is given, logging
-- every query it receives (--log-queries) so that specs can count them.

local M = {}
local serial = 0

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true
end

local function user()
  local p = io.popen("id -un")
  local name = p:read("l")
  p:close()
  return name
end

-- A UDP port free on both loopback addresses now (dnsmasq binds it next).
local function free_port() return require("helpers").free_port("udp") end

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

--- Starts a dnsmasq with extra arguments (a list: "--host-record=...").
-- @return a server: `port`, `address` ("127.0.0.1:PORT"), `count(qtype,
-- name)`, `log()`, `stop()` (idempotent)
function M.start(args)
  serial = serial + 1
  local dir = ("/tmp/pm-dnsmasq-%d-%d"):format(require("helpers").pid(), serial)
  assert(sh("rm -rf " .. dir .. " && mkdir -p " .. dir))
  local server = {dir = dir}
  local quoted = {}
  for i, a in ipairs(args or {}) do quoted[i] = "'" .. a:gsub("'", "'\\''") .. "'" end
  for _ = 1, 5 do -- the port may be taken between the probe and the bind
    local port = free_port()
    local cmd = table.concat({
      -- not under the sanitizer runtimes that the asan run preloads
      "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS",
      "dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --no-poll",
      "--port=" .. port, "--listen-address=127.0.0.1,::1 --bind-interfaces",
      "--pid-file=" .. dir .. "/pid", "--log-queries", "--log-facility=" .. dir .. "/log",
      "--user=" .. user(), table.concat(quoted, " "), "2>" .. dir .. "/stderr",
    }, " ")
    if sh(cmd) then
      server.port = port
      break
    end
  end
  assert(server.port, "dnsmasq did not start: " .. slurp(dir .. "/stderr"))
  server.pid = math.tointeger(tonumber(slurp(dir .. "/pid"):match("%d+")))
  server.address = "127.0.0.1:" .. server.port

  function server.log() return slurp(dir .. "/log") end

  --- How many queries of qtype ("A", "AAAA", "SRV") for name arrived.
  function server.count(qtype, name)
    local n = 0
    local want = ("query[%s] %s from"):format(qtype, name)
    for line in server.log():gmatch("[^\n]+") do
      if line:find(want, 1, true) then n = n + 1 end
    end
    return n
  end

  function server.stop()
    if server.pid then
      -- wait (2 s at most) until it is gone, so its port is free again
      sh(("kill %d 2>/dev/null; i=0; while kill -0 %d 2>/dev/null && [ $i -lt 200 ]; do "
          .. "sleep 0.01; i=$((i+1)); done"):format(server.pid, server.pid))
      server.pid = nil
    end
    sh("rm -rf " .. dir)
  end
  return server
end

return M
