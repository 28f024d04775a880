-- portman.log: one event a line, `time level event key=value ...`, fields
-- sorted, values quoted when they would not read back otherwise.
local helpers = require "helpers"
local json = require "portman.json"

describe("portman.log", function()
  local log, saved_out, saved_threshold

  setup(function()
    local before = helpers.globals()
    log = require "portman.log"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], "new global " .. k) end
    assert.equal(log, require("portman").log)
    saved_out, saved_threshold = log.out, log.threshold
  end)
  after_each(function()
    log.close()
    log.out, log.threshold = saved_out, saved_threshold
  end)

  -- An out that keeps what is written, and counts flushes.
  local function sink()
    local s = {text = "", flushes = 0}
    function s.write(self, ...)
      for _, part in ipairs{...} do self.text = self.text .. part end
      return self
    end
    function s.flush(self) self.flushes = self.flushes + 1 end
    return s
  end

  -- The line without its time stamp.
  local function body(line) return (line:gsub("^%S+ ", "")) end

  describe("format", function()
    it("starts with the UTC time, the level and the event", function()
      local before = os.date("!%Y-%m-%dT%H:%M:%SZ")
      local line = log.format("warn", "pool_low")
      local after = os.date("!%Y-%m-%dT%H:%M:%SZ")
      local stamp = line:match("^(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ) warn pool_low$")
      assert.is_string(stamp, line)
      assert.is_true(before <= stamp and stamp <= after) -- ISO 8601 text sorts as time does
    end)

    it("writes the fields sorted by name, values as text", function()
      assert.equal("info started b=2 c=true d=1.5 port=20000 zone=eu",
        body(log.format("info", "started", {zone = "eu", port = 20000, b = 2, d = 1.5, c = true})))
      assert.equal("info list 1=x 2=y 3=z", body(log.format("info", "list", {"x", "y", "z"})))
      assert.equal("info none", body(log.format("info", "none", {})))
    end)

    it("quotes values with spaces, quotes, = or nothing, escaping \\, \" and control characters", function()
      local cases = {
        {"a b", '"a b"'}, {"tab\there", '"tab\\there"'}, {"esc\27[2J", '"esc\\x1b[2J"'}, {"", '""'}, {"k=v", '"k=v"'},
        {'say "hi"', '"say \\"hi\\""'}, {"two\nlines", '"two\\nlines"'},
        {"c:\\dir x", '"c:\\\\dir x"'},
        -- nothing to quote: written as it is, a backslash too
        {"back\\slash", "back\\slash"}, {"ünïcode", "ünïcode"}, {"a'b", "a'b"},
      }
      for _, c in ipairs(cases) do
        assert.equal("error e v=" .. c[2], body(log.format("error", "e", {v = c[1]})), c[1])
      end
    end)

    it("keeps an event on one line whatever its values hold", function()
      local line = log.format("info", "e", {a = "x\ny", b = "\n", c = "\n\n\"\n"})
      assert.is_nil(line:find("\n", 1, true))
      assert.equal('info e a="x\\ny" b="\\n" c="\\n\\n\\"\\n"', body(line))
    end)

    -- A carriage return ends a line for many readers (and redraws it on a
    -- terminal): it was once quoted but written raw.
    it("escapes carriage returns as it escapes newlines", function()
      local line = log.format("info", "e", {a = "ok\rforged line"})
      assert.is_nil(line:find("\r", 1, true))
      assert.equal('info e a="ok\\rforged line"', body(line))
    end)
  end)

  describe("log", function()
    it("writes a line and flushes at the threshold and above", function()
      local s = sink()
      log.out = s
      log.threshold = 2 -- info, the default
      log.debug("d", {x = 1})
      log.info("i", {x = 2})
      log.warn("w")
      log.error("e", {x = "a b"})
      log.log("info", "direct", {x = 3})
      local lines = {}
      for line in s.text:gmatch("([^\n]*)\n") do lines[#lines + 1] = body(line) end
      assert.same({"info i x=2", "warn w", 'error e x="a b"', "info direct x=3"}, lines)
      assert.equal(4, s.flushes)
      assert.equal("\n", s.text:sub(-1))
    end)

    it("defaults to info, on stderr", function()
      assert.equal(2, saved_threshold)
      assert.equal(io.stderr, saved_out)
    end)

    it("passes only warnings and errors at threshold 3; an unknown level counts as an error", function()
      local s = sink()
      log.out, log.threshold = s, 3
      log.info("i")
      log.debug("d")
      log.warn("w")
      log.log("fatal", "f")
      log.threshold = 5
      log.error("never")
      local lines = {}
      for line in s.text:gmatch("([^\n]*)\n") do lines[#lines + 1] = body(line) end
      assert.same({"warn w", "fatal f"}, lines)
    end)

    it("writes everything at threshold 1 (debug)", function()
      local s = sink()
      log.out, log.threshold = s, 1
      log.debug("d")
      assert.equal("debug d\n", body(s.text))
    end)

    it("writes to a file given as out", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      log.out = f
      log.warn("to_file", {n = 1})
      -- flushed: readable before the file is closed
      local r = assert(io.open(path))
      local text = r:read("a")
      r:close()
      f:close()
      os.remove(path)
      assert.equal("warn to_file n=1\n", body(text))
    end)
  end)
  -- The lines a sink holds, without the newlines.
  local function lines_of(s)
    local t = {}
    for line in s.text:gmatch("([^\n]*)\n") do t[#t + 1] = line end
    return t
  end

  describe("setup", function()
    it("filters by level: each level passes itself and those above it", function()
      local want = {
        debug = {"debug d", "info i", "warn w", "error e"},
        info = {"info i", "warn w", "error e"},
        warn = {"warn w", "error e"},
        error = {"error e"},
      }
      for level, expected in pairs(want) do
        local s = sink()
        assert.is_true(log.setup{level = level, out = s})
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        local got = {}
        for i, line in ipairs(lines_of(s)) do got[i] = body(line) end
        assert.same(expected, got, level)
      end
    end)

    it("defaults to info and text; close goes back to info, text and io.stderr", function()
      local s = sink()
      log.setup{out = s}
      log.debug("hidden")
      log.info("shown", {a = 1})
      assert.same({"info shown a=1"}, {body(lines_of(s)[1])})
      assert.equal(1, #lines_of(s))
      log.setup{level = "error", format = "json", out = sink()}
      log.close()
      assert.equal(2, log.threshold)
      assert.equal(io.stderr, log.out)
      assert.is_false(log.use_json)
      log.close() -- again: nothing to do
    end)

    it("raises on bad values, naming them", function()
      local cases = {
        {{level = "loud"}, "level: debug, info, warn or error expected, got 'loud'"},
        {{level = 3}, "level: debug, info, warn or error expected, got 3"},
        {{format = "xml"}, "format: text or json expected, got 'xml'"},
        {{out = 42}, "out: an open file or an object with write and flush expected, got number"},
        {{out = {write = function() end}}, "got table"},
        {{capture_stderr = "yes"}, "capture_stderr: boolean expected, got string"},
        {{colour = true}, "unknown option 'colour'"},
      }
      for _, c in ipairs(cases) do
        local err = helpers.raises(log.setup, c[1])
        assert.matches("bad argument #1 to 'setup'", err, nil, true)
        assert.matches(c[2], err, nil, true)
      end
      local f = assert(io.open(os.tmpname(), "w"))
      f:close()
      assert.matches("got closed file", helpers.raises(log.setup, {out = f}), nil, true)
      assert.matches("table expected, got string", helpers.raises(log.setup, "debug"), nil, true)
      -- a bad setup changes nothing
      assert.equal(2, log.threshold)
      assert.equal(io.stderr, log.out)
    end)

    it("writes to a file given as out", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      log.setup{out = f, format = "json"}
      log.warn("to_file", {n = 1})
      local r = assert(io.open(path))
      local doc = json.decode(r:read("l"))
      r:close()
      f:close()
      os.remove(path)
      assert.same({"to_file", "warn", 1}, {doc.event, doc.level, doc.n})
    end)
  end)

  describe("json", function()
    it("writes one object a line: time, level, event and the fields, keys sorted", function()
      local s = sink()
      log.setup{format = "json", out = s}
      local before = os.date("!%Y-%m-%dT%H:%M:%SZ")
      log.info("started", {zone = "eu", port = 20000, ratio = 1.5, up = true, big = 123456789012345})
      log.warn("bare")
      local after = os.date("!%Y-%m-%dT%H:%M:%SZ")
      local lines = lines_of(s)
      assert.equal(2, #lines)
      assert.equal(2, s.flushes)
      local first = lines[1]:gsub('"time":"[^"]*"', '"time":"T"')
      assert.equal('{"big":123456789012345,"event":"started","level":"info","port":20000,"ratio":1.5,'
        .. '"time":"T","up":true,"zone":"eu"}', first)
      local doc = assert(json.decode(lines[1]))
      assert.is_true(before <= doc.time and doc.time <= after)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", doc.time)
      assert.equal(20000, doc.port)
      assert.equal("integer", math.type(doc.port))
      local bare = assert(json.decode(lines[2]))
      assert.same({event = "bare", level = "warn", time = bare.time}, bare)
    end)

    it("keeps every event on one line, and every line valid JSON", function()
      local s = sink()
      log.setup{format = "json", out = s, level = "debug"}
      log.error("e", {a = "x\ny\r\n", b = '"quoted" \\ back', c = "esc\27[2J\0nul", d = "bad \xff\xfe utf8 ü"})
      log.debug("list", {"x", "y"})
      local lines = lines_of(s)
      assert.equal(2, #lines)
      local doc = assert(json.decode(lines[1]))
      assert.equal("x\ny\r\n", doc.a)
      assert.equal('"quoted" \\ back', doc.b)
      assert.equal("esc\27[2J\0nul", doc.c)
      assert.equal("bad \u{FFFD}\u{FFFD} utf8 ü", doc.d)
      assert.truthy(utf8.len(lines[1]))
      local list = assert(json.decode(lines[2]))
      assert.same({"x", "y"}, {list["1"], list["2"]})
    end)

    it("writes values JSON has no word for as text, and never loses a field to time, level or event", function()
      local s = sink()
      log.setup{format = "json", out = s}
      local t = {}
      log.info("odd", {t = t, nan = 0 / 0, inf = math.huge, null = json.null,
                       event = "pool_low", level = "warning", level_ = "taken", time = 5})
      local doc = assert(json.decode(lines_of(s)[1]))
      assert.equal(tostring(t), doc.t)
      assert.equal(tostring(0 / 0), doc.nan)
      assert.equal("inf", doc.inf)
      assert.equal(json.null, doc.null)
      assert.same({"odd", "pool_low", "info", "warning", "taken", 5},
        {doc.event, doc.event_, doc.level, doc.level__, doc.level_, doc.time_})
    end)
  end)
end)
