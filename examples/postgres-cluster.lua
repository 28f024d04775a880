-- Three PostgreSQL instances on ports from a pool, each run and watched
-- by portman: on first start `initdb` makes its data directory (the
-- service's own {state} directory under --state-dir, owned by postgres,
-- 0700), then `postgres` serves the port; a postgres that dies is started
-- again on the same port; SIGINT (fast shutdown) stops it. The postgres
-- check speaks PostgreSQL's SSLRequest. Needs root (user = "postgres").
--
-- Debian keeps its versioned binaries off PATH: the newest
-- /usr/lib/postgresql/<version>/bin is found here, at policy load.
local uv = require "luv"

local function newest_bin()
  local best, best_v
  local dir = uv.fs_scandir("/usr/lib/postgresql")
  while dir do
    local name = uv.fs_scandir_next(dir)
    if not name then break end
    local v = tonumber(name)
    if v and uv.fs_stat("/usr/lib/postgresql/" .. name .. "/bin/postgres") and (not best_v or v > best_v) then
      best, best_v = "/usr/lib/postgresql/" .. name .. "/bin", v
    end
  end
  return best
end

-- without Debian's layout, the programs must be on PATH
local BIN = newest_bin()
local function program(name) return BIN and BIN .. "/" .. name or name end

local function instance(name)
  return {
    name = name, type = "database", pool = "pg", address = "127.0.0.1", user = "postgres",
    setup = {program "initdb", "-D", "{state}", "-A", "trust", "-U", "postgres"},
    creates = "{state}/PG_VERSION",
    exec = {program "postgres", "-D", "{state}", "-p", "{port}", "-k", "{state}",
            "-c", "listen_addresses=127.0.0.1"},
    stop_signal = "SIGINT", stop_timeout = 20000,
    check = {kind = "postgres", host = "127.0.0.1", interval = 1000, timeout = 1000, rise = 1, fall = 2},
  }
end

return {
  pools = {
    pg = {range = {54320, 54339}},
  },
  services = {instance "pg1", instance "pg2", instance "pg3"},
  grace = 3000,
}
