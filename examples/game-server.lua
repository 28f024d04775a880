-- A game server behind a home router: a UDP game port and a TCP lobby from
-- a random pool (ports an attacker cannot guess, RFC 6056), each mapped on
-- the router (UPnP IGD or NAT-PMP, whichever answers) so players outside
-- can reach them. Without a router on the network the mapping fails, is
-- logged, and the services keep running on the LAN.
return {
  pools = {
    game = {range = {30000, 30999}, strategy = "random"},
  },
  services = {
    {name = "game", type = "game", proto = "udp", pool = "game",
     map = {lifetime = 3600, method = "auto"}},
    {name = "lobby", type = "lobby", pool = "game",
     map = {lifetime = 3600, method = "auto"},
     check = {kind = "tcp", interval = 1000, rise = 1, fall = 2}},
  },
  grace = 3000,
}
