defmodule Islet.Test.PumpProbe do
  @moduledoc """
  Entry point of a child BEAM (see `Islet.Bench.Child`) that checks active
  delivery with however many schedulers the child was given: how many pumps
  run under `Islet.Supervisor`, and whether every one of 64 connections in
  `active: :once` gets its data. Answers in its ready info, then serves
  `:stop`.
  """

  alias Islet.TCP

  @doc "Runs the probe and the command loop (halts when done)."
  @spec main() :: no_return()
  def main do
    {:ok, _} = Application.ensure_all_started(:islet)
    # Any command (the parent's :stop) ends it.
    Islet.Bench.Agent.run(probe(), nil, fn _command, _state -> {:stop, :ok} end)
  end

  defp probe do
    pumps =
      Islet.Supervisor
      |> Supervisor.which_children()
      |> Enum.count(&match?({{Islet.Pump, _}, _, _, _}, &1))

    {:ok, l} = TCP.listen(0, ip: :loopback, backlog: 128)
    {:ok, {_, port}} = TCP.sockname(l)

    missing =
      for i <- 1..64, reduce: [] do
        acc ->
          {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
          {:ok, s} = TCP.accept(l)
          :ok = TCP.setopts(s, active: :once)
          :ok = :gen_tcp.send(c, "ping #{i}")

          receive do
            {:tcp, ^s, _} -> acc
          after
            2_000 -> [i | acc]
          end
      end

    %{schedulers: System.schedulers_online(), pumps: pumps, missing: missing}
  end
end
