/* What the Lua bindings of the two probe engines (connect: lua_probe.c;
 * SYN scan: lua_syn.c) share: a step's result buffer and the batch a step
 * returns. */
#ifndef PORTMAN_LUA_PROBE_H
#define PORTMAN_LUA_PROBE_H

#include <stddef.h>

#include "lua_util.h"
#include "probe.h"

/* A step's results: a buffer grown to the batch size at index 2 (4096 by
 * default, at most 65536; raises on another), kept in *buf and *cap.
 * Returns the batch size. */
size_t pm_probe_step_buffer(lua_State *L, pm_probe_result **buf, size_t *cap);

/* Pushes the batch of a step in columns (a table per result would cost
 * more than the probe): {n = count, port = {...}, state = {...}, error =
 * {[i] = errno name}, and address = {...} when addrs is not 0: the index
 * of the list of addresses a result's `address` indexes from 0}. */
void pm_probe_push_batch(lua_State *L, const pm_probe_result *r, size_t n, int addrs);

#endif
