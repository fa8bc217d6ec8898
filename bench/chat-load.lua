-- wrk script: short non-streaming chat completions (gateway overhead runs).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"Say hello to the simulator"}],"max_tokens":8}'
