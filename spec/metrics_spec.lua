-- portman.metrics and portman.statuspage on a real manager: its pools,
-- services with Lua checks that pass and fail, a program that exits, a
-- pool that fills up; the text checked by Prometheus' own promtool, the
-- values read back; label values and page texts escaped.
local helpers = require "helpers"
local manager = require "portman.manager"
local metrics = require "portman.metrics"
local statuspage = require "portman.statuspage"
local log = require "portman.log"

-- Runs `promtool check metrics` on text; returns its exit status and output.
local function promtool(text)
  local path = os.tmpname()
  helpers.write(path, text)
  local p = io.popen(("promtool check metrics < %s 2>&1"):format(path))
  local out = p:read("a")
  local ok, _, status = p:close()
  os.remove(path)
  return ok and 0 or status, out
end

-- The value of the sample line that starts with prefix (nil when none).
local function sample(text, prefix)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #prefix + 1) == prefix .. " " then return tonumber(line:sub(#prefix + 2)) end
  end
end

local HOSTILE = 'we"b\\x\nnew <b>&</b>'

describe("portman.metrics", function()
  local m, c, dir
  before_each(function()
    log.setup{level = "error"}
    dir = helpers.tmpdir()
    local lo = helpers.free_range(4)
    m = manager.new{state_file = dir .. "/state.json"}
    m:add_pool("small", {range = {lo, lo + 3}, warning = 50, critical = 75})
    c = metrics.new(m)
    assert(m:add_service{name = "up", pool = "small", listen = false,
      check = {kind = "lua", fn = function(done) done(true) end, interval = 20, rise = 1, jitter = 5}})
    assert(m:add_service{name = HOSTILE, pool = "small", listen = false,
      check = {kind = "lua", fn = function(done) done(false, "unreachable", "down") end, interval = 20, fall = 1,
               jitter = 5}})
    assert(m:add_service{name = "prog", pool = "small", exec = {"sh", "-c", "exit 3"}, restart = "no"})
    assert(m:add_service{name = "quiet", pool = "small", listen = false, check = false})
  end)
  after_each(function()
    local done = false
    c:close()
    m:shutdown(0, function() done = true end)
    helpers.run_until(function() return done end)
    log.setup{}
    os.execute("rm -rf " .. dir)
  end)

  local function settle()
    helpers.run_until(function()
      local up, h = c.hist:get("up"), c.hist:get(HOSTILE)
      return up and h and up.count >= 3 and h.count >= 3 and c.exits.prog ~= nil and c.exhaustion.small ~= nil
    end, 5000, 20)
  end

  it("renders text that promtool accepts, with every family's HELP and TYPE", function()
    settle()
    local text = c:render()
    local status, out = promtool(text)
    assert.equal(0, status, out .. "\n" .. text)
    for _, name in ipairs({"portman_pool_ports", "portman_service_up", "portman_service_status",
                           "portman_health_check_duration_seconds", "portman_health_checks_total",
                           "portman_pool_exhaustion_events_total", "portman_program_exits_total",
                           "portman_state_saves_total", "process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_open_fds", "process_max_fds", "process_start_time_seconds"}) do
      assert.matches("\n# HELP " .. name .. " [^\n]+\n# TYPE " .. name .. " %a+\n", "\n" .. text)
    end
  end)

  it("counts what happened: pools, services up and down, check results, exits, exhaustion", function()
    settle()
    local text = c:render()
    assert.equal(4, sample(text, 'portman_pool_ports{pool="small",state="allocated"}'))
    assert.equal(0, sample(text, 'portman_pool_ports{pool="small",state="free"}'))
    assert.equal(4, sample(text, 'portman_pool_allocations_total{pool="small"}'))
    assert.equal(1, sample(text, 'portman_service_up{service="up",proto="tcp"}'))
    assert.equal(1, sample(text, 'portman_service_up{service="quiet",proto="tcp"}'))
    local esc = 'we\\"b\\\\x\\nnew <b>&</b>'
    assert.equal(0, sample(text, 'portman_service_up{service="' .. esc .. '",proto="tcp"}'))
    assert.equal(1, sample(text, 'portman_service_status{service="' .. esc .. '",status="unreachable"}'))
    assert.equal(0, sample(text, 'portman_service_status{service="' .. esc .. '",status="healthy"}'))
    local ok_count = sample(text, 'portman_health_checks_total{service="up",result="healthy"}')
    assert.is_true(ok_count >= 3)
    assert.equal(ok_count, sample(text, 'portman_health_check_duration_seconds_count{service="up"}'))
    assert.equal(ok_count, sample(text, 'portman_health_check_duration_seconds_bucket{service="up",le="+Inf"}'))
    assert.is_true(sample(text, 'portman_health_checks_total{service="' .. esc .. '",result="unreachable"}') >= 3)
    assert.equal(1, sample(text, 'portman_program_exits_total{service="prog",code="3"}'))
    assert.is_true(sample(text, 'portman_pool_exhaustion_events_total{pool="small",level="critical"}') >= 1)
    assert.is_true(sample(text, "portman_state_saves_total") >= 1)
    assert.equal(0, sample(text, "portman_state_save_failures_total"))
    assert.is_true(sample(text, "process_open_fds") > 0)
    assert.is_true(sample(text, "process_resident_memory_bytes") > 1e6)
    local start = sample(text, "process_start_time_seconds")
    assert.is_true(start <= os.time() + 1 and start > os.time() - 86400 * 365)
  end)

  it("forgets a stopped service's series", function()
    settle()
    local done = false
    m:stop_service("up", 0, function() done = true end)
    helpers.run_until(function() return done end)
    local text = c:render()
    assert.is_nil(text:find('service="up"', 1, true))
    assert.equal(0, promtool(text))
  end)

  it("joins text in C: integers of any size, floats, and a part of another type refused by its index", function()
    local core = require "portman.core"
    assert.equal("a 0 -7 9223372036854775807 -9223372036854775808 0.25 1e+20\n",
      core.text_join({"a ", 0, " ", -7, " ", math.maxinteger, " ", math.mininteger, " ", 0.25, " ", 1e20, "\n", "x"},
        13))
    assert.equal("", core.text_join({"x"}, 0))
    assert.matches("parts%[2%] is a boolean", helpers.raises(core.text_join, {"a", true}, 2))
  end)

  it("keeps histograms in C: buckets by upper bound, removal, names escaped, the text in the names' order", function()
    local core = require "portman.core"
    local hs = core.histograms_new({0.5, 1})
    for _, v in ipairs({0.5, 0.75, 2, 0.1}) do hs:observe("a", v, v < 1 and "healthy" or "unreachable") end
    hs:observe('q"\\\n', 1, 'odd"word')
    hs:observe("gone", 1, "healthy")
    -- a bound is its bucket's upper end
    assert.same({counts = {2, 1, 1}, sum = 3.35, count = 4, results = {healthy = 3, unreachable = 1}}, hs:get("a"))
    assert.is_true(hs:remove("gone") == nil and hs:get("gone") == nil)
    hs:observe("new", 0.25) -- takes the freed slot, from zero; no result word
    assert.same({counts = {1, 0, 0}, sum = 0.25, count = 1, results = {}}, hs:get("new"))
    local chunks = {"before"}
    hs:text(chunks, "h", "s", {"new", "none", 'q"\\\n', "a", 7})
    assert.same({"before", 'h_bucket{s="new",le="0.5"} 1\nh_bucket{s="new",le="1"} 1\nh_bucket{s="new",le="+Inf"} 1\n'
      .. 'h_sum{s="new"} 0.25\nh_count{s="new"} 1\n'
      .. 'h_bucket{s="q\\"\\\\\\n",le="0.5"} 0\nh_bucket{s="q\\"\\\\\\n",le="1"} 1\n'
      .. 'h_bucket{s="q\\"\\\\\\n",le="+Inf"} 1\nh_sum{s="q\\"\\\\\\n"} 1\nh_count{s="q\\"\\\\\\n"} 1\n'
      .. 'h_bucket{s="a",le="0.5"} 2\nh_bucket{s="a",le="1"} 3\nh_bucket{s="a",le="+Inf"} 4\n'
      .. 'h_sum{s="a"} 3.35\nh_count{s="a"} 4\n'}, chunks)
    chunks = {}
    hs:results_text(chunks, "r", "s", "w", {"new", "a", 'q"\\\n', "none"})
    assert.same({'r{s="a",w="healthy"} 3\nr{s="a",w="unreachable"} 1\nr{s="q\\"\\\\\\n",w="odd\\"word"} 1\n'}, chunks)
    -- past 64 distinct words in the set (3 so far), the rest count as "other"
    for i = 1, 70 do hs:observe("many", 0, "word" .. i) end
    local words = hs:get("many").results
    assert.equal(9, words.other)
    assert.is_true(words.word1 == 1 and words.word61 == 1)
    assert.is_nil(words.word62)
    -- sums in seconds: up to 9 fraction digits, trailing zeros dropped; past
    -- 2^53 ns (and below 0) as %.15g
    local sums = {0.000123, 12.25, 3.0, 0.1 + 0.2, 1e-10, 12345678.5, -0.5}
    local want = {"0.000123", "12.25", "3", "0.3", "0", "12345678.5", "-0.5"}
    for i, sum in ipairs(sums) do
      local one = core.histograms_new({})
      one:observe("v", sum)
      chunks = {}
      one:text(chunks, "h", "s", {"v"})
      assert.equal(want[i], chunks[1]:match('h_sum{s="v"} (%S+)'), "sum " .. sum)
    end
    assert.matches("increasing numbers expected", helpers.raises(core.histograms_new, {1, 0.5}))
    assert.matches("too many bounds", helpers.raises(core.histograms_new, {
      1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33}))
  end)

  it("writes a line or two per service in C, names and statuses escaped, in the names' order", function()
    local core = require "portman.core"
    local names, protos, statuses = {"a", 'b"\\', "c", "d"}, {"tcp", "udp", "tcp", "tcp"},
      {"healthy", "unchecked", "unreachable", 'we"ird'}
    local up = {healthy = 1, unchecked = 1}
    local chunks = {"before"}
    core.service_text(chunks, "u", "up", names, protos, statuses, up)
    assert.same({"before", 'u{service="a",proto="tcp"} 1\nu{service="b\\"\\\\",proto="udp"} 1\n'
      .. 'u{service="c",proto="tcp"} 0\nu{service="d",proto="tcp"} 0\n'}, chunks)
    chunks = {}
    core.service_text(chunks, "s", "status", names, protos, statuses, up)
    assert.same({'s{service="a",status="healthy"} 1\n'
      .. 's{service="b\\"\\\\",status="healthy"} 0\ns{service="b\\"\\\\",status="unchecked"} 1\n'
      .. 's{service="c",status="healthy"} 0\ns{service="c",status="unreachable"} 1\n'
      .. 's{service="d",status="healthy"} 0\ns{service="d",status="we\\"ird"} 1\n'}, chunks)
    -- 10,000 services come as several chunks of about 64 KiB, in order
    local many, mp, ms = {}, {}, {}
    for i = 1, 10000 do many[i], mp[i], ms[i] = ("svc-%05d"):format(i), "tcp", "healthy" end
    chunks = {}
    core.service_text(chunks, "portman_service_up", "up", many, mp, ms, up)
    assert.is_true(#chunks > 1)
    local text = table.concat(chunks)
    local _, lines = text:gsub("\n", "")
    assert.equal(10000, lines)
    assert.equal('portman_service_up{service="svc-00001",proto="tcp"} 1', text:match("^[^\n]*"))
    assert.equal('portman_service_up{service="svc-10000",proto="tcp"} 1', text:match("([^\n]*)\n$"))
    assert.matches("bad argument #3", helpers.raises(core.service_text, {}, "m", "sideways", {}, {}, {}, {}))
  end)

  it("escapes label values as the format asks", function()
    assert.equal('a\\"b\\\\c\\nd', metrics.escape('a"b\\c\nd'))
    assert.equal("plain", metrics.escape("plain"))
  end)
end)

describe("portman.statuspage", function()
  it("escapes every text from services and shows one sparkline per checked service", function()
    local doc = {services = {
      {name = "<script>alert(1)</script>", proto = "tcp", port = 1, status = "healthy", since = os.time() - 90},
      {name = "b", proto = "tcp", port = 2, status = "unreachable", reason = '"><img src=x onerror=alert(1)>',
       since = os.time()},
      {name = "c", proto = "udp", port = 3, status = "unchecked"},
    }, pools = {{name = "p&q", range = {1, 10}, allocated = 3, size = 10, utilization = 30}},
      mappings = {{service = "b", method = "natpmp", external_ip = "203.0.113.1", external_port = 2, proto = "tcp",
                   expires = os.time() + 60}}}
    local histories = {
      ["<script>alert(1)</script>"] = {{ok = true, status = "healthy", ms = 0.5}, {ok = false, status = "<x>", ms = 2}},
      b = {},
    }
    local html = statuspage.render(doc, function(name) return histories[name] end)
    assert.is_nil(html:find("<script", 1, true))
    assert.is_nil(html:find("<img", 1, true))
    assert.is_nil(html:find("<x>", 1, true))
    assert.truthy(html:find("&lt;script&gt;alert(1)&lt;/script&gt;", 1, true))
    assert.truthy(html:find("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;", 1, true))
    assert.truthy(html:find("p&amp;q", 1, true))
    assert.equal(2, select(2, html:gsub('<svg class="spark"', "")))
    -- one bar per result: the first passed, the second failed
    assert.equal(1, select(2, html:gsub('<path class="ok" fill="#2a2" d="M[^M"]+"/>', "")))
    assert.equal(1, select(2, html:gsub('<path class="fail" fill="#d22" d="M[^M"]+"/>', "")))
    assert.truthy(html:find("the last 2 checks, 1 failed", 1, true))
    assert.truthy(html:find('<meta http-equiv="refresh"', 1, true))
    assert.truthy(html:find("natpmp", 1, true))
    assert.is_nil(html:find("Sparklines are drawn for the first", 1, true))
    -- past MAX_SPARKLINES, the others get none and the page says so
    local max = statuspage.MAX_SPARKLINES
    statuspage.MAX_SPARKLINES = 1
    local capped = statuspage.render(doc, function(name) return histories[name] end)
    statuspage.MAX_SPARKLINES = max
    assert.equal(1, select(2, capped:gsub('<svg class="spark"', "")))
    assert.truthy(capped:find("Sparklines are drawn for the first 1 checked services", 1, true))
  end)
end)
