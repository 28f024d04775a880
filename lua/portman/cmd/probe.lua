--- `portman probe HOST PORTS`: which ports of a host answer (TCP connects,
-- or UDP datagrams with --proto udp).
local uv = require "luv"
local async = require "portman.async"
local json = require "portman.json"
local probe = require "portman.probe"
local cmd = require "portman.cmd"

local LISTED = {"open", "filtered", "unreachable", "error"}
local COUNTED = {"open", "closed", "filtered", "unreachable", "error"}
-- UDP adds nmap's state for no answer at all
local LISTED_UDP = {"open", "open|filtered", "filtered", "unreachable", "error"}
local COUNTED_UDP = {"open", "closed", "open|filtered", "filtered", "unreachable", "error"}
local SHOWN = 100 -- list the ports of a state other than open when there are this few
local MAX_RETRIES = 50

local function lists_of(r)
  local lists = {}
  for _, s in ipairs(LISTED_UDP) do lists[s] = r[s] end
  lists["open|filtered"] = r.open_filtered
  return lists
end

local function rows_of(r)
  local rows, lists = {}, lists_of(r)
  for _, s in ipairs(r.proto == "udp" and LISTED_UDP or LISTED) do
    local l = lists[s]
    if s == "open" or #l <= SHOWN then
      for _, p in ipairs(l) do rows[#rows + 1] = {p, s} end
    end
  end
  table.sort(rows, function(a, b) return a[1] < b[1] end)
  for i, row in ipairs(rows) do
    local err = r.errors[row[1]]
    rows[i] = {row[1] .. "/" .. r.proto, row[2] .. (err and " (" .. err .. ")" or "")}
  end
  return rows
end

local function footer(r)
  local counts = {}
  for _, s in ipairs(r.proto == "udp" and COUNTED_UDP or COUNTED) do
    counts[#counts + 1] = ("%s %d"):format(s, r.counts[s])
  end
  return ("%s (%s): %s in %d ms: %s"):format(r.host, r.address, cmd.plural(r.scanned, "port"), r.elapsed_ms,
    table.concat(counts, ", "))
end

local function document(r)
  local udp = r.proto == "udp"
  local counts = {}
  for _, s in ipairs(udp and COUNTED_UDP or COUNTED) do counts[s] = r.counts[s] end
  return {host = r.host, method = r.method, scanned = r.scanned, elapsed_ms = r.elapsed_ms, counts = counts,
          open = json.array(r.open), filtered = json.array(r.filtered),
          unreachable = json.array(r.unreachable), open_filtered = udp and json.array(r.open_filtered) or nil}
end

-- A progress bar on stderr: "[#####.....]  12345/65535  3 open".
local function progress_bar(errout)
  local width = 30
  return function(result)
    local filled = result.total > 0 and result.scanned * width // result.total or width
    errout:write(("\r[%s%s] %d/%d  %d open"):format(("#"):rep(filled), ("."):rep(width - filled),
      result.scanned, result.total, result.counts.open))
    errout:flush()
  end, function()
    errout:write("\r\27[K")
    errout:flush()
  end
end

return {probe = {
  summary = "probe which ports of a host accept a TCP connection (or answer UDP)",
  args = {{"HOST", "a name (resolved, the first address is probed) or an IPv4/IPv6 address"},
          {"PORTS", "ports like 1-65535 or 22,80,8000-8100"}},
  flags = {
    {"timeout", "MS", "ms a probe waits for an answer before the port counts as filtered (UDP: each try)",
      kind = "int", default = 1000},
    {"concurrency", "N", "sockets in flight at once (default: from RLIMIT_NOFILE)", kind = "int"},
    {"proto", "P", "tcp (a connect to each port) or udp (an empty datagram to each, as nmap -sU)",
      default = "tcp"},
    {"method", "M", "TCP: connect (a connect() per port), syn (raw SYNs as nmap -sS: needs CAP_NET_RAW; "
      .. "IPv6 is probed with connects) or auto (syn when it can)", default = "connect"},
    {"retries", "N", "UDP: times an unanswered probe is sent again before its port counts as open|filtered "
      .. "(0-50)", kind = "int", default = probe.DEFAULT_RETRIES},
  },
  json = true,
  table = true,
  notes = "States as nmap names them: open, closed, filtered (no answer before the timeout), "
    .. "unreachable (ICMP), error; for UDP, closed is an ICMP port unreachable and open|filtered no answer "
    .. "to any try. Hosts rate-limit those ICMP errors (Linux: a burst of 6, then one a second), so UDP "
    .. "probes are retransmitted, and paced down to one a second per host once retransmissions get "
    .. "answers, as nmap does: a UDP probe of many closed ports takes about a second each. "
    .. "The table lists open ports, and the others when there are few. "
    .. "With --method syn the concurrency counts SYNs awaiting an answer (no socket each): "
    .. "a SYN unanswered after half the timeout is sent once more; states read as with connects "
    .. "(nmap -sS calls an ICMP unreachable filtered, portman unreachable, as for a connect).",
  run = function(opts, ctx)
    if opts.host == "" then cmd.usage_error("HOST: a name or an address expected") end
    cmd.at_least(opts, "timeout", 1)
    cmd.at_least(opts, "concurrency", 1)
    cmd.oneof("proto", opts.proto, {"tcp", "udp"})
    cmd.at_least(opts, "retries", 0)
    cmd.oneof("method", opts.method, probe.METHODS)
    if opts.proto == "udp" and opts.method == "syn" then cmd.usage_error("--method syn: TCP only") end
    if opts.retries > MAX_RETRIES then cmd.usage_error(("--retries: at most %d"):format(MAX_RETRIES)) end
    local ports, perr = probe.ports(opts.ports)
    if not ports then cmd.usage_error("PORTS: " .. perr) end
    local draw, clear
    if not opts.json and uv.guess_handle(2) == "tty" then draw, clear = progress_bar(ctx.errout) end
    local result, err, code = async.run(function()
      return probe.probe(opts.host, ports, {timeout = opts.timeout, concurrency = opts.concurrency,
        proto = opts.proto, retries = opts.retries, method = opts.proto == "tcp" and opts.method or nil,
        on_batch = draw and function(_, scan) draw(scan:result()) end})
    end)
    if clear then clear() end
    if not result then return nil, err, code end
    return {json = document(result), header = {"PORT", "STATE"}, rows = rows_of(result), footer = footer(result)}
  end,
}}
