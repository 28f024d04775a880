local helpers = require "helpers"
local cjson = require "cjson"

describe("portman alloc", function()
  local allocator = require "portman.allocator"

  it("prints hash ports as JSON, matching the library", function()
    local status, out, err = helpers.portman("alloc --range 20000-20999 --strategy hash --node-id db-7 --count 3 --json")
    assert.equal(0, status, err)
    local doc = cjson.decode(out)
    local start = allocator.hash_start("db-7", 20000, 20999)
    assert.same({ports = {start, start + 1, start + 2}, range = {20000, 20999}, strategy = "hash"}, doc)
  end)

  it("prints one port a line by default", function()
    local status, out = helpers.portman("alloc --range 20000-20999 --count 2")
    assert.equal(0, status)
    assert.equal("20000\n20001\n", out)
  end)

  it("draws random ports inside the range", function()
    local status, out = helpers.portman("alloc --range=40000-40009 --strategy random --count 10 --json")
    assert.equal(0, status)
    local ports = cjson.decode(out).ports
    table.sort(ports)
    assert.same({40000, 40001, 40002, 40003, 40004, 40005, 40006, 40007, 40008, 40009}, ports)
  end)

  it("exits 1 with the message when the pool runs out", function()
    local status, out, err = helpers.portman("alloc --range 20000-20001 --count 3")
    assert.equal(1, status)
    assert.equal("", out)
    assert.equal("portman alloc: exhausted: no free port in 20000-20001\n", err)
  end)

  local usage = {
    {"--range 30000-20000", "range: lo 30000 > hi 20000"},
    {"--range 20000", "--range: LO-HI expected, got '20000'"},
    {"", "--range is required"},
    {"--range 20000-20010 --strategy best", "unknown strategy 'best' (sequential, random, hash)"},
    {"--range 20000-20010 --strategy hash", "strategy 'hash' needs node_id"},
    {"--range 80-90", "range 80-90 includes ports below 1024 (set allow_privileged = true)"},
    {"--range 20000-20010 --count x", "--count: integer expected, got 'x'"},
    {"--range 20000-20010 --count 0", "--count: at least 1"},
    {"--range 20000-20010 --bogus", "unknown option --bogus"},
    {"--range 20000-20010 extra", "unexpected argument 'extra'"},
    {"--range", "--range needs a value"},
  }
  for _, case in ipairs(usage) do
    it("exits 2 on 'alloc " .. case[1] .. "'", function()
      local status, out, err = helpers.portman("alloc " .. case[1])
      assert.equal(2, status)
      assert.equal("", out)
      assert.equal("portman alloc: " .. case[2], err:match("^([^\n]*)\n"))
      assert.matches("\nusage: portman alloc %-%-range LO%-HI", err)
    end)
  end

  it("allows privileged ports on request", function()
    local status, out = helpers.portman("alloc --range 80-81 --allow-privileged --json")
    assert.equal(0, status)
    assert.same({80}, cjson.decode(out).ports)
  end)
end)

describe("portman", function()
  it("exits 2 on an unknown command and lists the commands", function()
    local status, _, err = helpers.portman("frobnicate")
    assert.equal(2, status)
    assert.matches("unknown command 'frobnicate'", err)
    assert.matches("commands: .*alloc", err)
  end)

  it("exits 2 with no command, 0 for help", function()
    assert.equal(2, (helpers.portman("")))
    local status, out = helpers.portman("help")
    assert.equal(0, status)
    assert.matches("^usage: portman COMMAND", out)
  end)

  it("parses flags, lists and the rest", function()
    local cli = require "portman.cli"
    local opts = cli.parse({"--server", "a", "--server=b", "--json", "x", "y", "z"},
      {flags = {server = "list", json = "bool"}, positional = {"HOST", "..."}})
    assert.same({server = {"a", "b"}, json = true, host = "x", rest = {"y", "z"}}, opts)
  end)
end)
