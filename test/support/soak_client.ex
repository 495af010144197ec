defmodule Islet.Test.Soak do
  @moduledoc """
  Helpers of the soak test (`test/islet/soak_test.exs`): many concurrent
  connections to an Islet server, with data flowing on all of them.

    * `Islet.Test.Soak.Server`: the server side, an `Islet.TCP`/`Islet.TLS`
      listener with Thousand Island's shape (acceptor processes, one handler
      process per connection echoing through an active-once loop). It runs in
      the test's BEAM, or in a child BEAM when the test's cannot hold enough
      descriptors.
    * `Islet.Test.Soak.Client`: the client side (`:gen_tcp` or `:ssl`), always
      in a child BEAM, so that the client ends' descriptors are not counted
      against the test BEAM's limit.
    * `Islet.Test.Soak.Agent`: the entry point of the child BEAMs, which
      `Islet.Bench.Child` starts with a raised open-files limit and talks to
      over stdin/stdout.

  This module: what a BEAM measures about itself.
  """

  @doc "The number of open file descriptors of this OS process."
  @spec fd_count() :: non_neg_integer()
  def fd_count, do: length(File.ls!("/proc/self/fd"))

  @doc "Resident set size of this OS process, in bytes (VmRSS)."
  @spec rss() :: non_neg_integer()
  def rss do
    [_, kb] = Regex.run(~r/^VmRSS:\s+(\d+) kB/m, File.read!("/proc/self/status"))
    String.to_integer(kb) * 1024
  end

  @doc "The open-files soft and hard limits of this OS process (`:unlimited` as such)."
  @spec fd_limits() :: {non_neg_integer() | :unlimited, non_neg_integer() | :unlimited}
  def fd_limits do
    [_, soft, hard] =
      Regex.run(~r/^Max open files\s+(\S+)\s+(\S+)/m, File.read!("/proc/self/limits"))

    {limit(soft), limit(hard)}
  end

  defp limit("unlimited"), do: :unlimited
  defp limit(n), do: String.to_integer(n)

  @doc """
  The highest descriptor number plus one that the BEAM's poll set takes
  (fixed at start from the open-files limit; `enif_select`, which Islet
  uses, fails above it even if the limit is raised later).
  """
  @spec poll_max_fds() :: non_neg_integer()
  def poll_max_fds do
    :erlang.system_info(:check_io)
    |> List.wrap()
    |> List.flatten()
    |> Enum.flat_map(fn
      {:max_fds, n} when is_integer(n) -> [n]
      _ -> []
    end)
    |> Enum.min(fn -> 0 end)
  end

  @doc "Descriptors, BEAM memory and RSS now."
  @spec sample() :: %{fds: non_neg_integer(), memory: non_neg_integer(), rss: non_neg_integer()}
  def sample, do: %{fds: fd_count(), memory: :erlang.memory(:total), rss: rss()}

  @doc "Garbage-collects every process (twice, a little apart, for late exits)."
  @spec gc() :: :ok
  def gc do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(50)
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    :ok
  end
end

