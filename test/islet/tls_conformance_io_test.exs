defmodule Islet.TLSConformanceIOTest do
  # Differential conformance of Islet.TLS against :ssl, part 2: data once
  # the handshake is done (recv, send, large transfers, active modes,
  # ownership, close_notify, shutdown, sendfile, getstat, options). Every
  # scenario runs with each module as the server and an :ssl client.
  use ExUnit.Case, async: true

  import Islet.Test.TLSDiff

  alias Islet.Test.{Certs, Diff, RecordingProxy}

  @moduletag :capture_log
  @moduletag timeout: 180_000

  setup_all do
    Certs.dir()
    :ok
  end

  @mib 1_048_576
  # Big sends run with a 10 s send_timeout (30 s by default), so that a
  # stalled send shows as {:error, :timeout} well within the test's time.
  @bounded [send_timeout: 10_000]

  # Sends `chunks` from the client one TLS record each, waiting until the
  # server could have read each (a record is what :ssl and OpenSSL both
  # deliver at once).
  # :ssl.getopts/2 answers in an order of its own; the order is not compared.
  defp sorted({:ok, opts}), do: {:ok, Enum.sort(opts)}
  defp sorted(other), do: other

  defp client_send(c, chunks), do: Enum.each(chunks, &(:ok = :ssl.send(c, &1)))

  describe "recv" do
    test "recv(0) returns what arrived, recv(n) exactly n bytes" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.send(c, "hello")
        a = mod.recv(s, 0, 10_000)
        :ok = :ssl.send(c, "abcdef")
        b = mod.recv(s, 3, 10_000)
        c1 = mod.recv(s, 3, 10_000)
        {a, b, c1}
      end)
    end

    test "recv(n) gathers n bytes from several records" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        client_send(c, ["ab", "cd", "ef", "gh"])
        {mod.recv(s, 7, 10_000), mod.recv(s, 1, 10_000)}
      end)
    end

    test "recv(n) with n larger than one record" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        data = Diff.pattern(100_000, 3)
        :ok = :ssl.send(c, data)
        {:ok, got} = mod.recv(s, 100_000, 10_000)
        got == data
      end)
    end

    test "timeouts: recv(0, t), recv(0, 0), recv(n, t) with fewer than n bytes, which stay buffered" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        a = mod.recv(s, 0, 100)
        b = mod.recv(s, 0, 0)
        :ok = :ssl.send(c, "1234")
        Process.sleep(100)
        d = mod.recv(s, 10, 200)
        :ok = :ssl.send(c, "567890")
        e = mod.recv(s, 10, 10_000)
        {a, b, d, e}
      end)
    end

    test "recv(0, 0) returns what is already buffered" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.send(c, "ready")
        {Diff.recv_when_ready(mod, s), mod.recv(s, 0, 0)}
      end)
    end

    test "recv with :infinity" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        spawn(fn -> Process.sleep(100) && :ssl.send(c, "late") end)
        mod.recv(s, 4, :infinity)
      end)
    end

    test "a recv waiting in another process is woken by close" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        parent = self()
        spawn(fn -> Kernel.send(parent, {:recv, mod.recv(s, 0, 20_000)}) end)
        Process.sleep(200)
        closed = mod.close(s)
        {closed, receive(do: ({:recv, r} -> r), after: (10_000 -> :hang))}
      end)
    end
  end

  describe "send" do
    test "a binary" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        {mod.send(s, "binary data"), ssl_recv_exact(c, 11)}
      end)
    end

    test "nested iodata with charlists and bytes" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        data = ["a", [~c"bc", ?d, ["", [<<"ef">>]]], 0, 255, "g"]
        {mod.send(s, data), ssl_recv_exact(c, 9)}
      end)
    end

    test "empty binary and empty list" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        a = mod.send(s, "")
        b = mod.send(s, [])
        :ok = mod.send(s, ["end"])
        {a, b, ssl_recv_exact(c, 3)}
      end)
    end

    test "iodata with many small elements" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        data = for i <- 1..5000, do: <<rem(i, 256)>>
        {mod.send(s, data), ssl_recv_exact(c, 5000) == {:ok, IO.iodata_to_binary(data)}}
      end)
    end

    test "iodata of more than IOV_MAX separate binaries, every byte checked" do
      # 3,000 binaries of 600 bytes (iolist_to_iovec keeps them apart): the
      # NIF takes them as one vector, seals records across them from its
      # first call and queues the rest.
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        data = for i <- 1..3000, do: :binary.copy(<<rem(i, 251)>>, 600)
        expected = IO.iodata_to_binary(data)
        {mod.send(s, data), ssl_recv_exact(c, byte_size(expected)) == {:ok, expected}}
      end)
    end

    test "iodata of several large binaries, small and large records, every byte checked" do
      # Binaries of 64 bytes or more stay separate pieces of the iovec: a
      # small record is sealed from them gathered, a large one piece by piece.
      # TLS 1.3 appends the record's type to what is sealed; TLS 1.2 does not.
      for version <- [:"tlsv1.3", :"tlsv1.2"] do
        assert_same(fn mod ->
          {_l, s, c} = pair!(mod, [], versions: [version])
          piece = fn n, seed -> :binary.copy(<<seed>>, n) <> :crypto.strong_rand_bytes(n) end

          for sizes <- [[100, 200], [70, 3, 300, 150], [400, 500, 300], [5000, 64, 9000]] do
            data = Enum.with_index(sizes, fn n, i -> [piece.(n, i), "|"] end)
            expected = IO.iodata_to_binary(data)
            {mod.send(s, data), ssl_recv_exact(c, byte_size(expected)) == {:ok, expected}}
          end
        end)
      end
    end

    test "not iodata" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        for bad <- [:atom, 1, [1000], {:a}], do: Diff.catching(fn -> mod.send(s, bad) end)
      end)
    end
  end

  # :ssl hands a send's records to gen_tcp's port queue and returns; Islet
  # queues them too and a pump writes them out. Only a send that finds the
  # queue full waits; close and shutdown let the queue out first.
  describe "the send queue" do
    @tls_big :binary.copy("t", 4 * @mib)
    @queue_opts [send_timeout: 300, send_timeout_close: false]

    defp read_all(c), do: Diff.count_to_end(&:ssl.recv/3, c)

    # A longer send_timeout than @queue_opts: under ASan, :ssl alone takes
    # over 250 ms to encrypt the 4 MiB, and "at once" only has to be well
    # short of the timeout that the next send waits for.
    test "a send the peer does not read returns at once; the next one waits, then times out" do
      assert_same(fn mod ->
        opts = [send_timeout: 1_500, send_timeout_close: false]
        {_l, s, _c} = pair!(mod, opts, recbuf: 4096)
        {first, ms} = Diff.timed(fn -> mod.send(s, @tls_big) end)
        {second, ms2} = Diff.timed(fn -> mod.send(s, "more") end)
        {first, ms < 1_000, second, ms2 >= 1_000}
      end)
    end

    test "the peer closes while the queue goes out: closed for recv and every send" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, @queue_opts)
        :ok = mod.send(s, @tls_big)
        {:ok, _} = :ssl.recv(c, 1000, 5_000)
        :ok = :ssl.close(c)
        Process.sleep(200)
        {mod.send(s, "x"), mod.send(s, "x"), mod.recv(s, 0, 1_000)}
      end)
    end

    # (How long close waits depends on how much the :ssl client's own
    # process reads ahead meanwhile: not compared.)
    test "close lets the queue out, then close_notify" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, @queue_opts)
        :ok = mod.send(s, @tls_big)
        parent = self()
        spawn_link(fn -> Process.sleep(300) && Kernel.send(parent, {:read, read_all(c)}) end)
        {mod.close(s), receive(do: ({:read, r} -> r), after: (30_000 -> :no_result))}
      end)
    end

    # :ssl's connection process ends with its owner, but its TCP port writes
    # its queue out before it closes, then close_notify (Islet closed at
    # once and cut the queue: 256 KiB of 4 MiB arrived). Meanwhile what goes
    # through that process says closed, and what :ssl asks of the port
    # (getstat, addresses) still answers. (:ssl's sender, blocked on the
    # busy port, may still take a send, which then times out and whose
    # bytes go out: only that sending fails is compared, with no bytes.)
    # Both record layers: Islet's, and OpenSSL's (a CBC suite stays there).
    for layer <- [:islet, :openssl] do
      test "the owner exits with data queued: the queue still goes out, then close_notify (#{layer} records)" do
        {server_opts, client_opts} = layer_opts(unquote(layer))

        assert_same(fn mod ->
          {_l, s, c} = pair!(mod, @queue_opts ++ server_opts, [recbuf: 4096] ++ client_opts)
          parent = self()

          owner =
            spawn(fn ->
              receive(do: (:send -> Kernel.send(parent, {:sent, mod.send(s, @tls_big)})))
              receive(do: (:exit -> exit(:normal)))
            end)

          :ok = mod.controlling_process(s, owner)
          Kernel.send(owner, :send)
          sent = receive(do: ({:sent, r} -> r))
          ref = Process.monitor(owner)
          Kernel.send(owner, :exit)
          receive(do: ({:DOWN, ^ref, _, _, _} -> :ok))
          Process.sleep(50)

          calls = %{
            send: match?({:error, _}, mod.send(s, "")),
            recv: mod.recv(s, 0, 0),
            shutdown: mod.shutdown(s, :write),
            controlling_process: mod.controlling_process(s, self()),
            setopts: mod.setopts(s, active: :once),
            getopts: mod.getopts(s, [:active]),
            getstat: match?({:ok, [{:recv_oct, _} | _]}, mod.getstat(s)),
            peername: match?({:ok, {{127, 0, 0, 1}, _}}, mod.peername(s)),
            sockname: match?({:ok, {{127, 0, 0, 1}, _}}, mod.sockname(s)),
            connection_information: mod.connection_information(s)
          }

          {close, ms} = Diff.timed(fn -> mod.close(s) end)
          {sent, calls, close, ms < 250, read_all(c)}
        end)
      end
    end

    # The owner exits right after a send the socket took whole but that left
    # it full (4 KiB sndbuf, a proxy with a 4 KiB recbuf between, a client
    # that reads late): nothing is queued, and close_notify must still come
    # after the data, as from :ssl's port. Islet's one try at the owner's
    # exit lost it in a third of the exits (a stress helper's finding);
    # now the socket outlives its owner until the alert is out. A proxy
    # keeps the server's bytes: their last record must be the alert.
    for layer <- [:islet, :openssl] do
      test "the owner exits right after a send that filled the socket: close_notify still comes last (#{layer} records)" do
        sizes = Enum.map(1..12, &(6_000 + rem(&1 * 997, 6_000)))

        assert_same(fn mod ->
          closes_with_alert(mod, unquote(layer), sizes, [recbuf: 4096], fn l, size ->
            parent = self()

            spawn(fn ->
              {:ok, s} = mod.accept(l)
              {:ok, ^s} = mod.handshake(s, 30_000)
              Kernel.send(parent, {:sent, mod.send(s, :binary.copy("x", size))})
            end)

            fn ->
              sent = receive(do: ({:sent, r} -> r))
              Process.sleep(50)
              sent
            end
          end)
        end)
      end
    end

    defp layer_opts(:islet), do: {[], []}

    defp layer_opts(:openssl) do
      # (Named on both sides: OTP 26+ enables no CBC suite by default.)
      cbc = [ciphers: [:ssl.str_to_suite(~c"ECDHE-RSA-AES128-SHA256")]]
      {cbc, [versions: [:"tlsv1.2"]] ++ cbc}
    end

    # A send sealed whole (less than a batch of records) that the socket
    # did not all take: its end waits in the record layer's buffer, nothing
    # in the queue. Islet shut down at once and lost it (CI, once, in the
    # 4 MiB test below in poller mode: the last 32 KiB).
    test "shutdown(:write) after a send sealed whole but not all taken: the rest, then the end" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, @queue_opts ++ [sndbuf: 4096], recbuf: 4096)
        :ok = mod.send(s, :binary.copy("u", 60 * 1024))
        {shut, ms} = Diff.timed(fn -> mod.shutdown(s, :write) end)
        {shut, ms < 250, read_all(c)}
      end)
    end

    test "shutdown(:write) returns at once; close_notify follows the queue" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, @queue_opts)
        :ok = mod.send(s, @tls_big)
        {shut, ms} = Diff.timed(fn -> mod.shutdown(s, :write) end)
        {shut, ms < 250, read_all(c)}
      end)
    end
  end

  describe "large transfers (16 MiB, every byte checked)" do
    @big 16 * @mib

    test "client to server, read with recv(0)" do
      assert_same(
        fn mod ->
          {_l, s, c} = pair!(mod, @bounded)
          data = Diff.pattern(@big, 5)
          parent = self()
          spawn_link(fn -> Kernel.send(parent, {:sent, :ssl.send(c, data)}) end)
          {:ok, got} = mod_recv_exact(mod, s, @big, 30_000)
          sent = receive(do: ({:sent, r} -> r))
          {sent, byte_size(got), got == data}
        end,
        timeout: 90_000
      )
    end

    test "server to client, one send" do
      assert_same(
        fn mod ->
          {_l, s, c} = pair!(mod, @bounded)
          data = Diff.pattern(@big, 6)
          parent = self()

          spawn_link(fn ->
            Kernel.send(parent, {:got, ssl_recv_exact(c, @big, 30_000)})
          end)

          sent = mod.send(s, [data])
          {:ok, got} = receive(do: ({:got, r} -> r))
          {sent, byte_size(got), got == data}
        end,
        timeout: 90_000
      )
    end

    test "both directions at once, in 64 KiB iodata pieces" do
      assert_same(
        fn mod ->
          {_l, s, c} = pair!(mod, @bounded)
          up = Diff.pattern(4 * @mib, 7)
          down = Diff.pattern(4 * @mib, 8)
          parent = self()

          spawn_link(fn ->
            for <<chunk::binary-size(65_536) <- up>>, do: :ok = :ssl.send(c, [chunk])
            Kernel.send(parent, :client_sent)
          end)

          spawn_link(fn ->
            Kernel.send(parent, {:client_got, ssl_recv_exact(c, 4 * @mib, 30_000)})
          end)

          for <<chunk::binary-size(65_536) <- down>>, do: :ok = mod.send(s, [chunk])
          {:ok, got_up} = mod_recv_exact(mod, s, 4 * @mib, 30_000)
          receive(do: (:client_sent -> :ok))
          {:ok, got_down} = receive(do: ({:client_got, r} -> r))
          {got_up == up, got_down == down}
        end,
        timeout: 90_000
      )
    end
  end

  describe "active modes" do
    test "active: true delivers {:ssl, socket, data} with the socket the caller holds" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.setopts(s, active: true)
        client_send(c, ["one", "two", "three"])
        got = collect_active(s, 11)
        {got, mod.getopts(s, [:active])}
      end)
    end

    test "active: :once: one message, then passive until re-armed" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.setopts(s, active: :once)
        :ok = :ssl.send(c, "a")
        first = await_message(s)
        opts = mod.getopts(s, [:active])
        :ok = :ssl.send(c, "b")
        Process.sleep(200)
        quiet = active_messages(s)
        :ok = mod.setopts(s, active: :once)
        {first, opts, quiet, await_message(s)}
      end)
    end

    test "active: n counts down and sends {:ssl_passive, socket}" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.setopts(s, active: 2)
        :ok = :ssl.send(c, "a")
        m1 = await_message(s)
        :ok = :ssl.send(c, "b")
        m2 = await_message(s)
        m3 = await_message(s)
        opts = mod.getopts(s, [:active])
        :ok = :ssl.send(c, "c")
        Process.sleep(200)
        quiet = active_messages(s)
        :ok = mod.setopts(s, active: 1)
        {m1, m2, m3, opts, quiet, await_message(s), await_message(s)}
      end)
    end

    test "active: n added to a running count, and active: 0" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        :ok = mod.setopts(s, active: 3)
        :ok = mod.setopts(s, active: 2)
        a = mod.getopts(s, [:active])
        :ok = mod.setopts(s, active: -4)
        b = mod.getopts(s, [:active])
        :ok = mod.setopts(s, active: -1)
        {a, b, active_messages(s, 200), mod.getopts(s, [:active])}
      end)
    end

    test "data that arrived while passive is delivered when active is set" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        client_send(c, ["x", "yz", "w"])
        Process.sleep(200)
        first = mod.recv(s, 1, 10_000)
        :ok = mod.setopts(s, active: true)
        {first, collect_active(s, 3, 10_000)}
      end)
    end

    test "records that arrived together all come out through active: :once" do
      # With read-ahead, records after the first can sit in OpenSSL's buffer
      # where no readiness event announces them: each activation must find
      # them without new data arriving.
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        client_send(c, ["ab", "cd", "ef", "gh"])
        Process.sleep(200)
        once_until(mod, s, 8, "")
      end)
    end

    test "activation finds what waits in the socket beyond OpenSSL's read buffer" do
      # Data arrives while the socket is passive: far more than one read
      # takes, and no new readiness edge will come for the rest, whether the
      # socket is then read once per activation or until a batch ends.
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        data = :binary.copy(<<"0123456789abcdef">>, 16_384)
        :ok = :ssl.send(c, data)
        Process.sleep(200)
        once = once_until(mod, s, byte_size(data), "")
        # From another process: 2 MiB need not fit in the socket buffers
        # (under ThreadSanitizer's slowness they once did not, and a send
        # from the reading process then waited for itself).
        spawn_link(fn -> :ok = :ssl.send(c, :binary.copy(data, 8)) end)
        Process.sleep(300)
        :ok = mod.setopts(s, active: true)
        all = active_until(s, 8 * byte_size(data), "")
        {once == data, all == :binary.copy(data, 8)}
      end)
    end

    test "active: :once keeps up when records arrive cut at random points" do
      # A proxy cuts the client's bytes (handshake included) into pieces of
      # 1..700 bytes with short pauses: reads end inside records, several
      # records arrive at once, and each activation must find what is left
      # (OpenSSL's buffer, or the socket when no new edge will come).
      assert_same(fn mod ->
        l = listen(mod)
        proxy = start_chopping_proxy(port(mod, l))
        tag = connect_async(proxy)
        {:ok, s} = mod.accept(l)
        {:ok, ^s} = mod.handshake(s, 30_000)
        {:ok, c} = await_client(tag)
        :rand.seed(:exsss, {1, 2, 3})
        messages = for i <- 1..150, do: :binary.copy(<<rem(i, 251)>>, :rand.uniform(20_000))
        expected = IO.iodata_to_binary(messages)
        spawn_link(fn -> client_send(c, messages) end)
        got = once_until(mod, s, byte_size(expected), "")
        {byte_size(got), got == expected}
      end)
    end

    test "active: :once after a partial recv(n) delivers the rest of the record" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.send(c, "abcdef")
        first = mod.recv(s, 2, 10_000)
        :ok = mod.setopts(s, active: :once)
        {first, await_message(s, 10_000)}
      end)
    end

    test "active: true then false: the rest stays for recv" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.setopts(s, active: :once)
        :ok = :ssl.send(c, "first")
        m = await_message(s)
        :ok = mod.setopts(s, active: false)
        :ok = :ssl.send(c, "second")
        Process.sleep(200)
        {m, active_messages(s), mod.recv(s, 6, 10_000)}
      end)
    end

    test "the peer's close gives {:ssl_closed, socket} in active mode" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.setopts(s, active: true)
        :ok = :ssl.send(c, "last words")
        :ok = :ssl.close(c)
        {collect_active(s, 10), await_message(s, 10_000), active_messages(s, 200)}
      end)
    end

    test "the peer's close with active: :once, re-armed after the data" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.setopts(s, active: :once)
        :ok = :ssl.send(c, "bye")
        m1 = await_message(s)
        :ok = :ssl.close(c)
        Process.sleep(200)
        quiet = active_messages(s)
        :ok = mod.setopts(s, active: :once)
        {m1, quiet, await_message(s, 10_000)}
      end)
    end

    test "the peer vanishing without close_notify (TCP reset)" do
      assert_same(fn mod ->
        l = listen(mod)
        {:ok, tcp} = :gen_tcp.connect({127, 0, 0, 1}, port(mod, l), [:binary, active: false])
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        # An :ssl client over our own TCP socket, so that we can reset it.
        parent = self()

        pid =
          spawn(fn ->
            receive do
              {:go, tcp} ->
                {:ok, c} = :ssl.connect(tcp, Certs.client_opts(), 30_000)
                Kernel.send(parent, {:client, c})
                receive(do: (:stop -> :ok))
            end
          end)

        :ok = :gen_tcp.controlling_process(tcp, pid)
        Kernel.send(pid, {:go, tcp})
        {:ok, _} = mod.handshake(s, 30_000)
        receive(do: ({:client, _} -> :ok))
        :ok = mod.setopts(s, active: true)
        :ok = :inet.setopts(tcp, linger: {true, 0})
        Process.exit(pid, :kill)
        msg = await_message(s, 10_000)
        {msg, active_messages(s, 200), mod.recv(s, 0, 1000)}
      end)
    end
  end

  # :ssl's own answers (found comparing call by call, 2026-12-06: Islet
  # answered gen_tcp's {:error, :einval}, kept getopts' order, and gave
  # packet: :raw back for 0).
  describe "setopts and getopts: :ssl's answers" do
    test "errors, order, and what the emulated options give back" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)

        calls = [
          fn -> mod.getopts(s, [:nodelay, :keepalive, :active, :mode]) end,
          fn -> mod.getopts(s, [:nodelay, :no_such_option]) end,
          fn -> mod.getopts(s, :nodelay) end,
          fn -> mod.setopts(s, packet: 0) end,
          fn -> mod.getopts(s, [:packet]) end,
          fn -> mod.setopts(s, packet: :raw) end,
          fn -> mod.getopts(s, [:packet]) end,
          fn -> mod.setopts(s, nodelay: :x, keepalive: :y) end,
          fn -> mod.setopts(s, nodelay: false, no_such_option: 1, keepalive: true) end,
          fn -> mod.getopts(s, [:nodelay, :keepalive]) end,
          # The emulated options before a bad one are set.
          fn -> mod.setopts(s, active: :once, mode: :x) end,
          fn -> mod.getopts(s, [:active]) end,
          fn -> mod.setopts(s, active: false) end,
          fn -> mod.setopts(s, active: :x) end,
          fn -> mod.setopts(s, active: 40_000) end,
          fn -> mod.setopts(s, packet: :x) end,
          fn -> mod.setopts(s, header: :x) end,
          fn -> mod.setopts(s, :x) end,
          fn -> mod.setopts(s, [:x]) end,
          fn -> mod.setopts(s, [:binary]) end,
          fn -> mod.setopts(s, send_timeout: -1) end
        ]

        open = for call <- calls, do: Diff.catching(call)
        :ok = mod.close(s)

        closed =
          for call <- [
                fn -> mod.getopts(s, [:nodelay]) end,
                fn -> mod.setopts(s, nodelay: :x) end
              ],
              do: Diff.catching(call)

        {open, closed}
      end)
    end

    # :ssl passes a listener's active on to its TCP listener: N adds to the
    # count, 0 or below makes it passive with {ssl_passive, L}, and inet's
    # refusal is {options, {socket_options, [active: V], einval}}. (After a
    # refusal :ssl's getopts reads the refused sum, which is not in force:
    # not compared.) Islet's listener counted none of it: only 1..32767
    # were taken, set as the count.
    test "active: N on the listener counts as gen_tcp's, with {ssl_passive, L}" do
      assert_same(fn mod ->
        l = listen(mod)
        msg = fn -> receive(do: (m -> m), after: (100 -> :none)) end

        counted =
          for v <- [5, 5, -10, 3, -1, :once, -1, true, -1, -32_768, 32_767] do
            {v, mod.setopts(l, active: v), mod.getopts(l, [:active]), msg.()}
          end

        refused = for v <- [1, -32_769], do: {v, mod.setopts(l, active: v), msg.()}
        {counted, refused}
      end)

      # A value that is no mode at all :ssl takes (:ok, and its getopts
      # reads it back; nothing checks it): Islet refuses it as inet would.
      l = listen(subject())

      assert subject().setopts(l, active: :x) ==
               {:error, {:options, {:socket_options, [active: :x], :einval}}}
    end

    # :ssl's listener (tls_socket:setopts) keeps mode, packet, header,
    # packet_size and active in its option tracker and hands the rest to its
    # TCP listener. A refusal names the whole list as given, {options,
    # {socket_options, List, Reason}}: a count out of range (the list's last
    # active, or the count the list's actives reach) refuses the list before
    # any socket option is set; a socket option refused leaves the tracker's
    # options set. Islet answered {options, {socket_options, {active, V}}}
    # (a connection's form), a bare einval when the count overflowed, and
    # named only the refused part of the list. (After an active refused,
    # :ssl's tracker keeps the count it refused: :active is not compared.)
    test "a listener's option list: refusals name the list, as :ssl's" do
      assert_same(fn mod ->
        set = fn pre, opts ->
          l = listen(mod, nodelay: false, keepalive: false)
          :ok = mod.setopts(l, pre)
          Diff.messages()
          r = mod.setopts(l, opts)
          {:ok, got} = mod.getopts(l, [:nodelay, :keepalive])
          result = {opts, r, Enum.sort(got), Diff.messages()}
          mod.close(l)
          result
        end

        refused =
          for {pre, opts} <- [
                {[], [nodelay: true, active: 40_000]},
                {[], [active: 40_000, nodelay: true]},
                {[], [nodelay: true, active: 40_000, keepalive: true]},
                {[], [nodelay: true, active: -40_000]},
                {[], [mode: :binary, active: 40_000, nodelay: true]},
                {[], [:binary, {:active, 40_000}]},
                {[active: 20_000], [nodelay: true, active: 20_000]},
                {[active: 20_000], [active: 20_000, packet: 0, keepalive: true]},
                {[], [nodelay: true, foo: 1]},
                {[], [keepalive: true, nodelay: :x]}
              ],
              do: set.(pre, opts)

        # A socket option refused after a valid active: the active is set.
        emulated_first =
          for opts <- [[nodelay: :x, active: 5], [active: 5, nodelay: :x], [active: -1, foo: 1]] do
            l = listen(mod)
            r = mod.setopts(l, opts)
            result = {opts, r, sorted(mod.getopts(l, [:active, :nodelay])), Diff.messages()}
            mod.close(l)
            result
          end

        {refused, emulated_first}
      end)
    end

    # The tracker takes a list's actives from the last to the first, with
    # no bound on the way, and {ssl_passive, L} follows when the list's last
    # active is a count and the listener ends passive. Islet took them first
    # to last, as gen_tcp's listener.
    test "a listener's active options in one list go in as :ssl's tracker takes them" do
      assert_same(fn mod ->
        for opts <- [
              [active: 5, active: -5],
              [active: -5, active: 5],
              [active: true, active: 5],
              [active: 5, active: true],
              [active: 3, active: :once],
              [active: -30_000, active: 30_000, active: 30_000],
              [active: -40_000, active: 5],
              [nodelay: true, active: 7, active: 1]
            ] do
          l = listen(mod)
          r = mod.setopts(l, opts)
          result = {opts, r, mod.getopts(l, [:active]), Diff.messages()}
          mod.close(l)
          result
        end
      end)
    end

    # What :ssl's tracker keeps unchecked and Islet cannot hold: a value
    # that is no mode, or a count out of range that a later true hides from
    # the check (:ssl answers ok, and getopts reads the value back). Islet
    # refuses the list, as inet refuses such a value, and sets nothing.
    test "a listener's list with a value that is no mode: :ssl keeps it, Islet refuses" do
      for opts <- [
            [nodelay: true, active: :x],
            [nodelay: true, mode: :x],
            [nodelay: true, active: 40_000, active: true]
          ] do
        answers =
          for {_, mod} <- modules() do
            l = listen(mod, nodelay: false)
            r = mod.setopts(l, opts)
            {:ok, [nodelay: nodelay]} = mod.getopts(l, [:nodelay])
            mod.close(l)
            {r, nodelay}
          end

        assert answers == [
                 {:ok, true},
                 {{:error, {:options, {:socket_options, opts, :einval}}}, false}
               ]
      end
    end

    test "the TCP port's tuning, :ssl's emulated options and IP options, read back" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)

        for opt <- [
              delay_send: true,
              packet_size: 70_000,
              packet_size: -1,
              high_msgq_watermark: 100,
              low_msgq_watermark: 200,
              high_msgq_watermark: 0,
              ttl: 7,
              ttl: 0,
              recvtos: true,
              dontroute: true,
              bind_to_device: "lo",
              packet_size: 0x100_0000_0000,
              packet_size: :x,
              header: 0,
              deliver: :term,
              show_econnreset: false
            ] do
          {key, _} = opt
          {opt, Diff.catching(fn -> mod.setopts(s, [opt]) end), mod.getopts(s, [key])}
        end
      end)
    end

    # :ssl hands these to its TCP socket (getopts one tag at a time, the
    # answer reversed; a refused setopts wrapped), so they answer as
    # gen_tcp's do (see the TCP conformance tests): set at IPPROTO_IP, the
    # kernel's refusal ignored, pktoptions read-only. gen_tcp's multicast_if
    # value is memory inet_drv never wrote: only its form is compared.
    # Islet.TLS answered einval ({:options, {:socket_options, tag, :einval}}).
    test "multicast options and pktoptions, as :ssl passes them to the TCP socket" do
      form = fn
        {:ok, opts} when is_list(opts) ->
          {:ok,
           Enum.map(opts, fn
             {:multicast_if, {_, _, _, _}} -> {:multicast_if, :ipv4_address}
             {:multicast_if, n} when is_integer(n) -> {:multicast_if, :ifindex}
             other -> other
           end)}

        other ->
          other
      end

      keys = [:multicast_ttl, :multicast_loop, :multicast_if, :pktoptions]

      sets =
        [multicast_ttl: 5, multicast_ttl: :x, multicast_loop: false, multicast_loop: 3] ++
          [multicast_if: {127, 0, 0, 1}, multicast_if: {1, 2}, multicast_if: 1, pktoptions: []]

      assert_same(fn mod ->
        {l, s, c} = pair!(mod, recvtos: true, recvttl: true)
        :ok = :ssl.send(c, "hi")
        {:ok, "hi"} = mod.recv(s, 2, 10_000)

        open =
          for sock <- [l, s] do
            reads = for k <- keys, do: {k, form.(mod.getopts(sock, [k]))}

            set =
              for opt <- sets do
                {opt, mod.setopts(sock, [opt]),
                 mod.getopts(sock, [:multicast_ttl, :multicast_loop])}
              end

            {reads, set, form.(mod.getopts(sock, [:nodelay, :multicast_if, :pktoptions]))}
          end

        # (On the connection only: :ssl's listener names the options of a
        # refused list as given, Islet.TLS's in reverse, whatever the
        # options; a difference this test leaves as it found it.)
        lists =
          {mod.setopts(s, nodelay: true, multicast_loop: 3),
           mod.setopts(s, multicast_loop: true, pktoptions: [])}

        :ok = mod.close(s)
        {open, lists, for(k <- keys, do: mod.getopts(s, [k])), mod.setopts(s, multicast_ttl: 3)}
      end)
    end

    test "raw options, as :ssl passes them to the TCP socket" do
      # (:ssl crashes its connection on a raw getopts the kernel refuses;
      # Islet leaves it out of the answer, as gen_tcp does.)
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)

        for call <- [
              fn -> mod.setopts(s, [{:raw, 6, 4, <<60::32-native>>}]) end,
              fn -> mod.getopts(s, [{:raw, 6, 4, 4}, {:raw, 6, 4, 2}]) end,
              fn -> mod.getopts(s, [:nodelay, {:raw, 6, 1, 4}, :keepalive]) end,
              fn -> mod.setopts(s, [{:raw, 999, 4, <<1::32>>}]) end,
              fn -> mod.setopts(s, [{:raw, :x, 4, <<1>>}]) end,
              fn -> mod.setopts(s, [{:raw, 6, 4}]) end,
              fn -> mod.getopts(s, [{:raw, 6, 4, -1}]) end
            ],
            do: Diff.catching(call)
      end)
    end

    test "the message queue's watermarks move each other, in :ssl's order" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)

        for opts <- [
              [high_msgq_watermark: 10, low_msgq_watermark: 2000],
              [low_msgq_watermark: 2000, high_msgq_watermark: 10]
            ] do
          {opts, mod.setopts(s, opts),
           mod.getopts(s, [:high_msgq_watermark, :low_msgq_watermark])}
        end
      end)
    end
  end

  describe "ownership" do
    test "controlling_process hands active messages to the new owner" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        parent = self()

        owner =
          spawn(fn ->
            receive do
              :go ->
                :ok = mod.setopts(s, active: :once)
                Kernel.send(parent, {:owner, await_message(s)})
            end
          end)

        moved = mod.controlling_process(s, owner)
        Kernel.send(owner, :go)
        Process.sleep(100)
        :ok = :ssl.send(c, "to the owner")
        got = receive(do: ({:owner, m} -> m), after: (10_000 -> :hang))
        {moved, got, active_messages(s)}
      end)
    end

    test "controlling_process called by a process that is not the owner" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        parent = self()
        other = spawn(fn -> receive(do: (:stop -> :ok)) end)

        spawn(fn ->
          Kernel.send(parent, {:result, mod.controlling_process(s, other)})
        end)

        result = receive(do: ({:result, r} -> r))
        # Who owns it now: the one that gets active-mode data.
        :ok = mod.setopts(s, active: :once)
        :ok = :ssl.send(c, "who?")
        Process.sleep(200)
        {:messages, theirs} = Process.info(other, :messages)
        Kernel.send(other, :stop)
        {result, active_messages(s), length(theirs)}
      end)
    end

    # Thousand Island's "behaviour specific to ssl" tests: a connection
    # process that got the socket and sent a file is monitored once (:ssl's
    # connection process; Islet's socket).
    test "a handler given the socket is monitored once, after a sendfile too" do
      path = Diff.tmp_path("islet_tls_owner_sendfile")
      File.write!(path, "ABCDEFGHIJ")
      on_exit(fn -> File.rm(path) end)

      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        {monitors, handler} = Diff.monitored_after_sendfile(mod, s, path)
        watched = if is_list(monitors), do: length(monitors), else: monitors
        data = :ssl.recv(c, 6, 10_000)
        Kernel.send(handler, :stop)
        {watched, data}
      end)
    end

    test "controlling_process to self and to a dead process" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        dead = spawn(fn -> :ok end)
        Process.sleep(50)
        {mod.controlling_process(s, self()), mod.controlling_process(s, dead)}
      end)
    end

    # Accepts and hands shake, keeping no reference to the server socket.
    defp accept_and_forget(mod, l) do
      {:ok, s} = mod.accept(l)
      {:ok, _} = mod.handshake(s, 30_000)
      :ok
    end

    # Asks every process to collect its garbage and waits up to 5 s for the
    # answers: a process of another test running a long dirty NIF (under a
    # sanitizer) answers late, and a synchronous garbage_collect/1 would wait
    # for it.
    defp collect_everywhere do
      refs =
        for pid <- Process.list() do
          ref = make_ref()
          :erlang.garbage_collect(pid, async: ref)
          ref
        end

      deadline = System.monotonic_time(:millisecond) + 5_000

      Enum.each(refs, fn ref ->
        left = max(deadline - System.monotonic_time(:millisecond), 0)
        receive(do: ({:garbage_collect, ^ref, _} -> :ok), after: (left -> :ok))
      end)
    end

    test "dropping every reference to the socket term does not close it (the owner holds it)" do
      # Eight connections whose server sockets are referenced nowhere, then
      # garbage collection everywhere: with :ssl (and gen_tcp) the owner keeps
      # them open.
      assert_same(fn mod ->
        l = listen(mod)

        clients =
          for _ <- 1..8 do
            tag = connect_async(port(mod, l))
            :ok = accept_and_forget(mod, l)
            {:ok, c} = await_client(tag)
            c
          end

        for _ <- 1..3 do
          collect_everywhere()
          Process.sleep(100)
        end

        clients
        |> Enum.map(&{:ssl.recv(&1, 0, 300), :ssl.send(&1, "still there?")})
        |> Enum.frequencies()
      end)
    end

    test "the owner's death closes the connection" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        owner = spawn(fn -> receive(do: (:die -> :ok)) end)
        :ok = mod.controlling_process(s, owner)
        ref = Process.monitor(owner)
        Kernel.send(owner, :die)
        receive(do: ({:DOWN, ^ref, _, _, _} -> :ok))
        seen = :ssl.recv(c, 0, 10_000)
        # :ssl's sender may accept one more write while the connection goes
        # down: only that sending fails soon after is compared.
        {seen, Diff.wait_until(fn -> match?({:error, _}, mod.send(s, ["after"])) end, 5_000)}
      end)
    end

    test "a non-owner may send, recv and close" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        parent = self()

        spawn(fn ->
          sent = mod.send(s, ["from elsewhere"])
          :ok = :ssl.send(c, "to elsewhere")
          got = mod.recv(s, 12, 10_000)
          Kernel.send(parent, {:done, sent, got, mod.close(s)})
        end)

        done = receive(do: ({:done, a, b, d} -> {a, b, d}), after: (10_000 -> :hang))
        {done, ssl_recv_exact(c, 14), :ssl.recv(c, 0, 10_000)}
      end)
    end
  end

  describe "close and close_notify" do
    # A close right after a large send, with a 4 KiB sndbuf and nodelay:
    # the socket is often full when the queue runs out, and Islet's one try
    # at close_notify then dropped it (half the closes on its own record
    # layer: the client saw a bare FIN). A proxy keeps the server's bytes;
    # their last record must be the alert (19 bytes with TLS 1.3's AEAD,
    # 64 with TLS 1.2's AES-CBC-SHA256).
    for layer <- [:islet, :openssl] do
      test "close after a large send on a full socket: close_notify comes last (#{layer} records)" do
        sizes = [150_001, 180_017, 210_029, 240_041, 270_059, 300_071, 330_089, 360_107]

        assert_same(fn mod ->
          closes_with_alert(mod, unquote(layer), sizes, [], fn l, size ->
            {:ok, s} = mod.accept(l)
            {:ok, ^s} = mod.handshake(s, 30_000)
            fn -> {mod.send(s, :binary.copy("x", size)), mod.close(s)} end
          end)
        end)
      end
    end

    test "server close: the client reads the data, then {:error, :closed}" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.send(s, ["goodbye"])
        closed = mod.close(s)
        {closed, ssl_recv_exact(c, 7), :ssl.recv(c, 0, 10_000)}
      end)
    end

    test "server close: an active client gets {:ssl_closed, socket}" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.setopts(c, active: true)
        :ok = mod.close(s)
        msg = receive(do: ({:ssl_closed, ^c} -> :ssl_closed), after: (10_000 -> :none))
        {msg, Diff.messages()}
      end)
    end

    test "client close: the server reads {:error, :closed}, and again" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.send(c, "final")
        :ok = :ssl.close(c)
        {read_to_end(&mod.recv/3, s, 10_000), mod.recv(s, 0, 1000)}
      end)
    end

    test "client close: send from the server eventually fails" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.close(c)
        {"", {:error, :closed}} = read_to_end(&mod.recv/3, s, 10_000)
        # Right after its recv said closed, :ssl's connection process may not
        # have ended yet: a send then races it (:ok, einval or closed: :ok was
        # seen once in a run of the whole suite, einval 1 in 150 under load).
        # Once it has ended (50 ms: 300 of 300) the answer is closed.
        Process.sleep(50)
        mod.send(s, ["into the void"])
      end)
    end

    test "client close: once recv said closed, every call answers as :ssl's ended connection" do
      # Islet kept the TCP socket's options and the connection's information
      # available there (2026-12-06); :ssl's connection process is gone.
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.close(c)
        {"", {:error, :closed}} = read_to_end(&mod.recv/3, s, 10_000)
        Process.sleep(50)

        %{
          getopts: mod.getopts(s, [:nodelay]),
          setopts: mod.setopts(s, nodelay: true),
          active: mod.setopts(s, active: :once),
          peername: mod.peername(s),
          sockname: mod.sockname(s),
          getstat: mod.getstat(s),
          shutdown: mod.shutdown(s, :write),
          peercert: mod.peercert(s),
          negotiated_protocol: mod.negotiated_protocol(s),
          connection_information: mod.connection_information(s),
          controlling_process: mod.controlling_process(s, self()),
          close: mod.close(s)
        }
      end)
    end

    # A client's FIN without close_notify (its TCP socket shut down under
    # TLS). Read next, it is the end, as with :ssl, and sends fail from then
    # on. Unread, the two differ: :ssl's connection process reads on its
    # own and ends the connection at once (its sends say closed, the client
    # gets nothing); Islet reads only when asked, so its sends go on until
    # then (this client, which shut its write side only, gets them).
    defp fin_without_close_notify(mod, read?) do
      l = listen(mod)
      parent = self()

      client =
        Task.async(fn ->
          {:ok, t} = :gen_tcp.connect({127, 0, 0, 1}, port(mod, l), [:binary, active: false])
          {:ok, c} = :ssl.connect(t, Keyword.delete(Certs.client_opts(), :active))
          :ok = :ssl.controlling_process(c, parent)
          {t, c}
        end)

      {:ok, s} = mod.accept(l)
      {:ok, ^s} = mod.handshake(s, 30_000)
      {t, c} = Task.await(client)
      :ok = :ssl.send(c, "request")
      {:ok, "request"} = mod.recv(s, 7, 5_000)
      :ok = :gen_tcp.shutdown(t, :write)
      Process.sleep(300)
      read = if read?, do: mod.recv(s, 0, 1_000), else: :not_read
      {read, for(_ <- 1..4, do: mod.send(s, :binary.copy("x", 16_384)))}
    end

    test "a client's FIN without close_notify: the next read ends the connection" do
      assert assert_same(&fin_without_close_notify(&1, true)) ==
               {{:error, :closed}, List.duplicate({:error, :closed}, 4)}

      {ssl, islet} = Islet.Test.TLSDiff.run(&fin_without_close_notify(&1, false))
      assert islet == {:not_read, [:ok, :ok, :ok, :ok]}
      assert ssl == {:not_read, List.duplicate({:error, :closed}, 4)}
    end

    test "calls on a socket closed locally" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        :ok = mod.close(s)

        %{
          close: mod.close(s),
          recv: mod.recv(s, 0, 100),
          send: mod.send(s, ["x"]),
          setopts: mod.setopts(s, active: :once),
          getopts: mod.getopts(s, [:active]),
          peername: mod.peername(s),
          sockname: mod.sockname(s),
          shutdown: mod.shutdown(s, :write),
          getstat: mod.getstat(s),
          controlling_process: mod.controlling_process(s, self())
        }
      end)
    end
  end

  describe "shutdown" do
    test "shutdown(:write) sends close_notify: the client reads the data, then :closed" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = mod.send(s, ["half"])
        sd = mod.shutdown(s, :write)
        client = {ssl_recv_exact(c, 4), :ssl.recv(c, 0, 10_000)}
        # Once the client has answered the close (:ssl closes on close_notify).
        Process.sleep(300)
        {sd, client, mod.send(s, ["more"])}
      end)
    end

    test "shutdown(:write), then the client's data still reaches the server" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.send(c, "before")
        Process.sleep(100)
        sd = mod.shutdown(s, :write)
        {sd, mod.recv(s, 6, 10_000)}
      end)
    end

    # A connection that never sent has no write queue, yet its socket can
    # be full: of the KeyUpdates answering a client's requests, which a
    # client that does not read leaves there. Islet's shutdown left
    # close_notify behind them and nothing ever wrote it (the background
    # flush and the drain returned at once without a queue): the client
    # waited for the end forever.
    test "shutdown(:write) with only KeyUpdate answers unsent: the end still comes" do
      assert_same(fn mod ->
        l = listen(mod, sndbuf: 4096, nodelay: true)
        proxy = RecordingProxy.start(port(mod, l), recbuf: 4096)
        tag = connect_async(proxy.port, [])
        {:ok, s} = mod.accept(l)
        {:ok, ^s} = mod.handshake(s, 30_000)
        {:ok, c} = await_client(tag)
        :ok = mod.setopts(s, active: true)
        :ok = RecordingProxy.pause(proxy)

        # One request at a time, so that each gets its own answer, and a
        # byte of data after each (Islet ends a connection after 32 records
        # in a row that carry none), until the answers wait: the socket is
        # full.
        request = fn _ ->
          :ok = :ssl.update_keys(c, :read_write)
          :ok = :ssl.send(c, "k")
        end

        pending_now = fn -> mod.getstat(s) |> elem(1) |> Keyword.fetch!(:send_pend) end

        # With OpenSSL's record layer (ISLET_TLS_RECORDS=openssl), OpenSSL
        # keeps the answer the socket refused in its SSL object, which
        # getstat does not see, and reads no more until it is out, as
        # :ssl's connection process waits in its send: there a fixed
        # number of requests fills the socket, and only the end is compared.
        own_layer? = Islet.TLS.Options.record_layer() == :islet

        n =
          if own_layer? do
            request_until_full(request, pending_now, 100)
          else
            for i <- 0..599, do: {request.(i), Process.sleep(1)}
            600
          end

        pending = pending_now.()
        # :ssl's connection process is stuck in a send to the full socket
        # meanwhile, so its shutdown returns once the client reads again.
        shut = Task.async(fn -> mod.shutdown(s, :write) end)
        Process.sleep(200)
        RecordingProxy.resume(proxy)
        end_seen = {Task.await(shut, 20_000), :ssl.recv(c, 0, 10_000)}

        if own_layer? do
          {got, _others} = Diff.collect_active(s, n, 3_000, :ssl)
          # The server reads on. :ssl, shut down before it read the last
          # requests, answers them on the shut socket, fails (enotconn) and
          # ends the connection with some of the client's data unread;
          # Islet owes no KeyUpdate after close_notify and reads it all.
          all_read = got == :binary.copy("k", n)
          {pending > 0, end_seen, mod != Islet.TLS or all_read}
        else
          end_seen
        end
      end)
    end

    test "shutdown(:read_write) and shutdown(:read)" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        a = mod.shutdown(s, :read_write)
        {a, :ssl.recv(c, 0, 10_000), mod.recv(s, 0, 1000)}
      end)

      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        mod.shutdown(s, :read)
      end)
    end
  end

  describe "sendfile" do
    setup do
      path = Diff.tmp_path("islet_tls_sendfile")
      data = Diff.pattern(3 * @mib + 123, 9)
      File.write!(path, data)
      on_exit(fn -> File.rm(path) end)
      %{path: path, data: data}
    end

    # Kernel TLS is off on machines without the kernel's tls module (as
    # here): sendfile must then read and encrypt, and still send every byte.
    test "kernel TLS is detected, and sendfile works either way", %{path: path, data: data} do
      {_l, s, c} = pair!(Islet.TLS, @bounded)
      ktls? = Islet.TLS.ktls?(s)
      assert is_boolean(ktls?)

      unless File.exists?("/sys/module/tls"),
        do: refute(ktls?, "kTLS reported without the kernel's tls module")

      # Tried only where the kernel lists its tls module (probed at load).
      ulps = File.read!("/proc/sys/net/ipv4/tcp_available_ulp") |> String.split()
      assert Islet.TLS.kernel_tls?() == "tls" in ulps
      if ktls?, do: assert(Islet.TLS.kernel_tls?())

      parent = self()
      spawn_link(fn -> Kernel.send(parent, {:got, ssl_recv_exact(c, 5000, 30_000)}) end)
      assert Islet.TLS.sendfile(s, path, 1000, 5000) == {:ok, 5000}
      assert_receive {:got, {:ok, got}}, 30_000
      assert got == binary_part(data, 1000, 5000)
    end

    test "the whole file (length 0)", %{path: path, data: data} do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, @bounded)
        parent = self()

        spawn_link(fn ->
          Kernel.send(parent, {:got, ssl_recv_exact(c, byte_size(data), 30_000)})
        end)

        sent = mod.sendfile(s, path, 0, 0)
        {:ok, got} = receive(do: ({:got, r} -> r))
        {sent, got == data}
      end)
    end

    test "offset and length", %{path: path, data: data} do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, @bounded)
        a = mod.sendfile(s, path, 1000, 5000)
        {:ok, got_a} = ssl_recv_exact(c, 5000)
        b = mod.sendfile(s, path, byte_size(data) - 10, 0)
        {:ok, got_b} = ssl_recv_exact(c, 10)

        {a, got_a == binary_part(data, 1000, 5000), b,
         got_b == binary_part(data, byte_size(data) - 10, 10)}
      end)
    end

    test "at or past the end of the file, or an empty one: {:ok, 0}, nothing sent", %{
      path: path,
      data: data
    } do
      empty = path <> "_empty"
      File.write!(empty, "")

      try do
        assert_same(fn mod ->
          {_l, s, c} = pair!(mod)
          size = byte_size(data)

          results =
            for {file, offset, length} <- [
                  {path, size, 0},
                  {path, size + 10, 0},
                  {path, size + 10, 50},
                  {empty, 0, 0}
                ],
                do: mod.sendfile(s, file, offset, length)

          {results, :ssl.recv(c, 0, 200)}
        end)
      after
        File.rm(empty)
      end
    end

    test "a file that does not exist" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        mod.sendfile(s, "/nonexistent/islet/file", 0, 0)
      end)
    end
  end

  describe "getstat, getopts, setopts, addresses" do
    test "getstat has :inet's keys and counts the bytes on the wire (TLS records included)" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        :ok = :ssl.send(c, String.duplicate("u", 1000))
        {:ok, _} = mod.recv(s, 1000, 10_000)
        :ok = mod.send(s, [String.duplicate("d", 2000)])
        {:ok, _} = ssl_recv_exact(c, 2000)
        {:ok, stats} = mod.getstat(s)

        %{
          keys: stats |> Keyword.keys() |> Enum.sort(),
          # The wire carries more than the plaintext: records and handshake.
          recv_oct: stats[:recv_oct] > 1000,
          send_oct: stats[:send_oct] > 2000,
          recv_cnt: stats[:recv_cnt] >= 1,
          send_cnt: stats[:send_cnt] >= 1
        }
      end)
    end

    test "getstat's packets are the wire's reads and writes, the handshake's included" do
      # :ssl's getstat is its TCP port's: packets of records, not of
      # plaintext. Islet counted what the user received and sent: no packet
      # at all after the handshake, and a largest read smaller than the
      # average.
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        {:ok, hs} = mod.getstat(s)
        :ok = :ssl.send(c, "kkk")
        {:ok, "kkk"} = mod.recv(s, 0, 10_000)
        :ok = mod.send(s, :binary.copy("y", 50_000))
        {:ok, _} = ssl_recv_exact(c, 50_000)
        {:ok, st} = mod.getstat(s)
        own_layer? = Islet.TLS.Options.record_layer() == :islet
        send_max_range = if own_layer?, do: 50_001..50_200, else: 16_385..50_200

        consistent = fn stats, dir ->
          [cnt, max, avg, oct] = for k <- ~w(cnt max avg oct)a, do: stats[:"#{dir}_#{k}"]
          cnt >= 1 and avg <= max and max <= oct and abs(avg * cnt - oct) <= cnt
        end

        %{
          handshake: {hs[:recv_max] > 200, hs[:send_max] > 1000},
          deviation: st[:recv_dvi] > 0,
          consistent: for(x <- [hs, st], d <- [:recv, :send], do: consistent.(x, d)),
          # 4 records of one send, in one write, as :ssl's sender writes
          # them (OpenSSL's record layer writes each record apart).
          send_max: st[:send_max] in send_max_range,
          more: {st[:recv_cnt] > hs[:recv_cnt], st[:send_cnt] > hs[:send_cnt]}
        }
      end)
    end

    test "getstat counters grow with traffic" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        {:ok, before} = mod.getstat(s)
        :ok = :ssl.send(c, "12345")
        {:ok, _} = mod.recv(s, 5, 10_000)
        :ok = mod.send(s, ["678"])
        {:ok, _} = ssl_recv_exact(c, 3)
        {:ok, later} = mod.getstat(s)
        for k <- [:recv_oct, :recv_cnt, :send_oct, :send_cnt], do: {k, later[k] > before[k]}
      end)
    end

    test "getopts of the options Thousand Island sets" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)

        for k <- [
              :active,
              :mode,
              :packet,
              :nodelay,
              :send_timeout,
              :send_timeout_close,
              :reuseaddr
            ] do
          {k, mod.getopts(s, [k])}
        end
      end)
    end

    test "setopts then getopts" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        a = mod.setopts(s, nodelay: false, keepalive: true)
        b = sorted(mod.getopts(s, [:nodelay, :keepalive]))
        c = mod.setopts(s, mode: :binary, packet: :raw)
        {a, b, c, sorted(mod.getopts(s, [:mode, :packet]))}
      end)
    end

    # :ssl hands these to inet, with inet_drv's rules (low <= high: each
    # moves the other; negative is 0; cut to 32 bits), but applies a list
    # from first to last where gen_tcp goes from last to first. A value
    # that is not an integer is refused (:ssl's error term is its own, so
    # only the refusal is compared) and changes nothing.
    test "high_watermark and low_watermark: setopts, getopts" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod)
        marks = fn -> sorted(mod.getopts(s, [:high_watermark, :low_watermark])) end
        defaults = marks.()

        set =
          for opts <- [
                [high_watermark: 16_384, low_watermark: 8192],
                [high_watermark: 100],
                [low_watermark: 20_000],
                [high_watermark: 1000, low_watermark: 2000],
                [low_watermark: 2000, high_watermark: 1000],
                [high_watermark: 100, high_watermark: 200],
                [high_watermark: -5],
                [low_watermark: -5],
                [high_watermark: 2_147_483_648],
                [high_watermark: 4_294_967_306],
                [high_watermark: 1.5],
                [low_watermark: :low],
                [high_watermark: 1000, nodelay: :bad]
              ] do
            # Back to the defaults (high first, so that the low can follow).
            :ok = mod.setopts(s, high_watermark: 8192, low_watermark: 4096)

            result =
              case mod.setopts(s, opts) do
                :ok -> :ok
                {:error, _} -> :refused
              end

            {opts, result, marks.()}
          end

        {defaults, set, mod.getopts(s, [:high_watermark]), mod.getopts(s, [:low_watermark])}
      end)
    end

    test "high_watermark and low_watermark as listen options, passed on to the connection" do
      assert_same(fn mod ->
        for opts <- [
              [high_watermark: 100],
              [low_watermark: 20_000],
              [high_watermark: 1000, low_watermark: 2000],
              [low_watermark: 2000, high_watermark: 1000],
              [high_watermark: -5]
            ] do
          {l, s, _c} = pair!(mod, opts)
          keys = [:high_watermark, :low_watermark]
          {opts, sorted(mod.getopts(l, keys)), sorted(mod.getopts(s, keys))}
        end
      end)
    end

    test "nopush (TCP_CORK) set and read back, and data still flows" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        on = {mod.setopts(s, nopush: true), mod.getopts(s, [:nopush])}
        off = {mod.setopts(s, nopush: false), mod.getopts(s, [:nopush])}
        {on, off, mod.send(s, "after"), ssl_recv_exact(c, 5)}
      end)
    end

    test "listen options reach the connection (user's over defaults)" do
      assert_same(fn mod ->
        {_l, s, _c} = pair!(mod, nodelay: false, send_timeout: 1234, keepalive: true)
        sorted(mod.getopts(s, [:nodelay, :send_timeout, :keepalive, :active, :mode]))
      end)
    end

    test "Thousand Island's merge: hard-coded mode/active win, then the first occurrence" do
      assert_same(fn mod ->
        opts = [active: true, mode: :list, nodelay: false, nodelay: true, send_timeout: 777]
        {_l, s, c} = pair!(mod, opts)
        :ok = :ssl.send(c, "still binary")
        Process.sleep(100)

        {sorted(mod.getopts(s, [:active, :mode, :nodelay, :send_timeout])), active_messages(s),
         mod.recv(s, 12, 10_000)}
      end)
    end

    test "peername is the client's address" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod)
        {:ok, client_addr} = :ssl.sockname(c)
        {:ok, server_addr} = :ssl.peername(c)
        {mod.peername(s) == {:ok, client_addr}, mod.sockname(s) == {:ok, server_addr}}
      end)
    end
  end

  describe "handshake edge cases" do
    test "a client that connects and closes at once" do
      assert_same(fn mod ->
        l = listen(mod)
        {:ok, tcp} = :gen_tcp.connect({127, 0, 0, 1}, port(mod, l), [:binary, active: false])
        :ok = :gen_tcp.close(tcp)
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        mod.handshake(s, 10_000)
      end)
    end

    test "a plain-text HTTP request on the TLS port" do
      assert_same(fn mod ->
        l = listen(mod)
        {:ok, tcp} = :gen_tcp.connect({127, 0, 0, 1}, port(mod, l), [:binary, active: false])
        :ok = :gen_tcp.send(tcp, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        hs = mod.handshake(s, 10_000)
        # The client gets a fatal unexpected_message alert, then the end.
        {hs, Diff.read_to_end(Islet.Reference.TCP, tcp, 10_000)}
      end)
    end

    test "garbage on the TLS port" do
      assert_same(fn mod ->
        l = listen(mod)
        {:ok, tcp} = :gen_tcp.connect({127, 0, 0, 1}, port(mod, l), [:binary, active: false])
        :ok = :gen_tcp.send(tcp, String.duplicate("GARBAGE\r\n", 10))
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        hs = mod.handshake(s, 10_000)
        {hs, Diff.read_to_end(Islet.Reference.TCP, tcp, 10_000)}
      end)
    end

    test "handshake/1 (no timeout)" do
      assert_same(fn mod ->
        l = listen(mod)
        tag = connect_async(port(mod, l))
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        {mod.handshake(s), elem(await_client(tag), 0)}
      end)
    end
  end

  # A TCP proxy to `port` on loopback for one connection: the client's bytes
  # go on in random pieces with random short pauses, the server's as they
  # come. Returns the port to connect to; it stops with the connection.
  defp start_chopping_proxy(port) do
    {:ok, front} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, front_port} = :inet.port(front)

    spawn(fn ->
      {:ok, down} = :gen_tcp.accept(front)
      {:ok, up} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false, nodelay: true])
      :ok = :inet.setopts(down, nodelay: true)
      spawn(fn -> pipe(up, down, &[&1]) end)
      pipe(down, up, &chop/1)
    end)

    front_port
  end

  # A TCP proxy to `port` on loopback for one connection that sends the
  # test process what the server sends ({ref, bytes}, then {ref, :end}).
  # Returns {port to connect to, ref}.
  # One connection per size through a recording proxy (`proxy_opts`: its
  # connection to the server), with a 4 KiB sndbuf and nodelay on the
  # server (`layer`: see layer_opts/1). `serve.(listener, size)` starts the
  # server's side and returns a fun, run once the client is connected,
  # that sends `size` bytes and ends the connection. Per size: what that
  # fun returned, whether the client got every byte, its last answer, and
  # whether the server's last record was the alert (19 bytes with TLS
  # 1.3's AEAD, 64 with TLS 1.2's AES-CBC-SHA256).
  defp closes_with_alert(mod, layer, sizes, proxy_opts, serve) do
    {server_opts, client_opts} = layer_opts(layer)
    alert = if layer == :islet, do: 19, else: 64
    l = listen(mod, server_opts ++ [sndbuf: 4096, nodelay: true])

    for size <- sizes do
      proxy = RecordingProxy.start(port(mod, l), proxy_opts)
      tag = connect_async(proxy.port, client_opts)
      ended = serve.(l, size)
      {:ok, c} = await_client(tag)
      server = ended.()
      {got, error} = read_to_end(&:ssl.recv/3, c, 30_000)
      :ssl.close(c)

      {server, byte_size(got) == size, error,
       RecordingProxy.last_record_length(RecordingProxy.recorded(proxy)) == alert}
    end
  end

  # Forwards what `from` receives to `to`, as `cut` splits it into pieces
  # and pauses, until either side closes.
  defp pipe(from, to, cut) do
    case :gen_tcp.recv(from, 0) do
      {:ok, data} ->
        Enum.each(cut.(data), fn
          {:pause, ms} -> Process.sleep(ms)
          piece -> :gen_tcp.send(to, piece)
        end)

        pipe(from, to, cut)

      {:error, _} ->
        :gen_tcp.close(to)
    end
  end

  # The pieces of `data` (1..700 bytes) with a pause of 1 ms after some.
  defp chop(<<>>), do: []

  defp chop(data) do
    n = min(:rand.uniform(700), byte_size(data))
    {piece, rest} = :erlang.split_binary(data, n)
    pause = if :rand.uniform(4) == 1, do: [{:pause, 1}], else: []
    [piece | pause] ++ chop(rest)
  end

  # Collects active messages until `total` bytes came; what came, or :stuck.
  defp active_until(_s, total, acc) when byte_size(acc) >= total, do: acc

  defp active_until(s, total, acc) do
    receive do
      {:ssl, ^s, data} -> active_until(s, total, acc <> IO.iodata_to_binary(data))
    after
      3_000 -> {:stuck, byte_size(acc)}
    end
  end
end
