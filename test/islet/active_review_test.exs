defmodule Islet.ActiveReviewTest do
  # Differential tests from a review of active-mode delivery and STARTTLS:
  # what controlling_process moves, what close takes from the mailbox,
  # active counts on TLS, and upgrade of an Islet.TCP socket.
  use ExUnit.Case, async: true

  import Bitwise
  require Islet.Test.Diff
  require Islet.Test.TLSDiff

  alias Islet.Test.{Certs, Diff, TLSDiff}

  @moduletag :capture_log

  defp tcp_same(fun), do: Diff.assert_same(fun)
  defp tls_same(fun), do: TLSDiff.assert_same(fun)

  defp same(sock, s), do: if(sock == s, do: :same, else: :other)

  # Messages, with the socket as :same or :other.
  defp norm(msgs, s) do
    for m <- msgs do
      case m do
        {tag, sock, d} -> {tag, same(sock, s), d}
        {tag, sock} -> {tag, same(sock, s)}
        other -> other
      end
    end
  end

  # Spawns a process that, told :go, sends the parent what its mailbox holds.
  defp mailbox_reporter(settle \\ 0) do
    parent = self()

    spawn_link(fn ->
      receive(do: (:go -> :ok))
      Process.sleep(settle)
      Kernel.send(parent, {:moved, Diff.messages()})
      receive(do: (:stop -> :ok))
    end)
  end

  defp reported(pid, s) do
    Kernel.send(pid, :go)
    receive(do: ({:moved, m} -> norm(m, s)))
  end

  describe "TCP controlling_process" do
    # gen_tcp's controlling_process forwards {tcp, S, _} and {tcp_closed, S}
    # only (inet:tcp_sync_input/3).
    test "the passive message stays with the old owner" do
      tcp_same(fn mod ->
        {_l, s, c} = Diff.pair(mod)
        :ok = mod.setopts(s, active: 1)
        :ok = :gen_tcp.send(c, "a")
        :ok = Diff.await_mailbox(2)
        owner = mailbox_reporter()
        r = mod.controlling_process(s, owner)
        {r, reported(owner, s), norm(Diff.messages(), s)}
      end)
    end

    test "to a dead process while active: the socket stays with the caller, passive" do
      tcp_same(fn mod ->
        {_l, s, c} = Diff.pair(mod)
        :ok = mod.setopts(s, active: true)
        dead = spawn(fn -> :ok end)
        ref = Process.monitor(dead)
        receive(do: ({:DOWN, ^ref, _, _, _} -> :ok))
        r = Diff.catching(fn -> mod.controlling_process(s, dead) end)
        :ok = :gen_tcp.send(c, "x")
        {r, mod.getopts(s, [:active]), mod.recv(s, 1, 5_000), Diff.active_messages(s, 100)}
      end)
    end
  end

  describe "TCP close" do
    # inet:tcp_close/1 takes one {tcp_closed, S} out of the caller's mailbox.
    test "takes a {:tcp_closed, s} already queued; the data stays" do
      tcp_same(fn mod ->
        {_l, s, c} = Diff.pair(mod)
        :ok = mod.setopts(s, active: true)
        :ok = :gen_tcp.send(c, "d")
        :ok = Diff.await_mailbox(1)
        :ok = :gen_tcp.close(c)
        :ok = Diff.await_mailbox(2)
        {mod.close(s), norm(Diff.messages(), s)}
      end)
    end
  end

  # Each step: the setopts result, the active option after it and how many
  # messages it sent.
  defp active_steps(mod, s, steps) do
    for v <- steps do
      {v, mod.setopts(s, active: v), mod.getopts(s, [:active]), length(Diff.messages())}
    end
  end

  describe "active: n limits" do
    # inet_drv takes any 16-bit n: -32768 from a count of 10 goes passive.
    test "TCP: -32768 is taken" do
      tcp_same(fn mod ->
        {_l, s, _c} = Diff.pair(mod)
        active_steps(mod, s, [10, -32768, -32768, -32769])
      end)
    end

    # :ssl: n <= 0 goes passive whatever the count (0 too), n outside 16
    # bits is refused, and a refusal that leaves the socket passive sends
    # {ssl_passive, s} all the same.
    test "TLS: 0 from a count, and out-of-range values" do
      tls_same(fn mod ->
        {_l, s, _c} = TLSDiff.pair!(mod)

        active_steps(
          mod,
          s,
          [5, 0, 5, -32769, 3, 32768, false, 32768, -32769] ++
            [1_099_511_627_776, true, 40_000, 32_000, 767, 1]
        )
      end)
    end
  end

  describe "several active options in one setopts" do
    @combos [[1, 1], [3, -1], [true, 2], [2, true], [:once, false], [false, :once]] ++
              [[2, {:mode, :binary}, 3], [5, -5], [false, 0], [2, :binary, -2], [0, 3]] ++
              [[32767, 1], [2, {:nodelay, :bad}, 3]]

    # Each combination from passive: the result, the active option after,
    # how many messages came.
    defp combos(mod, s) do
      for combo <- @combos do
        :ok = mod.setopts(s, active: false)
        _ = Diff.messages()

        opts =
          Enum.map(combo, fn o ->
            if is_tuple(o) or (is_atom(o) and o not in [true, false, :once]),
              do: o,
              else: {:active, o}
          end)

        {combo, mod.setopts(s, opts), mod.getopts(s, [:active]), length(Diff.messages())}
      end
    end

    # gen_tcp applies them one by one from the last to the first (each
    # count reaching 0 sends {tcp_passive, s}).
    test "TCP: each, last to first" do
      tcp_same(fn mod ->
        {_l, s, _c} = Diff.pair(mod)
        combos(mod, s)
      end)
    end

    # :ssl applies them first to last, and sends one {ssl_passive, s} when
    # the first is an integer and the socket ends passive.
    test "TLS: each, first to last" do
      tls_same(fn mod ->
        {_l, s, _c} = TLSDiff.pair!(mod)
        combos(mod, s)
      end)
    end
  end

  describe "TLS controlling_process" do
    # :ssl's connection process just starts sending to the new owner: what
    # it sent before stays with the old one.
    test "messages already delivered stay with the old owner" do
      tls_same(fn mod ->
        {_l, s, c} = TLSDiff.pair!(mod)
        :ok = mod.setopts(s, active: 2)
        :ok = :ssl.send(c, "a")
        :ok = Diff.await_mailbox(1)
        :ok = :ssl.send(c, "b")
        :ok = Diff.await_mailbox(3)
        owner = mailbox_reporter(100)
        r = mod.controlling_process(s, owner)
        {r, reported(owner, s), norm(Diff.messages(), s)}
      end)
    end
  end

  describe "STARTTLS: upgrade" do
    defp tcp_module(Islet.Reference.SSL), do: Islet.Reference.TCP
    defp tcp_module(_), do: Islet.TCP

    # A plain connection whose client sends "STARTTLS\r\n", waits for
    # "GO\r\n", hands shake over it and, told :secret, sends "secret". Returns the TCP
    # module and the accepted socket, "STARTTLS\r\n" read.
    defp starttls_pair(mod) do
      tcp = tcp_module(mod)
      {:ok, l} = tcp.listen(0, ip: :loopback)
      {:ok, {_, port}} = tcp.sockname(l)

      client =
        spawn_link(fn ->
          {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
          :ok = :gen_tcp.send(c, "STARTTLS\r\n")

          # The first flight waits until the server is in its handshake (its
          # socket passive), else it could come as a {:tcp, ...} message.
          with {:ok, "GO\r\n"} <- :gen_tcp.recv(c, 4, 10_000),
               :ok <- receive(do: (:hello -> :ok)),
               {:ok, tls} <- :ssl.connect(c, Certs.client_opts(), 10_000),
               :ok <- receive(do: (:secret -> :ok)) do
            :ok = :ssl.send(tls, "secret")
          end

          receive(do: (:stop -> :ok))
        end)

      {:ok, s} = tcp.accept(l)
      {:ok, "STARTTLS\r\n"} = tcp.recv(s, 10, 5_000)
      Process.put(:starttls_client, client)
      {tcp, Diff.name(s, :tcp)}
    end

    # Says "GO"; the client's ClientHello follows once the upgrade has taken
    # the socket from active mode (else it could come as a {:tcp, ...}
    # message): Islet's socket is passive then, gen_tcp's port belongs to
    # :ssl's connection process (which sets it passive before it takes it).
    # (Waiting for this process to block was not enough under ASan.)
    defp go(tcp, s) do
      :ok = tcp.send(s, "GO\r\n")
      me = self()
      client = Process.get(:starttls_client)

      spawn_link(fn ->
        until_upgrading(tcp, s, me, 2_000)
        Kernel.send(client, :hello)
      end)

      :ok
    end

    defp until_upgrading(tcp, s, me, tries) do
      upgrading =
        if is_port(s),
          do: Port.info(s, :connected) != {:connected, me},
          else: not match?({:ok, [active: a]} when a != false, tcp.getopts(s, [:active]))

      if not upgrading and tries > 0 do
        Process.sleep(5)
        until_upgrading(tcp, s, me, tries - 1)
      end
    end

    # After a successful upgrade: the TLS socket's active mode, how "secret"
    # came (a message, or recv when passive), what recv answers then, and
    # the active mode after.
    defp tls_after({:ok, tls}, mod) do
      {:ok, [active: active]} = mod.getopts(tls, [:active])
      # ("secret" comes once the mode is read: it would count against it.)
      Kernel.send(Process.get(:starttls_client), :secret)

      got =
        if active == false,
          do: mod.recv(tls, 6, 5_000),
          else: Diff.await_message(tls, 5_000, :ssl)

      {:ok, active, got, mod.recv(tls, 0, 0), mod.getopts(tls, [:active])}
    end

    defp tls_after(other, _mod), do: other

    # :ssl.handshake/2 reads the TCP socket's active mode, sets it passive
    # for the handshake, and gives the mode to the TLS connection, or the
    # upgrade's active option when it has one.
    for {tcp_active, option} <- [{:once, nil}, {true, nil}, {2, nil}, {true, 3}, {true, false}] do
      name =
        if option == nil,
          do: "of a socket in active: #{inspect(tcp_active)}",
          else: "with an active option (#{inspect(option)}): the TLS connection takes it"

      test name do
        tcp_active = unquote(tcp_active)
        # (Chosen here, not at run time: Elixir 1.18's type checker warns
        # about comparing a literal 3 with nil.)
        opts = unquote(if option == nil, do: [], else: [active: option])

        tls_same(fn mod ->
          {tcp, s} = starttls_pair(mod)
          :ok = tcp.setopts(s, active: tcp_active)
          go(tcp, s)
          tls_after(mod.upgrade(s, opts ++ Certs.server_opts()), mod)
        end)
      end
    end

    # An upgrade's active: 0 is Islet's setopts(active: 0): passive, and
    # {:ssl_passive, socket} at once. :ssl 10.8 (OTP 25) keeps the option's
    # 0 as its count without the message, so its getopts says 0 and it
    # then delivers the data as a message, running the count below zero.
    test "with active: 0: passive, with ssl_passive at once (:ssl keeps a count of 0)" do
      {ssl, islet} =
        TLSDiff.run(fn mod ->
          {tcp, s} = starttls_pair(mod)
          go(tcp, s)
          {:ok, tls} = mod.upgrade(s, [active: 0] ++ Certs.server_opts())

          passive =
            receive do
              {:ssl_passive, ^tls} -> :ssl_passive
            after
              200 -> :none
            end

          {passive, tls_after({:ok, tls}, mod)}
        end)

      assert islet ==
               {:ssl_passive,
                {:ok, false, {:ok, "secret"}, {:error, :timeout}, {:ok, [active: false]}}}

      assert ssl == islet or
               match?({:none, {:ok, 0, {:ssl, _, "secret"}, _, {:ok, [active: -1]}}}, ssl),
             inspect(ssl)
    end

    test "with a bad active option: the options error, the socket as it was" do
      tls_same(fn mod ->
        {tcp, s} = starttls_pair(mod)
        :ok = tcp.setopts(s, active: 3)

        for bad <- [:bogus, 40_000, "true"] do
          {mod.upgrade(s, [{:active, bad} | Certs.server_opts()]), tcp.getopts(s, [:active])}
        end
      end)
    end

    # :ssl sets the socket passive, then fails to hand the port to its
    # connection process, which ends and closes the port (a moment later:
    # the test waits for it). OTP 29's :ssl answers {:dtls_upgrade,
    # :notsup} instead of not_owner (its handshake/2 turns any badmatch
    # into that); Islet keeps OTP 25's and 27's answer.
    test "by a process that is not the owner: not_owner, the socket closed" do
      {ssl, islet} =
        TLSDiff.run(fn mod ->
          {tcp, s} = starttls_pair(mod)
          :ok = tcp.setopts(s, active: :once)
          parent = self()
          spawn_link(fn -> Kernel.send(parent, {:up, mod.upgrade(s, Certs.server_opts())}) end)
          up = receive(do: ({:up, r} -> r))
          {up, until_closed(tcp, s, 400), tcp.send(s, "still plain")}
        end)

      assert islet == {{:error, :not_owner}, {:error, :einval}, {:error, :closed}}
      assert ssl in [islet, put_elem(islet, 0, {:error, {:dtls_upgrade, :notsup}})]
    end

    defp until_closed(tcp, s, tries) do
      case tcp.getopts(s, [:active]) do
        {:ok, _} when tries > 0 ->
          Process.sleep(5)
          until_closed(tcp, s, tries - 1)

        answer ->
          answer
      end
    end
  end

  describe "a recv waiting when the socket goes active" do
    # gen_tcp's pending recv is not answered by data once the socket is
    # active (the data goes to messages, and stays in the socket if it is
    # passive again): it waits for its timeout or the connection's end.
    # (Islet answered einval as soon as data came.)
    defp waiting_recv(mod, s, timeout) do
      parent = self()
      pid = spawn_link(fn -> Kernel.send(parent, {:recv_result, mod.recv(s, 0, timeout)}) end)
      # The recv is waiting once its process is (Islet's in a receive,
      # gen_tcp's in prim_inet's).
      Diff.wait_blocked(pid)
      pid
    end

    # A connection whose recv (with `timeout`) was waiting when the socket
    # went active.
    defp outrun_pair(mod, timeout) do
      {_l, s, c} = Diff.pair(mod)
      waiting_recv(mod, s, timeout)
      :ok = mod.setopts(s, active: true)
      {s, c}
    end

    defp messages_after(ms) do
      Process.sleep(ms)
      Diff.messages()
    end

    defp recv_result do
      receive do
        {:recv_result, r} -> r
      after
        5_000 -> :no_answer
      end
    end

    test "data after active: the recv times out, the data is a message" do
      tcp_same(fn mod ->
        {s, c} = outrun_pair(mod, 300)
        :ok = :gen_tcp.send(c, "hello")
        {recv_result(), norm(messages_after(200), s)}
      end)
    end

    test "the peer closes: the recv says closed" do
      tcp_same(fn mod ->
        {s, c} = outrun_pair(mod, 3_000)
        :ok = :gen_tcp.close(c)
        {recv_result(), norm(messages_after(200), s)}
      end)
    end

    test "the owner closes: the recv says closed" do
      tcp_same(fn mod ->
        {s, _c} = outrun_pair(mod, 3_000)
        :ok = mod.close(s)
        recv_result()
      end)
    end

    test "passive again before data: the recv still times out, the data stays" do
      tcp_same(fn mod ->
        {s, c} = outrun_pair(mod, 300)
        :ok = mod.setopts(s, active: false)
        :ok = :gen_tcp.send(c, "x")
        first = recv_result()
        {first, mod.recv(s, 0, 1_000), Diff.messages()}
      end)
    end

    # (OTP 29's gen_tcp leaves such a recv unanswered: its timeout never
    # comes. OTP 25's and 27's answer timeout, as Islet does.)
    test "a recv(n) with part of its data read: the recv times out, the part is a message" do
      {gen_tcp, islet} =
        Diff.run(fn mod ->
          {_l, s, c} = Diff.pair(mod)
          :ok = :gen_tcp.send(c, "abc")
          pid = waiting_recv_n(mod, s, 10, 500)
          # The three bytes are read into the recv's buffer before it waits.
          Process.sleep(100)
          :ok = mod.setopts(s, active: true)
          :ok = :gen_tcp.send(c, "defghij")
          _ = pid
          # (How the bytes are cut into messages is the stream's business.)
          data = for {:tcp, ^s, d} <- messages_after(200), into: "", do: d
          {recv_result(), data}
        end)

      assert islet == {{:error, :timeout}, "abcdefghij"}
      assert gen_tcp in [islet, {:no_answer, "abcdefghij"}]
    end

    test "a second recv meanwhile: ealready passive, einval active" do
      tcp_same(fn mod ->
        {s, _c} = outrun_pair(mod, 500)
        active = mod.recv(s, 0, 50)
        :ok = mod.setopts(s, active: false)
        {active, mod.recv(s, 0, 50), recv_result()}
      end)
    end

    # controlling_process pauses delivery and set_owner resumes it (gen_tcp
    # does the same: active false, then the old mode): a recv made while
    # paused is outrun as by setopts. (Islet's recv took the data, or
    # answered einval.)
    test "a recv made while controlling_process paused the socket is outrun by its resume" do
      {_l, s, c} = Diff.pair(Islet.TCP)
      :ok = Islet.TCP.setopts(s, active: true)
      owner = mailbox_reporter(200)
      assert {:paused, active} = Islet.Nif.controlling_process(s, owner)
      waiting_recv(Islet.TCP, s, 300)
      assert Islet.Nif.set_owner(s, owner, active) == :ok
      :ok = :gen_tcp.send(c, "hello")
      assert recv_result() == {:error, :timeout}
      Kernel.send(owner, :go)
      assert_receive {:moved, moved}, 5_000
      assert norm(moved, s) == [{:tcp, :same, "hello"}]
    end

    # A recv(n) between two of its slices (it said more, and holds the turn
    # without a select) when the socket goes active, then closes: its next
    # call says closed, and no wake may be left in its mailbox.
    test "a recv(n) between slices, outrun, then closed: no wake is left behind" do
      {_l, s, c} = Diff.pair(Islet.TCP)
      :ok = :gen_tcp.send(c, :binary.copy("z", 3 <<< 20))
      Process.sleep(200)
      assert Islet.Nif.recv(s, 4 <<< 20) == :more
      parent = self()
      spawn_link(fn -> Kernel.send(parent, {:set, Islet.TCP.setopts(s, active: true)}) end)
      assert_receive {:set, :ok}, 5_000
      spawn_link(fn -> Kernel.send(parent, {:closed, Islet.TCP.close(s)}) end)
      assert_receive {:closed, :ok}, 5_000
      assert Islet.Nif.recv(s, 4 <<< 20) == {:error, :closed}
      Process.sleep(100)
      assert Diff.messages() |> Enum.filter(&match?({:"$islet", _}, &1)) == []
    end

    defp waiting_recv_n(mod, s, n, timeout) do
      parent = self()
      pid = spawn_link(fn -> Kernel.send(parent, {:recv_result, mod.recv(s, n, timeout)}) end)
      Diff.wait_blocked(pid)
      pid
    end
  end
end
