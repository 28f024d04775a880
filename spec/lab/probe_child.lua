-- The part of the probe lab specs (spec/lab/probe_lab_spec.lua,
-- probe_syn_lab_spec.lua) that runs inside the client namespace of their
-- pair (spec/lab/probe_pair.lua): `probe_child.lua MODE JSON` prints one JSON document.
--   probe:      probes args.host (opts as given), sampling this process's
--               sockets during the run; cancels after args.cancel_after ms
--   range:      opens listeners on loopback and probes 1-65535 of
--               127.0.0.1 and ::1 (with args.method); reports what
--               /proc/net/tcp{,6} list
--   selfconnect: probes 127.0.0.1:args.port, then shows that a plain
--               connect there "succeeds" (a socket connected to itself)
--   spoofed:    a SYN scan of args.host's args.ports, during which
--               args.spoofer (a command, SPORT in it the scan's source
--               port) sends it forged replies; reports the states and the
--               replies the scan ignored
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = (os.getenv("PORTMAN_BUILD") or "build") .. "/?.so;" .. package.cpath
local uv = require "luv"
local cjson = require "cjson"
local helpers = require "helpers"
local portman = require "portman"
local probe = require "portman.probe"

-- portman.json keeps integral numbers integers (cjson gives floats)
local mode, args = arg[1], assert(require("portman.json").decode(arg[2] or "{}"))

local function sockets() return helpers.fd_count{kinds = {"socket"}} end

local function lists(r)
  local errors = {}
  for port, e in pairs(r.errors) do errors[#errors + 1] = {port, e} end
  table.sort(errors, function(a, b) return a[1] < b[1] end)
  return {scanned = r.scanned, counts = r.counts, open = r.open, filtered = r.filtered,
          unreachable = r.unreachable, error = r.error, open_filtered = r.open_filtered,
          closed = #r.closed, errors = errors, cancelled = r.cancelled, elapsed_ms = r.elapsed_ms,
          address = r.address, method = r.method}
end

-- The ports listening on addresses reachable as host, per /proc/net.
local function proc_listeners(files)
  local ports, seen = {}, {}
  for file, addrs in pairs(files) do
    local f = assert(io.open(file))
    for line in f:lines() do
      local addr, port, st = line:match("^%s*%d+: (%x+):(%x+) %x+:%x+ (%x%x)")
      port = port and tonumber(port, 16)
      if addr and st == "0A" and addrs[addr] and not seen[port] then
        seen[port] = true
        ports[#ports + 1] = port
      end
    end
    f:close()
  end
  table.sort(ports)
  return ports
end

local ANY6 = ("0"):rep(32)
local modes = {}

function modes.probe()
  local base = sockets()
  local most = 0
  local sampler = uv.new_timer()
  sampler:start(0, 5, function() most = math.max(most, sockets() - base) end)
  local opts = args.opts or {}
  opts.on_batch = function(_, scan)
    most = math.max(most, sockets() - base)
    if args.cancel_at_first_batch then scan:cancel() end
  end
  local ok, result, err, code = pcall(portman.run, function()
    if args.cancel_after then
      local scan
      local t = uv.new_timer()
      local co = coroutine.running()
      t:start(args.cancel_after, 0, function()
        t:close()
        most = math.max(most, sockets() - base)
        scan:cancel()
      end)
      scan = probe.start(args.host, args.ports, opts, function(...)
        sampler:close()
        coroutine.resume(co, ...)
      end)
      return coroutine.yield()
    end
    local r, e, c = probe.probe(args.host, args.ports, opts)
    sampler:close()
    return r, e, c
  end)
  if not ok then
    if not sampler:is_closing() then sampler:close() end
    return {err = tostring(result)}
  end
  if not result then return {err = err, code = code} end
  local doc = lists(result)
  doc.most_sockets, doc.sockets_after = most, sockets() - base
  return doc
end

function modes.range()
  local handles = {}
  local function listen(host, n, ipv6only)
    for _ = 1, n do
      local t = uv.new_tcp()
      assert(t:bind(host, 0, {ipv6only = ipv6only}))
      assert(t:listen(16, function() end))
      t:unref() -- the loop runs until the probes are done, not for these
      handles[#handles + 1] = t
    end
  end
  listen("127.0.0.1", 150)
  listen("::1", 100)
  listen("0.0.0.0", 30)
  listen("::", 30, false) -- dual-stack: reachable as 127.0.0.1 too
  local r4, r6 = portman.run(function()
    return probe.probe("127.0.0.1", "1-65535", {timeout = 2000, method = args.method}),
           probe.probe("::1", "1-65535", {timeout = 2000, method = args.method})
  end)
  local doc = {
    v4 = lists(r4), v6 = lists(r6), listeners = #handles,
    proc4 = proc_listeners({["/proc/net/tcp"] = {["0100007F"] = true, ["00000000"] = true},
                            ["/proc/net/tcp6"] = {[ANY6] = true}}),
    proc6 = proc_listeners({["/proc/net/tcp6"] = {["00000000000000000000000001000000"] = true,
                                                  [ANY6] = true}}),
  }
  for _, h in ipairs(handles) do h:close() end
  uv.run("nowait")
  return doc
end

function modes.selfconnect()
  local r = portman.run(function() return probe.probe("127.0.0.1", {args.port}, {timeout = 1000}) end)
  local t = uv.new_tcp()
  local naive
  t:connect("127.0.0.1", args.port, function(err)
    naive = err or "connected"
    local ok, name = pcall(t.getsockname, t)
    if ok and name then naive = naive .. " from port " .. name.port end
    t:close_reset()
  end)
  uv.run()
  return {state = r.ports[args.port], error = r.errors[args.port], naive = naive}
end

function modes.spoofed()
  local scan, sent
  local t = uv.new_timer()
  local r = portman.run(function()
    local co = coroutine.running()
    scan = probe.start(args.host, args.ports, {method = "syn", timeout = args.timeout}, function(...)
      coroutine.resume(co, ...)
    end)
    -- the scan's SYNs are out: forge its replies now (the loop waits)
    t:start(args.after, 0, function()
      t:close()
      sent = os.execute((args.spoofer:gsub("SPORT", tostring(scan:stats().source_port))))
    end)
    return coroutine.yield()
  end)
  local st = scan:stats()
  local states = {}
  for port, state in pairs(r.ports) do states[tostring(port)] = state end
  return {method = r.method, ports = states, ignored = st.ignored, sent = st.sent, spoofer_ok = sent == true}
end

io.write(cjson.encode(modes[mode]()), "\n")
