defmodule Islet.TLSConformanceInteropTest do
  # Differential conformance of Islet.TLS against :ssl, part 3: another TLS
  # stack as the client (the `openssl s_client` command), handshake timeouts
  # with clients that never speak (and the BEAM staying responsive with 200
  # of them), and STARTTLS (upgrade of a connected TCP socket).
  use ExUnit.Case, async: false

  import Islet.Test.TLSDiff

  alias Islet.Test.{Certs, Diff}

  @moduletag :capture_log
  @moduletag timeout: 180_000

  setup_all do
    Certs.dir()
    :ok
  end

  describe "openssl s_client" do
    # Runs `openssl s_client` against a server of `mod` that accepts one
    # connection, reads one line and echoes it back prefixed, then closes.
    # Returns what the server saw and what s_client printed.
    defp s_client(mod, server_opts, args, line \\ "hello from s_client") do
      l = listen(mod, server_opts)
      port = port(mod, l)
      parent = self()

      server =
        spawn_link(fn ->
          {:ok, s} = mod.accept(l)

          result =
            case mod.handshake(s, 30_000) do
              {:ok, s} ->
                {:ok, info} = mod.connection_information(s)
                got = recv_line(mod, s, "")
                sent = mod.send(s, ["echo: ", got])
                alpn = mod.negotiated_protocol(s)
                peer = with {:ok, der} <- mod.peercert(s), do: {:ok, der == Certs.der(:client)}
                Process.sleep(50)
                mod.close(s)
                %{line: got, sent: sent, alpn: alpn, peercert: peer, protocol: info[:protocol]}

              error ->
                error
            end

          Kernel.send(parent, {:server, result})
        end)

      openssl = System.find_executable("openssl")

      argv =
        ["s_client", "-connect", "127.0.0.1:#{port}", "-quiet", "-verify_quiet"] ++
          ["-CAfile", Certs.file(:ca, :cert), "-verify_return_error", "-servername", "localhost"] ++
          args

      p =
        Port.open({:spawn_executable, openssl}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          args: argv
        ])

      {:os_pid, os_pid} = Port.info(p, :os_pid)
      Port.command(p, line <> "\n")
      {output, status} = port_output(p, "")
      server_result = receive(do: ({:server, r} -> r), after: (30_000 -> :server_hang))
      # s_client exits when the server closes; if it did not, end it.
      if status == :timeout do
        System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true)
      end

      Process.unlink(server)
      mod.close(l)

      %{
        server: server_result,
        echoed: String.contains?(output, "echo: " <> line),
        exit_status: status
      }
    end

    defp recv_line(mod, s, acc) do
      case mod.recv(s, 0, 30_000) do
        {:ok, data} ->
          acc = acc <> data
          if String.contains?(acc, "\n"), do: acc, else: recv_line(mod, s, acc)

        error ->
          {acc, error}
      end
    end

    defp port_output(p, acc) do
      receive do
        {^p, {:data, data}} -> port_output(p, acc <> data)
        {^p, {:exit_status, status}} -> {acc, status}
      after
        30_000 ->
          Port.close(p)
          {acc, :timeout}
      end
    end

    test "TLS 1.3 with ALPN h2" do
      assert_same(&s_client(&1, [alpn_preferred_protocols: ["h2", "http/1.1"]], ["-alpn", "h2"]))
    end

    test "TLS 1.2 with ALPN http/1.1, ECDSA certificate" do
      assert_same(
        &s_client(
          &1,
          Certs.server_opts(:server_ec) ++ [alpn_preferred_protocols: ["h2", "http/1.1"]],
          ["-tls1_2", "-alpn", "http/1.1"]
        )
      )
    end

    test "no ALPN" do
      assert_same(&s_client(&1, [], []))
    end

    test "a client certificate" do
      opts = [
        verify: :verify_peer,
        cacertfile: Certs.file(:ca, :cert),
        fail_if_no_peer_cert: true
      ]

      args = ["-cert", Certs.file(:client, :cert), "-key", Certs.file(:client, :key)]
      assert_same(&s_client(&1, opts, args))
      assert_same(&s_client(&1, opts, ["-tls1_2" | args]))
    end

    test "SNI choosing another certificate" do
      opts = [sni_hosts: [{~c"sni.test", Certs.server_opts(:sni)}]]

      assert_same(fn mod ->
        s_client(mod, opts, ["-servername", "sni.test", "-verify_hostname", "sni.test"])
      end)
    end

    # The certificates the server sends, as s_client -showcerts lists them
    # (" 0 s:CN = localhost" and its issuer line, and so on).
    defp chain_sent(mod, server_opts, args) do
      l = listen(mod, server_opts)
      port = port(mod, l)

      server =
        spawn_link(fn ->
          {:ok, s} = mod.accept(l)
          _ = mod.handshake(s, 30_000)
          Process.sleep(100)
          mod.close(s)
        end)

      cmd =
        "openssl s_client -connect 127.0.0.1:#{port} -showcerts -servername localhost " <>
          Enum.join(args, " ") <> " </dev/null"

      {output, _} = System.cmd("timeout", ["20", "sh", "-c", cmd], stderr_to_stdout: true)
      Process.unlink(server)
      mod.close(l)

      # (OpenSSL 3.5 prints names as "CN=x", 3.0 as "CN = x".)
      for line <- String.split(output, "\n"),
          line =~ ~r/^\s*(\d+ s:|i:)/,
          do: line |> String.trim() |> String.replace(" = ", "=")
    end

    test "the certificate chain sent: completed from cacertfile, or the leaf alone" do
      # OpenSSL completes a chain given without intermediates from the CA
      # store; :ssl builds it from certfile and cacertfile when it starts.
      ca = [cacertfile: Certs.file(:ca, :cert)]
      leaf = ["0 s:CN=localhost", "i:CN=Islet Test CA"]
      root = ["1 s:CN=Islet Test CA", "i:CN=Islet Test CA"]

      cases = [
        {Certs.server_opts(), leaf},
        {Certs.server_opts() ++ ca, leaf ++ root},
        {Certs.server_opts(:server_ec) ++ ca, leaf ++ root}
      ]

      for {opts, expected} <- cases, args <- [[], ["-tls1_2"]] do
        assert assert_same(&chain_sent(&1, opts, args)) == expected
      end
    end

    test "a large line (1 MiB) through s_client" do
      line = String.duplicate("0123456789abcdef", 65_536)

      # send_timeout bounds a stalled send (30 s by default).
      assert_same(fn mod -> s_client(mod, [send_timeout: 10_000], [], line) end, timeout: 60_000)
    end
  end

  describe "session resumption with openssl s_client -reconnect" do
    # Regression: when the client closed first, Islet freed the SSL object
    # without a completed shutdown and OpenSSL dropped the session from the
    # cache, so TLS 1.2 clients never resumed (they do with :ssl).
    test "TLS 1.2 sessions resume when the client closes first" do
      for mod <- [Islet.Reference.SSL, Islet.TLS] do
        out = reconnect(mod, [versions: [:"tlsv1.2"], reuse_sessions: true], "-no_ticket")
        assert resumed(out) >= 4, "#{inspect(mod)}: #{resumed(out)} of 5 reconnections resumed"
      end
    end

    # :ssl has no TLS 1.2 session tickets (RFC 5077): session_tickets is
    # for TLS 1.3. Islet's OpenSSL sent them to TLS 1.2 clients that asked.
    test "TLS 1.2 clients get no session ticket, whatever session_tickets says" do
      for mod <- [Islet.Reference.SSL, Islet.TLS], mode <- [:stateless, :stateful] do
        out = reconnect(mod, [session_tickets: mode, reuse_sessions: true], "")
        assert out =~ "Session-ID: ", "#{inspect(mod)} #{mode}: #{out}"
        refute out =~ "TLS session ticket", "#{inspect(mod)} #{mode}: a TLS 1.2 ticket"
        assert resumed(out) >= 4, "#{inspect(mod)} #{mode}: #{resumed(out)} of 5 resumed"
      end
    end

    # s_client -reconnect, TLS 1.2, against a `mod` listener: a connection
    # and five reconnections; its input at an end at once, so that the last
    # connection closes then. Returns s_client's output.
    defp reconnect(mod, listen_opts, extra) do
      l = listen(mod, listen_opts)
      port = port(mod, l)
      acceptor = spawn_link(fn -> serve_until_closed(mod, l) end)
      cmd = "openssl s_client -connect 127.0.0.1:#{port} -tls1_2 -reconnect #{extra} < /dev/null"
      {out, _status} = System.cmd("timeout", ["20", "sh", "-c", cmd], stderr_to_stdout: true)
      Process.unlink(acceptor)
      Process.exit(acceptor, :kill)
      mod.close(l)
      out
    end

    defp resumed(out),
      do: out |> String.split("\n") |> Enum.count(&String.starts_with?(&1, "Reused"))

    # One connection at a time: handshake, read until the client closes,
    # close, and collect the socket at once so that the SSL object is freed
    # before the client reconnects.
    defp serve_until_closed(mod, l) do
      case mod.accept(l) do
        {:ok, s} ->
          with {:ok, s} <- mod.handshake(s, 10_000), do: mod.recv(s, 0, 10_000)
          mod.close(s)
          :erlang.garbage_collect()
          serve_until_closed(mod, l)

        _ ->
          :ok
      end
    end
  end

  describe "handshake timeout" do
    test "a client that connects and never speaks is cut at the timeout" do
      assert_same(fn mod ->
        l = listen(mod)
        {:ok, tcp} = :gen_tcp.connect({127, 0, 0, 1}, port(mod, l), [:binary, active: false])
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        t0 = System.monotonic_time(:millisecond)
        hs = mod.handshake(s, 300)
        elapsed = System.monotonic_time(:millisecond) - t0
        # The server closed the connection: the client sees it.
        {hs, elapsed >= 250 and elapsed < 5_000, :gen_tcp.recv(tcp, 0, 10_000),
         mod.recv(s, 0, 100)}
      end)
    end

    test "a client that sends half a ClientHello is cut at the timeout" do
      assert_same(fn mod ->
        l = listen(mod)
        {:ok, tcp} = :gen_tcp.connect({127, 0, 0, 1}, port(mod, l), [:binary, active: false])
        # A handshake record header announcing 512 bytes, and 4 of them.
        :ok = :gen_tcp.send(tcp, <<22, 3, 1, 2, 0, 1, 0, 1, 252>>)
        {:ok, s} = mod.accept(l)
        Diff.name(s, :server)
        {mod.handshake(s, 300), :gen_tcp.recv(tcp, 0, 10_000)}
      end)
    end

    test "200 silent clients: all cut at the timeout, the BEAM stays responsive" do
      assert_same(
        fn mod ->
          n = 200
          l = listen(mod, backlog: 1024)
          port = port(mod, l)
          parent = self()

          clients =
            for _ <- 1..n do
              {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 10_000)
              c
            end

          # A process answering pings, measured while the handshakes wait.
          pinger = spawn_link(fn -> ping_loop(parent, 0) end)

          t0 = System.monotonic_time(:millisecond)

          for _ <- 1..n do
            {:ok, s} = mod.accept(l)

            # As Thousand Island does: a handler process owns it and hands shake.
            handler =
              spawn(fn ->
                receive do
                  {:go, s} -> Kernel.send(parent, {:handshake, mod.handshake(s, 1_000)})
                end
              end)

            _ = mod.controlling_process(s, handler)
            Kernel.send(handler, {:go, s})
          end

          results =
            for _ <- 1..n do
              receive do
                {:handshake, {:error, :timeout}} -> :timeout
                {:handshake, other} -> {:other, other}
              after
                30_000 -> :hang
              end
            end

          elapsed = System.monotonic_time(:millisecond) - t0
          Kernel.send(pinger, {:stop, self()})
          worst = receive(do: ({:pings, worst, count} -> {worst, count}))
          closed = Enum.count(clients, &(:gen_tcp.recv(&1, 0, 10_000) == {:error, :closed}))
          Enum.each(clients, &:gen_tcp.close/1)
          {worst_ms, pings} = worst

          %{
            results: Enum.frequencies(results),
            closed_by_server: closed,
            elapsed_ok: elapsed >= 900 and elapsed < 20_000,
            responsive: worst_ms < 500 and pings > 10
          }
        end,
        timeout: 60_000
      )
    end
  end

  # Answers pings every 10 ms and tracks the worst round trip.
  defp ping_loop(_parent, worst) do
    t = System.monotonic_time(:millisecond)
    me = self()
    ref = make_ref()
    spawn(fn -> Kernel.send(me, {:pong, ref}) end)

    receive do
      {:pong, ^ref} -> :ok
    end

    rtt = System.monotonic_time(:millisecond) - t

    receive do
      {:stop, from} ->
        Kernel.send(from, {:pings, max(worst, rtt), Process.get(:pings, 0)})
    after
      10 ->
        Process.put(:pings, Process.get(:pings, 0) + 1)
        ping_loop(nil, max(worst, rtt))
    end
  end

  describe "STARTTLS: upgrade of a connected TCP socket" do
    defp tcp_module(Islet.Reference.SSL), do: Islet.Reference.TCP
    defp tcp_module(_), do: Islet.TCP

    defp starttls(mod, server_opts, client_opts) do
      tcp = tcp_module(mod)
      {:ok, l} = tcp.listen(0, ip: :loopback)
      {:ok, {_, port}} = tcp.sockname(l)
      parent = self()

      # The client: plain TCP, "STARTTLS", then :ssl.connect over the same socket.
      spawn_link(fn ->
        {:ok, c} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
        :ok = :gen_tcp.send(c, "STARTTLS\r\n")
        {:ok, "GO\r\n"} = :gen_tcp.recv(c, 4, 10_000)
        opts = Keyword.merge(Certs.client_opts(), client_opts)

        case :ssl.connect(c, opts, 30_000) do
          {:ok, tls} ->
            :ok = :ssl.send(tls, "secret")
            got = ssl_recv_exact(tls, 13)
            Kernel.send(parent, {:client, {:ok, got, :ssl.recv(tls, 0, 10_000)}})

          error ->
            Kernel.send(parent, {:client, error})
        end
      end)

      {:ok, s} = tcp.accept(l)
      Diff.name(s, :tcp)
      {:ok, "STARTTLS\r\n"} = tcp.recv(s, 10, 10_000)
      :ok = tcp.send(s, ["GO\r\n"])

      server =
        case mod.upgrade(s, server_opts) do
          {:ok, tls} ->
            Diff.name(tls, :tls)
            got = mod.recv(tls, 6, 10_000)
            sent = mod.send(tls, ["secret: ", "back"])
            {:ok, info} = mod.connection_information(tls)
            {:ok, got, sent, info[:protocol], mod.close(tls)}

          error ->
            error
        end

      {server, receive(do: ({:client, r} -> r), after: (30_000 -> :client_hang))}
    end

    test "Islet.TLS.upgrade on an Islet.TCP socket (:ssl.handshake on gen_tcp for the reference)" do
      assert_same(&starttls(&1, Certs.server_opts(), []))
    end

    test "upgrade with TLS 1.2, ALPN and a client certificate" do
      opts =
        Certs.server_opts(:server_ec) ++
          [
            versions: [:"tlsv1.2"],
            verify: :verify_peer,
            cacertfile: Certs.file(:ca, :cert),
            fail_if_no_peer_cert: true
          ]

      assert_same(&starttls(&1, opts, Certs.client_cert_opts(:client)))
    end

    test "upgrade refused by the client's verification (unknown CA)" do
      assert_same(&starttls(&1, Certs.server_opts(), cacertfile: Certs.file(:other_ca, :cert)))
    end

    test "upgrade with a certificate file that does not exist: the load error" do
      opts = [certfile: "/nonexistent/cert.pem", keyfile: Certs.file(:server_rsa, :key)]

      assert {{:error, {:options, {:certfile, ~c"/nonexistent/cert.pem", {:error, :enoent}}}},
              {:error, :closed}} = assert_same(&starttls(&1, opts, []))
    end
  end
end
