-- PUT a new document per request (no conflicts); ids are unique per wrk thread and run.
local prefix = os.getenv("BENCH_PREFIX")
local auth = os.getenv("BENCH_AUTH")
local tag = os.getenv("BENCH_TAG") or "run"
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
local i = 0
local body = '{"kind":"bench","payload":"0123456789abcdef0123456789abcdef"}'
request = function()
  i = i + 1
  return wrk.format("PUT", prefix .. tag .. "-" .. tostring(tid) .. "-" .. i, {
    ["Authorization"] = auth, ["Content-Type"] = "application/json" }, body)
end
