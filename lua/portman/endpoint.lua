--- The daemon's HTTP endpoint (`portman run --http ADDR`, or `http =
-- ADDR` in the policy): /metrics (portman.metrics), / (the status page,
-- portman.statuspage), /status.json (the document of `portman status
-- --json`, from the admin socket's own status op) and /healthz (200 while
-- the daemon runs and every service marked `critical` is up; 503 while it
-- starts or stops, or when a critical service is down). Served by
-- portman.httpd on the loop (docs/design.md, "The HTTP endpoint").
local httpd = require "portman.httpd"
local metrics = require "portman.metrics"
local statuspage = require "portman.statuspage"
local json = require "portman.json"
local log = require "portman.log"

local M = {}

local JSON = "application/json"
local HTML = "text/html; charset=utf-8"
local TEXT = "text/plain; charset=utf-8"
-- the page has no script and loads nothing: a name that slipped through
-- escaping still could not run anything
local PAGE_HEADERS = {{"Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}}

local UP = {healthy = true, unchecked = true}

--- The critical services (the policy's `critical = true`) that are not
-- up, sorted; nil while the daemon has no manager.
function M.critical_down(d)
  local m = d.manager
  if not m then return nil end
  local down = {}
  for _, s in ipairs(d.policy and d.policy.services or {}) do
    if type(s) == "table" and s.critical then
      local e = m:service(s.name)
      if not e or not UP[e.status] then down[#down + 1] = s.name end
    end
  end
  table.sort(down)
  return down
end

local function routes(d, status_op)
  return {
    ["/metrics"] = function()
      if not d.metrics then return 503, TEXT, "starting\n" end
      return 200, metrics.CONTENT_TYPE, (d.metrics:render_chunks())
    end,
    ["/status.json"] = function()
      local body = json.encode_pieces(status_op()) -- written as they are (writev)
      body[#body + 1] = "\n"
      return 200, JSON, body
    end,
    ["/"] = function()
      local m = d.manager
      local history = m and function(name) return m.health:history(name) end
      return 200, HTML, statuspage.render(status_op(), history), PAGE_HEADERS
    end,
    ["/healthz"] = function()
      local down = M.critical_down(d)
      if not down then return 503, TEXT, "starting\n" end
      if #down > 0 then return 503, TEXT, "critical service down: " .. table.concat(down, ", ") .. "\n" end
      return 200, TEXT, "ok\n"
    end,
  }
end

--- Counts each admin request by op into d.admin_requests; returns the
-- ops table with each op wrapped.
function M.counted(ops, d)
  d.admin_requests = d.admin_requests or {}
  local out = {}
  for name, fn in pairs(ops) do
    out[name] = function(...)
      d.admin_requests[name] = (d.admin_requests[name] or 0) + 1
      return fn(...)
    end
  end
  return out
end

--- Starts serving on address for the daemon d (its manager, once there,
-- is d.manager); status_op() gives the status document.
-- @return[1] the server (httpd.serve's)
-- @return[2] nil, msg, code
function M.start(address, d, status_op)
  d.http_requests = d.http_requests or {}
  local server, err, code = httpd.serve(address, routes(d, status_op))
  if not server then return nil, err, code end
  server.on_status = function(status) d.http_requests[status] = (d.http_requests[status] or 0) + 1 end
  log.info("http_started", {address = server.address, port = server.port})
  return server
end

--- Starts the metrics of d's manager (once it runs).
function M.attach(d)
  d.metrics = metrics.new(d.manager)
  d.metrics.admin = d.admin_requests or d.metrics.admin
  d.metrics.http = d.http_requests or d.metrics.http
end

return M
