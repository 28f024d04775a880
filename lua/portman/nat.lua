--- Router port mappings: UPnP IGD (miniupnpc, on worker threads),
-- NAT-PMP (libnatpmp, on the loop) and PCP (RFC 6887, portman's own
-- client, on the loop), renewed at half their lifetime,
-- re-created when the router lost them, deleted on close.
--
--     local m = assert(nat.map{internal_port = 8080, lifetime = 3600})
--     print(m.method, m.external_ip, m.external_port)
--     m:on(function(ev) print(ev.event) end) -- renewed, recreated, ...
--     m:close()
local uv = require "luv"
local core = require "portman.core"
local async = require "portman.async"
local check = require "portman.check"
local log = require "portman.log"
local engine = require "portman.engine"
local events = require "portman.events"
local stun = require "portman.stun"

local M = {}
local Mapping = events.mixin({})
local mapping_mt = {__index = Mapping, __name = "portman.mapping"}

M.DEFAULT_LIFETIME = 7200 -- RFC 6886's recommendation
M.DEFAULT_TIMEOUT = 5000  -- ms for one operation against the router

local state = {
  igd = nil,       -- the UPnP gateway found last (skips discovery)
  preferred = nil, -- the method that answered auto last
  live = {},       -- open mappings (renewal timers run)
}

-- --- the two engines, each as one async call ---

