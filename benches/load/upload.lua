-- wrk script: POSTs the file named after `--` as the body of every request (wrk … URL -- FILE).
-- The request (with wrk's Host and the -H headers) is formatted once; request() hands it out.
local req
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/octet-stream"
  req = wrk.format("POST", nil, nil, body)
end
function request()
  return req
end
