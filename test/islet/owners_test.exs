defmodule Islet.OwnersTest do
  # Islet.Owners, which links the owners of Islet.TCP connections and closes
  # their connections when they die (as a gen_tcp port dies with its owner):
  # what happens when it restarts or stops. Not async: it stops and kills
  # the node's Islet.Owners, whose exit reaches every process it links (so
  # every TCP connection's owner here traps exits; the test process owns
  # only listeners and TLS connections, which a monitor watches instead).
  use ExUnit.Case, async: false

  alias Islet.TCP
  alias Islet.Test.RecordingProxy

  # An owner process (trapping exits) that accepted one connection; the
  # test process owns only the listener (monitored, not linked: only
  # connections' owners are linked). Returns {owner, client}.
  defp owned_connection do
    {:ok, l} = TCP.listen(0, ip: :loopback)
    {:ok, {_, port}} = TCP.sockname(l)
    parent = self()

    owner =
      spawn(fn ->
        Process.flag(:trap_exit, true)
        {:ok, s} = TCP.accept(l)
        Kernel.send(parent, {:accepted, self()})
        owner_loop(s, parent)
      end)

    {:ok, c} = :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false])
    assert_receive {:accepted, ^owner}, 5_000
    {owner, c}
  end

  # Exits it traps are reported to the test process (by pid: ExUnit starts
  # the next test before the last test's process has finished exiting, so a
  # name registered by each test could still be taken).
  defp owner_loop(s, test) do
    receive do
      {:ask, from, key} ->
        Kernel.send(from, {:answer, Process.info(self(), key)})
        owner_loop(s, test)

      {:send, data} ->
        :ok = TCP.send(s, data)
        owner_loop(s, test)

      {:socket, from} ->
        Kernel.send(from, {:socket, s})
        owner_loop(s, test)

      {:give, from, to} ->
        Kernel.send(from, {:given, TCP.controlling_process(s, to)})
        owner_loop(s, test)

      :die ->
        exit(:bye)

      {:EXIT, _, _} = exit ->
        Kernel.send(test, {:owner_got, exit})
        owner_loop(s, test)
    end
  end

  defp ask(owner, key) do
    Kernel.send(owner, {:ask, self(), key})
    assert_receive {:answer, {^key, value}}, 5_000
    value
  end

  # The owner dies; the connection must close, and the owner must have been
  # alive until then.
  defp dies_and_closes(owner, c) do
    assert Process.alive?(owner)
    ref = Process.monitor(owner)
    Kernel.send(owner, :die)
    assert_receive {:DOWN, ^ref, _, _, :bye}, 5_000
    assert :gen_tcp.recv(c, 0, 5_000) == {:error, :closed}
  end

  defp owners, do: Process.whereis(Islet.Owners)

  defp await_new_owners(old) do
    Enum.find_value(1..500, fn _ ->
      pid = owners()
      if is_pid(pid) and pid != old, do: pid, else: Process.sleep(10) && nil
    end) || flunk("Islet.Owners did not restart")
  end

  setup do
    on_exit(fn ->
      if owners() == nil, do: Supervisor.restart_child(Islet.Supervisor, Islet.Owners)
    end)
  end

  test "a connection's owner is linked, not monitored, and its death closes it" do
    {owner, c} = owned_connection()
    assert Islet.Test.Diff.wait_until(fn -> owners() in ask(owner, :links) end, 5_000) == :ok
    assert ask(owner, :monitored_by) == []
    # The listener's owner is monitored (see Islet.Owners), not linked.
    refute owners() in elem(Process.info(self(), :links), 1)
    Kernel.send(owner, {:send, "hi"})
    assert :gen_tcp.recv(c, 2, 5_000) == {:ok, "hi"}
    dies_and_closes(owner, c)
  end

  test "a handover to a dead process is refused and leaves the old owner watched" do
    {old, c} = owned_connection()
    dead = spawn(fn -> :ok end)
    ref = Process.monitor(dead)
    assert_receive {:DOWN, ^ref, _, _, _}, 5_000
    Kernel.send(old, {:give, self(), dead})
    assert_receive {:given, {:error, :badarg}}, 5_000
    dies_and_closes(old, c)
  end

  test "a handed-over connection closes with its new owner, not its old one" do
    {old, c} = owned_connection()

    # The new owner never uses the socket: its death alone must close it.
    test = self()

    new =
      spawn(fn ->
        Process.flag(:trap_exit, true)
        owner_loop(nil, test)
      end)

    Kernel.send(old, {:give, self(), new})
    assert_receive {:given, :ok}, 5_000
    assert Islet.Test.Diff.wait_until(fn -> owners() in ask(new, :links) end, 5_000) == :ok
    assert ask(new, :monitored_by) == []

    ref = Process.monitor(old)
    Kernel.send(old, :die)
    assert_receive {:DOWN, ^ref, _, _, :bye}, 5_000
    assert :gen_tcp.send(c, "still open") == :ok
    assert :gen_tcp.recv(c, 0, 200) == {:error, :timeout}
    dies_and_closes(new, c)
  end

  test "a restarted Islet.Owners links the owners again" do
    {owner, c} = owned_connection()
    old = owners()
    # (Islet.Owners links the owner once it has read the NIF's request.)
    assert Islet.Test.Diff.wait_until(fn -> old in ask(owner, :links) end, 5_000) == :ok
    Process.exit(old, :kill)
    # The owner traps exits: it learns of it as of a port's crash.
    assert_receive {:owner_got, {:EXIT, ^old, :killed}}, 5_000
    new = await_new_owners(old)
    assert Islet.Test.Diff.wait_until(fn -> new in ask(owner, :links) end, 5_000) == :ok
    dies_and_closes(owner, c)
  end

  test "stopping Islet.Owners leaves the owners alive and their sockets monitored" do
    {owner, c} = owned_connection()
    :ok = Supervisor.terminate_child(Islet.Supervisor, Islet.Owners)
    # Unlinked, not killed; watched by a monitor from now on.
    refute_receive {:owner_got, _}, 100
    assert [_socket] = ask(owner, :monitored_by)

    # New sockets too, until it runs again.
    {owner2, c2} = owned_connection()
    assert [_] = ask(owner2, :monitored_by)
    dies_and_closes(owner, c)

    {:ok, _} = Supervisor.restart_child(Islet.Supervisor, Islet.Owners)
    {owner3, c3} = owned_connection()
    assert ask(owner3, :monitored_by) == []
    dies_and_closes(owner2, c2)
    dies_and_closes(owner3, c3)
  end

  # Its terminate/2 unlinked every link, its supervisor's too, which then
  # never heard of the exit: Islet.Owners stayed down for good.
  test "Islet.Owners stopping on its own is restarted by its supervisor" do
    {owner, c} = owned_connection()
    old = owners()
    assert Islet.Test.Diff.wait_until(fn -> old in ask(owner, :links) end, 5_000) == :ok
    :ok = GenServer.stop(old)
    refute_receive {:owner_got, _}, 100
    _new = await_new_owners(old)
    # Its sockets are watched by monitors since it stopped; new ones link.
    assert [_socket] = ask(owner, :monitored_by)
    {owner2, c2} = owned_connection()
    assert ask(owner2, :monitored_by) == []
    dies_and_closes(owner, c)
    dies_and_closes(owner2, c2)
  end

  # Regression: the NIF fuzzer (bad_args_test) called owners_linker/1 with
  # its own pid, so the owners of later connections were linked by nobody
  # and their connections outlived them (AddressSanitizer's leak check).
  test "no other process can take or stop the linker" do
    assert_raise ArgumentError, fn -> Islet.Nif.owners_linker(self()) end
    assert_raise ArgumentError, fn -> Islet.Nif.owners_linker(:undefined) end
    assert_raise ArgumentError, fn -> Islet.Nif.owners_linker(owners()) end
    {owner, c} = owned_connection()
    assert Islet.Test.Diff.wait_until(fn -> owners() in ask(owner, :links) end, 5_000) == :ok
    dies_and_closes(owner, c)
  end

  test "stray messages and exits do not stop it, nor close anything" do
    pid = owners()
    {owner, c} = owned_connection()
    Kernel.send(pid, :stray)
    Kernel.send(pid, {:"$islet_link", :not_a_pid})
    # An exit message for a live owner is not its exit.
    Kernel.send(pid, {:EXIT, owner, :fake})
    Kernel.send(pid, {:EXIT, self(), :fake})
    Process.sleep(50)
    Kernel.send(owner, {:send, "ok"})
    assert :gen_tcp.recv(c, 2, 5_000) == {:ok, "ok"}
    assert owners() == pid
    dies_and_closes(owner, c)
  end

  # Islet.Owners hands a connection orphaned to it ({:"$islet_orphan", s}:
  # its owner died with data queued) to a process that writes the queue out
  # and closes it. The same message naming a live connection must change
  # nothing: before, a TLS connection was taken and closed at once, and a
  # TCP one closed 5 s later (the drainer's wait for its ownership).
  test "a forged orphan or downs message takes and closes nothing" do
    pid = owners()
    {owner, c} = owned_connection()
    Kernel.send(owner, {:socket, self()})
    assert_receive {:socket, tcp}, 5_000

    {:ok, l} = Islet.TLS.listen(0, [ip: :loopback] ++ Islet.Test.Certs.server_opts())
    {:ok, {_, port}} = Islet.TLS.sockname(l)
    test = self()

    server =
      Task.async(fn ->
        {:ok, tls} = Islet.TLS.accept(l)
        {:ok, tls} = Islet.TLS.handshake(tls)
        :ok = Islet.TLS.controlling_process(tls, test)
        tls
      end)

    assert {:ok, ssl} = :ssl.connect(~c"127.0.0.1", port, Islet.Test.Certs.client_opts())
    tls = Task.await(server)

    for socket <- [tcp, tls] do
      Kernel.send(pid, {:"$islet_orphan", socket})
      Kernel.send(pid, {:"$islet_downs", socket})
    end

    # The drainer waited 5 s for a handover that never came, then closed.
    Process.sleep(5_300)
    assert owners() == pid
    Kernel.send(owner, {:send, "tcp"})
    assert :gen_tcp.recv(c, 3, 5_000) == {:ok, "tcp"}
    assert Islet.TLS.send(tls, "tls") == :ok
    assert :ssl.recv(ssl, 3, 5_000) == {:ok, "tls"}
    assert :ssl.send(ssl, "back") == :ok
    assert Islet.TLS.recv(tls, 4, 5_000) == {:ok, "back"}
    :ssl.close(ssl)
    Islet.TLS.close(tls)
    Islet.TLS.close(l)
    dies_and_closes(owner, c)
  end

  # While Islet.Owners is not running, a TLS connection whose owner dies
  # closes at once, and its queue goes with it. close_notify must then not
  # follow what did go out: it tells the client it has everything. (The
  # close sealed it behind the records the socket still held while it
  # dropped the queue: a clean end after a truncated stream.) The pumps are
  # held once the socket is full, so that nothing writes the queue out when
  # the client has read.
  test "an owner's death without Islet.Owners drops the queue, and no close_notify follows" do
    :ok = Supervisor.terminate_child(Islet.Supervisor, Islet.Owners)
    test = self()
    opts = [ip: :loopback, sndbuf: 65_536, nodelay: true] ++ Islet.Test.Certs.server_opts()
    {:ok, l} = Islet.TLS.listen(0, opts)
    {:ok, {_, port}} = Islet.TLS.sockname(l)
    proxy = RecordingProxy.start(port, recbuf: 65_536)

    owner =
      spawn(fn ->
        {:ok, s} = Islet.TLS.accept(l)
        {:ok, s} = Islet.TLS.handshake(s)
        receive(do: (:send -> :ok))
        Kernel.send(test, {:sent, Islet.TLS.send(s, :binary.copy("x", 1_000_000))})
        receive(do: (:die -> exit(:bye)))
      end)

    {:ok, c} = :ssl.connect(~c"127.0.0.1", proxy.port, Islet.Test.Certs.client_opts(), 10_000)
    # The server's socket fills and the rest of its send stays queued; the
    # pumps held, the client then takes what the socket held.
    :ok = RecordingProxy.pause(proxy)
    Kernel.send(owner, :send)
    assert_receive {:sent, :ok}, 10_000
    Process.sleep(100)
    hold_pumps()
    :ok = RecordingProxy.resume(proxy)
    first = read_while_coming(c, 0)
    down = Process.monitor(owner)
    Kernel.send(owner, :die)
    assert_receive {:DOWN, ^down, _, _, :bye}, 5_000
    rest = read_while_coming(c, 0)
    Kernel.send(Process.get(:pump_holder), :release)
    :ssl.close(c)
    Islet.TLS.close(l)
    assert first > 0 and first + rest < 1_000_000, inspect({first, rest})
    assert RecordingProxy.last_record_length(RecordingProxy.recorded(proxy)) != 19
  end

  # Suspends the pumps until this process says :release (or ends): only
  # the process that suspended one may resume it.
  defp hold_pumps do
    test = self()

    holder =
      spawn(fn ->
        ref = Process.monitor(test)

        pumps =
          for {{Islet.Pump, i}, pid, _, _} <- Supervisor.which_children(Islet.Supervisor),
              is_integer(i),
              do: pid

        Enum.each(pumps, &:erlang.suspend_process/1)
        Kernel.send(test, :held)
        receive(do: (msg when msg == :release or elem(msg, 1) == ref -> :ok))
        Enum.each(pumps, &:erlang.resume_process/1)
      end)

    Process.put(:pump_holder, holder)
    assert_receive :held, 5_000
  end

  defp read_while_coming(c, n) do
    case :ssl.recv(c, 0, 300) do
      {:ok, data} -> read_while_coming(c, n + byte_size(data))
      {:error, _} -> n
    end
  end
end
