defmodule Islet.ChaosTest do
  # Well-behaved and hostile clients at once, against the miniature Thousand
  # Island runtime (`Islet.Bench.Server`: acceptor pool, a handler per
  # connection, active-once loop, read and handshake timeouts): clients that
  # reset mid-handshake (while an RSA step may be on a dirty scheduler),
  # send half a ClientHello and stall, send garbage, corrupt a record after
  # the handshake, reset with requests unread, pipeline and vanish, or
  # half-close. The plan is drawn from ExUnit's seed (rerun a failure with
  # its --seed), then run by concurrent client processes.
  #
  # What must hold: every well-behaved client is answered correctly however
  # the others behave, no handler or acceptor crashes (no error is logged),
  # and once the server stops every socket is destroyed and every
  # descriptor closed. CI also runs this under AddressSanitizer.
  #
  # async: false: the live-socket count and the descriptor count are global.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog, only: [with_log: 1]

  alias Islet.Bench.Server
  alias Islet.Test.{Certs, Diff}

  @moduletag timeout: 180_000

  @clients 24
  @rounds 16
  # The server's read and handshake timeouts: stalled clients are cut at it.
  @server_timeout 1_000
  @client_timeout 10_000

  @request "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
  @hello_response "Hello, world!\n"

  @tcp_behaviours [
    :request,
    :request,
    :slow_request,
    :half_close,
    :connect_close,
    :connect_reset,
    :garbage,
    :request_then_reset,
    :pipeline_then_reset,
    :stall
  ]
  @tls_behaviours @tcp_behaviours ++
                    [
                      :tls12_request,
                      :partial_hello_close,
                      :partial_hello_reset,
                      :hello_then_reset,
                      :handshake_then_reset,
                      :corrupt_record
                    ]

  setup_all do
    {:ok, hello: client_hello()}
  end

  for {name, transport, cert, behaviours} <- [
        {"Islet.TCP", Islet.TCP, nil, @tcp_behaviours},
        {"Islet.TLS, RSA-2048", Islet.TLS, :server_rsa, @tls_behaviours},
        {"Islet.TLS, ECDSA P-256", Islet.TLS, :server_ec, @tls_behaviours}
      ] do
    test "#{name}: good clients are served and nothing is left", %{hello: hello} do
      run(unquote(transport), unquote(cert), unquote(behaviours), hello)
    end
  end

  defp run(transport, cert, behaviours, hello) do
    live_before = settled_live_sockets()
    fds_before = fd_count()
    plan = for _ <- 1..@clients, do: for(_ <- 1..@rounds, do: Enum.random(behaviours))

    {failures, log} =
      with_log(fn ->
        listen = [ip: :loopback] ++ if(cert, do: Certs.server_opts(cert), else: [])

        {:ok, server} =
          Server.start_link(
            transport: transport,
            listen_options: listen,
            acceptors: 10,
            read_timeout: @server_timeout,
            handshake_timeout: @server_timeout
          )

        port = Server.port(server)
        tls? = cert != nil

        failures =
          plan
          |> Enum.map(fn steps ->
            Task.async(fn -> Enum.flat_map(steps, &check(&1, port, tls?, hello)) end)
          end)
          |> Enum.flat_map(&Task.await(&1, 120_000))

        # Still serving once the storm is over.
        failures = failures ++ check(:request, port, tls?, hello)
        Server.stop(server)
        failures
      end)

    # (What the server logged tells why a good client failed.)
    assert failures == [], "#{inspect(failures)}\n#{log}"
    refute log =~ ~r/\[error\]/, log

    assert Diff.wait_until(fn -> Islet.Nif.live_sockets() <= live_before end, 10_000) == :ok,
           "#{Islet.Nif.live_sockets() - live_before} sockets outlived the server"

    assert Diff.wait_until(fn -> fd_count() <= fds_before end, 10_000) == :ok,
           "#{fd_count() - fds_before} descriptors left open"
  end

  # Runs one behaviour; [] when it went as it must, else [{behaviour, what,
  # milliseconds it took}] (a second or more: the server's timeout cut it).
  defp check(behaviour, port, tls?, hello) do
    started = System.monotonic_time(:millisecond)

    case behave(behaviour, port, tls?, hello) do
      :ok -> []
      other -> [{behaviour, other, System.monotonic_time(:millisecond) - started}]
    end
  end

  ## Well-behaved clients: each must get its answer.

  defp behave(:request, port, tls?, _hello) do
    with {:ok, c} <- open(port, tls?, []) do
      result = with :ok <- c_send(c, @request), do: read_response(c)
      c_close(c)
      result
    end
  end

  defp behave(:tls12_request, port, true, _hello) do
    with {:ok, c} <- open(port, true, versions: [:"tlsv1.2"]) do
      result = with :ok <- c_send(c, @request), do: read_response(c)
      c_close(c)
      result
    end
  end

  # The request in pieces, a few milliseconds apart.
  defp behave(:slow_request, port, tls?, _hello) do
    with {:ok, c} <- open(port, tls?, []) do
      pieces = for <<chunk::binary-size(6) <- @request>>, do: chunk
      tail = binary_part(@request, 6 * length(pieces), byte_size(@request) - 6 * length(pieces))

      sent =
        Enum.reduce_while(pieces ++ [tail], :ok, fn piece, :ok ->
          Process.sleep(:rand.uniform(3))

          case c_send(c, piece) do
            :ok -> {:cont, :ok}
            error -> {:halt, error}
          end
        end)

      result = with :ok <- sent, do: read_response(c)
      c_close(c)
      result
    end
  end

  # Request, then the client's write side shut: the answer still comes.
  defp behave(:half_close, port, false, _hello) do
    with {:ok, c} <- open(port, false, []) do
      {:gen_tcp, s} = c

      result =
        with :ok <- c_send(c, @request),
             :ok <- :gen_tcp.shutdown(s, :write),
             do: read_response(c)

      c_close(c)
      result
    end
  end

  # (TLS: :ssl's half-close would send close_notify, which ends the
  # connection for the server; a plain request stands in.)
  defp behave(:half_close, port, true, hello), do: behave(:request, port, true, hello)

  ## Hostile or broken clients: anything goes but a crash or a hang.

  defp behave(:connect_close, port, _tls?, _hello) do
    with {:ok, s} <- raw(port), do: :gen_tcp.close(s)
  end

  defp behave(:connect_reset, port, _tls?, _hello) do
    with {:ok, s} <- raw(port), do: reset(s)
  end

  defp behave(:garbage, port, _tls?, _hello) do
    with {:ok, s} <- raw(port) do
      _ = :gen_tcp.send(s, :crypto.strong_rand_bytes(:rand.uniform(4_000)))
      drain(s)
    end
  end

  defp behave(:request_then_reset, port, tls?, _hello) do
    with {:ok, c, tcp} <- open_over_tcp(port, tls?) do
      _ = c_send(c, @request)
      reset(tcp)
      c_close(c)
    end
  end

  defp behave(:pipeline_then_reset, port, tls?, _hello) do
    with {:ok, c, tcp} <- open_over_tcp(port, tls?) do
      _ = c_send(c, String.duplicate(@request, 50))
      Process.sleep(:rand.uniform(2) - 1)
      reset(tcp)
      c_close(c)
    end
  end

  # Connects and sends nothing (TCP) or half a ClientHello (TLS): the
  # server's timeout must cut it. Rare: each costs a second.
  defp behave(:stall, port, tls?, hello) do
    if :rand.uniform(4) == 1 do
      with {:ok, s} <- raw(port) do
        if tls?, do: :gen_tcp.send(s, binary_part(hello, 0, div(byte_size(hello), 2)))

        case :gen_tcp.recv(s, 0, @client_timeout) do
          {:error, :closed} -> :gen_tcp.close(s)
          {:ok, _alert} -> drain(s)
          other -> {:not_cut, other}
        end
      end
    else
      :ok
    end
  end

  defp behave(:partial_hello_close, port, true, hello) do
    with {:ok, s} <- raw(port) do
      _ = :gen_tcp.send(s, binary_part(hello, 0, :rand.uniform(byte_size(hello) - 1)))
      :gen_tcp.close(s)
    end
  end

  defp behave(:partial_hello_reset, port, true, hello) do
    with {:ok, s} <- raw(port) do
      _ = :gen_tcp.send(s, binary_part(hello, 0, :rand.uniform(byte_size(hello) - 1)))
      reset(s)
    end
  end

  # A whole ClientHello, then a reset while the server computes its flight.
  defp behave(:hello_then_reset, port, true, hello) do
    with {:ok, s} <- raw(port) do
      _ = :gen_tcp.send(s, hello)
      Process.sleep(:rand.uniform(3) - 1)
      reset(s)
    end
  end

  defp behave(:handshake_then_reset, port, true, _hello) do
    with {:ok, {:ssl, tls}, tcp} <- open_over_tcp(port, true) do
      reset(tcp)
      :ssl.close(tls)
    end
  end

  # Bytes that do not authenticate where the next record belongs: the
  # server must answer with an alert (or just close) and end the connection.
  defp behave(:corrupt_record, port, true, _hello) do
    with {:ok, {:ssl, tls}, tcp} <- open_over_tcp(port, true) do
      junk = :crypto.strong_rand_bytes(64)
      _ = :gen_tcp.send(tcp, <<23, 3, 3, byte_size(junk)::16, junk::binary>>)

      result =
        case :ssl.recv(tls, 0, @client_timeout) do
          {:error, _} -> :ok
          other -> {:not_ended, other}
        end

      :ssl.close(tls)
      result
    end
  end

  ## Client helpers

  defp raw(port) do
    :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], @client_timeout)
  end

  # A client is {module, socket}, the module (:gen_tcp or :ssl) its calls
  # go to: which one is not told by the socket's shape, which is :ssl's own
  # (OTP 29's sslsocket tuple is not OTP 25's).
  defp open(port, false, _opts), do: with({:ok, s} <- raw(port), do: {:ok, {:gen_tcp, s}})

  defp open(port, true, opts) do
    with {:ok, s} <- :ssl.connect({127, 0, 0, 1}, port, client_opts(opts), @client_timeout),
         do: {:ok, {:ssl, s}}
  end

  # {:ok, client, tcp}: the client and the TCP socket under it (the
  # client's own for plain TCP), to reset or write to behind TLS's back.
  defp open_over_tcp(port, false) do
    with {:ok, s} <- raw(port), do: {:ok, {:gen_tcp, s}, s}
  end

  defp open_over_tcp(port, true) do
    with {:ok, tcp} <- raw(port) do
      case :ssl.connect(tcp, client_opts([]), @client_timeout) do
        {:ok, tls} ->
          {:ok, {:ssl, tls}, tcp}

        error ->
          :gen_tcp.close(tcp)
          error
      end
    end
  end

  defp client_opts(opts), do: Keyword.merge(Certs.client_opts(), opts)

  defp c_send({mod, s}, data), do: mod.send(s, data)
  defp c_close({mod, s}), do: mod.close(s)
  defp c_recv({mod, s}), do: mod.recv(s, 0, @client_timeout)

  # One whole response, whose body is the handler's greeting.
  defp read_response(c, acc \\ "") do
    case c_recv(c) do
      {:ok, data} ->
        acc = acc <> data

        if String.ends_with?(acc, @hello_response),
          do: :ok,
          else: read_response(c, acc)

      {:error, reason} ->
        {:no_response, reason, acc}
    end
  end

  # Closes with a reset (linger 0).
  defp reset(s) do
    _ = :inet.setopts(s, linger: {true, 0})
    :gen_tcp.close(s)
  end

  # Reads until the server closes (bounded), then closes.
  defp drain(s) do
    result =
      case :gen_tcp.recv(s, 0, @client_timeout) do
        {:ok, _} -> drain_more(s)
        {:error, reason} when reason in [:closed, :econnreset] -> :ok
        other -> {:not_closed, other}
      end

    :gen_tcp.close(s)
    result
  end

  defp drain_more(s) do
    case :gen_tcp.recv(s, 0, @client_timeout) do
      {:ok, _} -> drain_more(s)
      {:error, reason} when reason in [:closed, :econnreset] -> :ok
      other -> {:not_closed, other}
    end
  end

  ## Measures

  # A real ClientHello (TLS 1.3 and 1.2 offered), as :ssl sends it.
  defp client_hello do
    {:ok, l} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(l)
    client = spawn(fn -> :ssl.connect({127, 0, 0, 1}, port, client_opts([]), 5_000) end)
    {:ok, s} = :gen_tcp.accept(l, 5_000)
    {:ok, <<22, _::16, len::16>> = header} = :gen_tcp.recv(s, 5, 5_000)
    {:ok, body} = :gen_tcp.recv(s, len, 5_000)
    Process.exit(client, :kill)
    :gen_tcp.close(s)
    :gen_tcp.close(l)
    header <> body
  end

  defp settled_live_sockets do
    :erlang.garbage_collect()
    n = Islet.Nif.live_sockets()
    Process.sleep(50)
    min(n, Islet.Nif.live_sockets())
  end

  defp fd_count, do: length(File.ls!("/proc/self/fd"))
end
