-- Loaded by busted before any spec, outside its per-file insulation: luv
-- must load once per process. Insulation unloads modules a spec file
-- loaded; luv's loop would then be collected while luv.so stays mapped,
-- and the next file's require "luv" would use the freed loop (a crash in
-- uv_timer_init).
require "luv"
