-- wrk script for bench/cache.sh: deterministic chat completions (temperature 0).
--   REPEAT unset: every request is the same body (after one warm-up request, all hits).
--   REPEAT=0.3:   30 % of requests repeat one of POOL prompts, the others are new
--                 (unique per thread and request): a workload with 30 % repeats.
--   NO_CACHE=1:   adds `Cache-Control: no-cache` (an engine round trip through the
--                 same gateway).
local repeat_share = tonumber(os.getenv("REPEAT") or "")
local pool = tonumber(os.getenv("POOL") or "100")
local max_tokens = tonumber(os.getenv("MAX_TOKENS") or "16")
local counter = 0
local thread_id = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if os.getenv("NO_CACHE") == "1" then
  wrk.headers["Cache-Control"] = "no-cache"
end

local function body(prompt)
  return string.format(
    '{"model":"switchyard/sim-8b","temperature":0,"max_tokens":%d,"messages":[{"role":"user","content":"%s"}]}',
    max_tokens, prompt)
end

local fixed = body("What does a railway switchyard do with freight wagons?")

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  math.randomseed(os.time() + (tid or 0) * 7919)
end

function request()
  if not repeat_share then
    return wrk.format(nil, nil, nil, fixed)
  end
  counter = counter + 1
  local prompt
  if math.random() < repeat_share then
    prompt = string.format("Repeated question number %d about freight yards", math.random(1, pool))
  else
    prompt = string.format("Unique question %d-%d-%d about freight yards", tid or 0, counter, math.random(1, 1e9))
  end
  return wrk.format(nil, nil, nil, body(prompt))
end