defmodule Islet.Test.Soak.Server do
  @moduledoc """
  An echo server over `Islet.TCP` or `Islet.TLS`, shaped like Thousand
  Island's: acceptor processes loop on `accept/1`, hand each socket to a new
  handler process (`controlling_process/2`), which hands shake, then echoes
  what it gets through an active-once loop (`setopts(active: :once)` after
  every packet) until the peer closes.

  A coordinator process counts: `:up` (handshake done, handler in its loop),
  `:down` (peer closed, socket closed, handler gone), bytes echoed, and
  failures (the first few kept). `await/4` answers when a count reaches a
  target, so the test syncs by messages, not by sleeping.
  """

  @acceptors 16
  @handshake_timeout 60_000
  @idle_timeout 120_000
  @kept_failures 10

  @doc """
  Starts a server (`kind` `:tcp` or `:tls`, or a transport module; `options`
  are the listen options added to loopback and port 0). Returns
  `{:ok, server, port}`.
  """
  @spec start(:tcp | :tls | module(), keyword()) ::
          {:ok, pid(), :inet.port_number()} | {:error, term()}
  def start(kind, options) do
    caller = self()
    ref = make_ref()
    pid = spawn(fn -> init(kind, options, caller, ref) end)
    mref = Process.monitor(pid)

    receive do
      {^ref, {:ok, port}} ->
        Process.demonitor(mref, [:flush])
        {:ok, pid, port}

      {^ref, error} ->
        Process.demonitor(mref, [:flush])
        error

      {:DOWN, ^mref, _, _, reason} ->
        {:error, {:server_died, reason}}
    after
      30_000 -> {:error, :start_timeout}
    end
  end

  @doc "The counts: `%{up:, down:, bytes:, failures:, failed:}`."
  @spec stats(pid()) :: map()
  def stats(server), do: call(server, :stats, 30_000)

  @doc """
  Waits until the count `key` (`:up` or `:down`) reaches `target`, or until
  no count has moved for `stall` ms. Returns the stats either way, with
  `:reached` true or false.
  """
  @spec await(pid(), :up | :down, non_neg_integer(), timeout()) :: map()
  def await(server, key, target, stall), do: call(server, {:await, key, target, stall}, :infinity)

  @doc "Closes the listener, waits for the acceptors to end, and stops. Returns the last stats."
  @spec stop(pid()) :: map()
  def stop(server), do: call(server, :stop, 60_000)

  defp call(server, request, timeout) do
    ref = Process.monitor(server)
    send(server, {:call, self(), ref, request})

    receive do
      {^ref, answer} ->
        Process.demonitor(ref, [:flush])
        answer

      {:DOWN, ^ref, _, _, reason} ->
        raise "soak server died: #{inspect(reason)}"
    after
      timeout -> raise "soak server: no answer to #{inspect(request)} in #{timeout} ms"
    end
  end

  ## Coordinator

  defp init(kind, options, caller, ref) do
    mod =
      case kind do
        :tcp -> Islet.TCP
        :tls -> Islet.TLS
        # Another transport module (e.g. Islet.Reference.TCP), to compare.
        module when is_atom(module) -> module
      end

    case mod.listen(0, [ip: :loopback, backlog: 4096] ++ options) do
      {:ok, listener} ->
        {:ok, {_, port}} = mod.sockname(listener)
        me = self()

        acceptors =
          for _ <- 1..@acceptors do
            {pid, _ref} = spawn_monitor(fn -> acceptor(mod, listener, me) end)
            pid
          end

        send(caller, {ref, {:ok, port}})

        loop(%{
          mod: mod,
          listener: listener,
          acceptors: MapSet.new(acceptors),
          up: 0,
          down: 0,
          bytes: 0,
          failed: 0,
          failures: [],
          waiters: [],
          moved: now()
        })

      error ->
        send(caller, {ref, error})
    end
  end

  defp loop(state) do
    state = check_waiters(state)

    receive do
      :up ->
        loop(%{state | up: state.up + 1, moved: now()})

      {:down, bytes} ->
        loop(%{state | down: state.down + 1, bytes: state.bytes + bytes, moved: now()})

      {:failed, reason} ->
        loop(%{failure(state, reason) | moved: now()})

      {:call, from, ref, :stats} ->
        send(from, {ref, counts(state)})
        loop(state)

      {:call, from, ref, {:await, key, target, stall}} ->
        loop(%{state | waiters: [{from, ref, key, target, stall} | state.waiters]})

      {:call, from, ref, :stop} ->
        :ok = state.mod.close(state.listener)
        state = await_acceptors(state)
        send(from, {ref, counts(state)})

      {:DOWN, _, :process, pid, reason} ->
        state = if reason == :normal, do: state, else: failure(state, {:acceptor_down, reason})
        loop(%{state | acceptors: MapSet.delete(state.acceptors, pid)})
    after
      1_000 -> loop(state)
    end
  end

  defp failure(state, reason) do
    failures =
      if state.failed < @kept_failures, do: [reason | state.failures], else: state.failures

    %{state | failed: state.failed + 1, failures: failures}
  end

  defp await_acceptors(state) do
    if MapSet.size(state.acceptors) == 0 do
      state
    else
      receive do
        {:DOWN, _, :process, pid, _} ->
          await_acceptors(%{state | acceptors: MapSet.delete(state.acceptors, pid)})
      after
        30_000 -> failure(state, {:acceptors_alive, MapSet.size(state.acceptors)})
      end
    end
  end

  defp check_waiters(state) do
    stalled = now() - state.moved

    {done, waiting} =
      Enum.split_with(state.waiters, fn {_, _, key, target, stall} ->
        Map.fetch!(state, key) >= target or stalled >= stall
      end)

    for {from, ref, key, target, _} <- done do
      send(from, {ref, Map.put(counts(state), :reached, Map.fetch!(state, key) >= target)})
    end

    %{state | waiters: waiting}
  end

  defp counts(state) do
    Map.take(state, [:up, :down, :bytes, :failed])
    |> Map.put(:failures, Enum.reverse(state.failures))
  end

  defp now, do: System.monotonic_time(:millisecond)

  ## Acceptors and handlers

  defp acceptor(mod, listener, coordinator) do
    case mod.accept(listener) do
      {:ok, socket} ->
        handler = spawn(fn -> handler(mod, coordinator) end)

        case mod.controlling_process(socket, handler) do
          :ok ->
            send(handler, {:go, socket})

          error ->
            send(coordinator, {:failed, {:controlling_process, error}})
            Process.exit(handler, :kill)
            mod.close(socket)
        end

        acceptor(mod, listener, coordinator)

      {:error, :closed} ->
        :ok

      {:error, reason} ->
        send(coordinator, {:failed, {:accept, reason}})
        Process.sleep(10)
        acceptor(mod, listener, coordinator)
    end
  end

  defp handler(mod, coordinator) do
    receive do
      {:go, socket} ->
        try do
          case mod.handshake(socket, @handshake_timeout) do
            {:ok, socket} ->
              :ok = mod.setopts(socket, active: :once)
              send(coordinator, :up)
              echo(mod, socket, coordinator, 0)

            error ->
              send(coordinator, {:failed, {:handshake, error}})
          end
        catch
          kind, reason -> send(coordinator, {:failed, {:handler, kind, reason}})
        end
    after
      30_000 -> send(coordinator, {:failed, :no_socket})
    end
  end

  defp echo(mod, socket, coordinator, bytes) do
    receive do
      {tag, ^socket, data} when tag in [:tcp, :ssl] ->
        with :ok <- mod.send(socket, data),
             :ok <- mod.setopts(socket, active: :once) do
          echo(mod, socket, coordinator, bytes + byte_size(data))
        else
          error ->
            mod.close(socket)
            send(coordinator, {:failed, {:echo, error}})
        end

      {tag, ^socket} when tag in [:tcp_closed, :ssl_closed] ->
        :ok = mod.close(socket)
        send(coordinator, {:down, bytes})

      {tag, ^socket, reason} when tag in [:tcp_error, :ssl_error] ->
        mod.close(socket)
        send(coordinator, {:failed, {tag, reason}})
    after
      @idle_timeout ->
        mod.close(socket)
        send(coordinator, {:failed, :idle_timeout})
    end
  end
