-- portman's example policy: two pools and the services that take ports
-- from them. `make run` starts the daemon with it; Ctrl-C stops it.
return {
  pools = {
    -- web-facing services: the lowest free port after the last one handed out
    api = {range = {20000, 20099}, strategy = "sequential"},
    -- a database node: the same start on every machine for node "db-7"
    db = {range = {25000, 25999}, strategy = "hash", node_id = "db-7"},
  },
  services = {
    {name = "web", pool = "api"},
    {name = "admin", pool = "api"},
    {name = "postgres", pool = "db"},
    {name = "metrics", pool = "api", port = 20090},
  },
}
