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
  igd = nil,       -- the UPnP gateway known: {control_url, service_type, lan_addr} (skips discovery)
  natpmp = nil,    -- the NAT-PMP gateway last heard: {gateway = address, supported = boolean}
  preferred = nil, -- the method that answered auto last
  changed = false, -- what known() returns changed since it was last read
  live = {},       -- open mappings (renewal timers run)
}

local function same_igd(a, b)
  return a and b and a.control_url == b.control_url and a.service_type == b.service_type
    and a.lan_addr == b.lan_addr
end

-- Runs one UPnP job: cb(result, err, code, igd), igd the gateway the job
-- reached (nil: none answered). The loop polls the job's eventfd; after
-- timeout ms the call gives up (the thread then ends on its own and frees
-- the job). A known gateway is used without discovery; the job searches
-- again only when it does not answer.
local function upnp(op, args, cb)
  local timeout = args.timeout or M.DEFAULT_TIMEOUT
  -- discovery ends at the first valid answer; this is its longest wait
  args.timeout = math.max(200, math.min(2000, timeout // 2))
  args.igd = args.igd or state.igd
  args.desc_url = args.desc_url or M.gateway_url
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
      local found = igd and igd.control_url ~= "" and igd or nil
      if found and not same_igd(found, state.igd) then state.igd, state.changed = found, true
      elseif not found and state.igd then state.igd, state.changed = nil, true end
      if found then
        log.debug(res and res.discovered and "upnp_igd_discovered" or "upnp_igd_known",
          {op = op, control_url = found.control_url})
      end
      finish(res, err, code, found)
    end})
  driver:arm()
end