end

defmodule Islet.Test.Soak.Client do
  @moduledoc """
  The client side of the soak test, run in a child BEAM: `count` connections
  with `:gen_tcp` or `:ssl` (a full handshake each), one process per
  connection. Connections are opened at most `concurrency` at a time (the
  listen backlog is not flooded); then every connection runs echo rounds
  at once (`exchange/2`), passive `recv` of exactly what it sent; then all
  close (the client closes first, so TIME_WAIT stays on the client's side).

  The state is the list of the connection processes, monitored.
  """

  @connect_timeout 60_000
  @recv_timeout 60_000
  @stall 60_000

  @doc """
  Opens `count` connections to 127.0.0.1:`port`. `ssl` is `nil` (TCP) or
  the `:ssl` client options. Returns `{{ok, failed, first_failures}, conns}`.
  """
  @spec connect([pid()], :inet.port_number(), non_neg_integer(), keyword() | nil, pos_integer()) ::
          {{non_neg_integer(), non_neg_integer(), list()}, [pid()]}
  def connect(conns, port, count, ssl, concurrency) do
    me = self()
    start = fn -> spawn_monitor(fn -> conn(me, port, ssl) end) end
    first = min(count, concurrency)
    pending = Map.new(1..first//1, fn _ -> start.() end)
    connect_loop(pending, count - first, start, conns, 0, [])
  end

  defp connect_loop(pending, left, _start, conns, failed, failures)
       when map_size(pending) == 0 and left == 0,
       do: {{length(conns), failed, Enum.reverse(failures)}, conns}

  defp connect_loop(pending, left, start, conns, failed, failures) do
    receive do
      {:up, pid} ->
        {_, pending} = Map.pop(pending, pid)
        {pending, left} = refill(pending, left, start)
        connect_loop(pending, left, start, [pid | conns], failed, failures)

      {:DOWN, ref, :process, pid, reason} when is_map_key(pending, pid) ->
        {^ref, pending} = Map.pop(pending, pid)
        {pending, left} = refill(pending, left, start)
        failures = if length(failures) < 10, do: [reason | failures], else: failures
        connect_loop(pending, left, start, conns, failed + 1, failures)
    after
      @stall ->
        for {pid, _} <- pending, do: Process.exit(pid, :kill)
        failures = [{:stalled, map_size(pending) + left} | failures]
        {{length(conns), failed + map_size(pending) + left, Enum.reverse(failures)}, conns}
    end
  end

  defp refill(pending, 0, _start), do: {pending, 0}

  defp refill(pending, left, start) do
    {pid, ref} = start.()
    {Map.put(pending, pid, ref), left - 1}
  end

  defp conn(owner, port, ssl) do
    {mod, options} =
      if ssl,
        do: {:ssl, [:binary, active: false] ++ ssl},
        else: {:gen_tcp, [:binary, active: false, nodelay: true]}

    case mod.connect({127, 0, 0, 1}, port, options, @connect_timeout) do
      {:ok, socket} ->
        send(owner, {:up, self()})
        conn_loop(mod, socket)

      {:error, reason} ->
        exit({:connect, reason})
    end
  end

  defp conn_loop(mod, socket) do
    receive do
      {:exchange, from, ref, sizes} ->
        send(from, {ref, rounds(mod, socket, sizes, 0)})
        conn_loop(mod, socket)

      :close ->
        mod.close(socket)
    end
  end

  defp rounds(_mod, _socket, [], bytes), do: {:ok, bytes}

  defp rounds(mod, socket, [size | sizes], bytes) do
    payload = :crypto.strong_rand_bytes(size)

    with :ok <- mod.send(socket, payload),
         {:ok, ^payload} <- mod.recv(socket, size, @recv_timeout) do
      rounds(mod, socket, sizes, bytes + size)
    else
      {:ok, other} -> {:error, {:echo_mismatch, size, byte_size(other)}}
      error -> error
    end
  end

  @doc """
  Every connection sends each of `sizes` (random bytes) in turn and reads the
  echo, all connections at once. Returns `{ok, bytes, failed, first_failures}`.
  """
  @spec exchange([pid()], [pos_integer()]) ::
          {non_neg_integer(), non_neg_integer(), non_neg_integer(), list()}
  def exchange(conns, sizes) do
    ref = make_ref()
    for pid <- conns, do: send(pid, {:exchange, self(), ref, sizes})
    collect(ref, length(conns), {0, 0, 0, []})
  end

  defp collect(_ref, 0, {ok, bytes, failed, failures}),
    do: {ok, bytes, failed, Enum.reverse(failures)}

  defp collect(ref, left, {ok, bytes, failed, failures}) do
    receive do
      {^ref, {:ok, n}} ->
        collect(ref, left - 1, {ok + 1, bytes + n, failed, failures})

      {^ref, error} ->
        failures = if length(failures) < 10, do: [error | failures], else: failures
        collect(ref, left - 1, {ok, bytes, failed + 1, failures})
    after
      @stall -> {ok, bytes, failed + left, Enum.reverse([{:stalled, left} | failures])}
    end
  end

  @doc "Closes every connection and waits for their processes to end; returns how many ended."
  @spec close_all([pid()]) :: non_neg_integer()
  def close_all(conns) do
    for pid <- conns, do: send(pid, :close)
    await_down(Map.new(conns, &{&1, true}), 0)
  end

  defp await_down(left, done) do
    if map_size(left) == 0 do
      done
    else
      receive do
        {:DOWN, _, :process, pid, _} when is_map_key(left, pid) ->
          await_down(Map.delete(left, pid), done + 1)

        {:DOWN, _, :process, _, _} ->
          await_down(left, done)
      after
        @stall -> done
      end
    end
  end
end

defmodule Islet.Test.Soak.Agent do
  @moduledoc """
  The entry point of a soak child BEAM (started with `Islet.Bench.Child`,
  whose command loop it runs through `Islet.Bench.Agent.run/3`).
  """

  alias Islet.Test.Soak
  alias Islet.Test.Soak.{Client, Server}

  @doc "Runs the command loop until stdin closes or `:stop` comes; then halts."
  @spec main() :: no_return()
  def main do
    {:ok, _} = Application.ensure_all_started(:ssl)
    {soft, _hard} = Soak.fd_limits()
    ready = %{fd_limit: soft, poll_max_fds: Soak.poll_max_fds()}
    Islet.Bench.Agent.run(ready, %{conns: [], server: nil}, &handle/2)
  end

  defp handle({:connect, port, count, ssl, concurrency}, state) do
    {result, conns} = Client.connect(state.conns, port, count, ssl, concurrency)
    {result, %{state | conns: conns}}
  end

  defp handle({:exchange, sizes}, state), do: {Client.exchange(state.conns, sizes), state}
  defp handle(:close_all, state), do: {Client.close_all(state.conns), %{state | conns: []}}

  defp handle({:server_start, kind, options}, state) do
    {:ok, _} = Application.ensure_all_started(:islet)

    case Server.start(kind, options) do
      {:ok, pid, port} -> {{:ok, port}, %{state | server: pid}}
      error -> {error, state}
    end
  end

  defp handle({:server_await, key, target, stall}, state),
    do: {Server.await(state.server, key, target, stall), state}

  defp handle(:server_stop, state), do: {Server.stop(state.server), %{state | server: nil}}
  defp handle(:sample, state), do: {Soak.sample(), state}
  defp handle(:gc, state), do: {Soak.gc(), state}
  defp handle(:stop, _state), do: {:stop, :ok}
end