-- Runs one UPnP job: cb(result, err, code). The loop polls the job's
-- eventfd; after timeout ms the call gives up (the thread then ends on its
-- own and frees the job).
local function upnp(op, args, cb)
  local timeout = args.timeout or M.DEFAULT_TIMEOUT
  -- discovery waits its whole delay for answers; leave time for the call
  args.timeout = math.max(200, math.min(2000, timeout // 2))
  args.igd = args.igd or state.igd
  local job, jerr, jcode = core.upnp_start(op, args)
  if not job then return cb(nil, jerr, jcode) end
  local driver
  local finish = async.with_timeout(timeout, function(...)
    driver:close(function() job:close() end)
    cb(...)
  end, "no UPnP answer")
  driver = engine.drive(job, {name = "upnp " .. op, step = job.result, busy = function() return true end,
    on_batch = function(res, err, code, igd)
      if res == false then return end -- not done yet
      if igd and igd.control_url ~= "" then state.igd = igd
      elseif code == "not_found" or code == "unreachable" then state.igd = nil end
      finish(res, err, code)
    end})
  driver:arm()
end

-- Runs NAT-PMP requests on one engine, one after another: reqs is a list of
-- {proto, internal, external, lifetime} (an empty one asks for the public
-- address). cb(answers, err, code), answers.gateway and .local_ip set.
-- libnatpmp retries on its own timer (250 ms, doubling); the whole call
-- has timeout ms.
local function natpmp(reqs, timeout, cb)
  timeout = timeout or M.DEFAULT_TIMEOUT
  local e, gateway, local_ip = core.natpmp_open(M.gateway)
  if not e then return cb(nil, gateway, local_ip) end
  local answers = {gateway = gateway, local_ip = local_ip}
  local driver
  local finish = async.with_timeout(timeout, function(...)
    driver:close(function() e:close() end)
    cb(...)
  end, "no NAT-PMP answer from " .. gateway)
  local i = 0
  local function send_next()
    i = i + 1
    if i > #reqs then return finish(answers) end
    local r = reqs[i]
    local ok, err, code = e:request(r[1], r[2], r[3], r[4])
    if not ok then return finish(nil, err, code) end
  end
  driver = engine.drive(e, {name = "natpmp", busy = function() return true end,
    on_batch = function(res, err, code)
      if res == false then return end -- not answered yet: libnatpmp's timer retries
      if not res then return finish(nil, err, code) end
      answers[i] = res
      send_next()
    end})
  send_next()
  driver:arm()
end

-- The PCP nonce of a mapping (RFC 6887 11.1): the gateway lets only the
-- holder of a mapping's nonce renew or delete it. Derived from the host's
-- machine-id (unknown off the host) and what names the mapping, so that
-- another portman process on this host (`portman unmap`, the next run
-- deleting a killed run's orphans) can delete it; random where the host
-- has no machine-id.
local function pcp_nonce(local_ip, proto, internal_port)
  local f = io.open("/etc/machine-id")
  local id = f and f:read("l")
  if f then f:close() end
  if not id or #id < 16 then return nil end -- the engine draws a random one
  local d = core.sha1(table.concat({id, "portman pcp nonce", local_ip, proto, internal_port}, "\0"))
  return (d:sub(1, 12):gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- Runs PCP requests on one engine, one after another: reqs is a list of
-- request tables (core.pcp_open's engine: {op, proto, internal_port,
-- external_port, external_ip, lifetime, nonce}; a MAP without a nonce gets
-- the mapping's). cb(answers, err, code), answers.gateway and .local_ip
-- set. The engine resends on its own schedule until timeout ms; the
-- call's own timer, a little later, is a backstop.
local function pcp(reqs, timeout, cb)
  timeout = timeout or M.DEFAULT_TIMEOUT
  local e, gateway, local_ip = core.pcp_open(M.gateway)
  if not e then return cb(nil, gateway, local_ip) end
  local answers = {gateway = gateway, local_ip = local_ip}
  local driver
  local finish = async.with_timeout(timeout + 500, function(...)
    driver:close(function() e:close() end)
    cb(...)
  end, "no PCP answer from " .. gateway)
  local i = 0
  local function send_next()
    i = i + 1
    if i > #reqs then return finish(answers) end
    local r = reqs[i]
    if r.op == "map" and not r.nonce then r.nonce = pcp_nonce(local_ip, r.proto, r.internal_port) end
    r.timeout = timeout
    local ok, err, code = e:request(r)
    if not ok then return finish(nil, err, code) end
  end
  driver = engine.drive(e, {name = "pcp", busy = function() return true end,
    on_batch = function(res, err, code)
      if res == false then return end -- not answered yet: the engine resends
      if not res then return finish(nil, err, code) end
      answers[i] = res
      send_next()
    end})
  send_next()
  driver:arm()
end

-- --- creating one mapping ---

local MAP_KEYS = {internal_port = true, external_port = true, proto = true, lifetime = true, method = true,
                  description = true, timeout = true, on_event = true, internal_ip = true}

local function check_map(opts)
  check.table("map", 1, opts)
  check.known("map", 1, opts, MAP_KEYS)
  local o = {}
  o.internal_port = check.port("map", 1, opts.internal_port, "internal_port")
  o.external_port = opts.external_port == nil and o.internal_port
    or check.port("map", 1, opts.external_port, "external_port")
  o.proto = check.oneof("map", 1, opts.proto or "tcp", {"tcp", "udp"}, "proto")
  o.method = check.oneof("map", 1, opts.method or "auto", {"auto", "upnp", "natpmp", "pcp"}, "method")
  local life = opts.lifetime == nil and M.DEFAULT_LIFETIME or math.tointeger(opts.lifetime)
  if not life or life < 1 or life > 604800 then
    check.argerror("map", 1, "lifetime: integer seconds in 1-604800 expected")
  end
  o.lifetime = life
  local t = opts.timeout == nil and M.DEFAULT_TIMEOUT or math.tointeger(opts.timeout)
  if not t or t < 1 then check.argerror("map", 1, "timeout: positive integer ms expected") end
  o.timeout = t
  if opts.description ~= nil and type(opts.description) ~= "string" then
    check.argerror("map", 1, "description: string expected")
  end
  o.description = (opts.description or "portman"):sub(1, 79)
  if opts.on_event ~= nil and type(opts.on_event) ~= "function" then
    check.argerror("map", 1, "on_event: function expected")
  end
  o.on_event = opts.on_event
  if opts.internal_ip ~= nil and type(opts.internal_ip) ~= "string" then
    check.argerror("map", 1, "internal_ip: string expected")
  end
  o.internal_ip = opts.internal_ip
  return o
end

-- NAT-PMP: the public address, then the mapping (the gateway picks another
-- external port when the one asked for is taken, and says which).
local function map_natpmp(o, cb)
  natpmp({{}, {o.proto, o.internal_port, o.external_port, o.lifetime}}, o.timeout, function(a, err, code)
    if not a then return cb(nil, err, code) end
    uv.update_time()
    cb({method = "natpmp", external_ip = a[1].external_ip, external_port = a[2].external_port,
        internal_ip = a.local_ip, internal_port = a[2].internal_port, proto = o.proto,
        lifetime = a[2].lifetime, _epoch = a[2].epoch, _epoch_at = uv.now(), gateway = a.gateway})
  end)
end

-- PCP: one MAP request with the port asked for as a suggestion; the
-- gateway answers the port and address it assigned.
local function map_pcp(o, cb)
  local req = {op = "map", proto = o.proto, internal_port = o.internal_port, external_port = o.external_port,
               lifetime = o.lifetime}
  pcp({req}, o.timeout, function(a, err, code)
    if not a then return cb(nil, err, code) end
    uv.update_time()
    cb({method = "pcp", external_ip = a[1].external_ip, external_port = a[1].external_port,
        internal_ip = a.local_ip, internal_port = a[1].internal_port, proto = o.proto,
        lifetime = a[1].lifetime, _epoch = a[1].epoch, _epoch_at = uv.now(), gateway = a.gateway,
        _nonce = a[1].nonce})
  end)
end

local function upnp_args(o, extra)
  local a = {external_port = o.external_port, internal_port = o.internal_port, proto = o.proto,
             lease = o.lifetime, description = o.description, timeout = o.timeout,
             internal_ip = o.internal_ip}
  for k, v in pairs(extra or {}) do a[k] = v end
  return a
end

-- UPnP: AddPortMapping on the port asked for; when another client holds
-- it, AddAnyPortMapping (IGDv2) lets the router choose, else the next
-- few ports are tried.
local function map_upnp(o, cb)
  local function done(port)
    upnp("external_ip", upnp_args(o), function(r, err, code)
      if not r then return cb(nil, err, code) end
      cb({method = "upnp", external_ip = r.external_ip, external_port = port,
          internal_ip = o.internal_ip or (state.igd and state.igd.lan_addr), internal_port = o.internal_port,
          proto = o.proto, lifetime = o.lifetime, gateway = state.igd and state.igd.control_url})
    end)
  end
  local function next_port(port, tries, first_err, first_code)
    if tries == 0 or port > 65535 then return cb(nil, first_err, first_code) end
    upnp("add", upnp_args(o, {external_port = port}), function(r, err, code)
      if r then return done(port) end
      if code ~= "conflict" then return cb(nil, err, code) end
      next_port(port + 1, tries - 1, first_err, first_code)
    end)
  end
  upnp("add", upnp_args(o), function(r, err, code)
    if r then return done(o.external_port) end
    if code ~= "conflict" then return cb(nil, err, code) end
    upnp("add_any", upnp_args(o), function(r2, _, code2)
      if r2 then return done(r2.external_port) end
      if code2 ~= "unsupported" then return cb(nil, err, code) end
      next_port(o.external_port + 1, 16, err, code)
    end)
  end)
end

local MAPPERS = {natpmp = map_natpmp, upnp = map_upnp, pcp = map_pcp}
local METHODS = {"pcp", "natpmp", "upnp"} -- the order auto falls back in
-- which failure to report when both methods failed: the most telling
local RANK = {denied = 1, conflict = 2, exhausted = 3, unsupported = 4, protocol = 5, unreachable = 6,
              timeout = 7, not_found = 8}

-- Deletes what a method made (a NAT-PMP mapping is named by its internal
-- port; a PCP one by its internal port and nonce).
local function delete(method, m, timeout, cb)
  if method == "pcp" then
    local req = {op = "map", proto = m.proto, internal_port = m.internal_port, external_port = m.external_port,
                 external_ip = m.external_ip, lifetime = 0, nonce = m._nonce}
    pcp({req}, timeout, function(a, err, code) cb(a ~= nil or nil, err, code) end)
  elseif method == "natpmp" then
    natpmp({{m.proto, m.internal_port, 0, 0}}, timeout, function(a, err, code)
      cb(a ~= nil or nil, err, code)
    end)
  else
    local args = {external_port = m.external_port, proto = m.proto, timeout = timeout}
    upnp("delete", args, function(r, err, code) cb(r ~= nil or nil, err, code) end)
  end
end

-- PCP, and NAT-PMP when the gateway does not speak PCP (RFC 6887 9: a
-- NAT-PMP gateway answers UNSUPP_VERSION) or garbles it. Not both at
-- once: they reach the same server on port 5351, and miniupnpd gives the
-- entry to the protocol that asked last, so the loser's answer would take
-- the winner's mapping from it.
local function map_port_control(o, cb)
  map_pcp(o, function(m, err, code)
    if m or (code ~= "unsupported" and code ~= "protocol") then return cb(m, err, code) end
    map_natpmp(o, function(m2, err2, code2)
      if m2 then return cb(m2) end
      if (RANK[code2] or 9) < (RANK[code] or 9) then err, code = err2, code2 end
      cb(nil, err, code)
    end)
  end)
end

-- auto: the router's port control (PCP, else NAT-PMP) and UPnP at once, as
-- Tailscale's portmapper asks them; the first that works is kept (a later
-- success of the other is deleted again); with a method remembered from
-- an earlier call, that one first and the others, one after another, only
-- when it fails.
local function map_auto(o, cb)
  if state.preferred then
    local order = {state.preferred}
    for _, method in ipairs(METHODS) do
      if method ~= state.preferred then order[#order + 1] = method end
    end
    local first_err, first_code
    local function try(i)
      if i > #order then return cb(nil, first_err, first_code) end
      MAPPERS[order[i]](o, function(m, err, code)
        if m then
          state.preferred = order[i]
          return cb(m)
        end
        if not first_code or (RANK[code] or 9) < (RANK[first_code] or 9) then first_err, first_code = err, code end
        try(i + 1)
      end)
    end
    return try(1)
  end
  local won, failures, racers = nil, {}, {map_port_control, map_upnp}
  for _, racer in ipairs(racers) do
    racer(o, function(m, err, code)
      if m and won then
        if m.external_port == won.external_port and m.internal_port == won.internal_port then
          -- one router speaking both made one entry: keep it, and ask for
          -- it once more with the winner's protocol, as miniupnpd hands an
          -- entry to the protocol that asked last (and lets only that one
          -- delete a PCP entry)
          return MAPPERS[won.method](setmetatable({external_port = won.external_port}, {__index = o}),
            function() end)
        end
        return delete(m.method, m, o.timeout, function() end)
      end
      if m then
        won = m
        state.preferred = m.method
        return cb(m)
      end
      failures[#failures + 1] = {err, code}
      if #failures == #racers and not won then
        table.sort(failures, function(a, b) return (RANK[a[2]] or 9) < (RANK[b[2]] or 9) end)
        cb(nil, failures[1][1], failures[1][2])
      end
    end)
  end
end

-- --- a mapping's life ---

local function emit(self, ev)
  ev.mapping = self
  log.debug("mapping_" .. ev.event, {method = self.method, external_port = self.external_port,
    proto = self.proto, error = ev.error})
  events.emit(self, ev)
end

local schedule_renewal

-- NAT-PMP renewal: the same request again. The epoch tells whether the
-- gateway kept its table: RFC 6886 3.6, it must have grown by at least
-- 7/8 of the time that passed (less 2 s of slack) since the last answer.
local function renew_natpmp(self, cb)
  local o = self._opts
  natpmp({{self.proto, self.internal_port, self.external_port, self._opts.lifetime}}, o.timeout,
    function(a, err, code)
      if not a then return cb(nil, err, code) end
      uv.update_time()
      local elapsed = (uv.now() - self._epoch_at) / 1000
      local lost = a[1].epoch + 2 < self._epoch + elapsed * 7 / 8
      local moved = a[1].external_port ~= self.external_port
      self.external_port, self.lifetime = a[1].external_port, a[1].lifetime
      self._epoch, self._epoch_at = a[1].epoch, uv.now()
      cb(lost and "recreated" or "renewed", moved)
    end)
end

-- Did the PCP server lose its mappings since its last answer (RFC 6887
-- 8.5)? Its epoch went back by more than a second, or it grew more than
-- 1/16 (and 2 s) off the time the client saw pass, either way (a restart
-- a while ago shows as an epoch short of the time that passed).
function M._pcp_lost(prev_epoch, epoch, elapsed)
  if epoch + 1 < prev_epoch then return true end
  local server = epoch - prev_epoch
  return elapsed + 2 < server - server / 16 or server + 2 < elapsed - elapsed / 16
end

-- PCP renewal: the same MAP with the mapping's nonce, its port and address
-- as suggestions; the epoch tells whether the gateway kept its table (if
-- not, this request has just made the mapping again).
local function renew_pcp(self, cb)
  local req = {op = "map", proto = self.proto, internal_port = self.internal_port,
               external_port = self.external_port, external_ip = self.external_ip,
               lifetime = self._opts.lifetime, nonce = self._nonce}
  pcp({req}, self._opts.timeout, function(a, err, code)
    if not a then return cb(nil, err, code) end
    uv.update_time()
    local r = a[1]
    local lost = M._pcp_lost(self._epoch, r.epoch, (uv.now() - self._epoch_at) / 1000)
    local moved = r.external_port ~= self.external_port or r.external_ip ~= self.external_ip
    self.external_port, self.external_ip, self.lifetime = r.external_port, r.external_ip, r.lifetime
    self._epoch, self._epoch_at = r.epoch, uv.now()
    cb(lost and "recreated" or "renewed", moved)
  end)
end

-- UPnP renewal: is the entry still there (a restarted router forgets it)?
-- Then AddPortMapping again, which refreshes or re-creates it.
local function renew_upnp(self, cb)
  local o = self._opts
  local args = upnp_args(o, {external_port = self.external_port})
  upnp("get", args, function(r, err, code)
    if not r and code ~= "not_found" then return cb(nil, err, code) end
    local lost = r == nil or r.entry.internal_port ~= self.internal_port
    upnp("add", args, function(r2, err2, code2)
      if not r2 then return cb(nil, err2, code2) end
      cb(lost and "recreated" or "renewed", false)
    end)
  end)
end

local function renew(self)
  if self._closed then return end
  local fn = ({natpmp = renew_natpmp, pcp = renew_pcp})[self.method] or renew_upnp
  fn(self, function(what, moved_or_err, code)
    if self._closed then return end
    if what then
      emit(self, {event = what, moved = moved_or_err or nil})
      schedule_renewal(self, self.lifetime // 2)
    else
      emit(self, {event = "renew_failed", error = moved_or_err, code = code})
      -- try again soon, well before the lifetime runs out
      schedule_renewal(self, math.max(1, math.min(30, self.lifetime // 4)))
    end
  end)
end

function schedule_renewal(self, seconds)
  if self._closed then return end
  self._timer = self._timer or uv.new_timer()
  self._timer:stop()
  uv.update_time()
  self._renew_at = os.time() + seconds
  self._timer:start(math.max(1, seconds) * 1000, 0, async.safe(function() renew(self) end, "mapping renewal"))
end

local function new_mapping(fields, o)
  local self = setmetatable({method = fields.method, external_ip = fields.external_ip,
    external_port = fields.external_port, internal_ip = fields.internal_ip,
    internal_port = fields.internal_port, proto = fields.proto, lifetime = fields.lifetime,
    description = o.description, gateway = fields.gateway,
    _epoch = fields._epoch, _epoch_at = fields._epoch_at, _nonce = fields._nonce, _opts = o}, mapping_mt)
  if o.on_event then self:on(o.on_event) end
  state.live[self] = true
  schedule_renewal(self, self.lifetime // 2)
  return self
end

--- Maps a port on the router.
-- @tparam table opts `internal_port` (required), `external_port` (the
--   internal one by default), `proto` ("tcp"), `lifetime` (seconds, 7200),
--   `method` ("auto", "upnp", "natpmp" or "pcp"), `description`, `timeout` (ms
--   per router operation, 5000), `on_event` (called with each event:
--   {event = "renewed" | "recreated" | "renew_failed" | "closed", mapping})
-- @tparam[opt] function cb called with the results; without it, inside
--   portman.run/spawn, map waits and returns them
-- @return[1] the mapping {method, external_ip, external_port, internal_ip,
--   internal_port, proto, lifetime}; its external_port is another one when
--   the one asked for was taken. It renews itself until closed.
-- @return[2] nil, msg, code: `not_found` (no gateway answered), `denied`
--   (the router refused), `conflict`, `timeout`, `unreachable`, `protocol`
--   (the router's answer was malformed or did not fit the request: an
--   external port 0, another internal port, a lifetime of 0 or over a
--   week, ...; nothing of it is kept)
-- @raise on a bad option
M.map = async.adapt(function(opts, cb)
  local o = check_map(opts)
  local mapper = o.method == "auto" and map_auto or MAPPERS[o.method]
  mapper(o, function(m, err, code)
    if not m then return cb(nil, err, code) end
    cb(new_mapping(m, o))
  end)
end)

--- Mapping:on(fn) adds an event listener (see map's on_event); it
-- returns a function that removes it again.

--- The mapping as a plain table (for JSON and the state file).
function Mapping:info()
  return {method = self.method, external_ip = self.external_ip, external_port = self.external_port,
          internal_ip = self.internal_ip, internal_port = self.internal_port, proto = self.proto,
          lifetime = self.lifetime, description = self.description, expires = self._renew_at
            and (self._renew_at + self.lifetime - self.lifetime // 2) or nil}
end

--- Is the mapping closed?
function Mapping:closed() return self._closed == true end

--- Stops renewing and forgets the mapping, leaving it on the router for
-- the rest of its lifetime (a one-shot `portman map`). Idempotent.
function Mapping:detach()
  if self._closed then return end
  self._closed = true
  state.live[self] = nil
  if self._timer then self._timer:close() end
end

--- Stops renewing and deletes the mapping on the router. A second close
-- does nothing and returns true.
-- @return[1] true
-- @return[2] nil, msg, code when the router could not be told (the
--   mapping then lapses at the end of its lifetime)
Mapping.close = async.adapt(function(self, cb)
  if getmetatable(self) ~= mapping_mt then check.argerror("close", 1, "portman.mapping expected") end
  if self._closed then return cb(true) end
  self._closed = true
  state.live[self] = nil
  if self._timer then self._timer:close() end
  delete(self.method, self, self._opts.timeout, function(ok, err, code)
    emit(self, {event = "closed", error = err})
    if ok or code == "not_found" then return cb(true) end
    cb(nil, err, code)
  end)
end)

--- The open mappings of this process.
function M.open_mappings()
  local list = {}
  for m in pairs(state.live) do list[#list + 1] = m end
  table.sort(list, function(a, b) return a.external_port < b.external_port end)
  return list
end

--- Closes every open mapping; cb() when all are deleted.
M.close_all = async.adapt(function(cb)
  local list = M.open_mappings()
  local left = #list
  if left == 0 then return cb(true) end
  for _, m in ipairs(list) do
    m:close(function()
      left = left - 1
      if left == 0 then cb(true) end
    end)
  end
end)

local UNMAP_KEYS = {external_port = true, internal_port = true, proto = true, method = true, timeout = true,
                    nonce = true}

--- Deletes a mapping on the router that this process may not hold (one
-- made by `portman map`, or left by a crashed run).
-- @tparam table opts `external_port` (required), `proto` ("tcp"),
--   `method` ("auto": UPnP, which names mappings by external port, then
--   NAT-PMP, then PCP; "upnp"; "natpmp"; "pcp"), `internal_port` (NAT-PMP
--   and PCP name a mapping by its internal port: the external one by
--   default), `nonce` (PCP: the mapping's, 24 hex digits; by default the
--   one this host derives for it, see pcp_nonce), `timeout`
-- @return[1] true
-- @return[2] nil, msg, code (`not_found` when there was no such mapping)
M.unmap = async.adapt(function(opts, cb)
  check.table("unmap", 1, opts)
  check.known("unmap", 1, opts, UNMAP_KEYS)
  local m = {external_port = check.port("unmap", 1, opts.external_port, "external_port"),
             proto = check.oneof("unmap", 1, opts.proto or "tcp", {"tcp", "udp"}, "proto")}
  m.internal_port = opts.internal_port and check.port("unmap", 1, opts.internal_port, "internal_port")
    or m.external_port
  local method = check.oneof("unmap", 1, opts.method or "auto", {"auto", "upnp", "natpmp", "pcp"}, "method")
  if opts.nonce ~= nil and (type(opts.nonce) ~= "string" or not opts.nonce:match("^%x+$") or #opts.nonce ~= 24) then
    check.argerror("unmap", 1, "nonce: 24 hex digits expected")
  end
  m._nonce = opts.nonce
  local timeout = math.tointeger(opts.timeout) or M.DEFAULT_TIMEOUT
  if method ~= "auto" then return delete(method, m, timeout, cb) end
  delete("upnp", m, timeout, function(ok, err, code)
    if ok then return cb(true) end
    delete("natpmp", m, timeout, function(ok2)
      if ok2 then return cb(true) end
      delete("pcp", m, timeout, function(ok3)
        if ok3 then return cb(true) end
        cb(nil, err, code)
      end)
    end)
  end)
end)

--- The router's current mappings (UPnP GetGenericPortMappingEntry; NAT-PMP
-- has no way to list).
-- @return[1] a list of {external_port, internal_ip, internal_port, proto,
--   description, lifetime, enabled}
-- @return[2] nil, msg, code
M.mappings = async.adapt(function(opts, cb)
  if cb == nil and type(opts) == "function" then opts, cb = {}, opts end
  opts = opts or {}
  check.table("mappings", 1, opts)
  upnp("list", {timeout = opts.timeout}, function(r, err, code)
    if not r then return cb(nil, err, code) end
    cb(r.entries)
  end)
end)

local PRIVATE = {"^10%.", "^192%.168%.", "^172%.1[6-9]%.", "^172%.2%d%.", "^172%.3[01]%.", "^100%.6[4-9]%.",
                 "^100%.[7-9]%d%.", "^100%.1[01]%d%.", "^100%.12[0-7]%.", "^127%.", "^169%.254%.", "^0%."}

local function is_private(ip)
  for _, p in ipairs(PRIVATE) do if ip:match(p) then return true end end
  return false
end

--- The host's public address, from the router (NAT-PMP and UPnP asked at
-- once) and from STUN when servers are given. The router's answer is used
-- unless it is itself private (a NAT behind the router's: then STUN knows
-- better).
-- @tparam[opt] table opts `stun` (list of "host:port"), `timeout` (ms),
--   `router` (the router protocols to ask: {"natpmp", "upnp"})
-- @return[1] {address, source = "natpmp" | "upnp" | "stun", sources = {source = address}}
-- @return[2] nil, msg, code when no source answered
M.external_address = async.adapt(function(opts, cb)
  if cb == nil and type(opts) == "function" then opts, cb = {}, opts end
  opts = opts or {}
  check.table("external_address", 1, opts)
  check.known("external_address", 1, opts, {stun = true, timeout = true, router = true})
  local timeout = math.tointeger(opts.timeout) or M.DEFAULT_TIMEOUT
  local ask = {}
  for _, m in ipairs(opts.router or {"natpmp", "upnp"}) do
    ask[check.oneof("external_address", 1, m, {"natpmp", "upnp"}, "router method")] = true
  end
  local sources, errs, left = {}, {}, 0
  for _ in pairs(ask) do left = left + 1 end
  local function done()
    left = left - 1
    if left > 0 then return end
    for _, s in ipairs({"natpmp", "upnp", "stun"}) do
      local a = sources[s]
      if a and (s == "stun" or not is_private(a) or not sources.stun) then
        return cb({address = a, source = s, sources = sources})
      end
    end
    table.sort(errs, function(a, b) return (RANK[a[2]] or 9) < (RANK[b[2]] or 9) end)
    cb(nil, errs[1][1], errs[1][2])
  end
  if ask.natpmp then
    natpmp({{}}, timeout, function(a, err, code)
      if a then sources.natpmp = a[1].external_ip else errs[#errs + 1] = {err, code} end
      done()
    end)
  end
  if ask.upnp then
    upnp("external_ip", {timeout = timeout}, function(r, err, code)
      if r then sources.upnp = r.external_ip else errs[#errs + 1] = {err, code} end
      done()
    end)
  end
  if opts.stun and #opts.stun > 0 then
    left = left + 1
    local sopts = {servers = opts.stun, timeout = timeout, cache_ttl = 0}
    stun.query(sopts, function(r, err, code)
      if r then sources.stun = r.external_ip else errs[#errs + 1] = {err, code} end
      done()
    end)
  end
end)

--- The NAT-PMP gateway (dotted quad); nil: the default route's.
M.gateway = nil

--- Forgets the remembered UPnP gateway and the method that answered last,
-- so the next call discovers again (after the host moved networks).
function M.forget()
  state.igd, state.preferred = nil, nil
end

return M
