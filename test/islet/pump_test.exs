defmodule Islet.PumpTest do
  # Active delivery with many schedulers, in child BEAMs: one pump per
  # scheduler, each registered with the NIF in order. Pumps used to register
  # from their own processes after start_link had returned, so with more
  # than a couple of schedulers they could register out of order, crash,
  # and take the application down (no delivery at all).
  use ExUnit.Case, async: true

  alias Islet.Bench.Child

  @moduletag timeout: 120_000

  for schedulers <- [4, 8] do
    test "#{schedulers} schedulers: #{schedulers} pumps, and every connection gets its data" do
      schedulers = unquote(schedulers)

      {:ok, child} =
        Child.start("pumps-#{schedulers}",
          schedulers: schedulers,
          fds: 1024,
          main: "Islet.Test.PumpProbe.main()"
        )

      on_exit(fn -> Child.kill(child) end)
      assert child.info == %{schedulers: schedulers, pumps: schedulers, missing: []}
      Child.stop(child)
    end
  end
end
