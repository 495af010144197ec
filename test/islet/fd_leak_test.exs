defmodule Islet.FdLeakTest do
  # Thousands of connections, ended cleanly, by a peer reset and by the
  # handler (owner) crashing: afterwards the VM's open file descriptors
  # (/proc/self/fd) are back to where they started. Islet closes fds in a
  # NIF stop callback, asynchronously, so the count is polled for a while.
  # async: false, so that no other test opens descriptors meanwhile.
  use ExUnit.Case, async: false

  alias Islet.Test.Diff

  @moduletag :slow
  @moduletag timeout: 180_000

  @per_kind 1000
  @workers 40
  @kinds [:clean, :reset, :crash, :server_close]

  for {label, mod} <- Diff.modules() do
    @mod mod
    test "#{@per_kind * length(@kinds)} connections leave no descriptor behind (#{label})" do
      run(@mod)
    end
  end

  defp fd_count, do: length(File.ls!("/proc/self/fd"))

  defp run(mod) do
    # Warm up (code loading, poller thread, first-use allocations).
    {:ok, warm} = mod.listen(0, ip: :loopback)
    :ok = mod.close(warm)
    :erlang.garbage_collect()
    before = fd_count()

    test = self()

    server =
      spawn_link(fn ->
        {:ok, l} = mod.listen(0, ip: :loopback, backlog: 1024)
        {:ok, {_, port}} = mod.sockname(l)
        Kernel.send(test, {:port, port})
        for _ <- 1..8, do: spawn_link(fn -> acceptor(mod, l, test) end)
        receive(do: (:shutdown -> Kernel.send(test, {:closed, mod.close(l)})))
        receive(do: (:never -> :ok))
      end)

    port = receive(do: ({:port, p} -> p))

    jobs = for kind <- @kinds, _ <- 1..@per_kind, do: kind
    chunks = Enum.chunk_every(Enum.shuffle(jobs), div(length(jobs), @workers) + 1)

    started = System.monotonic_time(:millisecond)

    tasks =
      for chunk <- chunks do
        Task.async(fn -> Enum.map(chunk, &client(port, &1)) end)
      end

    client_results = tasks |> Task.await_many(120_000) |> List.flatten()
    handler_results = for _ <- jobs, do: receive_handler()
    elapsed = System.monotonic_time(:millisecond) - started

    Kernel.send(server, :shutdown)
    assert_receive {:closed, :ok}, 10_000

    assert Enum.frequencies(client_results) == Map.new(@kinds, &{&1, @per_kind}),
           inspect(Enum.reject(client_results, &is_atom/1) |> Enum.take(5))

    assert handler_results |> Enum.map(&elem(&1, 0)) |> Enum.frequencies() ==
             Map.new(@kinds, &{&1, @per_kind}),
           inspect(Enum.reject(handler_results, &(elem(&1, 1) == :ok)) |> Enum.take(5))

    assert Enum.all?(handler_results, &(elem(&1, 1) == :ok)),
           inspect(Enum.reject(handler_results, &(elem(&1, 1) == :ok)) |> Enum.take(5))

    # Descriptors close asynchronously: poll, up to 15 s.
    settled = Diff.wait_until(fn -> fd_count() <= before end, 15_000)
    after_count = fd_count()

    assert settled == :ok,
           "#{after_count - before} descriptors left open (#{before} before, #{after_count} after, " <>
             "#{length(jobs)} connections in #{elapsed} ms)"
  end

  defp receive_handler do
    receive do
      {:handler, kind, result} -> {kind, result}
    after
      60_000 -> {:missing, :timeout}
    end
  end

  # The server: acceptors hand each connection to a handler process; the
  # handler reads the client's kind and ends the connection accordingly.
  defp acceptor(mod, l, test) do
    case mod.accept(l) do
      {:ok, s} ->
        handler = spawn(fn -> handler(mod, test) end)
        _ = mod.controlling_process(s, handler)
        Kernel.send(handler, {:socket, s})
        acceptor(mod, l, test)

      {:error, :closed} ->
        :ok
    end
  end

  defp handler(mod, test) do
    s = receive(do: ({:socket, s} -> s))

    case mod.recv(s, 1, 30_000) do
      {:ok, <<k>>} ->
        kind = Enum.at(@kinds, k)

        case kind do
          :clean ->
            :ok = mod.send(s, ["ok"])
            result = mod.recv(s, 0, 30_000)
            :ok = mod.close(s)
            Kernel.send(test, {:handler, kind, ok_if(result == {:error, :closed}, result)})

          :reset ->
            :ok = mod.send(s, ["ok"])
            result = mod.recv(s, 0, 30_000)
            :ok = mod.close(s)
            expected = result in [{:error, :econnreset}, {:error, :closed}]
            Kernel.send(test, {:handler, kind, ok_if(expected, result)})

          :crash ->
            :ok = mod.send(s, ["ok"])
            Kernel.send(test, {:handler, kind, :ok})
            # The owner dies without closing: the socket must close with it.
            exit(:crash)

          :server_close ->
            :ok = mod.send(s, ["ok"])
            :ok = mod.close(s)
            Kernel.send(test, {:handler, kind, :ok})
        end

      other ->
        Kernel.send(test, {:handler, :unknown, other})
    end
  end

  defp ok_if(true, _), do: :ok
  defp ok_if(false, result), do: result

  defp client(port, kind) do
    {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 30_000)
    k = Enum.find_index(@kinds, &(&1 == kind))
    :ok = :gen_tcp.send(c, <<k>>)
    {:ok, "ok"} = :gen_tcp.recv(c, 2, 30_000)

    case kind do
      :reset ->
        :ok = :inet.setopts(c, linger: {true, 0})
        :ok = :gen_tcp.close(c)

      :clean ->
        :ok = :gen_tcp.close(c)

      _server_ends ->
        {:error, :closed} = :gen_tcp.recv(c, 0, 30_000)
        :ok = :gen_tcp.close(c)
    end

    kind
  rescue
    e -> {kind, Exception.message(e)}
  end
end
