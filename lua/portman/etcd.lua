--- etcd v3 client over etcd's HTTP/JSON gateway (`/v3/kv/*`, `/v3/lease/*`,
-- `/v3/watch`), on the C core's curl engine (portman.http).
-- Keys and values are base64 in the gateway's JSON, 64-bit numbers are
-- strings: this file encodes and decodes both, and hands out plain Lua
-- strings; lease ids and revisions stay strings (they exceed 2^53).
--
-- Several endpoints: a request goes to the member that answered last; a
-- member that fails (no connection, a timeout, "no leader", a 5xx) passes
-- the request to the next one, round after round with a short pause, until
-- the call's deadline. Then the call fails with
-- `nil, "unreachable: ...", "unreachable"`, or `"timeout: ..."` when a
-- member was reachable but never answered in time (no quorum).
--
-- Every call takes a callback as its last argument, or, inside
-- `portman.run`/`portman.spawn`, yields and returns its results.
local uv = require "luv"
local async = require "portman.async"
local check = require "portman.check"
local http = require "portman.http"
local json = require "portman.json"
local lines = require "portman.lines"
local log = require "portman.log"

local M = {}
local Client = {}
Client.__index = Client

local OPTIONS = {endpoints = true, timeout = true, attempt_timeout = true, user = true,
                 password = true, cacert = true, cert = true, key = true, insecure = true, max_message = true}

-- The most a gateway answer or one watch message may hold, by default:
-- far above 10,000 services' keys, far below what would hurt the daemon.
M.MAX_MESSAGE = 16 * 1024 * 1024

-- base64 (RFC 4648), for the gateway's bytes fields.
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local DEC = {}
for i = 1, 64 do DEC[B64:byte(i)] = i - 1 end

--- Encodes a string as base64 (the C core's, OpenSSL's).
M.b64encode = require("portman.core").base64

