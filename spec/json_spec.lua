-- portman.json: lua-cjson plus empty arrays (json.array) and integers on
-- decode; errors as the protocol code word.
local helpers = require "helpers"

describe("portman.json", function()
  local json

  setup(function()
    local before = helpers.globals()
    json = require "portman.json"
    for k in pairs(helpers.globals()) do assert.is_true(before[k], "new global " .. k) end
    assert.equal(json, require("portman").json)
  end)

  describe("encode", function()
    it("writes a table marked with array() as [] when empty, other empty tables as {}", function()
      assert.equal("[]", json.encode(json.array()))
      assert.equal("{}", json.encode({}))
      local text = json.encode({l = json.array(), o = {}}) -- keys in either order
      assert.is_true(text == '{"l":[],"o":{}}' or text == '{"o":{},"l":[]}', text)
    end)

    it("finds marked arrays at any depth, and one table twice", function()
      local empty = json.array()
      local doc = json.decode(json.encode({a = {b = {c = empty, d = {empty, 1}}}, e = {}}))
      assert.same({a = {b = {c = {}, d = {{}, 1}}}, e = {}}, doc)
      local text = json.encode({a = {b = {c = empty}}})
      assert.equal('{"a":{"b":{"c":[]}}}', text)
      assert.equal("[[],[]]", json.encode({empty, empty}))
    end)

    it("returns the table it marks, which stays an array once filled", function()
      local t = {}
      assert.equal(t, json.array(t))
      assert.equal("[]", json.encode(t))
      t[1] = 5
      assert.equal("[5]", json.encode(t))
      assert.equal("[1,2]", json.encode(json.array({1, 2})))
    end)

    it("leaves the caller's tables as they were", function()
      local inner = json.array()
      local doc = {list = inner, n = 1}
      json.encode(doc)
      assert.equal(inner, doc.list)
      assert.is_nil(next(inner))
      assert.equal(1, doc.n)
      assert.equal("[]", json.encode(inner)) -- still marked
    end)

    it("keeps text whole: NUL, quotes, backslashes, newlines, UTF-8", function()
      local s = "a\0b\"c\\d\ne\u{1F600}"
      assert.equal(s, json.decode(json.encode({s = s})).s)
      assert.equal(s, json.decode(json.encode({s = s, e = json.array()})).s)
    end)

    it("gives the same text as pieces (encode_pieces), never one joined string for a large document", function()
      local services = json.plain(json.array())
      for i = 1, 2000 do services[i] = {name = ("svc-%04d"):format(i), port = 20000 + i} end
      local docs = {
        {services = services, pools = json.array({{name = "p", range = {1, 2}}}), mappings = json.array()},
        {a = {b = {c = json.array(), d = {json.array(), 1}}}, big = 123456789012345678}, -- past 1e14: a placeholder
        {1, json.array(), "x"}, json.array(), {plain = "no placeholder"}, "a string", 5,
      }
      for i, doc in ipairs(docs) do
        local pieces = json.encode_pieces(doc)
        assert.equal(json.encode(doc), table.concat(pieces), "doc " .. i)
        for _, p in ipairs(pieces) do assert.equal("string", type(p)) end
      end
      local pieces = json.encode_pieces(docs[1])
      assert.is_true(#pieces > 3)
      assert.same({services = services, pools = {{name = "p", range = {1, 2}}}, mappings = {}},
        json.decode(table.concat(pieces)))
    end)

    it("raises on what JSON cannot hold: a cycle, a function, NaN", function()
      local t = {}
      t.self = t
      assert.matches("excessive nesting", helpers.raises(json.encode, t))
      local u = {e = json.array()}
      u.self = u
      assert.matches("excessive nesting", helpers.raises(json.encode, u))
      assert.matches("Cannot serialise function", helpers.raises(json.encode, {f = print}))
      assert.matches("must not be NaN or Inf", helpers.raises(json.encode, {0 / 0}))
    end)
  end)

  describe("encode with sorted keys", function()
    it("writes each object's keys in order, whatever keys the object before had", function()
      local list = {{b = 1, a = "x"}, {a = "y", b = 2}, {a = "z", c = 3}, {b = 4}, {a = 1, b = 2, c = 3}, {}}
      assert.equal('[{"a":"x","b":1},{"a":"y","b":2},{"a":"z","c":3},{"b":4},{"a":1,"b":2,"c":3},{}]',
        json.encode(list, {sorted = true}))
      assert.equal('{"a":{"a":1,"z":[1,2]},"b":[{"x":null,"y":true}],"e":[]}',
        json.encode({b = {{y = true, x = json.null}}, a = {z = {1, 2}, a = 1}, e = json.array()}, {sorted = true}))
    end)

    it("escapes what JSON needs and leaves '/' and UTF-8 as they are", function()
      local text = json.encode({['k"\\'] = 'a/b"c\\d\n\1\u{E9}', plain = "p"}, {sorted = true})
      assert.equal('{"k\\"\\\\":"a/b\\"c\\\\d\\n\\u0001\u{E9}","plain":"p"}', text)
      assert.same({['k"\\'] = 'a/b"c\\d\n\1\u{E9}', plain = "p"}, json.decode(text))
    end)

    it("writes integers whole and floats as cjson does", function()
      assert.equal('{"big":123456789012345,"f":2.5,"n":-7}', json.encode({n = -7, f = 2.5, big = 123456789012345},
        {sorted = true}))
    end)
  end)

  describe("encode of large documents", function()
    it("puts empty lists and large integers back deep inside, beside plain parts", function()
      local doc = {services = {}, mappings = json.array(), deep = {{t = 123456789012345, l = json.array()}}}
      for i = 1, 1000 do doc.services[i] = {name = "s" .. i, port = i} end
      local back = json.decode(json.encode(doc))
      assert.equal(1000, #back.services)
      assert.same({name = "s1000", port = 1000}, back.services[1000])
      assert.same({t = 123456789012345, l = {}}, back.deep[1])
      assert.matches('"mappings":%[%]', json.encode(doc))
      assert.matches('"l":%[%]', json.encode(doc))
      assert.matches('"t":123456789012345', json.encode(doc))
    end)

    it("hands a table marked plain to cjson as it is, and writes one empty and marked array as []", function()
      local hidden = json.array()
      local doc = {l = json.plain({{a = 1}, {b = hidden}}), e = json.array()}
      -- the promise broken on purpose: the marked array inside is not looked for
      assert.equal('{"b":{}}', json.encode(doc):match('"l":%[{"a":1},({"b":{}})%]'))
      assert.equal("[]", json.encode(json.plain(json.array())))
      assert.equal('{"a":[1,2]}', json.encode(json.plain({a = {1, 2}})))
    end)

    it("writes a changed table with keys of both kinds as cjson does", function()
      local t = {1, 2, x = json.array()}
      assert.same({["1"] = 1, ["2"] = 2, x = {}}, json.decode(json.encode(t)))
      assert.matches('"x":%[%]', json.encode(t))
    end)
  end)

  describe("decode", function()
    it("gives integral numbers as integers and keeps fractions floats", function()
      local v = json.decode('{"a":[1,-7,2.5,1e3,0.1],"b":{"c":{"d":42}},"t":1700000000123}')
      assert.equal("integer", math.type(v.a[1]))
      assert.equal(-7, v.a[2])
      assert.equal("integer", math.type(v.a[2]))
      assert.equal(2.5, v.a[3])
      assert.equal("float", math.type(v.a[3]))
      assert.equal(1000, v.a[4])
      assert.equal("integer", math.type(v.a[4]))
      assert.equal("float", math.type(v.a[5]))
      assert.equal("integer", math.type(v.b.c.d))
      assert.equal(1700000000123, v.t) -- milliseconds since 1970 round-trip
      assert.equal("integer", math.type(v.t))
      assert.equal(7, json.decode("7"))
      assert.equal("integer", math.type(json.decode("7")))
    end)

    it("round-trips what it wrote", function()
      local doc = {version = 1, services = {{name = "a", port = 20001, metadata = {zone = "z", w = 0.25}}},
                   ports = {20000, 20001}, ok = true}
      assert.same(doc, json.decode(json.encode(doc)))
    end)

    it("answers bad JSON with protocol, never a raise", function()
      for _, text in ipairs{"{", "", "nul", "[1,2] x", '{"a":}', '"\\ud800"', "{'a':1}", "\255",
                            ("["):rep(2000) .. ("]"):rep(2000)} do
        local v, err, code = json.decode(text)
        assert.is_nil(v, text)
        assert.equal("protocol", code)
        assert.matches("^protocol: ", err)
      end
      assert.same({nil, "protocol: Expected value but found T_END at character 1", "protocol"}, {json.decode("")})
      local _, err, code = json.decode(nil)
      assert.equal("protocol", code)
      assert.matches("string expected, got nil", err)
    end)

    it("gives JSON null as cjson.null", function()
      local v = json.decode('{"a":null,"l":[1,null,3]}')
      assert.equal(require("cjson").null, v.a)
      assert.equal(require("cjson").null, v.l[2])
      assert.equal(3, v.l[3])
    end)
  end)
end)
