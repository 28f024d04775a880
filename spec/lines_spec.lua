-- portman.lines: newline framing with a cap.
local helpers = require "helpers"

describe("portman.lines", function()
  local lines = require "portman.lines"

  local function collect(framer, chunks)
    local got = {}
    for _, c in ipairs(chunks) do
      local ok, err, code = framer:feed(c, function(l) got[#got + 1] = l end)
      if not ok then return got, err, code end
    end
    return got
  end

  it("leaves _G alone", function()
    local before = helpers.globals()
    package.loaded["portman.lines"] = nil
    require "portman.lines"
    assert.same(before, helpers.globals())
  end)

  it("splits lines across and within chunks, empty lines too", function()
    local f = lines.new(100)
    assert.same({"ab", "", "cdef", "g"}, collect(f, {"a", "b\n\ncd", "e", "f\ng\n", "h"}))
    assert.equal(1, f:pending())
    assert.same({"hij"}, collect(f, {"ij\n"}))
    assert.equal(0, f:pending())
  end)

  it("joins a line sent one byte at a time", function()
    local f = lines.new(10000)
    local text = ("x"):rep(5000)
    local chunks = {}
    for i = 1, #text do chunks[i] = text:sub(i, i) end
    chunks[#chunks + 1] = "\n"
    assert.same({text}, collect(f, chunks))
  end)

  it("refuses a line over the cap, in one chunk or many, with or without its newline", function()
    local msg = "protocol: line longer than 8 bytes"
    local got, err, code = collect(lines.new(8), {("y"):rep(9) .. "\n"})
    assert.same({}, got)
    assert.equal(msg, err)
    assert.equal("protocol", code)
    got, err = collect(lines.new(8), {"ok\n", "yyyy", "yyyy", "y"})
    assert.same({"ok"}, got)
    assert.equal(msg, err)
    got, err = collect(lines.new(8), {"yyyyyyyy\n"})
    assert.same({"yyyyyyyy"}, got)
    assert.is_nil(err)
  end)

  it("stops at a line whose handler returns false", function()
    local f, got = lines.new(100), {}
    assert.is_true(f:feed("a\nb\nc\n", function(l)
      got[#got + 1] = l
      if l == "b" then return false end
    end))
    assert.same({"a", "b"}, got)
  end)
end)
