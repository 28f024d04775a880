-- portman.netaddr's host check for `portman alloc`: ports_in_use (the
-- local ports of the kernel's socket tables, any state) and try_bind (a
-- plain test bind on the dual-stack wildcard).
local helpers = require "helpers"
local uv = require "luv"

describe("portman.netaddr on this host's ports", function()
  local netaddr = require "portman.netaddr"
  local handles

  before_each(function() handles = {} end)
  after_each(function()
    for _, h in ipairs(handles) do if not h:is_closing() then h:close() end end
    uv.run("nowait")
  end)

  local function keep(h)
    handles[#handles + 1] = h
    return h
  end

  it("lists the local ports of listeners, both ends of a connection, and UDP sockets", function()
    local l = keep(uv.new_tcp())
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen(4, function() keep(uv.new_tcp()); l:accept(handles[#handles]) end))
    local port = l:getsockname().port
    local c = keep(uv.new_tcp())
    local connected = false
    c:connect("127.0.0.1", port, function(err) connected = err == nil end)
    assert.is_true(helpers.run_until(function() return connected end))
    local u6 = keep(uv.new_udp())
    assert(u6:bind("::1", 0))
    local tcp, udp = netaddr.ports_in_use("tcp"), netaddr.ports_in_use("udp")
    assert.is_true(tcp[port])
    assert.is_true(tcp[c:getsockname().port]) -- the client's ephemeral port
    assert.is_true(udp[u6:getsockname().port])
    assert.is_nil(udp[port])
    for p in pairs(tcp) do assert.equal("integer", math.type(p)) end
    assert.same({}, netaddr.ports_in_use("nonesuch"))
  end)

  it("test-binds: conflict for a port held on any address or family, true for a free one", function()
    local u = keep(uv.new_udp())
    assert(u:bind("127.0.0.1", 0))
    local t6 = keep(uv.new_tcp())
    assert(t6:bind("::1", 0, {ipv6only = true}))
    assert(t6:listen(1, function() end))
    local _, msg, code = netaddr.try_bind("udp", u:getsockname().port)
    assert.equal("conflict", code)
    assert.matches("EADDRINUSE", msg)
    assert.equal("conflict", select(3, netaddr.try_bind("tcp", t6:getsockname().port)))
    local free = helpers.free_port("tcp", "0.0.0.0")
    assert.is_true(netaddr.try_bind("tcp", free))
    assert.is_true(netaddr.try_bind("tcp", free)) -- closed again at once
    assert.is_nil(netaddr.ports_in_use("tcp")[free])
  end)
end)
