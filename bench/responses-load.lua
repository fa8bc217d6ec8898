-- wrk script: short non-streaming requests whose text varies per request, to the path
-- wrk is given. PATH_KIND=responses sends POST /v1/responses bodies (stored), anything
-- else chat completions; the same text and token cap either way. Responses API runs.
local kind = os.getenv("PATH_KIND") or "chat"
local counter = 0
local ids = 0

function setup(thread)
  ids = ids + 1
  thread:set("tid", ids)
end

function request()
  counter = counter + 1
  local text = string.format("Request %d-%d: say hello to the simulator", tid or 0, counter)
  local body
  if kind == "responses" then
    body = string.format('{"model":"switchyard/sim-8b","input":"%s","max_output_tokens":16}', text)
  else
    body = string.format(
      '{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"%s"}],"max_tokens":16}', text)
  end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
