defmodule Islet.DirtyStepTest do
  # A costly handshake step (an RSA signature) runs on a dirty CPU scheduler
  # and holds its socket's lock meanwhile. A call on that socket from another
  # process must then wait on a dirty scheduler, not on the normal one it
  # was called from: with one normal scheduler online, a process counting
  # in a loop must keep counting while the call waits.
  #
  # schedulers_online is global: the module runs alone (async: false) and
  # puts the previous value back.
  use ExUnit.Case, async: false

  alias Islet.TLS

  @moduletag timeout: 120_000
  @attempts 30

  setup_all do
    dir = Path.join(System.tmp_dir!(), "islet_dirty_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    cert = Path.join(dir, "cert.pem")
    key = Path.join(dir, "key.pem")

    # RSA-4096: a signature takes several milliseconds, so a call from
    # another process can be seen to overlap the step.
    {_, 0} =
      System.cmd(
        "openssl",
        ~w(req -x509 -newkey rsa:4096 -nodes -days 2 -subj /CN=localhost -keyout) ++
          [key, "-out", cert],
        stderr_to_stdout: true
      )

    %{opts: [certfile: cert, keyfile: key]}
  end

  setup do
    online = :erlang.system_info(:schedulers_online)
    on_exit(fn -> :erlang.system_flag(:schedulers_online, online) end)
    :ok
  end

  for {name, call} <- [
        peername: &TLS.peername/1,
        getopts: &__MODULE__.getopts/1,
        getstat: &TLS.getstat/1,
        close: &TLS.close/1
      ] do
    test "#{name} from another process during a dirty step holds no normal scheduler", %{
      opts: opts
    } do
      overlaps = overlaps(opts, unquote(call))
      # Some attempts must have caught the step (else the test proves nothing).
      assert overlaps != [], "no call overlapped a dirty step in #{@attempts} attempts"

      for {waited_us, counted} <- overlaps do
        assert counted > 0,
               "the call waited #{waited_us} us for the step on the only normal " <>
                 "scheduler: nothing else ran meanwhile"
      end
    end
  end

  test "an owner killed in a dirty step: its socket closes, the death handled off the callback",
       %{opts: opts} do
    {:ok, l} = TLS.listen(0, [ip: :loopback] ++ opts)
    {:ok, {_, port}} = TLS.sockname(l)
    owners = Process.whereis(Islet.Owners)
    :erlang.trace(owners, true, [:receive])
    on_exit(fn -> :erlang.trace(owners, false, [:receive]) end)
    :erlang.system_flag(:schedulers_online, 1)

    deferred =
      for _ <- 1..@attempts do
        parent = self()
        client = spawn(fn -> send(parent, {:client, connect(port)}) end)
        {:ok, s} = TLS.accept(l)
        owner = spawn(fn -> receive do: (:go -> TLS.handshake(s, 10_000)) end)
        :ok = TLS.controlling_process(s, owner)
        send(owner, :go)
        # Locked with one normal scheduler, this process running: a dirty step.
        caught = wait_locked(s, System.monotonic_time(:millisecond) + 5_000)
        Process.exit(owner, :kill)
        # The owner's death closes the socket, deferred or not.
        assert wait_closed(s, System.monotonic_time(:millisecond) + 5_000),
               "the socket outlived its owner"

        receive do
          {:client, _} -> :ok
        after
          10_000 -> flunk("the client hangs")
        end

        Process.exit(client, :kill)

        caught and
          receive do
            {:trace, ^owners, :receive, {:"$islet_downs", ^s}} -> true
          after
            0 -> false
          end
      end

    TLS.close(l)
    assert Enum.any?(deferred), "no owner died while a dirty step held its socket"
  end

  # An owner killed in a dirty step: its death waits for the step. What
  # comes after the death must see it, whoever runs first: Islet.Owners
  # (told of it) is held here (suspended), so that only the socket's own
  # calls are left to settle it.
  describe "an owner's death deferred by a dirty step" do
    test "a call made after the death finds the socket closed, as :ssl's would", %{opts: opts} do
      results =
        deferred_deaths(opts, 5, fn s, _owner ->
          other = spawn(fn -> receive(do: (:never -> :ok)) end)
          # :ssl lets any process hand the socket over; its connection
          # process is gone with the owner: closed.
          r = TLS.controlling_process(s, other)
          Process.exit(other, :kill)
          {r, TLS.getopts(s, [:active])}
        end)

      assert results != [], "no owner died while a dirty step held its socket"
      for r <- results, do: assert(r == {{:error, :closed}, {:error, :closed}})
    end

    test "the socket closes even if Islet.Owners stops before it hears of it", %{opts: opts} do
      results =
        deferred_deaths(opts, 1, fn s, _owner ->
          owners = Process.whereis(Islet.Owners)
          # The message it was sent goes with it (a restart, an application
          # stop): nothing else is left to handle the death.
          :ok = GenServer.stop(owners)
          restarted = wait_restarted(owners, System.monotonic_time(:millisecond) + 5_000)
          {restarted, wait_closed(s, System.monotonic_time(:millisecond) + 3_000)}
        end)

      assert results != [], "no owner died while a dirty step held its socket"
      for r <- results, do: assert(r == {true, true}, "the socket outlived its owner")
    end
  end

  # Kills a handshaking owner in a dirty step, with Islet.Owners suspended,
  # and runs `after_death` once the death was deferred (left for
  # Islet.Owners); its results (of the attempts that caught a step, at
  # most `max`: a supervisor restarts a child at most 3 times in 5 s).
  defp deferred_deaths(opts, max, after_death) do
    {:ok, l} = TLS.listen(0, [ip: :loopback] ++ opts)
    {:ok, {_, port}} = TLS.sockname(l)
    :erlang.system_flag(:schedulers_online, 1)

    results =
      Enum.reduce_while(1..20, [], fn _, acc ->
        parent = self()
        client = spawn(fn -> send(parent, {:client, connect(port)}) end)
        {:ok, s} = TLS.accept(l)
        owner = spawn(fn -> receive do: (:go -> TLS.handshake(s, 10_000)) end)
        :ok = TLS.controlling_process(s, owner)
        owners = Process.whereis(Islet.Owners)
        :ok = :sys.suspend(owners)
        ref = Process.monitor(owner)
        send(owner, :go)
        caught = wait_locked(s, System.monotonic_time(:millisecond) + 5_000)
        Process.exit(owner, :kill)
        receive do: ({:DOWN, ^ref, _, _, _} -> :ok)
        {:messages, msgs} = Process.info(owners, :messages)
        deferred = caught and {:"$islet_downs", s} in msgs
        result = if deferred, do: [after_death.(s, owner)], else: []
        if Process.alive?(owners), do: :sys.resume(owners)
        receive do: ({:client, _} -> :ok), after: (10_000 -> flunk("the client hangs"))
        Process.exit(client, :kill)
        TLS.close(s)
        acc = result ++ acc
        if length(acc) >= max, do: {:halt, acc}, else: {:cont, acc}
      end)

    TLS.close(l)
    results
  end

  defp wait_restarted(old, deadline) do
    case Process.whereis(Islet.Owners) do
      pid when is_pid(pid) and pid != old -> true
      _ -> System.monotonic_time(:millisecond) <= deadline and wait_restarted(old, deadline)
    end
  end

  defp connect(port) do
    :ssl.connect(~c"localhost", port, [verify: :verify_none, active: false], 10_000)
  end

  defp wait_closed(s, deadline) do
    cond do
      TLS.getopts(s, [:active]) == {:error, :closed} -> true
      System.monotonic_time(:millisecond) > deadline -> false
      true -> wait_closed(s, deadline)
    end
  end

  @doc false
  def getopts(s), do: TLS.getopts(s, [:nodelay, :active])

  # Runs @attempts handshakes; in each, a prober waits until the step holds
  # the socket's lock, then makes `call` while a counter spins. Gives
  # {microseconds the call took, what the counter counted meanwhile} of the
  # calls that waited at least 500 us (those that overlapped the step).
  defp overlaps(opts, call) do
    {:ok, l} = TLS.listen(0, [ip: :loopback] ++ opts)
    {:ok, {_, port}} = TLS.sockname(l)
    :erlang.system_flag(:schedulers_online, 1)

    results =
      for _ <- 1..@attempts do
        attempt(l, port, call)
      end

    TLS.close(l)
    for {us, counted} <- results, us >= 500, do: {us, counted}
  end

  defp attempt(l, port, call) do
    parent = self()

    client =
      spawn(fn ->
        send(parent, {:client, connect(port)})
        receive do: (:done -> :ok)
      end)

    {:ok, s} = TLS.accept(l)
    counter = :atomics.new(1, [])
    spinner = spawn(fn -> spin(counter) end)

    prober =
      spawn(fn ->
        # A dirty step holds the lock: on the one normal scheduler, nothing
        # else that takes it can be running while this process is.
        if wait_locked(s, System.monotonic_time(:millisecond) + 5_000) do
          before = :atomics.get(counter, 1)
          t0 = System.monotonic_time(:microsecond)
          _ = call.(s)
          us = System.monotonic_time(:microsecond) - t0
          send(parent, {:probed, us, :atomics.get(counter, 1) - before})
        else
          send(parent, {:probed, 0, 0})
        end
      end)

    _ = TLS.handshake(s, 10_000)

    result =
      receive do
        {:probed, us, counted} -> {us, counted}
      after
        10_000 -> flunk("the prober did not answer")
      end

    Process.exit(spinner, :kill)
    Process.exit(prober, :kill)
    TLS.close(s)

    receive do
      {:client, {:ok, c}} -> :ssl.close(c)
      {:client, _} -> :ok
    after
      10_000 -> :ok
    end

    send(client, :done)
    result
  end

  defp wait_locked(s, deadline) do
    cond do
      Islet.Nif.lock_probe(s) == :locked -> true
      System.monotonic_time(:millisecond) > deadline -> false
      true -> wait_locked(s, deadline)
    end
  end

  defp spin(counter) do
    :atomics.add(counter, 1, 1)
    spin(counter)
  end
end
