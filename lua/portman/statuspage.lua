--- The daemon's status page (`/` of the HTTP endpoint): one self-contained
-- HTML page, no script and no outside asset, that reloads itself every
-- REFRESH seconds (a meta refresh). It shows the services with status,
-- reason and since; the pools with a utilization bar; the mappings with
-- the lifetime left; and for each checked service its last health results
-- as an inline SVG sparkline (bar height: latency; color: the result).
-- Every text that comes from a policy, a service or a peer is escaped.
local M = {}

M.REFRESH = 5 -- seconds
M.SPARK_W, M.SPARK_H, M.SPARK_N = 200, 24, 100
-- services past this many get no sparkline (the page says so): at 10,000
-- checked services with 100 results each, the bars alone would be ~20 MiB
M.MAX_SPARKLINES = 500

local ESC = {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;"}

--- Text escaped for HTML (element content and quoted attributes).
function M.escape(v)
  if v == nil then return "" end
  return (tostring(v):gsub("[&<>\"']", ESC))
end

local esc = M.escape

-- "3m 20s ago" for a unix time, and the UTC time in a title.
local function ago(t, now)
  if type(t) ~= "number" then return "-" end
  local s = math.max(0, math.floor(now - t))
  local text
  if s < 60 then
    text = s .. "s"
  elseif s < 3600 then
    text = ("%dm %ds"):format(s // 60, s % 60)
  elseif s < 86400 then
    text = ("%dh %dm"):format(s // 3600, s % 3600 // 60)
  else
    text = ("%dd %dh"):format(s // 86400, s % 86400 // 3600)
  end
  return ('<span title="%s">%s ago</span>'):format(os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(t)), text)
end

local GOOD = {healthy = true, unchecked = true}
local WAIT = {unknown = true, starting = true}

local function status_class(st)
  if GOOD[st] then return "ok" end
  if WAIT[st] then return "wait" end
  return "bad"
end

--- The sparkline of a check's history (health.history's list, oldest
-- first): one bar per result, as tall as its latency against the slowest
-- shown, green for a success and a full red bar for a failure. The bars
-- are two paths (one a color), not an element each: the page of 10,000
-- services stays MiBs, not hundreds.
function M.sparkline(name, history)
  local n, w, h = #history, M.SPARK_W, M.SPARK_H
  local first = math.max(1, n - M.SPARK_N + 1)
  local slowest, failed = 0, 0
  for i = first, n do
    slowest = math.max(slowest, history[i].ms or 0)
    if not history[i].ok then failed = failed + 1 end
  end
  local bw = w / M.SPARK_N
  local ok_bars, bad_bars = {}, {}
  for i = first, n do
    local r = history[i]
    local bh = slowest > 0 and math.max(2, (r.ms or 0) / slowest * (h - 2)) or 2
    if not r.ok then bh = h end -- a failure is a full red bar: seen at a glance
    local list = r.ok and ok_bars or bad_bars
    list[#list + 1] = ("M%.1f %dv-%.1fh%.1fv%.1fz"):format((i - first) * bw, h, bh, math.max(1, bw - 0.5), bh)
  end
  local last = history[n]
  local out = {('<svg class="spark" width="%d" height="%d" viewBox="0 0 %d %d" role="img">'):format(w, h, w, h),
               ("<title>%s: the last %d checks, %d failed, slowest %.1f ms%s</title>"):format(esc(name),
                 n - first + 1, failed, slowest, last and (", last: " .. esc(last.status)) or "")}
  if #ok_bars > 0 then out[#out + 1] = ('<path class="ok" fill="#2a2" d="%s"/>'):format(table.concat(ok_bars)) end
  if #bad_bars > 0 then out[#out + 1] = ('<path class="fail" fill="#d22" d="%s"/>'):format(table.concat(bad_bars)) end
  out[#out + 1] = "</svg>"
  return table.concat(out)
end

local STYLE = [[
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
th{background:#f4f4f4}
.ok{color:#181}.wait{color:#a70}.bad{color:#c11;font-weight:bold}
.reason{color:#555;max-width:40em;overflow-wrap:anywhere}
]]

local function services_table(out, doc, history, now)
  out[#out + 1] = ("<h2>Services (%d)</h2>\n<table id=\"services\"><tr><th>service</th><th>port</th>"
    .. "<th>pool</th><th>status</th><th>reason</th><th>since</th><th>health (last %d checks)</th></tr>\n")
    :format(#doc.services, M.SPARK_N)
  local drawn, skipped = 0, 0
  for _, s in ipairs(doc.services) do
    local h = history and drawn < M.MAX_SPARKLINES and history(s.name)
    if h then
      drawn = drawn + 1
    elseif history and drawn >= M.MAX_SPARKLINES then
      skipped = skipped + 1
    end
    out[#out + 1] = ('<tr class="service"><td>%s</td><td>%s/%s</td><td>%s</td><td class="%s">%s</td>'
      .. '<td class="reason">%s</td><td>%s</td><td>%s</td></tr>\n'):format(esc(s.name), esc(s.port), esc(s.proto),
      esc(s.pool or "-"), status_class(s.status), esc(s.status), esc(s.reason or ""), ago(s.since, now),
      h and M.sparkline(s.name, h) or "-")
  end
  out[#out + 1] = "</table>\n"
  if skipped > 0 then
    out[#out + 1] = ("<p>Sparklines are drawn for the first %d checked services; /metrics has every service's "
      .. "check durations.</p>\n"):format(M.MAX_SPARKLINES)
  end
end

local function pools_table(out, doc)
  out[#out + 1] = "<h2>Pools</h2>\n<table id=\"pools\"><tr><th>pool</th><th>range</th><th>allocated</th>"
    .. "<th>utilization</th></tr>\n"
  for _, p in ipairs(doc.pools) do
    local u = math.min(100, math.max(0, tonumber(p.utilization) or 0))
    local color = u >= 95 and "#d22" or u >= 80 and "#d90" or "#2a2"
    out[#out + 1] = ('<tr class="pool"><td>%s</td><td>%s-%s</td><td>%s / %s</td><td><svg class="bar" width="200" '
      .. 'height="12" role="img"><title>%.1f%%</title><rect width="200" height="12" fill="#eee"/>'
      .. '<rect width="%.1f" height="12" fill="%s"/></svg> %.1f%%</td></tr>\n')
      :format(esc(p.name), esc(p.range and p.range[1]), esc(p.range and p.range[2]), esc(p.allocated),
              esc(p.size), u, u * 2, color, u)
  end
  out[#out + 1] = "</table>\n"
end

local function mappings_table(out, doc, now)
  out[#out + 1] = "<h2>Router mappings</h2>\n<table id=\"mappings\"><tr><th>service</th><th>method</th>"
    .. "<th>external</th><th>lifetime left</th></tr>\n"
  for _, m in ipairs(doc.mappings) do
    local left = m.expires and ("%ds"):format(math.max(0, m.expires - now)) or "-"
    out[#out + 1] = ('<tr class="mapping"><td>%s</td><td>%s</td><td>%s:%s/%s</td><td>%s</td></tr>\n')
      :format(esc(m.service), esc(m.method), esc(m.external_ip), esc(m.external_port), esc(m.proto), left)
  end
  out[#out + 1] = "</table>\n"
end

--- The page for the status document doc (the manager's status()).
-- history(name): a service's health results (health.history), or nil
-- for a service without a check; now: unix seconds.
function M.render(doc, history, now)
  now = now or os.time()
  local out = {('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    .. '<meta http-equiv="refresh" content="%d"><title>portman status</title><style>%s</style></head>'
    .. '<body>\n<h1>portman</h1>\n<p>%s UTC, refreshed every %d s. '
    .. '<a href="/metrics">metrics</a> <a href="/status.json">status.json</a></p>\n')
    :format(M.REFRESH, STYLE, os.date("!%Y-%m-%d %H:%M:%S", now), M.REFRESH)}
  if doc.starting then out[#out + 1] = "<p>The daemon is starting.</p>\n" end
  if doc.reload then out[#out + 1] = ('<p class="bad">Reload failed: %s</p>\n'):format(esc(doc.reload.error)) end
  if doc.state then out[#out + 1] = ('<p class="bad">State not saved: %s</p>\n'):format(esc(doc.state.error)) end
  services_table(out, doc, history, now)
  pools_table(out, doc)
  mappings_table(out, doc, now)
  out[#out + 1] = "</body></html>\n"
  return table.concat(out)
end

return M
