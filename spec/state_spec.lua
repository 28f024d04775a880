-- portman.state: the state file, written whole or not at all (a temporary
-- file beside it, renamed over it) and read back.
local helpers = require "helpers"
local uv = require "luv"

describe("portman.state", function()
  local state, dir, path

  setup(function()
    local before = helpers.globals()
    state = require "portman.state"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], "new global " .. k) end
    assert.equal(state, require("portman").state)
  end)

  before_each(function()
    dir = helpers.tmpdir()
    path = dir .. "/state.json"
  end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function files()
    local names = {}
    local req = assert(uv.fs_scandir(dir))
    for name in uv.fs_scandir_next, req do names[#names + 1] = name end
    table.sort(names)
    return names
  end

  local function read(p)
    local f = assert(io.open(p, "rb"))
    local s = f:read("a")
    f:close()
    return s
  end

  it("saves and loads a document back, integers and all", function()
    local doc = {version = 1, pools = {api = {range = {20000, 20099}, allocated = {20000, 20003}}},
                 registry = {services = {{name = "web", port = 20000, metadata = {note = "a \"b\"\n\0c"}}}},
                 mappings = require("portman.json").array(), ratio = 0.25}
    assert.same({true}, {state.save(path, doc)})
    local back = assert(state.load(path))
    assert.same({version = 1, pools = doc.pools, registry = doc.registry, mappings = {}, ratio = 0.25}, back)
    assert.equal("integer", math.type(back.pools.api.range[1]))
    assert.matches('"mappings":%[%]', read(path))
  end)

  it("replaces the file whole: a reader of the old one still reads all of it", function()
    assert(state.save(path, {n = 1, pad = ("x"):rep(10000)}))
    local old = assert(io.open(path, "rb"))
    local inode = uv.fs_stat(path).ino
    assert(state.save(path, {n = 2}))
    assert.not_equal(inode, uv.fs_stat(path).ino) -- a new file, renamed over the name
    local text = old:read("a")
    old:close()
    assert.equal(1, require("portman.json").decode(text).n)
    assert.equal(10000, #require("portman.json").decode(text).pad)
    assert.same({n = 2}, state.load(path))
  end)

  it("leaves no temporary file, and the file readable by its owner only", function()
    assert(state.save(path, {a = 1}))
    assert(state.save(path, {a = 2}))
    assert.same({"state.json"}, files())
    assert.equal(tonumber("600", 8), uv.fs_stat(path).mode & tonumber("777", 8))
    -- a file that was open to all before is replaced by a private one
    uv.fs_chmod(path, tonumber("644", 8))
    assert(state.save(path, {a = 3}))
    assert.equal(tonumber("600", 8), uv.fs_stat(path).mode & tonumber("777", 8))
  end)

  it("returns an errno word and leaves no temporary file when it cannot write", function()
    local ok, err, code = state.save(dir .. "/none/state.json", {})
    assert.is_nil(ok)
    assert.equal("not_found", code)
    assert.matches("^not_found: " .. dir:gsub("%p", "%%%0") .. "/none/state%.json%.tmp%.%d+: ENOENT: No such file or directory$",
      err)
    -- the name is a folder: the rename fails after the temporary file was written
    assert(uv.fs_mkdir(dir .. "/taken", tonumber("755", 8)))
    assert(uv.fs_mkdir(dir .. "/taken/x", tonumber("755", 8)))
    ok, err, code = state.save(dir .. "/taken", {a = 1})
    assert.is_nil(ok)
    assert.equal("EISDIR", code)
    assert.equal("EISDIR: " .. dir .. "/taken: Is a directory", err)
    assert.same({"taken"}, files())
  end)

  it("loads a missing file as an empty state", function()
    assert.same({}, state.load(path))
    assert.same({}, state.load(dir .. "/none/state.json"))
  end)

  it("answers a corrupt file with protocol, naming it", function()
    for _, text in ipairs{"", "{", '{"a":1', "\0\0\0", "null", "5", '"text"', "{} x", ("["):rep(5000)} do
      helpers.write(path, text)
      assert.same({nil, ("protocol: %s is not a JSON state document"):format(path), "protocol"},
        {state.load(path)}, text)
    end
  end)

  -- The document is an object; cjson gives an array as a table too, and
  -- load once took it.
  it("answers a JSON array with protocol", function()
    helpers.write(path, "[1,2]")
    assert.same({nil, ("protocol: %s is not a JSON state document"):format(path), "protocol"}, {state.load(path)})
  end)

  it("answers a file it may not read with denied (without root's overrides)", function()
    assert(state.save(path, {a = 1}))
    uv.fs_chmod(path, 0)
    local out = helpers.unprivileged(("print(require('portman.state').load(%q))"):format(path))
    assert.equal(("nil\tdenied: %s: EACCES: Permission denied\tdenied\n"):format(path), out)
  end)

  it("raises on bad arguments", function()
    assert.equal("bad argument #1 to 'save' (string expected, got nil)", helpers.raises(state.save, nil, {}))
    assert.equal("bad argument #2 to 'save' (table expected, got string)", helpers.raises(state.save, path, "x"))
    assert.matches("Cannot serialise function", helpers.raises(state.save, path, {f = print}))
    assert.same({}, files()) -- nothing written
  end)
end)
