-- portman's example policy: two pools and the services that take ports
-- from them. `make run` starts the daemon with it; Ctrl-C stops it.
-- While it runs: `bin/portman status`, `bin/portman repl`.
return {
  pools = {
    -- web-facing services: the lowest free port after the last one handed out
    api = {range = {20000, 20099}, strategy = "sequential", warning = 80, critical = 95},
    -- a database node: the same start on every machine for node "db-7"
    db = {range = {25000, 25999}, strategy = "hash", node_id = "db-7"},
  },
  services = {
    {name = "web", type = "api", pool = "api"},
    {name = "admin", type = "admin", pool = "api"},
    {name = "postgres", type = "database", pool = "db"},
    {name = "metrics", pool = "api", port = 20090},
  },
  grace = 2000, -- ms a stopping listener waits for its open connections
}
