-- wrk script: short non-streaming completions against switchyard-sim.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"switchyard/sim-8b","prompt":"Say hello to the simulator","max_tokens":8}'
