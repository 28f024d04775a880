-- A database cluster node: client, cluster and replication ports from one
-- hashed pool, so node "pg-3" gets the same ports on every start and on
-- every machine; an admin endpoint on a fixed port; health checks tuned
-- for a database (slower interval, three failures before "unreachable").
local node = "pg-3"
return {
  pools = {
    pg = {range = {26000, 26999}, strategy = "hash", node_id = node, warning = 70, critical = 90},
  },
  services = {
    {name = node .. "-client", type = "database", pool = "pg",
     check = {kind = "tcp", interval = 3000, timeout = 500, rise = 2, fall = 3},
     metadata = {role = "primary"}},
    {name = node .. "-cluster", type = "cluster", pool = "pg"},
    {name = node .. "-replication", type = "replication", pool = "pg",
     listen = {keepalive = true, keepidle = 30, nodelay = true}},
    {name = node .. "-admin", type = "admin", pool = "pg", port = 26999, address = "127.0.0.1"},
  },
  grace = 10000,
}
