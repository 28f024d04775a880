-- portman.log: one event a line, `time level event key=value ...`, fields
-- sorted, values quoted when they would not read back otherwise.
local helpers = require "helpers"

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
end)
