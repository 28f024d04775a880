-- The answers of a fake UPnP IGD, for specs that run one on loopback
-- (spec/support/http_server.lua serves them): HTTP framing, the SOAP
-- envelope, an action's response and a UPnPError fault.
local M = {}

--- A whole HTTP response with body (text/xml), closing the connection.
function M.http(status, body)
  return ("HTTP/1.1 %d X\r\nContent-Type: text/xml\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s")
    :format(status, #body, body)
end

--- body in a SOAP envelope.
function M.envelope(body)
  return '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    .. 's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>' .. body
    .. "</s:Body></s:Envelope>"
end

--- The response to action of service type st, with fields ({name, value}
-- each, in order).
function M.answer(st, action, fields)
  local parts = {}
  for _, kv in ipairs(fields) do parts[#parts + 1] = ("<%s>%s</%s>"):format(kv[1], kv[2], kv[1]) end
  return M.http(200, M.envelope(("<u:%sResponse xmlns:u=\"%s\">%s</u:%sResponse>"):format(action, st,
    table.concat(parts), action)))
end

--- A UPnPError fault: code and description (713 SpecifiedArrayIndexInvalid
-- ends a list; 714 NoSuchEntryInArray is a missing entry).
function M.fault(code, description)
  return M.http(500, M.envelope('<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError'
    .. '</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>' .. code
    .. "</errorCode><errorDescription>" .. description .. "</errorDescription></UPnPError>"
    .. "</detail></s:Fault>"))
end

return M
