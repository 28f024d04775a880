rockspec_format = "3.0"
package = "portman"
version = "scm-1"
source = {url = "git+file:///portman"} -- built from a checkout with `luarocks make`
description = {
  summary = "Port management for networked services: pools, listeners, STUN, UPnP/NAT-PMP, probes, DNS",
  detailed = [[
A C core for the hot and byte-exact work (port bitmaps, codecs, I/O engines)
under a Lua 5.4 + luv layer for policy, registration and scheduling.]],
  license = "MIT",
}
dependencies = {"lua >= 5.4, < 5.5", "luv", "lua-cjson"}
test_dependencies = {"busted"}
external_dependencies = {
  CARES = {header = "ares.h", library = "cares"},
  MINIUPNPC = {header = "miniupnpc/miniupnpc.h", library = "miniupnpc"},
  NATPMP = {header = "natpmp.h", library = "natpmp"},
  OPENSSL = {header = "openssl/hmac.h", library = "crypto"},
  -- Debian keeps curl/curl.h under the multiarch include directory, where
  -- LuaRocks does not look but the compiler does: check the library only.
  CURL = {library = "curl"},
  IDN2 = {header = "idn2.h", library = "idn2"},
}
build = {
  type = "builtin",
  modules = {
    ["portman.core"] = {
      sources = {
        "csrc/bitmap.c",
        "csrc/core.c",
        "csrc/crc32.c",
        "csrc/dns.c",
        "csrc/http.c",
        "csrc/httpd.c",
        "csrc/listener.c",
        "csrc/lua_admin.c",
        "csrc/lua_allocator.c",
        "csrc/lua_crypto.c",
        "csrc/lua_dns.c",
        "csrc/lua_http.c",
        "csrc/lua_httpd.c",
        "csrc/lua_idna.c",
        "csrc/lua_listener.c",
        "csrc/lua_nat.c",
        "csrc/lua_probe.c",
        "csrc/lua_sandbox.c",
        "csrc/lua_spawn.c",
        "csrc/lua_state.c",
        "csrc/lua_stderr.c",
        "csrc/lua_stun.c",
        "csrc/lua_util.c",
        "csrc/pmp.c",
        "csrc/pool.c",
        "csrc/probe.c",
        "csrc/sockopt.c",
        "csrc/stun.c",
        "csrc/upnp.c",
      },
      defines = {"_GNU_SOURCE"},
      incdirs = {"csrc", "$(CARES_INCDIR)", "$(MINIUPNPC_INCDIR)", "$(NATPMP_INCDIR)", "$(OPENSSL_INCDIR)",
                 "$(CURL_INCDIR)", "$(IDN2_INCDIR)"},
      libdirs = {"$(CARES_LIBDIR)", "$(MINIUPNPC_LIBDIR)", "$(NATPMP_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(CURL_LIBDIR)",
                 "$(IDN2_LIBDIR)"},
      libraries = {"cares", "miniupnpc", "natpmp", "crypto", "curl", "idn2", "resolv", "pthread"},
    },
    -- BEGIN Lua modules: written by scripts/rockspec-modules (make rockspec)
    ["portman"] = "lua/portman/init.lua",
    ["portman.admin"] = "lua/portman/admin.lua",
    ["portman.allocator"] = "lua/portman/allocator.lua",
    ["portman.async"] = "lua/portman/async.lua",
    ["portman.backend"] = "lua/portman/backend/init.lua",
    ["portman.backend.etcd"] = "lua/portman/backend/etcd.lua",
    ["portman.backend.file"] = "lua/portman/backend/file.lua",
    ["portman.check"] = "lua/portman/check.lua",
    ["portman.cmd"] = "lua/portman/cmd/init.lua",
    ["portman.cmd.admin"] = "lua/portman/cmd/admin.lua",
    ["portman.cmd.alloc"] = "lua/portman/cmd/alloc.lua",
    ["portman.cmd.check"] = "lua/portman/cmd/check.lua",
    ["portman.cmd.client"] = "lua/portman/cmd/client.lua",
    ["portman.cmd.cluster"] = "lua/portman/cmd/cluster.lua",
    ["portman.cmd.commands"] = "lua/portman/cmd/commands.lua",
    ["portman.cmd.doc"] = "lua/portman/cmd/doc.lua",
    ["portman.cmd.events"] = "lua/portman/cmd/events.lua",
    ["portman.cmd.map"] = "lua/portman/cmd/map.lua",
    ["portman.cmd.probe"] = "lua/portman/cmd/probe.lua",
    ["portman.cmd.register"] = "lua/portman/cmd/register.lua",
    ["portman.cmd.resolve"] = "lua/portman/cmd/resolve.lua",
    ["portman.cmd.run"] = "lua/portman/cmd/run.lua",
    ["portman.cmd.services"] = "lua/portman/cmd/services.lua",
    ["portman.cmd.stun"] = "lua/portman/cmd/stun.lua",
    ["portman.daemon"] = "lua/portman/daemon.lua",
    ["portman.engine"] = "lua/portman/engine.lua",
    ["portman.errors"] = "lua/portman/errors.lua",
    ["portman.etcd"] = "lua/portman/etcd.lua",
    ["portman.events"] = "lua/portman/events.lua",
    ["portman.health"] = "lua/portman/health.lua",
    ["portman.http"] = "lua/portman/http.lua",
    ["portman.json"] = "lua/portman/json.lua",
    ["portman.lines"] = "lua/portman/lines.lua",
    ["portman.listener"] = "lua/portman/listener.lua",
    ["portman.listeners"] = "lua/portman/listeners.lua",
    ["portman.log"] = "lua/portman/log.lua",
    ["portman.manager"] = "lua/portman/manager.lua",
    ["portman.nat"] = "lua/portman/nat.lua",
    ["portman.netaddr"] = "lua/portman/netaddr.lua",
    ["portman.notify"] = "lua/portman/notify.lua",
    ["portman.probe"] = "lua/portman/probe.lua",
    ["portman.registry"] = "lua/portman/registry.lua",
    ["portman.resolver"] = "lua/portman/resolver/init.lua",
    ["portman.resolver.hosts"] = "lua/portman/resolver/hosts.lua",
    ["portman.resolver.names"] = "lua/portman/resolver/names.lua",
    ["portman.resolver.select"] = "lua/portman/resolver/select.lua",
    ["portman.sandbox"] = "lua/portman/sandbox.lua",
    ["portman.state"] = "lua/portman/state.lua",
    ["portman.state_schema"] = "lua/portman/state_schema.lua",
    ["portman.stun"] = "lua/portman/stun.lua",
    ["portman.supervisor"] = "lua/portman/supervisor.lua",
    ["portman.tunnel"] = "lua/portman/tunnel.lua",
    -- END Lua modules
  },
  install = {bin = {portman = "bin/portman"}},
  -- The man page (doc/portman.1), the bash completion (doc/portman.bash)
  -- and the design notes go into the rock's own directory,
  -- TREE/lib/luarocks/rocks-5.4/portman/VERSION/: LuaRocks' builtin install
  -- has no man or completion directory (`make install` puts them there).
  copy_directories = {"doc", "docs"},
}
test = {type = "busted"}
