-- portman.cmd: the command line's conventions (help everywhere, --version,
-- sorted JSON, JSON error documents, tables, exit codes) and `portman alloc`.
local helpers = require "helpers"
local cjson = require "cjson"

local function run(args)
  return helpers.portman(args)
end

describe("portman alloc", function()
  local allocator = require "portman.allocator"
  -- these check the output and the strategies: the host's own sockets
  -- would move the ports (the host check has its own spec)

  it("prints hash ports as JSON, matching the library", function()
    local status, out, err = run("alloc --range 20000-20999 --strategy hash --node-id db-7 --count 3 --json --no-host-check")
    assert.equal(0, status, err)
    local doc = cjson.decode(out)
    local start = allocator.hash_start("db-7", 20000, 20999)
    assert.same({ports = {start, start + 1, start + 2}, range = {20000, 20999}, strategy = "hash"}, doc)
  end)

  it("prints one port a line by default", function()
    local status, out = run("alloc --range 20000-20999 --count 2 --no-host-check")
    assert.equal(0, status)
    assert.equal("20000\n20001\n", out)
  end)

  it("draws random ports inside the range", function()
    local status, out = run("alloc --range=40000-40009 --strategy random --count 10 --json --no-host-check")
    assert.equal(0, status)
    local ports = cjson.decode(out).ports
    table.sort(ports)
    assert.same({40000, 40001, 40002, 40003, 40004, 40005, 40006, 40007, 40008, 40009}, ports)
  end)

  it("exits 1 with the message when the pool runs out", function()
    local status, out, err = run("alloc --range 20000-20001 --count 3 --no-host-check")
    assert.equal(1, status)
    assert.equal("", out)
    assert.equal("portman alloc: exhausted: no free port in 20000-20001\n", err)
  end)

  local usage = {
    {"--range 30000-20000", "--range: 30000 > 20000"},
    {"--range 20000", "--range: LO-HI expected, got '20000'"},
    {"--range 0-10 --allow-privileged", "--range: ports 1-65535 expected, got '0-10'"},
    {"", "--range is required"},
    {"--range 20000-20010 --strategy best", "--strategy: sequential, random, hash expected, got 'best'"},
    {"--range 20000-20010 --strategy hash", "--strategy hash needs --node-id"},
    {"--range 80-90", "--range 80-90 includes ports below 1024 (add --allow-privileged)"},
    {"--range 20000-20010 --count x", "--count: integer expected, got 'x'"},
    {"--range 20000-20010 --count 1.5", "--count: integer expected, got '1.5'"},
    {"--range 20000-20010 --count 0", "--count: at least 1"},
    {"--range 20000-20010 --bogus", "unknown option --bogus"},
    {"--range 20000-20010 -q", "unknown option -q"},
    {"--range 20000-20010 extra", "unexpected argument 'extra'"},
    {"--range", "--range needs a value"},
    {"--range 20000-20010 --json=yes", "--json takes no value"},
    {"--range 20000-20010 --proto sctp", "--proto: tcp, udp, both expected, got 'sctp'"},
    {"--range 20000-20010 --no-host-check=1", "--no-host-check takes no value"},
    {"--range 20000-20010 --etcd http://127.0.0.1:1 --cluster c --no-host-check",
     "--no-host-check: --etcd checks no host's sockets"},
    {"--range 20000-20010 --etcd http://127.0.0.1:1 --cluster c --proto udp",
     "--proto: --etcd checks no host's sockets"},
  }
  for _, case in ipairs(usage) do
    it("exits 2 on 'alloc " .. case[1] .. "'", function()
      local status, out, err = run("alloc " .. case[1])
      assert.equal(2, status)
      assert.equal("", out)
      assert.equal("portman alloc: " .. case[2], err:match("^([^\n]*)\n"))
      assert.matches("\nusage: portman alloc %-%-range LO%-HI %[options%]\n$", err)
    end)
  end

  it("allows privileged ports on request", function()
    local status, out = run("alloc --range 80-81 --allow-privileged --json")
    assert.equal(0, status)
    assert.same({80}, cjson.decode(out).ports)
  end)

  -- The host check: the ports this host's sockets hold are passed over,
  -- so that each port printed binds at once, with a plain bind (no
  -- SO_REUSEADDR). The ranges are the kernel's choice of free ports; the
  -- spec holds some of them itself.
  describe("on this host", function()
    local uv = require "luv"
    local listener = require "portman.listener"
    local netaddr = require "portman.netaddr"
    local held

    before_each(function() held = {} end)
    after_each(function()
      for _, h in ipairs(held) do if not h:is_closing() then h:close() end end
      uv.run("nowait")
    end)

    local function hold_tcp(port, listening)
      local h = uv.new_tcp()
      held[#held + 1] = h
      assert(h:bind("127.0.0.1", port))
      if listening then assert(h:listen(4, function() end)) end
      return h
    end

    local function hold_udp(port)
      local h = uv.new_udp()
      held[#held + 1] = h
      assert(h:bind("127.0.0.1", port))
      return h
    end

    -- The ports `portman alloc ARGS --json` prints; each must bind right
    -- after, on every IPv4 address, without SO_REUSEADDR, for each proto.
    local function alloc_binding(args, protos)
      local status, out, err = run("alloc " .. args .. " --json")
      assert.equal(0, status, err)
      local ports = cjson.decode(out).ports
      for _, p in ipairs(ports) do
        for _, proto in ipairs(protos or {"tcp"}) do
          local l, lerr = listener.open{proto = proto, address = "0.0.0.0", port = p}
          assert.truthy(l, ("%d/%s does not bind: %s"):format(p, proto, tostring(lerr)))
          l:close()
        end
      end
      uv.run("nowait")
      table.sort(ports)
      return ports
    end

    local function without(lo, hi, ...)
      local skip, list = {}, {}
      for _, p in ipairs({...}) do skip[p] = true end
      for p = lo, hi do if not skip[p] then list[#list + 1] = p end end
      return list
    end

    it("skips a port a TCP listener holds, and prints it with --no-host-check", function()
      local lo, hi = helpers.free_range(8, "tcp", "0.0.0.0")
      local port = lo + 3
      hold_tcp(port, true)
      -- random: the 7 ports it prints over the 8 are the 7 free ones
      assert.same(without(lo, hi, port), alloc_binding(("--range %d-%d --count 7 --strategy random"):format(lo, hi)))
      local ports = alloc_binding(("--range %d-%d --count 5"):format(lo, hi))
      assert.same(without(lo, lo + 5, port), ports)
      local status, out = run(("alloc --range %d-%d --count 8 --no-host-check"):format(lo, hi))
      assert.equal(0, status)
      assert.truthy(out:find("\n" .. port .. "\n", 1, true))
      local err
      status, out, err = run(("alloc --range %d-%d --count 8"):format(lo, hi))
      assert.equal(1, status)
      assert.equal("", out)
      assert.equal(("portman alloc: exhausted: no free port in %d-%d (1 port in use on this host; "
        .. "see --no-host-check)\n"):format(lo, hi), err)
    end)

    it("skips a TCP port bound but not listening, which /proc/net/tcp does not list", function()
      local lo, hi = helpers.free_range(4, "tcp", "0.0.0.0")
      hold_tcp(lo + 1, false)
      assert.is_nil(netaddr.ports_in_use("tcp")[lo + 1])
      assert.same(without(lo, hi, lo + 1), alloc_binding(("--range %d-%d --count 3"):format(lo, hi)))
    end)

    -- A plain bind fails while a connection on the port is in TIME_WAIT
    -- (SO_REUSEADDR would pass it): alloc skips it.
    it("skips a TCP port in TIME_WAIT", function()
      local lo, hi = helpers.free_range(4, "tcp", "0.0.0.0")
      local port = lo + 2
      local server = hold_tcp(port, false)
      local closed = false
      assert(server:listen(4, function()
        local c = uv.new_tcp()
        server:accept(c)
        c:close() -- the server closes first: its side waits in TIME_WAIT
      end))
      local client = uv.new_tcp()
      held[#held + 1] = client
      client:connect("127.0.0.1", port, function(err)
        assert.is_nil(err)
        client:read_start(function(_, data) if not data then client:close(function() closed = true end) end end)
      end)
      assert.is_true(helpers.run_until(function() return closed end))
      server:close()
      uv.run("nowait")
      local function time_wait()
        local f = assert(io.open("/proc/net/tcp"))
        local text = f:read("a")
        f:close()
        return text:find((": 0100007F:%04X %%x+:%%x+ 06 "):format(port)) ~= nil
      end
      assert.is_true(helpers.run_until(time_wait, 2000, 10))
      local l, _, code = listener.open{proto = "tcp", address = "0.0.0.0", port = port}
      assert.is_nil(l)
      assert.equal("conflict", code)
      assert.same(without(lo, hi, port), alloc_binding(("--range %d-%d --count 3"):format(lo, hi)))
    end)

    -- n consecutive ports free for TCP and UDP on every IPv4 address.
    local function free_both(n)
      for _ = 1, 50 do
        local lo, hi = helpers.free_range(n, "tcp", "0.0.0.0")
        local ok = true
        for p = lo, hi do
          local u = uv.new_udp()
          ok = ok and u:bind("0.0.0.0", p) ~= nil
          u:close()
        end
        uv.run("nowait")
        if ok then return lo, hi end
      end
      error("no range free for both TCP and UDP")
    end

    it("checks UDP with --proto udp, both with --proto both", function()
      local lo, hi = free_both(6)
      local tcp_port, udp_port = lo + 1, lo + 2
      hold_tcp(tcp_port, true)
      hold_udp(udp_port)
      local count = ("--range %d-%d --count 5"):format(lo, hi)
      assert.same(without(lo, hi, udp_port), alloc_binding(count .. " --proto udp", {"udp"}))
      assert.same(without(lo, hi, tcp_port), alloc_binding(count))
      assert.same(without(lo, hi, tcp_port, udp_port),
        alloc_binding(("--range %d-%d --count 4 --proto both"):format(lo, hi), {"tcp", "udp"}))
      local status, out = run(("alloc --range %d-%d --count 6 --proto both --no-host-check"):format(lo, hi))
      assert.equal(0, status)
      local ports = {}
      for p in out:gmatch("%d+") do ports[#ports + 1] = math.tointeger(tonumber(p)) end
      table.sort(ports)
      assert.same(without(lo, hi), ports)
    end)
  end)
end)

describe("the command line", function()
  local cmd = require "portman.cmd"

  it("exits 2 on an unknown command and lists the commands", function()
    local status, _, err = run("frobnicate")
    assert.equal(2, status)
    assert.matches("unknown command 'frobnicate'", err)
    for _, entry in ipairs(cmd.ORDER) do assert.matches("\n  " .. entry[1]:gsub("%-", "%%-") .. " ", err) end
  end)

  it("exits 2 with no command, 0 for help, -h and --help", function()
    assert.equal(2, (run("")))
    for _, args in ipairs({"help", "-h", "--help"}) do
      local status, out = run(args)
      assert.equal(0, status, args)
      assert.matches("^usage: portman COMMAND", out)
    end
  end)

  it("prints its version", function()
    local status, out = run("--version")
    assert.equal(0, status)
    assert.equal("portman " .. require("portman").version .. "\n", out)
    assert.matches("^%d+%.%d+%.%d+$", require("portman").version)
  end)

  -- Every command: help through `help CMD`, and -h/--help anywhere on its
  -- line, even after bad flags; the help lists every flag with its default.
  for _, entry in ipairs(cmd.ORDER) do
    local name = entry[1]
    it("gives help for " .. name .. " wherever -h or --help stands", function()
      local status, text, err = run("help " .. name)
      assert.equal(0, status, err)
      local flat = text:gsub("%s+", " ")
      assert.matches("^usage: portman " .. name:gsub("%-", "%%-"), text)
      local spec = cmd.command(name)
      for _, f in ipairs(cmd.flags(spec)) do
        assert.truthy(text:find("--" .. f[1], 1, true), name .. " help lacks --" .. f[1])
        if f.default ~= nil then
          assert.truthy(flat:find("(default: " .. tostring(f.default) .. ")", 1, true),
            name .. " help lacks the default of --" .. f[1])
        end
      end
      for _, args in ipairs({name .. " -h", name .. " --bogus --help", name .. " x y z -h --json"}) do
        local s2, t2 = run(args)
        assert.equal(0, s2, args)
        assert.equal(text, t2, args)
      end
    end)
  end

  it("exits 2 for help on an unknown command", function()
    local status, _, err = run("help frobnicate")
    assert.equal(2, status)
    assert.matches("unknown command 'frobnicate'", err)
  end)

  it("writes JSON with sorted keys and empty lists as []", function()
    local json = require "portman.json"
    assert.equal('{"a":[],"b":{"c":1,"d":[1,2]},"e":"x/y\\n"}',
      json.encode({e = "x/y\n", b = {d = {1, 2}, c = 1}, a = json.array()}, {sorted = true}))
    local status, out = run("alloc --range 20000-20001 --json")
    assert.equal(0, status)
    assert.equal('{"ports":[20000],"range":[20000,20001],"strategy":"sequential"}\n', out)
  end)

  it("prints a JSON error document on stdout with --json, the message on stderr", function()
    local status, out, err = run("alloc --range 20000-20001 --count 3 --json")
    assert.equal(1, status)
    assert.same({code = "exhausted", error = "exhausted: no free port in 20000-20001"}, cjson.decode(out))
    assert.equal("portman alloc: exhausted: no free port in 20000-20001\n", err)
    status, out, err = run("alloc --range 20000-20001 --count 0 --json")
    assert.equal(2, status)
    assert.same({code = "usage", error = "--count: at least 1"}, cjson.decode(out))
    assert.matches("^portman alloc: %-%-count: at least 1\n", err)
  end)

  it("parses flags, lists, -- and the rest", function()
    local spec = {flags = {{"server", "HOST", "", kind = "list"}, {"n", "N", "", kind = "int", default = 3}},
                  json = true, args = {{"HOST", ""}, {"REST", "", rest = true}}}
    assert.same({server = {"a", "b"}, json = true, host = "x", rest = {"y", "-z"}, n = 3},
      cmd.parse({"--server", "a", "--server=b", "--json", "x", "--", "y", "-z"}, spec))
  end)

  it("sizes tables to their content, and -H leaves out the header", function()
    assert.equal("A     BB\nxxxx  y\n1     22", cmd.format_table({"A", "BB"}, {{"xxxx", "y"}, {1, 22}}))
    local listener = require("portman.listener")
    local l = assert(listener.open{proto = "tcp", address = "127.0.0.1", port = 0})
    local port = l.port
    local status, out = run(("probe 127.0.0.1 %d"):format(port))
    assert.equal(0, status)
    assert.matches("^PORT +STATE\n" .. port .. "/tcp +open\n", out)
    assert.matches("1 port in %d+ ms", out)
    status, out = run(("probe 127.0.0.1 %d -H"):format(port))
    assert.equal(0, status)
    assert.equal(port .. "/tcp  open\n", out)
    l:close()
    require("luv").run("nowait")
  end)

  it("says so when a command raises: an internal error, exit 1, not a usage error", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
      package.cpath = (os.getenv("PORTMAN_BUILD") or "build") .. "/?.so;" .. package.cpath
      local cmd = require "portman.cmd"
      cmd.command("alloc").run = function() error("bad argument #1 to 'x' (oops)") end
      os.exit(cmd.main({"alloc", "--range", "20000-20001", "--json"}))
    ]])
    f:close()
    local p = io.popen(("cd %s && %s %s 2>&1"):format(helpers.root, helpers.lua, script))
    local out = p:read("a")
    local _, _, status = p:close()
    os.remove(script)
    assert.equal(1, status)
    assert.matches("^portman alloc: internal error: [^\n]*oops", out)
    assert.matches('{"code":"internal","error":"internal error: ', out, 1, true)
  end)
end)

describe("the man page and bash completion", function()
  it("are made from the command specs and kept in the tree up to date", function()
    local doc = require "portman.cmd.doc"
    local function read(path)
      local f = assert(io.open(helpers.root .. "/" .. path))
      local s = f:read("a")
      f:close()
      return s
    end
    assert.equal(doc.man(), read("doc/portman.1"))
    assert.equal(doc.bash(), read("doc/portman.bash"))
  end)

  it("groff renders the man page without warnings", function()
    local p = io.popen(("groff -man -ww -z -Tutf8 %s/doc/portman.1 2>&1"):format(helpers.root))
    local warnings = p:read("a")
    p:close()
    assert.equal("", warnings)
  end)

  it("bash completes commands and a command's flags", function()
    local script = ([[
      source %s/doc/portman.bash
      COMP_WORDS=(portman al); COMP_CWORD=1; _portman; echo "${COMPREPLY[*]}"
      COMP_WORDS=(portman probe --con); COMP_CWORD=2; _portman; echo "${COMPREPLY[*]}"
    ]]):format(helpers.root)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(script)
    f:close()
    local p = io.popen("bash " .. path)
    local out = p:read("a")
    p:close()
    os.remove(path)
    assert.equal("alloc\n--concurrency\n", out)
  end)
end)

describe("docs/cli.md", function()
  local cmd = require "portman.cmd"
  local f = assert(io.open(helpers.root .. "/docs/cli.md"))
  local text = f:read("a")
  f:close()

  -- The text of the section "## portman NAME".
  local function section(name)
    local start = text:find("\n## portman " .. name:gsub("%-", "%%-") .. "\n")
    if not start then return nil end
    local stop = text:find("\n## ", start + 1) or #text
    return text:sub(start, stop)
  end

  local function example(name)
    local s = section(name)
    local block = s and s:match("```json\n(.-)\n```")
    return block and cjson.decode(block)
  end

  local function keys(t)
    local list = {}
    for k in pairs(t) do list[#list + 1] = k end
    table.sort(list)
    return list
  end

  it("has a section for every command, with a JSON example for those that print one", function()
    for _, entry in ipairs(cmd.ORDER) do
      assert.truthy(section(entry[1]), "no section for " .. entry[1])
      if cmd.command(entry[1]).json then
        assert.truthy(example(entry[1]), "no JSON example for " .. entry[1])
      end
    end
  end)

  it("shows the fields the commands really print", function()
    local _, out = run("alloc --range 20000-20999 --count 2 --json")
    assert.same(keys(example("alloc")), keys(cjson.decode(out)))
    _, out = run("probe 127.0.0.1 1-10 --json")
    local doc, ex = cjson.decode(out), example("probe")
    assert.same(keys(ex), keys(doc))
    assert.same(keys(ex.counts), keys(doc.counts))
    _, out = run("resolve 127.0.0.1 --json")
    doc, ex = cjson.decode(out), example("resolve")
    assert.same(keys(ex), keys(doc))
    assert.same(keys(ex.records[1]), keys(doc.records[1]))
  end)
end)

describe("portman check", function()
  local uv = require "luv"

  it("passes every example policy", function()
    for _, name in ipairs({"default", "db-cluster-node", "game-server", "postgres-cluster", "web-activation"}) do
      local status, out, err = run(("check %s/examples/%s.lua --no-host"):format(helpers.root, name))
      assert.equal(0, status, err)
      assert.matches(": ok %(%d+ pools?, %d+ services?%)\n$", out)
    end
  end)

  it("lists every problem, with the holder of a fixed port on this host, and exits 1", function()
    local dir = helpers.tmpdir()
    local held = helpers.free_port("tcp", "0.0.0.0")
    local s = uv.new_tcp()
    assert(s:bind("0.0.0.0", held))
    assert(s:listen(4, function() end))
    helpers.write(dir .. "/p.lua", ([[return {pools = {p = {range = {5, 1}}},
      services = {{name = "a", port = %d}, {name = "b", port = %d, prto = "tcp"}, {name = "c", pool = "q"}}}]])
      :format(held, held))
    local status, out = run("check " .. dir .. "/p.lua --json")
    assert.equal(1, status)
    local doc = cjson.decode(out)
    assert.is_false(doc.ok)
    assert.same({"services[3].pool: no pool 'q'", "pools.p: range: lo 5 > hi 1",
      ("services[1] (a): port %d/tcp is held on this host by pid %d (%s)"):format(held, helpers.pid(), "lua5.4"),
      "services[2] (b): unknown option 'prto'", ("services[2] (b): port tcp/%d is also 'a''s"):format(held),
      ("services[2] (b): port %d/tcp is held on this host by pid %d (%s)"):format(held, helpers.pid(), "lua5.4")},
      doc.problems)
    status, out = run("check " .. dir .. "/p.lua")
    assert.equal(1, status)
    assert.matches("p%.lua: 6 problems\n  services%[3%]", out)
    helpers.write(dir .. "/kind.lua", [[return {services = {{name = "a", port = 5, check = {kind = "postgress"}}}}]])
    status, out = run("check " .. dir .. "/kind.lua --no-host")
    assert.equal(1, status)
    assert.matches("services%[1%] %(a%): check: unknown kind 'postgress'", out)
    helpers.write(dir .. "/loop.lua", "while true do end")
    status, out = run("check " .. dir .. "/loop.lua")
    assert.equal(1, status)
    assert.matches("ran longer than 2000 ms", out)
    assert.equal(1, (run("check " .. dir .. "/none.lua")))
    s:close()
    uv.run("nowait")
    os.execute("rm -rf " .. dir)
  end)
end)
