defmodule Islet.Pump do
  @moduledoc """
  Active-mode delivery on the BEAM's schedulers.

  A few pump processes (one per scheduler) are what `enif_select` notifies
  when a socket in active mode is readable; each answers by calling the NIF
  that reads and sends `{:tcp, socket, data}` (or `{:ssl, ...}`) to the
  socket's owner. There is no process per socket. With
  `config :islet, active_delivery: :poller` (or the environment variable
  `ISLET_ACTIVE_DELIVERY=poller`, which wins) a native poller thread
  delivers instead (see `docs/design.md` for the comparison), and one pump
  runs as the flusher only: it writes out in the background what a send that
  timed out with `send_timeout_close: false` left queued, as gen_tcp's port
  does.
  """

  alias Islet.Nif

  @doc "Child specs of the pumps, as the configuration asks."
  @spec child_specs() :: [Supervisor.child_spec()]
  def child_specs do
    case delivery_mode() do
      :poller ->
        [%{id: {__MODULE__, :flusher}, start: {__MODULE__, :start_link, [:flusher]}}]

      :pump ->
        count = min(System.schedulers_online(), 64)

        for index <- 0..(count - 1) do
          %{id: {__MODULE__, index}, start: {__MODULE__, :start_link, [index]}}
        end
    end
  end

  @doc "The active delivery mode: `:pump` (the default) or `:poller`."
  @spec delivery_mode() :: :pump | :poller
  def delivery_mode do
    case System.get_env("ISLET_ACTIVE_DELIVERY") do
      "poller" -> :poller
      "pump" -> :pump
      _ -> Application.get_env(:islet, :active_delivery, :pump)
    end
  end

  @doc """
  Starts pump number `index` (or, with `:flusher`, poller mode's flusher) and
  registers it with the NIF.
  """
  @spec start_link(non_neg_integer() | :flusher) :: {:ok, pid()}
  def start_link(index) do
    pid =
      :proc_lib.spawn_link(fn ->
        # Deliveries should not queue behind ordinary work, and a long queue
        # of notifications should not be copied at garbage collection.
        Process.flag(:priority, :high)
        Process.flag(:message_queue_data, :off_heap)
        :ok = Nif.register_pump(index, self())
        loop()
      end)

    {:ok, pid}
  end

  defp loop do
    receive do
      {:"$islet_ready", socket} ->
        Nif.deliver(socket)
        loop()

      {:"$islet_flush", socket} ->
        Nif.flush_bg(socket)
        loop()

      _other ->
        loop()
    end
  end
end
