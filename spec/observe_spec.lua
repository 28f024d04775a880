-- The daemon's HTTP endpoint as operators use it: `portman run --http`
-- on loopback (a port the kernel picked), its /metrics checked by
-- promtool and scraped by a real Prometheus server this spec starts (its
-- own config and storage, a free port, a 1 s scrape interval), its status
-- page loaded in headless Chromium, and bad requests that get their
-- status codes while `portman status` still answers. Needs prometheus
-- (promtool), chromium and curl (scripts/deps test).
local helpers = require "helpers"
local uv = require "luv"
local json = require "portman.json"

local write = helpers.write
local q = helpers.shell_quote

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, status = p:close()
  return out, ok and 0 or status
end

local function get(url) return sh("curl -s --max-time 10 -i " .. q(url)) end

-- status code and body of an answer curl -i printed
local function parse(out)
  local status = tonumber(out:match("^HTTP/1%.1 (%d+)"))
  return status, out:match("\r\n\r\n(.*)$")
end

-- Prometheus' answer to an instant query: the list of {metric, value}.
local function query(port, expr)
  local out = sh(("curl -s --max-time 5 --get --data-urlencode %s http://127.0.0.1:%d/api/v1/query")
    :format(q("query=" .. expr), port))
  local ok, doc = pcall(json.decode, out)
  if not ok or type(doc) ~= "table" or doc.status ~= "success" then return {} end
  local list = {}
  for _, r in ipairs(doc.data.result) do list[#list + 1] = {metric = r.metric, value = tonumber(r.value[2])} end
  return list
end

local HOSTILE = 'x"<script>document.title="owned"</script>'

describe("the daemon's HTTP endpoint", function()
  local dir, d, prom, addr, http_port, flag
  setup(function()
    dir = helpers.tmpdir()
    flag = dir .. "/alpha-up"
    write(flag, "")
    local lo, hi = helpers.free_range(8)
    http_port = helpers.free_port()
    addr = "127.0.0.1:" .. http_port
    -- alpha is up while the flag file exists; beta and the hostile name
    -- have the default TCP check of their listeners; gamma has no check
    write(dir .. "/policy.lua", ([[
      local flag = %q
      return {pools = {p = {range = {%d, %d}}}, services = {
        {name = "alpha", pool = "p", listen = false, critical = true, check = {kind = "lua", interval = 200,
          rise = 1, fall = 1, fn = function(done)
            local f = io.open(flag)
            if f then f:close() return done(true) end
            done(false, "unreachable", "the flag file is gone")
          end}},
        {name = "beta", pool = "p", address = "127.0.0.1"},
        {name = %q, pool = "p", address = "127.0.0.1"},
        {name = "gamma", pool = "p", listen = false, check = false},
      }}]]):format(flag, lo, hi, HOSTILE))
    d = helpers.start_daemon(dir, dir .. "/policy.lua", 4, {args = {"--http", addr}})
    assert.is_nil(d.code, d.err)
  end)
  teardown(function()
    if prom and prom.code == nil then
      prom.proc:kill("sigterm")
      helpers.run_until(function() return prom.code ~= nil end, 15000)
    end
    helpers.kill_daemons()
    os.execute("rm -rf " .. q(dir))
  end)

  local function status_doc()
    local code, out, err = helpers.portman("status --json --admin-socket " .. d.sock)
    assert.equal(0, code, err)
    return json.decode(out)
  end

  it("serves /metrics that promtool accepts, and /status.json as `portman status --json` prints it", function()
    local metrics = sh(("curl -s --max-time 10 http://%s/metrics"):format(addr))
    assert.matches("\nportman_service_up{service=\"alpha\",proto=\"tcp\"} 1\n", metrics)
    local path = dir .. "/metrics.txt"
    write(path, metrics)
    local out, code = sh("promtool check metrics < " .. q(path))
    assert.equal(0, code, out)
    local status, body = parse(get("http://" .. addr .. "/status.json"))
    assert.equal(200, status)
    local doc, cli = json.decode(body), status_doc()
    local names, cli_names = {}, {}
    for _, s in ipairs(doc.services) do names[#names + 1] = s.name end
    for _, s in ipairs(cli.services) do cli_names[#cli_names + 1] = s.name end
    assert.same(cli_names, names)
    assert.same(cli.pools, doc.pools)
    assert.equal(200, (parse(get("http://" .. addr .. "/healthz"))))
  end)

  it("is scraped by a real Prometheus, whose API then holds the pools' and services' series", function()
    local prom_port = helpers.free_port()
    write(dir .. "/prometheus.yml", ([[
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: portman
    static_configs:
      - targets: ['%s']
]]):format(addr))
    prom = {}
    local logpipe = uv.new_pipe()
    prom.log = ""
    prom.proc = uv.spawn("prometheus", {args = {"--config.file=" .. dir .. "/prometheus.yml",
      "--storage.tsdb.path=" .. dir .. "/prom", "--web.listen-address=127.0.0.1:" .. prom_port},
      stdio = {nil, nil, logpipe}}, function(code) prom.code = code prom.proc:close() end)
    assert(prom.proc, "prometheus did not start")
    logpipe:read_start(function(_, data) if data then prom.log = prom.log .. data else logpipe:close() end end)
    -- the pools' series: allocated as the status document says
    local allocated
    helpers.run_until(function()
      allocated = query(prom_port, 'portman_pool_ports{state="allocated"}')
      return #allocated > 0 or prom.code ~= nil
    end, 60000, 500)
    assert.is_nil(prom.code, prom.log)
    assert.equal(1, #allocated, prom.log)
    assert.equal("p", allocated[1].metric.pool)
    assert.equal("portman", allocated[1].metric.job)
    assert.equal(status_doc().pools[1].allocated, allocated[1].value)
    local up = query(prom_port, 'portman_service_up{service="alpha"}')
    assert.equal(1, up[1].value)
    assert.equal(1, #query(prom_port, 'portman_service_up{service="' .. HOSTILE:gsub('"', '\\"') .. '"}'))
    -- alpha goes down: the next scrapes show it
    os.remove(flag)
    helpers.run_until(function()
      local r = query(prom_port, 'portman_service_up{service="alpha"}')
      return r[1] and r[1].value == 0
    end, 30000, 300)
    assert.equal(0, query(prom_port, 'portman_service_up{service="alpha"}')[1].value)
    assert.equal(1, query(prom_port, 'portman_service_status{service="alpha",status="unreachable"}')[1].value)
    -- and /healthz says the critical service is down
    local status, body = parse(get("http://" .. addr .. "/healthz"))
    assert.equal(503, status)
    assert.matches("critical service down: alpha", body)
    write(flag, "")
  end)

  it("serves a status page that headless Chromium loads, with every service and a sparkline per check", function()
    local dom = sh(("timeout 60 chromium --headless --no-sandbox --disable-gpu --dump-dom http://%s/ 2>/dev/null")
      :format(addr))
    assert.matches("<title>portman status</title>", dom) -- the hostile name did not retitle the page
    for _, name in ipairs({"alpha", "beta", "gamma"}) do
      assert.truthy(dom:find("<td>" .. name .. "</td>", 1, true), name)
    end
    assert.truthy(dom:find("x\"&lt;script&gt;document.title=\"owned\"&lt;/script&gt;", 1, true), dom)
    -- alpha, beta and the hostile one are checked; gamma is not
    assert.equal(3, select(2, dom:gsub('<svg class="spark"', "")))
    assert.equal(4, select(2, dom:gsub('<tr class="service">', "")))
  end)

  it("answers bad requests with their status codes and never stalls `portman status`", function()
    local port = http_port
    local function raw(bytes)
      local path = dir .. "/req"
      write(path, bytes)
      return (sh(("curl -s --max-time 10 -i telnet://127.0.0.1:%d < %s"):format(port, q(path))))
    end
    assert.equal(400, parse(raw("\1\2\3garbage\r\n\r\n")))
    assert.equal(405, (parse(sh("curl -s --max-time 10 -i -X DELETE " .. q("http://" .. addr .. "/metrics")))))
    assert.equal(404, (parse(get("http://" .. addr .. "/nope"))))
    assert.equal(431, (parse(raw("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("a"):rep(1024 * 1024) .. "\r\n\r\n"))))
    -- a slow client holds a connection with half a head
    local slow = uv.new_tcp()
    local connected
    slow:connect("127.0.0.1", port, function(err) connected = err == nil end)
    helpers.run_until(function() return connected ~= nil end)
    assert.is_true(connected)
    slow:write("GET /metrics HTTP/1.1\r\nHo")
    uv.run("nowait")
    local doc = status_doc() -- answers while the slow client waits
    assert.equal(4, #doc.services)
    assert.equal(200, (parse(get("http://" .. addr .. "/healthz"))))
    slow:close()
    uv.run("nowait")
  end)

  it("takes its address from the policy's http key too, and a bad one is a policy problem", function()
    local daemon = require "portman.daemon"
    assert.matches("HOST:PORT", daemon.check_policy({http = "9207"})[1])
    assert.same({}, daemon.check_policy({http = "127.0.0.1:9207"}))
    assert.matches("critical: boolean expected",
      daemon.check_policy({services = {{name = "a", listen = false, critical = "yes"}}})[1])
    local other = dir .. "/other"
    os.execute("mkdir -p " .. q(other))
    local port = helpers.free_port()
    write(other .. "/policy.lua", ('return {http = "127.0.0.1:%d", services = {}}'):format(port))
    local d2 = helpers.start_daemon(other, other .. "/policy.lua", 0)
    helpers.run_until(function() return d2.err:find("daemon_started", 1, true) ~= nil or d2.code ~= nil end, 15000)
    assert.is_nil(d2.code, d2.err)
    local status, body = parse(get(("http://127.0.0.1:%d/healthz"):format(port)))
    assert.equal(200, status)
    assert.equal("ok\n", body)
    d2.proc:kill("sigterm")
    assert.equal(0, d2.wait_exit())
  end)
end)
