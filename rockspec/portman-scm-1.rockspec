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
}
build = {
  type = "builtin",
  modules = {
    ["portman.core"] = {
      sources = {
        "csrc/bitmap.c",
        "csrc/core.c",
        "csrc/http.c",
        "csrc/lua_allocator.c",
        "csrc/lua_http.c",
        "csrc/lua_state.c",
        "csrc/lua_util.c",
        "csrc/pool.c",
      },
      defines = {"_GNU_SOURCE"},
      incdirs = {"csrc", "$(CARES_INCDIR)", "$(MINIUPNPC_INCDIR)", "$(NATPMP_INCDIR)", "$(OPENSSL_INCDIR)",
                 "$(CURL_INCDIR)"},
      libdirs = {"$(CARES_LIBDIR)", "$(MINIUPNPC_LIBDIR)", "$(NATPMP_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(CURL_LIBDIR)"},
      libraries = {"cares", "miniupnpc", "natpmp", "crypto", "curl", "resolv", "pthread"},
    },
    ["portman"] = "lua/portman/init.lua",
    ["portman.allocator"] = "lua/portman/allocator.lua",
    ["portman.async"] = "lua/portman/async.lua",
    ["portman.backend"] = "lua/portman/backend.lua",
    ["portman.check"] = "lua/portman/check.lua",
    ["portman.cli"] = "lua/portman/cli.lua",
    ["portman.daemon"] = "lua/portman/daemon.lua",
    ["portman.etcd"] = "lua/portman/etcd.lua",
    ["portman.http"] = "lua/portman/http.lua",
    ["portman.log"] = "lua/portman/log.lua",
    ["portman.state"] = "lua/portman/state.lua",
  },
  install = {bin = {portman = "bin/portman"}},
}
test = {type = "busted"}
