# Tests that need nginx (the benchmark's outside reference) run only where
# it is installed.
# Tests of the pumps' own epoll sets run only when pumps deliver.
exclude =
  if(Islet.Bench.Nginx.available?(), do: [], else: [:nginx]) ++
    if Islet.Pump.delivery_mode() == :pump, do: [], else: [:pump_mode]

ExUnit.start(exclude: exclude)
