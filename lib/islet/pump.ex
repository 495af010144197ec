defmodule Islet.Pump do
  @moduledoc """
  Active-mode delivery on the BEAM's schedulers.

  A few pump processes (one per scheduler) deliver active-mode data: each
  polls an epoll set of its own (the sockets in active mode are registered
  there once, edge-triggered) from its scheduler, reads, and sends
  `{:tcp, socket, data}` (or `{:ssl, ...}`) to each socket's owner. There is
  no process per socket. A pump that found work polls again after the
  processes it woke have run; an idle one waits for its set's `enif_select`. With
  `config :islet, active_delivery: :poller` (or the environment variable
  `ISLET_ACTIVE_DELIVERY=poller`, which wins) a native poller thread
  delivers instead (see `docs/design.md` for the comparison), and one pump
  runs as the flusher only. In both modes pumps also write out sockets'
  write queues in the background (what a send left for the kernel to take
  later), as gen_tcp's port does.
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
  returns once it is registered with the NIF, so that the supervisor starts
  the pumps one after the other: the NIF numbers them in order.
  """
  @spec start_link(non_neg_integer() | :flusher) :: {:ok, pid()} | {:error, term()}
  def start_link(index) do
    :proc_lib.start_link(__MODULE__, :init, [index])
  end

  @doc false
  @spec init(non_neg_integer() | :flusher) :: no_return()
  def init(index) do
    # A long queue of notifications should not be copied at garbage
    # collection.
    Process.flag(:message_queue_data, :off_heap)

    case Nif.register_pump(index, self()) do
      :ok ->
        :proc_lib.init_ack({:ok, self()})
        if is_integer(index), do: poll(index), else: loop(index)

      error ->
        :proc_lib.init_ack({:error, {:register_pump, error}})
    end
  end

  # A pump polls its set, and polls again (after the processes it just woke
  # have had their turn: it runs at normal priority and sends itself a
  # message) for as long as it finds work; then it waits for its set's
  # select, or for a socket with data left to read.
  defp poll(index) do
    case Nif.pump_poll(index) do
      :more -> send(self(), :"$islet_poll")
      :idle -> :ok
    end

    loop(index)
  end

  defp loop(index) do
    receive do
      {:select, _set, :undefined, :ready_input} ->
        poll(index)

      :"$islet_poll" ->
        poll(index)

      {:"$islet_flush", socket} ->
        Nif.flush_bg(socket)
        loop(index)

      _other ->
        loop(index)
    end
  end
end
