# Tests that need nginx (the benchmark's outside reference) run only where
# it is installed.
ExUnit.start(exclude: if(Islet.Bench.Nginx.available?(), do: [], else: [:nginx]))
