defmodule Islet.TLS.Sweeper do
  @moduledoc """
  Frees the cipher contexts of idle TLS connections.

  Connections whose records Islet's record layer protects keep their keys,
  but their two OpenSSL cipher contexts (about 2.3 KB) only while they are
  in use: every `interval` ms (2 seconds by default, `config :islet,
  tls_sweep_interval: ms`) this process asks the NIF to free the contexts of
  the connections that sealed and opened no record since the previous
  sweep, on a dirty CPU scheduler. The next record makes them again (about
  0.3 us each), so a connection pays that at most once per idle spell.
  """
  use GenServer

  @default_interval 2_000

  @doc "Starts the sweeper (Islet's application does)."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(options \\ []), do: GenServer.start_link(__MODULE__, options, name: __MODULE__)

  @doc "Sweeps now; returns how many connections' contexts were freed."
  @spec sweep() :: non_neg_integer()
  def sweep, do: Islet.Nif.tls_sweep()

  @impl GenServer
  def init(options) do
    interval =
      Keyword.get_lazy(options, :interval, fn ->
        Application.get_env(:islet, :tls_sweep_interval, @default_interval)
      end)

    {:ok, schedule(%{interval: interval})}
  end

  @impl GenServer
  def handle_info(:sweep, state) do
    sweep()
    {:noreply, schedule(state)}
  end

  defp schedule(state) do
    Process.send_after(self(), :sweep, state.interval)
    state
  end
end