-- Runs requests on a port-control engine (NAT-PMP's or PCP's: one UDP
-- socket to the gateway, polled on the loop), one after another. kind:
-- {name, open (core.natpmp_open, core.pcp_open), send(e, req, local_ip,
-- timeout) -> ok, err, code, heard(gateway, res, code)?, slack (ms the
-- call's own timer waits past timeout)}. cb(answers, err, code),
-- answers.gateway and .local_ip set.
local function run_requests(kind, reqs, timeout, cb)
  timeout = timeout or M.DEFAULT_TIMEOUT
  local e, gateway, local_ip = kind.open(M.gateway)
  if not e then return cb(nil, gateway, local_ip) end
  local answers = {gateway = gateway, local_ip = local_ip}
  local driver
  local finish = async.with_timeout(timeout + (kind.slack or 0), function(...)
    driver:close(function() e:close() end)
    cb(...)
  end, ("no %s answer from %s"):format(kind.name, gateway))
  local i = 0
  local function send_next()
    i = i + 1
    if i > #reqs then return finish(answers) end
    local ok, err, code = kind.send(e, reqs[i], local_ip, timeout)
    if not ok then return finish(nil, err, code) end
  end
  driver = engine.drive(e, {name = kind.name, busy = function() return true end,
    on_batch = function(res, err, code)
      if res == false then return end -- not answered yet: the engine resends
      if kind.heard then kind.heard(gateway, res, code) end
      if not res then return finish(nil, err, code) end
      answers[i] = res
      send_next()
    end})
  send_next()
  driver:arm()
end

-- NAT-PMP: reqs are {proto, internal, external, lifetime} (an empty one
-- asks for the public address); libnatpmp retries on its own timer (250
-- ms, doubling). Whether the gateway speaks it is remembered (nat.known).
local NATPMP = {name = "NAT-PMP", open = core.natpmp_open,
  send = function(e, r) return e:request(r[1], r[2], r[3], r[4]) end,
  heard = function(gateway, res, code)
    local ok
    if res then ok = true elseif code == "not_found" then ok = false else return end
    if not (state.natpmp and state.natpmp.gateway == gateway and state.natpmp.supported == ok) then
      state.natpmp, state.changed = {gateway = gateway, supported = ok}, true
    end
  end}

local function natpmp(reqs, timeout, cb) run_requests(NATPMP, reqs, timeout, cb) end

-- The PCP nonce of a mapping (RFC 6887 11.1): the gateway lets only the
-- holder of a mapping's nonce renew or delete it. Derived from the host's
-- machine-id (unknown off the host) and what names the mapping, so that
-- another portman process on this host (`portman unmap`, the next run
-- deleting a killed run's orphans) can delete it; random where the host
-- has no machine-id.
local machine_id -- read once: false when the host has none
local function pcp_nonce(local_ip, proto, internal_port)
  if machine_id == nil then
    local f = io.open("/etc/machine-id")
    local id = f and f:read("l")
    if f then f:close() end
    machine_id = id and #id >= 16 and id or false
  end
  local id = machine_id
  if not id then return nil end -- the engine draws a random one
  local d = core.sha1(table.concat({id, "portman pcp nonce", local_ip, proto, internal_port}, "\0"))
  return (d:sub(1, 12):gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- PCP: reqs are request tables (core.pcp_open's engine: {op, proto,
-- internal_port, external_port, external_ip, lifetime, nonce}; a MAP
-- without a nonce gets the mapping's). The engine resends on its own
-- schedule until timeout ms; the call's own timer, a little later, is a
-- backstop.
local PCP = {name = "PCP", open = core.pcp_open, slack = 500,
  send = function(e, r, local_ip, timeout)
    if r.op == "map" and not r.nonce then r.nonce = pcp_nonce(local_ip, r.proto, r.internal_port) end
    r.timeout = timeout
    return e:request(r)
  end}

local function pcp(reqs, timeout, cb) run_requests(PCP, reqs, timeout, cb) end

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

-- Is the router's entry e portman's mapping `want`: this host's, the same
-- protocol and internal port (when known), and the same description (when
-- known; else one portman gives, "portman" or "portman ...")? Only such an
-- entry is ever refreshed over or deleted.
local function owned(e, want)
  local ip = want.internal_ip or (state.igd and state.igd.lan_addr)
  if e.internal_ip ~= ip or e.proto ~= want.proto then return false end
  if want.internal_port and e.internal_port ~= want.internal_port then return false end
  if want.description then return e.description == want.description end
  return e.description == "portman" or e.description:sub(1, 8) == "portman "
end

local function whose(e)
  return ("%s:%d ('%s')"):format(e.internal_ip, e.internal_port, e.description)
end

M.MAP_TRIES = 16 -- external ports tried when the one asked for is another's

-- UPnP: each external port is looked at first (GetSpecificPortMappingEntry):
-- AddPortMapping replaces an entry of the same internal client, so a port
-- another program of this host holds must never be asked for. A free port
-- (or portman's own entry of this mapping) is added with AddAnyPortMapping
-- where the IGD has it (IGDv2: the router picks another when the port was
-- taken meanwhile), else AddPortMapping; a taken one moves on to the next.
local function map_upnp(o, cb)
  local try
  local function done(port)
    upnp("external_ip", upnp_args(o), function(r, err, code)
      if not r then return cb(nil, err, code) end
      cb({method = "upnp", external_ip = r.external_ip, external_port = port,
          internal_ip = o.internal_ip or (state.igd and state.igd.lan_addr), internal_port = o.internal_port,
          proto = o.proto, lifetime = o.lifetime, gateway = state.igd and state.igd.control_url})
    end)
  end
  local function add(port, tries, op)
    upnp(op, upnp_args(o, {external_port = port}), function(r, err, code)
      if r then return done(r.external_port or port) end
      -- an IGD without AddAnyPortMapping; or none of its ports is allowed
      -- (728): AddPortMapping on the port itself says why (606: denied)
      if op == "add_any" and (code == "unsupported" or code == "exhausted") then return add(port, tries, "add") end
      if code == "conflict" then return try(port + 1, tries - 1, err) end -- taken since we looked
      cb(nil, err, code)
    end)
  end
  function try(port, tries, last_err)
    if tries == 0 or port > 65535 then
      return cb(nil, last_err or ("conflict: no free external port from %d"):format(o.external_port), "conflict")
    end
    upnp("get", upnp_args(o, {external_port = port}), function(r, err, code)
      if not r and code ~= "not_found" then return cb(nil, err, code) end
      if r and not owned(r.entry, o) then
        local why = ("conflict: external port %d/%s is held by %s"):format(port, o.proto, whose(r.entry))
        log.debug("upnp_port_taken", {external_port = port, proto = o.proto, holder = whose(r.entry)})
        return try(port + 1, tries - 1, why)
      end
      local v2 = state.igd and state.igd.service_type:match(":2$")
      add(port, tries, v2 and "add_any" or "add")
    end)
  end
  try(o.external_port, M.MAP_TRIES)
end

local MAPPERS = {natpmp = map_natpmp, upnp = map_upnp, pcp = map_pcp}
-- which failure to report when both methods failed: the most telling
local RANK = {denied = 1, conflict = 2, exhausted = 3, unsupported = 4, protocol = 5, unreachable = 6,
              timeout = 7, not_found = 8}

-- Deletes what a method made: cb(true), or cb(nil, err, code) with code
-- "not_found" only when the router said it has no such mapping (no router
-- answering is "unreachable"). UPnP: only an entry that is portman's own
-- (`owned`: m's internal address, port, protocol and description), unless
-- force; NAT-PMP names a mapping by its internal port, and a gateway
-- deletes only mappings made by NAT-PMP; PCP by its internal port and
-- nonce.
local function delete(method, m, timeout, cb, force)
  if method == "pcp" then
    local req = {op = "map", proto = m.proto, internal_port = m.internal_port, external_port = m.external_port,
                 external_ip = m.external_ip, lifetime = 0, nonce = m._nonce}
    return pcp({req}, timeout, function(a, err, code) cb(a ~= nil or nil, err, code) end)
  end
  if method == "natpmp" then
    return natpmp({{m.proto, m.internal_port, 0, 0}}, timeout, function(a, err, code)
      if not a and code == "not_found" then code, err = "unreachable", err:gsub("^not_found", "unreachable") end
      cb(a ~= nil or nil, err, code)
    end)
  end
  local args = {external_port = m.external_port, proto = m.proto, timeout = timeout}
  upnp("get", args, function(r, err, code, igd)
    if not r and code == "not_found" and not igd then
      return cb(nil, (err:gsub("^not_found", "unreachable")), "unreachable")
    end
    if not r then return cb(nil, err, code) end
    if not force and not owned(r.entry, m) then
      return cb(nil, ("conflict: external port %d/%s is held by %s, not portman's mapping: left as it is")
        :format(m.external_port, m.proto, whose(r.entry)), "conflict", r.entry)
    end
    upnp("delete", args, function(r2, err2, code2) cb(r2 ~= nil or nil, err2, code2) end)
  end)
end

local function better(code, than) return (RANK[code] or 9) < (RANK[than] or 9) end

local function prefer(method)
  if state.preferred ~= method then state.preferred, state.changed = method, true end
end

-- A mapper that tries first, then second when first failed (and, with
-- go_on, only when go_on(code) says so); cb gets the more telling of the
-- two failures.
local function either(first, second, go_on)
  return function(o, cb)
    first(o, function(m, err, code)
      if m or (go_on and not go_on(code)) then return cb(m, err, code) end
      second(o, function(m2, err2, code2)
        if m2 then return cb(m2) end
        if better(code2, code) then err, code = err2, code2 end
        cb(nil, err, code)
      end)
    end)
  end
end

-- PCP, and NAT-PMP when the gateway does not speak PCP (RFC 6887 9: a
-- NAT-PMP gateway answers UNSUPP_VERSION) or garbles it. Not both at
-- once: they reach the same server on port 5351, and miniupnpd gives the
-- entry to the protocol that asked last, so the loser's answer would take
-- the winner's mapping from it.
local map_port_control = either(map_pcp, map_natpmp,
  function(code) return code == "unsupported" or code == "protocol" end)

-- What auto races, as Tailscale's portmapper asks them: the router's port
-- control (PCP, else NAT-PMP) and UPnP.
local RACERS = {port_control = map_port_control, upnp = map_upnp}

-- Every racer but `except`, at once: the first that works is kept, and a
-- later success of another is deleted again (only what that method made
-- for this mapping: delete checks it). cb(m) or cb(nil, err, code) with
-- the most telling failure.
local function race(o, except, cb)
  local won, failures, n = nil, {}, 0
  for name in pairs(RACERS) do if name ~= except then n = n + 1 end end
  if n == 0 then return cb(nil, "not_found: no other method", "not_found") end
  for name, racer in pairs(RACERS) do
    if name ~= except then
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
          m.description = o.description
          return delete(m.method, m, o.timeout, function(ok, derr)
            if not ok then log.debug("mapping_loser_left", {method = m.method, external_port = m.external_port,
                                                            error = derr}) end
          end)
        end
        if m then
          won = m
          prefer(m.method)
          return cb(m)
        end
        failures[#failures + 1] = {err, code}
        if #failures == n and not won then
          table.sort(failures, function(a, b) return better(a[2], b[2]) end)
          cb(nil, failures[1][1], failures[1][2])
        end
      end)
    end
  end
end

-- auto: the racers at once; with a method remembered from an earlier call
-- (or a cache), that one first, and the racers when it fails (all of them
-- but UPnP when UPnP failed: the port control racer tries PCP, then
-- NAT-PMP).
local function map_auto(o, cb)
  local first = state.preferred and MAPPERS[state.preferred] and state.preferred
  if not first then return race(o, nil, cb) end
  local except = first == "upnp" and "upnp" or nil
  either(MAPPERS[first], function(o2, cb2) race(o2, except, cb2) end)(o, cb)
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
-- Then AddPortMapping again, which refreshes or re-creates it. When the
-- router lost it and another program holds the port now, the mapping
-- moves to another port (map_upnp) rather than take that one.
local function renew_upnp(self, cb)
  local o = self._opts
  local args = upnp_args(o, {external_port = self.external_port})
  upnp("get", args, function(r, err, code)
    if not r and code ~= "not_found" then return cb(nil, err, code) end
    if r and not owned(r.entry, self) then
      return map_upnp(o, function(m, err2, code2)
        if not m then return cb(nil, err2, code2) end
        self.external_port, self.internal_ip = m.external_port, m.internal_ip
        cb("recreated", true)
      end)
    end
    upnp("add", args, function(r2, err2, code2)
      if not r2 then return cb(nil, err2, code2) end
      cb(r == nil and "recreated" or "renewed", false)
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
                    nonce = true, description = true, internal_ip = true, force = true}

--- Deletes a mapping on the router that this process may not hold (one
-- made by `portman map`, or left by a crashed run). Only portman's own:
-- a UPnP entry of this host with the internal port (when given) and the
-- description (when given; else one portman gives, "portman ...") asked
-- for, unless `force`.
-- @tparam table opts `external_port` (required), `proto` ("tcp"),
--   `method` ("auto": UPnP, which names mappings by external port, then
--   NAT-PMP, then PCP, also for an entry the router says NAT-PMP or PCP
--   made; "upnp"; "natpmp"; "pcp"), `internal_port` (NAT-PMP and PCP
--   name a mapping by its internal port: the external one by default),
--   `nonce` (PCP: the mapping's, 24 hex digits; by default the one this
--   host derives for it, see pcp_nonce), `description`, `internal_ip`
--   (this host's address towards the router by default), `force` (delete
--   a UPnP entry that is not portman's), `timeout`
-- @return[1] true
-- @return[2] nil, msg, code: `not_found` when the router has no such
--   mapping, `conflict` when the entry is another program's (left as it
--   is), `unreachable` or `timeout` when no router answered
M.unmap = async.adapt(function(opts, cb)
  check.table("unmap", 1, opts)
  check.known("unmap", 1, opts, UNMAP_KEYS)
  local m = {external_port = check.port("unmap", 1, opts.external_port, "external_port"),
             proto = check.oneof("unmap", 1, opts.proto or "tcp", {"tcp", "udp"}, "proto")}
  -- UPnP checks the internal port only when it was given
  m.internal_port = opts.internal_port and check.port("unmap", 1, opts.internal_port, "internal_port")
  for _, k in ipairs({"description", "internal_ip"}) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then check.argerror("unmap", 1, k .. ": string expected") end
    m[k] = opts[k]
  end
  if opts.nonce ~= nil and (type(opts.nonce) ~= "string" or not opts.nonce:match("^%x+$") or #opts.nonce ~= 24) then
    check.argerror("unmap", 1, "nonce: 24 hex digits expected")
  end
  -- NAT-PMP and PCP name a mapping by its internal port
  local pmp = {proto = m.proto, internal_port = m.internal_port or m.external_port,
               external_port = m.external_port, _nonce = opts.nonce}
  local method = check.oneof("unmap", 1, opts.method or "auto", {"auto", "upnp", "natpmp", "pcp"}, "method")
  local timeout = math.tointeger(opts.timeout) or M.DEFAULT_TIMEOUT
  local force = opts.force == true
  if method == "natpmp" or method == "pcp" then return delete(method, pmp, timeout, cb) end
  if method == "upnp" then return delete("upnp", m, timeout, cb, force) end
  delete("upnp", m, timeout, function(ok, err, code, entry)
    -- a NAT-PMP or PCP mapping of this host: they delete it (by its internal port)
    local by_pmp = code == "conflict" and (entry.description:match("^NAT%-PMP ") or entry.description:match("^PCP "))
      and entry.internal_ip == (m.internal_ip or (state.igd and state.igd.lan_addr))
      and (not m.internal_port or m.internal_port == entry.internal_port)
    if by_pmp then pmp.internal_port = entry.internal_port end
    if ok or (code == "conflict" and not by_pmp) then return cb(ok, err, code) end
    delete("natpmp", pmp, timeout, function(ok2)
      if ok2 then return cb(true) end
      delete("pcp", pmp, timeout, function(ok3)
        if ok3 then return cb(true) end
        cb(nil, err, code)
      end)
    end)
  end, force)
end)

M.MAX_ENTRIES = 4096 -- the longest router list read

--- The router's current mappings (UPnP GetGenericPortMappingEntry, one
-- request per entry, each with its own timeout; NAT-PMP has no way to
-- list).
-- @tparam[opt] table opts `timeout` (ms for each request)
-- @return[1] a list of {external_port, internal_ip, internal_port, proto,
--   description, lifetime, enabled}; when a request failed after some
--   entries were read, those, with the failure's msg and code after it
-- @return[2] nil, msg, code when not even the first entry could be read
M.mappings = async.adapt(function(opts, cb)
  if cb == nil and type(opts) == "function" then opts, cb = {}, opts end
  opts = opts or {}
  check.table("mappings", 1, opts)
  local list = {}
  local function read(i)
    if i >= M.MAX_ENTRIES then return cb(list) end
    upnp("entry", {index = i, timeout = opts.timeout}, function(r, err, code)
      if not r and i == 0 then return cb(nil, err, code) end
      if not r then return cb(list, err, code) end
      if r.done then return cb(list) end
      list[#list + 1] = r.entry
      read(i + 1)
    end)
  end
  read(0)
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

--- The UPnP IGD's root description URL (as upnpc -u takes it): the IGD
-- is read from there, without SSDP discovery; nil: discover.
M.gateway_url = nil

--- Forgets the remembered UPnP gateway and the method that answered last,
-- so the next call discovers again (after the host moved networks).
function M.forget()
  state.igd, state.preferred, state.natpmp, state.changed = nil, nil, nil, true
end

-- --- the gateway known, kept across runs (a cache or state file) ---

local function quad(s)
  if type(s) ~= "string" then return nil end
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if not (a and a < 256 and b < 256 and c < 256 and d < 256) then return nil end
  return a, b
end

-- A LAN address: RFC 1918, link-local or shared (RFC 6598).
local function lan(s)
  local a, b = quad(s)
  return a ~= nil and (a == 10 or (a == 172 and b >= 16 and b <= 31) or (a == 192 and b == 168)
    or (a == 169 and b == 254) or (a == 100 and b >= 64 and b <= 127))
end

-- The problem of a saved IGD, or nil: its control URL must be an http://
-- URL on a LAN address (the router's), its service a WAN connection.
local function igd_problem(igd)
  if type(igd) ~= "table" then return "upnp: table expected" end
  local url = igd.control_url
  if type(url) ~= "string" or #url > 255 then return "upnp.control_url: string expected" end
  local host, port = url:match("^http://([%d%.]+):?(%d*)/[%w%-%._~/%%?=&;:@+!$,]*$")
  if not host or not lan(host) then return "upnp.control_url: an http:// URL on a LAN address expected" end
  if port ~= "" and not (tonumber(port) >= 1 and tonumber(port) <= 65535) then
    return "upnp.control_url: bad port"
  end
  local service = type(igd.service_type) == "string"
    and igd.service_type:match("^urn:schemas%-upnp%-org:service:(WAN%u+Connection):[12]$")
  if service ~= "WANIPConnection" and service ~= "WANPPPConnection" then
    return "upnp.service_type: a WANIPConnection or WANPPPConnection service expected"
  end
  if igd.lan_addr ~= nil and not quad(igd.lan_addr) then return "upnp.lan_addr: dotted quad expected" end
  return nil
end

--- What this process knows of the router, to keep for the next run: a
-- table {upnp = {control_url, service_type, lan_addr}?, natpmp = {gateway,
-- supported}?, preferred = "upnp" | "natpmp"?}, and whether it changed
-- since the last call.
function M.known()
  local changed = state.changed
  state.changed = false
  local t = {preferred = state.preferred}
  if state.igd then
    t.upnp = {control_url = state.igd.control_url, service_type = state.igd.service_type,
              lan_addr = state.igd.lan_addr}
  end
  if state.natpmp then t.natpmp = {gateway = state.natpmp.gateway, supported = state.natpmp.supported} end
  return t, changed
end

--- Uses what known() returned in an earlier run, all of it or nothing:
-- the IGD is then used without discovery (and found again when it does
-- not answer).
-- @return[1] true
-- @return[2] nil, msg, "protocol" when it is malformed (nothing is used)
function M.use_known(t)
  if type(t) ~= "table" then return nil, "protocol: known gateway: table expected", "protocol" end
  local why = t.upnp ~= nil and igd_problem(t.upnp)
  if not why and t.preferred ~= nil and not MAPPERS[t.preferred] then why = "preferred: unknown method" end
  local pmp = t.natpmp
  if not why and pmp ~= nil and (type(pmp) ~= "table" or not lan(pmp.gateway) or type(pmp.supported) ~= "boolean") then
    why = "natpmp: {gateway = LAN address, supported = boolean} expected"
  end
  if why then return nil, "protocol: known gateway: " .. why, "protocol" end
  if t.upnp then
    state.igd = {control_url = t.upnp.control_url, service_type = t.upnp.service_type,
                 lan_addr = t.upnp.lan_addr or ""}
  end
  if pmp then state.natpmp = {gateway = pmp.gateway, supported = pmp.supported} end
  -- a gateway that did not speak NAT-PMP: auto asks UPnP first
  state.preferred = t.preferred or (pmp and not pmp.supported and t.upnp and "upnp") or nil
  state.changed = false
  return true
end

return M
