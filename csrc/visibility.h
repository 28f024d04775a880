/* Every C file in csrc/ includes this header LAST, after all its other
 * includes: what the file declares and defines from there on has hidden
 * visibility, so portman/core.so exports only what is marked PM_EXPORT
 * (luaopen_portman_core). This is -fvisibility=hidden in the sources: the
 * rock's builtin build passes no such flag (and make passes none either),
 * so both builds export the same. spec/build_spec.lua and scripts/rock-smoke
 * check that with nm.
 *
 * Not first: the pragma makes declarations hidden too, so a system or
 * library function declared after it would be taken for one of ours and
 * fail to link ("hidden symbol `lua_pushinteger' isn't defined"). */
#ifndef PORTMAN_VISIBILITY_H
#define PORTMAN_VISIBILITY_H

#define PM_EXPORT __attribute__((visibility("default")))

#pragma GCC visibility push(hidden)

#endif