--- Decodes base64; nil on anything that is not base64.
function M.b64decode(s)
  if type(s) ~= "string" or #s % 4 ~= 0 then return nil end
  local out = {}
  for i = 1, #s, 4 do
    local a, b, c, d = s:byte(i, i + 3)
    local va, vb = DEC[a], DEC[b]
    local vc, vd = DEC[c], DEC[d]
    if not va or not vb or (not vc and c ~= 61) or (not vd and d ~= 61) or (c == 61 and d ~= 61)
      or ((c == 61 or d == 61) and i + 4 <= #s) then
      return nil
    end
    local n = va << 18 | vb << 12 | (vc or 0) << 6 | (vd or 0)
    out[#out + 1] = string.char(n >> 16) .. (vc and string.char((n >> 8) & 255) or "")
      .. (vd and string.char(n & 255) or "")
  end
  return table.concat(out)
end

--- The end of the key range holding every key that starts with prefix
-- (etcd's rule: the prefix with its last byte below 0xff incremented).
function M.prefix_end(prefix)
  for i = #prefix, 1, -1 do
    local b = prefix:byte(i)
    if b < 255 then return prefix:sub(1, i - 1) .. string.char(b + 1) end
  end
  return "\0" -- every key
end

local function now() return uv.hrtime() // 1000000 end

-- Endpoint URLs; credentials written into one (http://user:pass@host:port)
-- are taken out of it, so that no URL portman prints carries them, and
-- returned as etcd's own auth (the gateway takes no basic auth).
local function parse_endpoints(fname, eps)
  if type(eps) == "string" then
    local list = {}
    for e in eps:gmatch("[^,%s]+") do list[#list + 1] = e end
    eps = list
  end
  if type(eps) ~= "table" or #eps == 0 then
    check.argerror(fname, 1, "endpoints: non-empty list of URLs expected")
  end
  local out, user, password = {}, nil, nil
  for i, e in ipairs(eps) do
    local scheme, info, host
    if type(e) == "string" then scheme, info, host = e:match("^(https?://)([^/@]*@)(.+)$") end
    if info then
      e = scheme .. host
      user, password = info:sub(1, -2):match("^([^:]*):?(.*)$")
    end
    if type(e) ~= "string" or not e:match("^https?://[^/@]+$") then
      check.argerror(fname, 1, ("endpoints[%d]: URL like http://127.0.0.1:2379 expected, got %s")
        :format(i, type(e) == "string" and e:gsub("//[^/]*@", "//***@") or type(e)))
    end
    out[i] = e
  end
  if not user or user == "" then return out end
  return out, M.unescape(user), M.unescape(password)
end

--- Undoes a URL's percent-encoding (a password in an endpoint URL).
function M.unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function check_ms(fname, opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if math.type(v) ~= "integer" or v < 1 then
    check.argerror(fname, 1, key .. ": positive integer (ms) expected")
  end
  return v
end

-- Warnings about settings that expose the cluster, once a process each.
local warned = {}
local function warn_once(event, fields)
  if warned[event] then return end
  warned[event] = true
  log.warn(event, fields)
end

local function warn_insecure(eps, insecure, auth)
  if insecure then
    warn_once("etcd_tls_unverified", {reason = "insecure = true: etcd's certificate is not checked"})
  end
  if auth and auth.password ~= "" then
    for _, e in ipairs(eps) do
      if e:match("^http://") then
        warn_once("etcd_password_in_clear", {endpoint = e,
          reason = "the etcd password travels unencrypted over http://: use https:// and cacert"})
      end
    end
  end
end

--- Creates a client. No connection is made until the first call.
-- @tparam table opts `endpoints` (a list of URLs or a comma-separated
--   string, such as "http://127.0.0.1:2379"), `timeout` (ms a call may take
--   across all its attempts, 5000), `attempt_timeout` (ms one member gets,
--   1500), `user` and `password` (etcd's own auth: the client trades them
--   for a token at /v3/auth/authenticate, as etcd's gateway wants; a wrong
--   password fails calls with `denied`), `cacert`, `cert`, `key` (PEM
--   files for TLS: the CA to trust, a client certificate), `insecure`
--   (skip TLS verification), `max_message` (bytes an answer or one watch
--   message may hold, M.MAX_MESSAGE: a larger one fails its call with
--   `protocol`, or restarts the watch). Credentials in an endpoint URL
--   (http://user:password@host:2379) are etcd's user and password.
-- @return[1] a client
-- @return[2] nil, msg, code when no epoll fd is left
-- @raise on a bad or unknown option
function M.new(opts)
  check.table("new", 1, opts)
  check.known("new", 1, opts, OPTIONS)
  local eps, url_user, url_password = parse_endpoints("new", opts.endpoints)
  local timeout = check_ms("new", opts, "timeout", 5000)
  local attempt = check_ms("new", opts, "attempt_timeout", math.min(1500, timeout))
  for _, k in ipairs({"user", "password", "cacert", "cert", "key"}) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      check.argerror("new", 1, k .. ": string expected")
    end
  end
  local max = opts.max_message or M.MAX_MESSAGE
  if math.type(max) ~= "integer" or max < 1024 then
    check.argerror("new", 1, "max_message: integer (bytes) of at least 1024 expected")
  end
  local user = opts.user or url_user
  local auth = user and {name = user, password = opts.password or url_password or ""}
  warn_insecure(eps, opts.insecure, auth)
  local client, err, code = http.new()
  if not client then return nil, err, code end
  local tls = {cacert = opts.cacert, cert = opts.cert, key = opts.key, insecure = opts.insecure or nil}
  return setmetatable({_http = client, _endpoints = eps, _current = 1, _timeout = timeout,
                       _attempt = attempt, _tls = tls, _auth = auth, _watchers = {}, _max_message = max}, Client)
end

local function check_open(self)
  if not self._http then error("attempt to use a closed portman.etcd client", 3) end
end

--- The endpoints, and the index of the member in use.
function Client:endpoints()
  return {table.unpack(self._endpoints)}, self._current
end

-- A failure that another member may not have: pass the call on.
local RETRY_GRPC = {[14] = true, [4] = true} -- Unavailable, DeadlineExceeded
local GRPC_CODES = {[5] = "not_found", [7] = "denied", [16] = "denied", [9] = "conflict",
                    [6] = "conflict", [8] = "exhausted", [12] = "unsupported"}

-- Sorts an answer: true, doc on success; false, msg, code when this
-- member failed; nil, msg, code when the call failed for good.
-- Transport failures that every member would give alike: no failover.
local FINAL_TRANSPORT = {denied = true, unsupported = true}
-- etcd's auth refusals that come with other gRPC codes (InvalidArgument).
local AUTH_WORDS = {"user name is empty", "authentication failed", "permission denied", "invalid auth token"}

-- etcd 3.4's gateway refuses every request that carries a client
-- certificate while etcd's auth is on (HTTP 400, this text): no retry,
-- and a message that says what works (docs/design.md, "etcd over TLS").
local GATEWAY_CN = "CommonName of client sending a request against gateway"
local GATEWAY_CN_HELP = "etcd's JSON gateway refuses a client certificate while etcd's auth is on; "
  .. "use either a user and password with the CA (no cert and key; etcd without --client-cert-auth), "
  .. "or client certificates with etcd's auth off"

local function classify(res, err, code, url)
  if not res then
    -- an answer over a cap: every member would send the same
    if FINAL_TRANSPORT[code] or code == "protocol" and err:find("too large", 1, true) then
      return nil, err, code
    end
    return false, err, code
  end
  local doc = json.decode(res.body)
  local ok = type(doc) == "table"
  if res.status == 200 then
    if ok then return true, doc end
    return nil, "protocol: etcd sent a body that is not JSON (" .. url .. ")", "protocol"
  end
  if res.status == 400 and res.body:find(GATEWAY_CN, 1, true) then
    return nil, ("unsupported: %s (%s)"):format(GATEWAY_CN_HELP, url), "unsupported"
  end
  local msg = ok and (doc.error or doc.message) or res.body:sub(1, 200)
  local grpc = ok and math.tointeger(doc.code)
  msg = ("etcd %s: %s (HTTP %d)"):format(url, tostring(msg), res.status)
  if res.status >= 500 and not grpc or RETRY_GRPC[grpc] then
    return false, "unreachable: " .. msg, "unreachable"
  end
  local word = GRPC_CODES[grpc] or (res.status == 401 or res.status == 403) and "denied" or "protocol"
  for _, w in ipairs(AUTH_WORDS) do
    if msg:find(w, 1, true) then word = "denied" end
  end
  return nil, word .. ": " .. msg, word, grpc
end

--- Sends a gateway method (path such as "/v3/kv/range") a JSON document
-- with extra headers; cb(answer) or cb(nil, msg, code, grpc_code), with
-- failover as above.
local function send(self, path, doc, headers, cb)
  local body = json.encode(doc)
  local deadline = now() + self._timeout
  local n = #self._endpoints
  local tried, timeouts, last = 0, 0, "no member tried"
  local attempt
  -- cut_short: the attempt had less time than a member gets (the call's
  -- deadline was near), so its timeout says nothing about the member: the
  -- word and the last answer stay what the other attempts gave
  local function fail_member(msg, code, cut_short)
    tried = tried + 1
    if not (cut_short and code == "timeout") then
      if code == "timeout" then timeouts = timeouts + 1 end
      last = msg
    elseif tried == 1 then
      last = msg
    end
    self._current = self._current % n + 1
    local left = deadline - now()
    if left <= 0 then
      local word = timeouts > 0 and "timeout" or "unreachable"
      return cb(nil, ("%s: no etcd member answered %s within %d ms (%d attempts; last: %s)")
        :format(word, path, self._timeout, tried, last), word)
    end
    if tried % n ~= 0 then return attempt() end
    -- every member failed this round: pause before the next one
    local t = uv.new_timer()
    t:start(math.min(100 * (tried // n), 500, left), 0, function()
      t:close()
      attempt()
    end)
  end
  attempt = function()
    if not self._http then return cb(nil, "closed: etcd client closed", "closed") end
    local url = self._endpoints[self._current] .. path
    local ms = math.max(1, math.min(self._attempt, deadline - now()))
    local req = {url = url, body = body, timeout = ms, connect_timeout = ms, max_body = self._max_message}
    for k, v in pairs(self._tls) do req[k] = v end
    req.headers = headers
    self._http:request(req, function(res, err, code)
      local ok, a, b, grpc = classify(res, err, code, url)
      if ok then return cb(a) end
      if ok == nil then return cb(nil, a, b, grpc) end
      fail_member(a, b, ms < math.min(self._attempt, self._timeout))
    end)
  end
  attempt()
end

-- etcd's own auth: the gateway takes a token from /v3/auth/authenticate in
-- the Authorization header (not HTTP basic auth). cb(headers) with the
-- token's header, nil headers without auth, or cb(false, msg, code).
local function auth_headers(self, cb)
  if not self._auth then return cb(nil) end
  if self._token then return cb({"Authorization: " .. self._token}) end
  if self._authing then
    self._authing[#self._authing + 1] = cb
    return
  end
  self._authing = {cb}
  send(self, "/v3/auth/authenticate", self._auth, nil, function(res, err, code, grpc)
    local waiting = self._authing
    self._authing = nil
    if res and type(res.token) == "string" then
      self._token = res.token
    elseif res or grpc then -- etcd answered, without a token
      code = "denied"
      err = ("denied: etcd refused user '%s': %s"):format(self._auth.name,
        err and err:gsub("^[%a_]+: ", "") or "no token")
    end
    for _, w in ipairs(waiting) do
      if self._token then w({"Authorization: " .. self._token}) else w(false, err, code) end
    end
  end)
end

--- Calls a gateway method: _send with the auth token when the client has
-- a user; an expired token is replaced once.
local function call(self, path, doc, cb)
  local function go(retried)
    auth_headers(self, function(headers, err, code)
      if headers == false then return cb(nil, err, code) end
      send(self, path, doc, headers, function(res, serr, scode, grpc)
        if not res and grpc == 16 and headers and not retried then
          self._token = nil -- etcd drops an idle simple token: authenticate again
          return go(true)
        end
        cb(res, serr, scode)
      end)
    end)
  end
  go(false)
end

-- Readers of the gateway's JSON: every field portman uses is checked
-- before it is used. A reader raises "field: what is wrong" on a field of
-- the wrong shape; reading() turns that into a `protocol` failure of its
-- call alone.
local function bad(field, v)
  error(("%s: %s"):format(field, v == nil and "missing" or "malformed (" .. type(v) .. ")"), 0)
end

-- etcd's int64: a string of digits in the gateway's JSON, which leaves out
-- fields that are zero (so `default` where zero is a valid answer).
local function int64(field, v, default)
  if v == nil and default then return default end
  if math.type(v) == "integer" and v >= 0 then return tostring(v) end
  if type(v) ~= "string" or #v > 19 or not v:match("^%d+$") then bad(field, v) end
  return v
end

local function object(field, v, optional)
  if v == nil and optional then return {} end
  if type(v) ~= "table" then bad(field, v) end
  return v
end

local function list(field, v)
  if v == nil then return {} end
  if type(v) ~= "table" then bad(field, v) end
  local n = #v
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then bad(field, v) end
  end
  return v
end

local function bytes(field, v, default)
  if v == nil and default then return default end
  local s = M.b64decode(v)
  if not s then bad(field, v) end
  return s
end

local function kv_of(raw, field)
  object(field, raw)
  return {key = bytes(field .. ".key", raw.key), value = bytes(field .. ".value", raw.value, ""),
          create_revision = int64(field .. ".create_revision", raw.create_revision, "0"),
          mod_revision = int64(field .. ".mod_revision", raw.mod_revision, "0"),
          version = int64(field .. ".version", raw.version, "0"),
          lease = raw.lease ~= nil and int64(field .. ".lease", raw.lease) or nil}
end

local function kvs_of(raw, field)
  local out = {}
  for i, kv in ipairs(list(field, raw)) do out[i] = kv_of(kv, ("%s[%d]"):format(field, i)) end
  return out
end

local function revision_of(res)
  return int64("header.revision", object("header", res.header, true).revision, "0")
end

-- The callback for call(): parse(res) reads the answer, and its results go
-- to cb. cb runs outside the pcall, so an error in the caller's own code
-- stays the caller's (portman.engine logs it) and is never taken for a bad
-- answer.
local function reading(path, parse, cb)
  return function(res, err, code)
    if not res then return cb(nil, err, code) end
    local out = table.pack(pcall(parse, res))
    if not out[1] then
      return cb(nil, ("protocol: etcd's answer to %s: %s"):format(path, tostring(out[2])),
        "protocol")
    end
    return cb(table.unpack(out, 2, out.n))
  end
end

-- A txn's outcome: the gateway leaves out `succeeded` when it is false.
local function succeeded(res)
  if res.succeeded ~= nil and type(res.succeeded) ~= "boolean" then bad("succeeded", res.succeeded) end
  return res.succeeded == true
end

-- The reader of each gateway method's answer (see reading()).
local READ = {}
function READ.range(res) return {kvs = kvs_of(res.kvs, "kvs"), revision = revision_of(res)} end
READ.put = revision_of
function READ.deleterange(res) return math.tointeger(tonumber(int64("deleted", res.deleted, "0"))) end
READ.txn = succeeded
-- A create's txn: true, or false and the holder read in the same txn (nil
-- when it was deleted in between).
function READ.create(res)
  if succeeded(res) then return true end
  local r = object("responses[1]", list("responses", res.responses)[1], true)
  return false, kvs_of(object("responses[1].response_range", r.response_range, true).kvs,
    "responses[1].response_range.kvs")[1]
end
function READ.grant(res)
  if res.error ~= nil and res.error ~= "" then error("an error: " .. tostring(res.error), 0) end
  return {id = int64("ID", res.ID), ttl = math.tointeger(tonumber(int64("TTL", res.TTL, "0")))}
end
function READ.keepalive(res)
  if res.error ~= nil then
    error("an error: " .. tostring(type(res.error) == "table" and res.error.message or res.error), 0)
  end
  return math.tointeger(tonumber(int64("result.TTL", object("result", res.result, true).TTL, "0")))
end
-- A txn creating n keys: true, or false and each key's holder read in the
-- same txn (false for a key nobody holds).
function READ.create_many(res, n)
  if succeeded(res) then return true end
  local responses = list("responses", res.responses)
  if #responses ~= n then
    error(("responses: %d for a txn of %d ranges"):format(#responses, n), 0)
  end
  local holders = {}
  for i, r in ipairs(responses) do
    local field = ("responses[%d]"):format(i)
    local range = object(field .. ".response_range", object(field, r).response_range, true)
    holders[i] = kvs_of(range.kvs, field .. ".response_range.kvs")[1] or false
  end
  return false, holders
end
-- for the fuzz harness (fuzz/etcd_fuzz.lua): the readers, the wrapper
M._read, M._reading = READ, reading

local function check_key(fname, n, key)
  if type(key) ~= "string" or key == "" then
    check.argerror(fname, n, "key: non-empty string expected")
  end
end

--- Reads a key, or with `opts.prefix` every key under it, or with
-- `opts.range_end` the keys in [key, range_end).
-- @return[1] `{kvs = {{key, value, create_revision, mod_revision, version,
--   lease}, ...}, revision = "N"}` (kvs sorted by key)
-- @return[2] nil, msg, code
Client.range = async.adapt(function(self, key, opts, cb)
  if type(opts) == "function" then cb, opts = opts, nil end
  check_open(self)
  check_key("range", 1, key)
  opts = opts or {}
  local doc = {key = M.b64encode(key)}
  local range_end = opts.prefix and M.prefix_end(key) or opts.range_end
  if range_end then doc.range_end = M.b64encode(range_end) end
  if opts.limit then doc.limit = tostring(opts.limit) end
  call(self, "/v3/kv/range", doc, reading("/v3/kv/range", READ.range, cb))
end)

--- Writes key = value, bound to `opts.lease` (an id) when given.
-- @return[1] the revision (a string)
-- @return[2] nil, msg, code (`not_found` when the lease has lapsed)
Client.put = async.adapt(function(self, key, value, opts, cb)
  if type(opts) == "function" then cb, opts = opts, nil end
  check_open(self)
  check_key("put", 1, key)
  if type(value) ~= "string" then check.argerror("put", 2, "string expected, got " .. type(value)) end
  local doc = {key = M.b64encode(key), value = M.b64encode(value), lease = opts and opts.lease}
  call(self, "/v3/kv/put", doc, reading("/v3/kv/put", READ.put, cb))
end)

--- Deletes key, or with `opts.prefix` every key under it.
-- @return[1] the number of keys deleted
-- @return[2] nil, msg, code
Client.delete = async.adapt(function(self, key, opts, cb)
  if type(opts) == "function" then cb, opts = opts, nil end
  check_open(self)
  check_key("delete", 1, key)
  local doc = {key = M.b64encode(key)}
  if opts and opts.prefix then doc.range_end = M.b64encode(M.prefix_end(key)) end
  call(self, "/v3/kv/deleterange", doc, reading("/v3/kv/deleterange", READ.deleterange, cb))
end)

--- Creates key = value only if it does not exist (a txn comparing its
-- create_revision with 0), bound to `lease` when given. Atomic: of
-- concurrent creates of one key, exactly one succeeds.
-- @return[1] true, or false, kv (the key's current holder)
-- @return[2] nil, msg, code (`not_found` when the lease has lapsed)
Client.create = async.adapt(function(self, key, value, lease, cb)
  if type(lease) == "function" then cb, lease = lease, nil end
  check_open(self)
  check_key("create", 1, key)
  if type(value) ~= "string" then check.argerror("create", 2, "string expected, got " .. type(value)) end
  local k = M.b64encode(key)
  local doc = {
    compare = {{key = k, result = "EQUAL", target = "CREATE", create_revision = "0"}},
    success = {{request_put = {key = k, value = M.b64encode(value), lease = lease}}},
    failure = {{request_range = {key = k}}},
  }
  call(self, "/v3/kv/txn", doc, reading("/v3/kv/txn", READ.create, function(ok, holder, code)
    -- deleted between the compare and the read: report no holder
    if ok == false and not holder then holder = {key = key} end
    cb(ok, holder, code)
  end))
end)

-- etcd's default --max-txn-ops: a txn may hold this many compares, and as
-- many operations a branch.
local MAX_TXN_OPS = 128
M.MAX_TXN_OPS = MAX_TXN_OPS
-- The C core's base64 (the same text as b64encode, 20 times faster): a
-- txn of many keys encodes each key and value.

--- Creates several keys in one txn, only if none of them exists (a
-- compare on each key's create_revision), each bound to `lease` when
-- given: all are created, or none.
-- @tparam table items `{{key, value}, ...}` (strings), 1 to MAX_TXN_OPS of them
-- @return[1] true (all created), or false and `holders`: for each item (in
--   order) the key's current kv, or false when the key was free (another
--   key was taken)
-- @return[2] nil, msg, code (`not_found` when the lease has lapsed)
Client.create_many = async.adapt(function(self, items, lease, cb)
  if type(lease) == "function" then cb, lease = lease, nil end
  check_open(self)
  if type(items) ~= "table" or #items < 1 or #items > MAX_TXN_OPS then
    check.argerror("create_many", 1, ("list of 1 to %d {key, value} expected"):format(MAX_TXN_OPS))
  end
  local compare, success, failure = {}, {}, {}
  for i, item in ipairs(items) do
    local key, value = item[1], item[2]
    if type(key) ~= "string" or key == "" or type(value) ~= "string" then
      check.argerror("create_many", 1, ("items[%d]: {non-empty key, value} (strings) expected"):format(i))
    end
    local k = M.b64encode(key)
    compare[i] = {key = k, result = "EQUAL", target = "CREATE", create_revision = "0"}
    success[i] = {request_put = {key = k, value = M.b64encode(value), lease = lease}}
    failure[i] = {request_range = {key = k}}
  end
  call(self, "/v3/kv/txn", {compare = compare, success = success, failure = failure},
    reading("/v3/kv/txn", function(res) return READ.create_many(res, #items) end, cb))
end)

--- Deletes key only if it is bound to lease (a txn on the key's lease).
-- @return[1] true if it was deleted, false if the key is absent or another
--   lease holds it
-- @return[2] nil, msg, code
Client.delete_if_lease = async.adapt(function(self, key, lease, cb)
  check_open(self)
  check_key("delete_if_lease", 1, key)
  if type(lease) ~= "string" then check.argerror("delete_if_lease", 2, "lease id (string) expected") end
  local k = M.b64encode(key)
  local doc = {compare = {{key = k, result = "EQUAL", target = "LEASE", lease = lease}},
               success = {{request_delete_range = {key = k}}}}
  call(self, "/v3/kv/txn", doc, reading("/v3/kv/txn", READ.txn, cb))
end)

--- Grants a lease of ttl seconds.
-- @return[1] `{id = "N", ttl = seconds}`
-- @return[2] nil, msg, code
Client.grant = async.adapt(function(self, ttl, cb)
  check_open(self)
  if math.type(ttl) ~= "integer" or ttl < 1 then
    check.argerror("grant", 1, "ttl: positive integer expected")
  end
  call(self, "/v3/lease/grant", {TTL = tostring(ttl)}, reading("/v3/lease/grant", READ.grant, cb))
end)

--- Refreshes a lease once.
-- @return[1] the TTL it now has, in seconds; 0 when it has lapsed (etcd
--   does not revive it: grant a new one)
-- @return[2] nil, msg, code
Client.keepalive = async.adapt(function(self, id, cb)
  check_open(self)
  if type(id) ~= "string" then check.argerror("keepalive", 1, "lease id (string) expected") end
  call(self, "/v3/lease/keepalive", {ID = id}, reading("/v3/lease/keepalive", READ.keepalive, cb))
end)

--- Revokes a lease: every key bound to it is deleted.
-- @return[1] true (also for a lease that had lapsed already)
-- @return[2] nil, msg, code
Client.revoke = async.adapt(function(self, id, cb)
  check_open(self)
  if type(id) ~= "string" then check.argerror("revoke", 1, "lease id (string) expected") end
  call(self, "/v3/lease/revoke", {ID = id}, function(res, err, code)
    if not res and code ~= "not_found" then return cb(nil, err, code) end
    cb(true)
  end)
end)

local watch_start -- below, with the rest of the watch stream

--- Follows every key under prefix: fn(event) for each change, with
-- `event = {type = "put" | "delete", key, value, lease, mod_revision}`,
-- in revision order. The stream moves to the next member when its member
-- fails and resumes after the last revision seen, so no change is missed
-- or repeated; when etcd has compacted that revision away, fn receives
-- `{type = "reset"}` and the watch goes on from the current revision (the
-- caller re-reads with range). Errors are retried, never raised into fn.
-- @param opts `start_revision` (a string or integer; the next change by
--   default)
-- @return a watcher with `:close()`
Client.watch = function(self, prefix, opts, fn)
  if type(opts) == "function" then fn, opts = opts, nil end
  check_open(self)
  check_key("watch", 1, prefix)
  if type(fn) ~= "function" then check.argerror("watch", 3, "function expected") end
  local w = {_client = self, _prefix = prefix, _fn = fn, _closed = false,
             _next = opts and opts.start_revision and tostring(opts.start_revision)}
  self._watchers[w] = true
  local W = {}
  function W.close()
    if w._closed then return end
    w._closed = true
    self._watchers[w] = nil
    if w._id and self._http then self._http:cancel(w._id) end
    if w._timer then w._timer:stop(); w._timer:close(); w._timer = nil end
  end
  w.close = W.close
  watch_start(self, w)
  return setmetatable(W, {__index = {closed = function() return w._closed end}})
end

local function watch_retry(self, w)
  if w._closed or not self._http then return end
  self._current = self._current % #self._endpoints + 1
  w._timer = w._timer or uv.new_timer()
  w._timer:start(200, 0, function() watch_start(self, w) end)
end

-- Reads one watch event: {type, key, value, lease, mod_revision}.
local function event_of(raw, field)
  object(field, raw)
  local kv = kv_of(raw.kv, field .. ".kv")
  if raw.type ~= nil and raw.type ~= "PUT" and raw.type ~= "DELETE" then bad(field .. ".type", raw.type) end
  if kv.mod_revision == "0" then bad(field .. ".kv.mod_revision", raw.kv.mod_revision) end
  return {type = raw.type == "DELETE" and "delete" or "put", key = kv.key, value = kv.value,
          lease = kv.lease, mod_revision = kv.mod_revision}
end

-- Reads one message of a watch stream, `{"result": {"header", "created",
-- "events", "canceled", "compact_revision"}}`, into
-- {created = revision or nil, compacted = bool, events = {...}}; raises
-- on a malformed field (see bad()). An error document reads as nothing.
local function watch_read(doc)
  if type(doc) ~= "table" or doc.result == nil then return {events = {}} end
  local r = object("result", doc.result)
  local out = {events = {}}
  if r.created ~= nil and r.created ~= false then
    out.created = int64("result.header.revision", object("result.header", r.header).revision, "0")
  end
  out.compacted = int64("result.compact_revision", r.compact_revision, "0") ~= "0"
  for i, raw in ipairs(list("result.events", r.events)) do
    out.events[i] = event_of(raw, ("result.events[%d]"):format(i))
  end
  return out
end
READ.watch = watch_read

local function watch_deliver(w, ev)
  w._next = tostring(math.tointeger(tonumber(ev.mod_revision)) + 1)
  local ok, err = xpcall(w._fn, debug.traceback, ev)
  if not ok then log.error("watch_callback_failed", {error = err}) end
end

-- Handles one message; returns "reset" when the revision was compacted away
-- (the caller is told), "malformed" for a message of the wrong shape
-- (logged): either way the stream starts over, after the last event
-- delivered.
local function watch_message(w, doc)
  local ok, m = pcall(watch_read, doc)
  if not ok then
    log.error("etcd_watch_malformed", {prefix = w._prefix, error = "protocol: " .. tostring(m)})
    return "malformed"
  end
  if m.created and not w._next then
    w._next = tostring(math.tointeger(tonumber(m.created)) + 1)
  end
  if m.compacted then
    w._next = nil -- compacted away: start again from now, tell the caller
    pcall(w._fn, {type = "reset"})
    return "reset"
  end
  for _, ev in ipairs(m.events) do
    if w._closed then return end
    watch_deliver(w, ev)
  end
end

-- Drops the stream; a compacted one opens again at once, a broken one
-- after the usual pause, on the next member.
local function watch_restart(self, w, at_once)
  if w._id then
    self._http:cancel(w._id)
    w._id = nil
  end
  if at_once then return watch_start(self, w) end
  watch_retry(self, w)
end

local function watch_open(self, w, headers)
  if w._closed or not self._http then return end
  local create = {key = M.b64encode(w._prefix), range_end = M.b64encode(M.prefix_end(w._prefix))}
  if w._next then create.start_revision = w._next end
  local framer = lines.new(self._max_message)
  local url = self._endpoints[self._current] .. "/v3/watch"
  local req = {url = url, body = json.encode({create_request = create}), max_body = self._max_message,
               connect_timeout = self._attempt, headers = headers}
  for k, v in pairs(self._tls) do req[k] = v end
  local function on_line(line)
    local doc = json.decode(line)
    if type(doc) == "table" and type(doc.error) == "table" and doc.error.http_code == 401 then
      self._token = nil -- an expired token: the retry authenticates again
    end
    local what = watch_message(w, doc)
    if what then
      watch_restart(self, w, what == "reset")
      return false
    end
    return not w._closed
  end
  req.on_data = function(chunk)
    local ok, err = framer:feed(chunk, on_line)
    if not ok then -- a message over the cap: drop the stream, resume after the last event
      log.error("etcd_watch_malformed", {prefix = w._prefix, error = err})
      watch_restart(self, w)
    end
  end
  w._id = self._http:request(req, function()
    -- the stream ended: its member went away or closed it
    w._id = nil
    watch_retry(self, w)
  end)
end

function watch_start(self, w)
  if w._closed or not self._http then return end
  auth_headers(self, function(headers)
    if headers == false then return watch_retry(self, w) end
    watch_open(self, w, headers)
  end)
end

--- Stops every watch and request and closes the connection pool.
-- Idempotent; calls in flight never call back.
function Client:close()
  if not self._http then return end
  for w in pairs(self._watchers) do w.close() end
  self._http:close()
  self._http = nil
end
Client.__close = Client.close

return M
