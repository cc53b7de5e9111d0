-- A view query with a JSON key range and a limit.
local path = os.getenv("BENCH_PATH")
local auth = os.getenv("BENCH_AUTH")
request = function()
  return wrk.format("GET", path, { ["Authorization"] = auth })
end
