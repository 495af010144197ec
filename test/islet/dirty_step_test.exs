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

  # A plain socket that has been active is in a pump's poll set for good.
  # Upgraded (STARTTLS) with an RSA key, its costly step holds the lock on a
  # dirty scheduler; a pump that polls meanwhile and finds the socket ready
  # (more bytes came) must pass it over rather than wait for the lock
  # on its normal scheduler, and must not lose it: data later comes in
  # active mode. (The pumps are suspended until the step holds the lock, so
  # that they meet it there.)
  test "a pump polling a socket in a dirty STARTTLS step does not wait for its lock",
       %{opts: opts} do
    pumps =
      for {{Islet.Pump, i}, pid, _, _} <- Supervisor.which_children(Islet.Supervisor),
          is_integer(i),
          do: pid

    :erlang.trace_pattern({Islet.Nif, :pump_poll, 1}, [{:_, [], [{:return_trace}]}], [:local])

    on_exit(fn ->
      :erlang.trace_pattern({Islet.Nif, :pump_poll, 1}, false, [:local])
      for p <- pumps, Process.alive?(p), do: :erlang.trace(p, false, [:call])
    end)

    for p <- pumps, do: :erlang.trace(p, true, [:call, :monotonic_timestamp])
    {:ok, l} = Islet.TCP.listen(0, ip: :loopback, active: false)
    {:ok, {_, port}} = Islet.TCP.sockname(l)
    :erlang.system_flag(:schedulers_online, 1)
    results = for _ <- 1..10, do: starttls_attempt(l, port, opts, pumps)
    Islet.TCP.close(l)

    # Attempts in which a pump call began after the step took the lock and
    # returned while it still held it: the pump did not wait for the lock
    # (one that waits returns only once the step lets go).
    passed_over = Enum.count(results, fn {met, _} -> met == :passed_over end)
    assert passed_over >= 3, "pumps waited for a step's lock: #{inspect(results)}"

    for {_, delivered} <- results,
        is_boolean(delivered),
        do: assert(delivered, "active data never came after the upgrade")
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

  # One STARTTLS: the server socket reads a line in active mode (so it is in
  # a pump's set), then upgrades, the pumps suspended until the step holds
  # the lock. Returns {met, delivered}: met is :passed_over (a pump call ran
  # and returned while the step held the lock), :unlocked (one ran, and the
  # step was over when it returned) or :not_met; delivered tells whether
  # active data came after the upgrade (nil if the handshake failed).
  defp starttls_attempt(l, port, opts, pumps) do
    parent = self()
    {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
    {:ok, s} = Islet.TCP.accept(l)
    :ok = Islet.TCP.setopts(s, active: :once)
    :ok = :gen_tcp.send(c, "STARTTLS\r\n")
    assert_receive {:tcp, ^s, "STARTTLS\r\n"}, 5_000

    client =
      spawn(fn ->
        receive do: (:go -> :ok)
        r = :ssl.connect(c, [verify: :verify_none, active: false], 10_000)
        with {:ok, t} <- r, do: :ssl.send(t, "after")
        send(parent, {:client, r})
        receive do: (:done -> :ok)
      end)

    :ok = :gen_tcp.controlling_process(c, client)

    # (Only the process that suspended a process may resume it.)
    _prober =
      spawn(fn ->
        for p <- pumps, do: :erlang.suspend_process(p)
        send(parent, :suspended)
        locked = wait_locked(s, System.monotonic_time(:millisecond) + 5_000)
        # Bytes the step does not read (it has its ClientHello): a dummy
        # change_cipher_spec record, which TLS 1.3 allows around the first
        # flight. Only unread bytes make the socket ready in the pump's set.
        if locked, do: :ok = :gen_tcp.send(c, <<20, 3, 3, 0, 1, 1>>)
        t0 = :erlang.monotonic_time()
        for p <- pumps, do: :erlang.resume_process(p)
        # The pumps run now, on the one normal scheduler; then, is the step
        # still holding the lock?
        :erlang.yield()
        still = Islet.Nif.lock_probe(s) == :locked
        send(parent, {:probed, locked, t0, :erlang.monotonic_time(), still})
      end)

    receive do: (:suspended -> :ok)
    send(client, :go)
    upgraded = Islet.TLS.upgrade(s, opts ++ [handshake_timeout: 10_000])

    {locked, t0, t1, still} =
      receive(do: ({:probed, a, b, c, d} -> {a, b, c, d}), after: (10_000 -> flunk("no prober")))

    client_result = receive(do: ({:client, r} -> r), after: (10_000 -> :hang))

    delivered =
      case {upgraded, client_result} do
        {{:ok, t}, {:ok, _}} ->
          :ok = Islet.TLS.setopts(t, active: :once)

          receive do
            {:ssl, ^t, "after"} -> true
          after
            5_000 -> false
          end

        _ ->
          nil
      end

    send(client, :done)
    with {:ok, t} <- upgraded, do: Islet.TLS.close(t)
    Islet.TCP.close(s)
    met = locked and Enum.any?(pump_calls(), fn {a, b} -> a >= t0 and b <= t1 end)

    cond do
      not met -> {:not_met, delivered}
      still -> {:passed_over, delivered}
      true -> {:unlocked, delivered}
    end
  end

  # The traced pump_poll calls, {began, returned} (monotonic, native units):
  # takes every trace message.
  defp pump_calls, do: collect_traces(%{}, [])

  defp collect_traces(open, done) do
    receive do
      {:trace_ts, pid, :call, {Islet.Nif, :pump_poll, _}, ts} ->
        collect_traces(Map.put(open, pid, ts), done)

      {:trace_ts, pid, :return_from, {Islet.Nif, :pump_poll, 1}, _, ts} ->
        case Map.pop(open, pid) do
          {nil, open} -> collect_traces(open, done)
          {started, open} -> collect_traces(open, [{started, ts} | done])
        end
    after
      100 -> done
    end
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
