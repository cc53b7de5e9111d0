-- GET one of N existing documents; the path prefix and auth come from the environment.
local prefix = os.getenv("BENCH_PREFIX")
local auth = os.getenv("BENCH_AUTH")
local n = tonumber(os.getenv("BENCH_DOCS") or "1000")
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", prefix .. "doc" .. (i % n), { ["Authorization"] = auth })
end
