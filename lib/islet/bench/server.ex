defmodule Islet.Bench.Server do
  @moduledoc """
  A miniature of Thousand Island's runtime, driving a transport module
  through its callbacks only, so the same code serves every transport.

  One listener socket (`listen/2`, `sockname/1`) and a pool of acceptor
  processes (100 by default) blocked in `accept/1` on it. Each acceptor has
  its own `DynamicSupervisor`: for each connection it starts an
  `Islet.Bench.Handler`, hands it the socket with `controlling_process/2`
  and sends it the socket. Stopping the server closes the listener, which
  wakes the acceptors with `{:error, :closed}`; they exit, and their
  supervisors take the connections down with them.
  """

  use GenServer

  alias Islet.Bench.{Counters, Handler}

  @transient_accept_errors [:econnaborted, :einval, :enetdown, :enetunreach] ++
                             [:ehostdown, :ehostunreach, :enonet, :eproto, :etimedout]

  @typedoc """
  Options of `start_link/1`:

    * `:transport` (required) - the transport module.
    * `:port` - 0 (default) picks a free port.
    * `:listen_options` - passed to `listen/2` (default `[]`).
    * `:acceptors` - size of the acceptor pool (default 100).
    * `:download` - file served at `GET /download` (default none).
    * `:read_timeout`, `:handshake_timeout` - in ms (default 60_000, 15_000).
    * `:counters` - counters to share with another server (default new ones).
    * `:check_resumption` - count handshakes that resumed a TLS session
      (default `false`).
  """
  @type option ::
          {:transport, module()}
          | {:port, :inet.port_number()}
          | {:listen_options, keyword()}
          | {:acceptors, pos_integer()}
          | {:download, Path.t() | nil}
          | {:read_timeout, timeout()}
          | {:handshake_timeout, timeout()}
          | {:counters, Counters.t()}
          | {:check_resumption, boolean()}

  @doc "Listens and starts the acceptor pool; linked to the caller."
  @spec start_link([option()]) :: GenServer.on_start()
  def start_link(options), do: GenServer.start_link(__MODULE__, options)

  @doc "The port the server listens on."
  @spec port(GenServer.server()) :: :inet.port_number()
  def port(server), do: GenServer.call(server, :port)

  @doc "The server's counters (see `Islet.Bench.Counters`)."
  @spec counters(GenServer.server()) :: Counters.t()
  def counters(server), do: GenServer.call(server, :counters)

  @doc "Closes the listener and stops the server with its connections."
  @spec stop(GenServer.server()) :: :ok
  def stop(server), do: GenServer.stop(server, :normal, 30_000)

  @impl GenServer
  def init(options) do
    Process.flag(:trap_exit, true)
    transport = Keyword.fetch!(options, :transport)

    with {:ok, download} <- download(Keyword.get(options, :download)),
         {:ok, listener} <-
           transport.listen(
             Keyword.get(options, :port, 0),
             Keyword.get(options, :listen_options, [])
           ),
         {:ok, {_address, port}} <- transport.sockname(listener) do
      config = %{
        transport: transport,
        counters: Keyword.get_lazy(options, :counters, &Counters.new/0),
        check_resumption: Keyword.get(options, :check_resumption, false),
        read_timeout: Keyword.get(options, :read_timeout, 60_000),
        handshake_timeout: Keyword.get(options, :handshake_timeout, 15_000),
        download: download
      }

      acceptors =
        for _ <- 1..Keyword.get(options, :acceptors, 100), into: MapSet.new() do
          spawn_link(fn -> accept_loop(listener, config) end)
        end

      {:ok, %{listener: listener, port: port, config: config, acceptors: acceptors}}
    else
      {:error, reason} -> {:stop, {:listen_failed, reason}}
    end
  end

  defp download(nil), do: {:ok, nil}

  defp download(path) do
    case File.stat(path) do
      {:ok, %File.Stat{size: size}} -> {:ok, {path, size}}
      {:error, reason} -> {:error, {:download, path, reason}}
    end
  end

  @impl GenServer
  def handle_call(:port, _from, state), do: {:reply, state.port, state}
  def handle_call(:counters, _from, state), do: {:reply, state.config.counters, state}

  @impl GenServer
  def handle_info({:EXIT, pid, reason}, state) do
    cond do
      not MapSet.member?(state.acceptors, pid) -> {:stop, reason, state}
      reason == :normal -> {:noreply, %{state | acceptors: MapSet.delete(state.acceptors, pid)}}
      true -> {:stop, {:acceptor_failed, reason}, state}
    end
  end

  @impl GenServer
  def terminate(_reason, state) do
    _ = state.config.transport.close(state.listener)
    :ok
  end

  # An acceptor, as Thousand Island's: its own connection supervisor, then
  # accept, start a handler, transfer the socket, tell the handler.
  defp accept_loop(listener, config) do
    {:ok, connections} = DynamicSupervisor.start_link(strategy: :one_for_one)
    accept_loop(listener, connections, config)
  end

  defp accept_loop(listener, connections, %{transport: transport} = config) do
    case transport.accept(listener) do
      {:ok, socket} ->
        start_connection(socket, connections, config)
        accept_loop(listener, connections, config)

      {:error, :closed} ->
        :ok

      {:error, reason} when reason in [:emfile, :enfile] ->
        Counters.add(config.counters, :errors)
        Process.sleep(100)
        accept_loop(listener, connections, config)

      {:error, reason} when reason in @transient_accept_errors ->
        accept_loop(listener, connections, config)

      {:error, reason} ->
        exit({:accept_failed, reason})
    end
  end

  defp start_connection(socket, connections, %{transport: transport} = config) do
    case DynamicSupervisor.start_child(connections, {Handler, config}) do
      {:ok, pid} ->
        case transport.controlling_process(socket, pid) do
          :ok ->
            send(pid, {:islet_bench_ready, socket})

          {:error, _reason} ->
            _ = transport.close(socket)
            _ = DynamicSupervisor.terminate_child(connections, pid)
            Counters.add(config.counters, :errors)
        end

      _error ->
        _ = transport.close(socket)
        Counters.add(config.counters, :errors)
    end
  end
end
