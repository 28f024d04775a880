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

  -- ---- a state directory that others may have written ----

  local VALID = helpers.root .. "/fuzz/seeds/state/valid.json"

  it("takes a valid daemon state, the fuzz seed's and a manager's own", function()
    local doc = assert(state.load_checked(VALID))
    assert.equal("a", doc.registry.services[1].name)
    assert.equal(21000, doc.mappings[1].external_port)
    -- what a manager writes reads back valid: a pool, a service, a run-time registration
    local m = require("portman.manager").new{state_file = path, check_host = false}
    m:add_pool("p", {range = {21000, 21099}, strategy = "hash", node_id = "n"})
    assert(m:start_service{name = "web", pool = "p", listen = false})
    assert(m:register{name = "ext", port = 21190, address = "127.0.0.3", metadata = {n = {1, 2.5, true}}})
    local done = false
    m:shutdown(0, function() done = true end)
    assert.is_true(helpers.run_until(function() return done end))
    local back = assert(state.load_checked(path))
    assert.same({"ext", "web"}, {back.registry.services[1].name, back.registry.services[2].name})
    assert.same({"ext"}, back.runtime)
    assert.equal("hash", back.pools.p.strategy)
    assert.same({}, state.load_checked(dir .. "/none.json")) -- nothing saved yet
  end)

  it("takes what the router code saves: a mapping's internal address and description, the gateway", function()
    local text = '{"version":1,"mappings":[{"service":"web","method":"pcp","external_ip":"11.22.33.1",'
      .. '"external_port":8080,"internal_ip":"192.168.77.2","internal_port":8080,"proto":"tcp",'
      .. '"description":"portman web","expires":1796000000}],"gateway":{"preferred":"upnp",'
      .. '"upnp":{"control_url":"http://192.168.77.1:5000/ctl/IPConn","service_type":'
      .. '"urn:schemas-upnp-org:service:WANIPConnection:2","lan_addr":"192.168.77.2"},'
      .. '"natpmp":{"gateway":"192.168.77.1","supported":true}}}'
    helpers.write(path, text)
    local doc = assert(state.load_checked(path))
    assert.equal("portman web", doc.mappings[1].description)
    assert.equal("upnp", doc.gateway.preferred)
    helpers.write(path, '{"gateway":{"preferred":"carrier-pigeon"}}')
    local ok, err = state.load_checked(path)
    assert.is_nil(ok)
    assert.matches("gateway.preferred: 'carrier%-pigeon' is not one of upnp, natpmp, pcp", err)
  end)

  -- each refused with the field named, the file left as it was
  local corrupt = {
    {"mappings that are a string", '{"version":1,"mappings":"x"}', "mappings: array expected, got 'x'"},
    {"services that are a number", '{"version":1,"registry":{"version":1,"services":5}}',
     "registry.services: array expected, got 5"},
    {"a saved port of 99999", '{"registry":{"version":1,"services":[{"name":"a","port":99999}]}}',
     "registry.services[1].port: 99999 is not a port (1-65535)"},
    {"a mapping's external_port 0", '{"mappings":[{"service":"a","external_port":1},'
      .. '{"service":"b","external_port":2},{"service":"c","external_port":0}]}',
     "mappings[3].external_port: 0 is not a port (1-65535)"},
    {"a pid that is a string", '{"programs":[{"name":"a","pid":"12","started_at_boot_ticks":1}]}',
     "programs[1].pid: integer expected, got '12'"},
    {"a run-time name that is a number", '{"runtime":["a",1]}', "runtime[2]: string expected, got 1"},
    {"a registry that is a list", '{"registry":[1]}', "registry: object expected, got an array"},
    {"a program that is a number", '{"programs":[5]}', "programs[1]: object expected, got 5"},
    {"an address that is not one", '{"registry":{"version":1,"services":[{"name":"a","port":1,"address":"x"}]}}',
     "registry.services[1].address: 'x' is not an IP address"},
    {"a proto that is not one", '{"mappings":[{"service":"a","external_port":1,"proto":"sctp"}]}',
     "mappings[1].proto: 'sctp' is not one of tcp, udp"},
    {"metadata that JSON cannot write back", '{"registry":{"version":1,"services":'
      .. '[{"name":"a","port":1,"metadata":{"x":NaN}}]}}', "registry.services[1].metadata: NaN cannot be written as JSON"},
    {"a name twice", '{"registry":{"version":1,"services":[{"name":"a","port":1},{"name":"a","port":2}]}}',
     "registry.services[2].name: 'a' is also [1]'s name"},
    {"an unknown field", '{"mappings":[{"service":"a","external_port":1,"evil":true}]}',
     "mappings[1].evil: unknown field"},
    {"a null version", '{"version":null}', "version: integer expected, got null"},
    {"an unknown version", '{"version":2,"mappings":[]}', "version: unknown version 2 (this portman reads 1)"},
    {"a pool whose range is empty", '{"pools":{"p":{"version":1,"range":[5,4],"strategy":"hash",'
      .. '"cursor":5,"bitmap":"PMB1 4-5"}}}', "pools.p.range: 5-4 is empty"},
  }
  for _, case in ipairs(corrupt) do
    it("refuses a state with " .. case[1] .. ", naming the field", function()
      helpers.write(path, case[2])
      local ok, err, code = state.load_checked(path)
      assert.is_nil(ok)
      assert.equal("protocol", code)
      assert.equal(("protocol: corrupt state: %s (in %s)"):format(case[3], path), err)
      assert.equal(case[2], read(path)) -- untouched, for the operator
    end)
  end

  -- seen in the fuzz corpus: a key from the file went into the message
  -- (and the log line) raw, escape sequences and all, however long
  it("names a field whose key is odd in a short, printable message", function()
    local text = assert(helpers.read(helpers.root .. "/fuzz/seeds/state/escape-in-keys.json"))
    helpers.write(path, text)
    assert.same({nil, ("protocol: corrupt state: pools['p?[31m'].bitmap: not a PMB1 bitmap (in %s)"):format(path),
                 "protocol"}, {state.load_checked(path)})
    helpers.write(path, '{"mappings":[{"service":"a","external_port":1,"' .. ("k"):rep(5000) .. '":1}]}')
    assert.equal(("protocol: corrupt state: mappings[1]['%s'...]: unknown field (in %s)"):format(("k"):rep(40), path),
      select(2, state.load_checked(path)))
  end)

  it("refuses truncated JSON and a document that is not an object", function()
    local text = read(VALID)
    for _, bad in ipairs{text:sub(1, #text // 2), "[1,2]", '"x"', "{} {}"} do
      helpers.write(path, bad)
      assert.same({nil, ("protocol: %s is not a JSON state document"):format(path), "protocol"},
        {state.load_checked(path)}, bad)
      assert.equal(bad, read(path))
    end
  end)

  it("reads neither through a symlink nor from a FIFO, nor more than MAX_SIZE", function()
    local target = dir .. "/target.json"
    helpers.write(target, '{"version":1}')
    assert(uv.fs_symlink(target, path))
    local ok, err, code = state.load(path)
    assert.is_nil(ok)
    assert.equal("ELOOP", code)
    assert.matches("ELOOP", err)
    os.remove(path)
    -- a FIFO would block an open for reading until someone writes: the
    -- read must refuse it at once (a child under timeout, so a hang fails)
    assert.equal(0, os.execute("mkfifo " .. path) and 0)
    local out, exited = helpers.lua_child(("print(require('portman.state').load(%q))"):format(path), "timeout 20")
    assert.is_true(exited, out)
    assert.equal(("nil\tprotocol: %s is not a regular file\tprotocol\n"):format(path), out)
    os.remove(path)
    local saved = state.MAX_SIZE
    state.MAX_SIZE = 100
    helpers.write(path, "{" .. (" "):rep(200) .. "}")
    ok, err, code = state.load(path)
    state.MAX_SIZE = saved
    assert.same({nil, ("protocol: %s is 202 bytes, more than 100"):format(path), "protocol"}, {ok, err, code})
  end)

  it("refuses a state file that another uid owns", function()
    helpers.write(path, '{"version":1}')
    assert(uv.fs_chown(path, 65534, 65534))
    local ok, err, code = state.load_checked(path)
    assert.is_nil(ok)
    assert.equal("denied", code)
    assert.equal(("denied: %s is owned by uid 65534, not by %d or root"):format(path, select(2, require("portman.core").ids())),
      err)
  end)

  it("does not follow a symlink planted at its temporary file", function()
    local target, tmp = dir .. "/target", ("%s.tmp.%d"):format(path, helpers.pid())
    helpers.write(target, "precious")
    assert(uv.fs_symlink(target, tmp))
    assert.same({true}, {state.save(path, {a = 1})})
    assert.equal("precious", read(target)) -- the target is untouched
    assert.same({a = 1}, state.load(path))
    assert.same({"state.json", "target"}, files())
    -- a file left at the name (a killed run of the same pid) is replaced too
    helpers.write(tmp, "left")
    assert(state.save(path, {a = 2}))
    assert.same({"state.json", "target"}, files())
    assert.same({a = 2}, state.load(path))
  end)

  -- A pid that was a process's and is no more.
  local function dead_pid()
    local p = io.popen("sh -c 'echo $$'")
    local pid = math.tointeger(tonumber(p:read("l")))
    p:close()
    assert.is_true(helpers.gone(pid))
    return pid
  end

  it("removes the temporary files of dead runs only, and nothing else", function()
    local dead, live = dead_pid(), helpers.pid()
    local names = {
      ("state.json.tmp.%d"):format(dead), ("state.json.tmp.%d"):format(live), "state.json.tmp.x1",
      ("other.json.tmp.%d"):format(dead), (".probe.%d"):format(dead), (".probe.%d.tmp.%d"):format(dead, dead),
      (".probe.%d.tmp.%d"):format(dead, live), "state.json",
    }
    for _, n in ipairs(names) do helpers.write(dir .. "/" .. n, "x") end
    assert(uv.fs_mkdir(("%s/state.json.tmp.%d.d"):format(dir, dead), tonumber("700", 8)))
    assert(uv.fs_symlink(dir .. "/state.json", ("%s/state.json.tmp.%d"):format(dir, dead + 0) .. "1"))
    local removed = assert(state.remove_stale(dir, {"state.json.tmp.", ".probe."}))
    local want = {("state.json.tmp.%d"):format(dead), (".probe.%d"):format(dead),
                  (".probe.%d.tmp.%d"):format(dead, dead)}
    table.sort(want)
    -- (dead .. "1" may be a live pid: it is removed only when it is not)
    for i = #removed, 1, -1 do
      if removed[i] == ("state.json.tmp.%d1"):format(dead) then table.remove(removed, i) end
    end
    assert.same(want, removed)
    for _, n in ipairs(want) do assert.is_nil(uv.fs_lstat(dir .. "/" .. n)) end
    assert.equal("x", read(dir .. "/state.json")) -- a symlink's target is never touched
    assert.is_truthy(uv.fs_stat(("%s/state.json.tmp.%d"):format(dir, live)))
    assert.is_truthy(uv.fs_stat(("%s/.probe.%d.tmp.%d"):format(dir, dead, live)))
    assert.is_truthy(uv.fs_stat(dir .. "/other.json.tmp." .. dead))
    assert.is_truthy(uv.fs_stat(("%s/state.json.tmp.%d.d"):format(dir, dead)))
  end)
end)
