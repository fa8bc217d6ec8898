-- wrk script: short non-streaming chat completions whose prompt varies per request
-- (no classification-cache hits), to the model named by the MODEL environment variable
-- (`auto` for intent routing, or a model name). Model-selection overhead runs.
local model = os.getenv("MODEL") or "auto"
local counter = 0
local thread_id = 0
local ids = 0

function setup(thread)
  ids = ids + 1
  thread:set("tid", ids)
end

function init(args)
  thread_id = tid or 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"model":"%s","messages":[{"role":"user","content":"Request %d-%d: my Python function throws an exception when the list is empty; how do I debug it?"}],"max_tokens":8}',
    model, thread_id, counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
