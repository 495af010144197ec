defmodule Islet.TLSVerifyTest do
  # verify_fun and partial_chain, against :ssl: the client certificates a
  # server accepts or refuses, the alert it refuses them with, and the events
  # (and their order) its verify_fun sees. Islet checks the chain in Erlang
  # once OpenSSL's part of the handshake is done (Islet.TLS.Verify).
  #
  # A TLS 1.2 client learns of a refusal from its connect (the server holds
  # its last flight until Erlang has answered), a TLS 1.3 client from its
  # next read (its certificate comes after the server's last flight), with
  # both servers.
  use ExUnit.Case, async: true

  import Bitwise
  import Islet.Test.TLSDiff

  alias Islet.Test.{Certs, Diff}

  @moduletag :capture_log
  @moduletag timeout: 120_000

  setup_all do
    Certs.dir()
    :ok
  end

  @names [:client, :other_client, :client_expired, :inter_client, :self_client, :server_ec] ++
           [:client_sha1, :client_md5, :client_sha224, :client_pss, :inter_any_client]

  defp name_of(der) do
    Enum.find(@names, fn n -> Certs.der(n) == der end) || {:unknown, byte_size(der)}
  end

  # The common name of a decoded certificate.
  defp cn(otp_cert) do
    {:rdnSequence, rdns} = otp_cert |> elem(1) |> elem(6)
    for [{:AttributeTypeAndValue, {2, 5, 4, 3}, v}] <- rdns, do: cn_value(v)
  end

  defp cn_value({_, v}) when is_list(v), do: List.to_string(v)
  defp cn_value({_, v}) when is_binary(v), do: v
  defp cn_value(v), do: inspect(v)

  defp event({:extension, ext}), do: {:extension, elem(ext, 1)}
  defp event(e), do: e

  # A verify_fun that reports each event to `to`, then answers with `answer`.
  defp recording(to, answer) do
    {fn cert, ev, state ->
       Kernel.send(to, {:verify_fun, cn(cert), event(ev)})
       answer.(ev, state)
     end, :no_state}
  end

  # :ssl's default answers: unknown extensions are left to the path
  # validation, errors fail.
  defp default_answer({:extension, _}, s), do: {:unknown, s}
  defp default_answer({:bad_cert, _} = reason, _s), do: {:fail, reason}
  defp default_answer(_valid, s), do: {:valid, s}

  # OpenSSL 3.5 names no SHA-1 algorithm in a TLS 1.3 CertificateRequest
  # (3.0 does, RSA with SHA-1 last), and ssl 11's client then withholds a
  # certificate signed with SHA-1 (:ssl's server names rsa_pkcs1_sha1 in
  # its signature_algorithms_cert, which OpenSSL cannot send): Islet sees
  # none where :ssl takes it.
  defp sha1_withheld?(:"tlsv1.3") do
    [{_, openssl, _} | _] = :crypto.info_lib()
    Islet.Compat.ssl11?() and openssl >= 0x30500000
  end

  defp sha1_withheld?(_version), do: false

  # assert_same/1 on a scenario's list of {client name, erlang?, result}
  # but, where sha1_withheld?/1, for the results of the client signed with
  # SHA-1, which :ssl takes and Islet never sees.
  defp assert_same_but_sha1(version, scenario) do
    if sha1_withheld?(version) do
      {ssl, islet} = run(scenario)
      sha1? = &(elem(&1, 0) == :client_sha1)
      {ssl_sha1, ssl_rest} = Enum.split_with(ssl, sha1?)
      {islet_sha1, islet_rest} = Enum.split_with(islet, sha1?)
      assert ssl_rest == islet_rest
      assert ssl_sha1 != [] and Enum.all?(ssl_sha1, &match?({_, _, {{:ok, _}, _, _}}, &1))

      for r <- islet_sha1,
          do: assert({_, _, {{:error, {:tls_alert, :certificate_required}}, _, _}} = r)
    else
      assert_same(scenario)
    end
  end

  defp accepting(accepted) do
    fn
      {:bad_cert, reason} = ev, s ->
        if reason in accepted, do: {:valid, s}, else: default_answer(ev, s)

      ev, s ->
        default_answer(ev, s)
    end
  end

  defp observe(mod, server_opts, client_opts) do
    verify_outcome(mod, server_opts, client_opts, fn
      {:ok, der} -> name_of(der)
      other -> other
    end)
  end

  defp server(version, extra), do: Certs.require_client_cert(version, extra)

  for version <- [:"tlsv1.2", :"tlsv1.3"] do
    @version version

    describe "#{version}" do
      test "a good client certificate: the events verify_fun sees, and success" do
        assert_same(fn mod ->
          opts = server(@version, verify_fun: recording(self(), &default_answer/2))
          observe(mod, opts, Certs.client_cert_opts(:client))
        end)
      end

      test "verify_fun in an sni_fun's answer: that host's clients are checked with it" do
        assert_same(fn mod ->
          me = self()

          refusing = fn
            :valid_peer, _ -> {:fail, :not_this_one}
            ev, s -> default_answer(ev, s)
          end

          for answer <- [&default_answer/2, refusing] do
            opts = [
              versions: [@version],
              sni_fun: fn _host -> server(@version, verify_fun: recording(me, answer)) end
            ]

            observe(mod, opts, Certs.client_cert_opts(:client))
          end
        end)
      end

      test "a client certificate signed with SHA-1: accepted, as :ssl does" do
        # (OpenSSL's security level from the system configuration refused
        # it, with verify_fun or without.)
        assert_same_but_sha1(@version, fn mod ->
          client = Certs.client_cert_opts(:client_sha1)
          plain = observe(mod, server(@version, []), client)

          with_fun =
            observe(
              mod,
              server(@version, verify_fun: recording(self(), &default_answer/2)),
              client
            )

          [{:client_sha1, false, plain}, {:client_sha1, true, with_fun}]
        end)
      end

      test "verify_fun failing the peer: handshake_failure" do
        assert_same(fn mod ->
          answer = fn
            :valid_peer, _ -> {:fail, :not_this_one}
            ev, s -> default_answer(ev, s)
          end

          opts = server(@version, verify_fun: recording(self(), answer))
          observe(mod, opts, Certs.client_cert_opts(:client))
        end)
      end

      for {what, client, reason} <- [
            {"a self-signed client certificate", :self_client, :selfsigned_peer},
            {"a certificate from an unknown CA", :other_client, :unknown_ca},
            {"an expired certificate", :client_expired, :cert_expired}
          ] do
        @client client
        @reason reason
        test "#{what}: refused, or accepted by verify_fun" do
          assert_same(fn mod ->
            client = Certs.client_cert_opts(@client)
            no = server(@version, verify_fun: recording(self(), &default_answer/2))
            yes = server(@version, verify_fun: recording(self(), accepting([@reason])))
            {observe(mod, no, client), observe(mod, yes, client)}
          end)
        end
      end

      test "a server certificate used as a client's: its extended key usage" do
        # (Checked by OpenSSL without a verify_fun, in Erlang with one.)
        assert_same(fn mod ->
          opts = server(@version, verify_fun: recording(self(), &default_answer/2))

          {observe(mod, server(@version, []), Certs.client_cert_opts(:server_ec)),
           observe(mod, opts, Certs.client_cert_opts(:server_ec))}
        end)
      end

      test "an intermediate CA whose extended key usage lacks client authentication" do
        # (It has anyExtendedKeyUsage: ssl 11 takes it with
        # allow_any_ca_purpose, which OTP 25's :ssl does not know.)
        client =
          Certs.client_cert_opts(:inter_any_client) ++
            [cacertfile: Certs.file(:ca_inter_any, :cert)]

        allow = if Islet.Compat.ssl11?(), do: [[allow_any_ca_purpose: true]], else: []

        for extra <- [[]] ++ allow do
          assert_same(fn mod ->
            fun = [verify_fun: recording(self(), &default_answer/2)]

            {observe(mod, server(@version, extra), client),
             observe(mod, server(@version, fun ++ extra), client)}
          end)
        end
      end

      test "a chain through an intermediate CA" do
        assert_same(fn mod ->
          opts = server(@version, verify_fun: recording(self(), &default_answer/2))

          client =
            Certs.client_cert_opts(:inter_client) ++ [cacertfile: Certs.file(:ca_inter, :cert)]

          observe(mod, opts, client)
        end)
      end

      test "partial_chain trusting the intermediate the client sent" do
        assert_same(fn mod ->
          inter = Certs.der(:inter)
          parent = self()

          partial = fn ders ->
            Kernel.send(parent, {:partial_chain, Enum.map(ders, &(&1 == inter))})
            if inter in ders, do: {:trusted_ca, inter}, else: :unknown_ca
          end

          client =
            Certs.client_cert_opts(:inter_client) ++ [cacertfile: Certs.file(:ca_inter, :cert)]

          # Only the intermediate is trusted; the client's chain leads to a
          # root the server does not know. (Without certificate_authorities:
          # false, :ssl's TLS 1.3 server names the intermediate in its
          # CertificateRequest, and :ssl's client, whose chain's issuers do
          # not include it, sends no certificate; Islet names no CAs.)
          no_names = if @version == :"tlsv1.3", do: [certificate_authorities: false], else: []

          base =
            @version
            |> server([cacerts: [inter]] ++ no_names)
            |> Keyword.delete(:cacertfile)

          trusting = observe(mod, base ++ [partial_chain: partial], client)
          refusing = observe(mod, base ++ [partial_chain: fn _ -> :unknown_ca end], client)
          {trusting, refusing}
        end)
      end
    end
  end

  test "TLS 1.2 on a CBC suite (records left with OpenSSL): refused with :ssl's alert" do
    # OpenSSL keeps the records of CBC suites, and has no call to send an
    # alert of Islet's choosing once they are encrypted; but a TLS 1.2
    # refusal comes before the server's last flight, in plaintext.
    assert_same(fn mod ->
      cbc = %{key_exchange: :ecdhe_rsa, cipher: :aes_128_cbc, mac: :sha256, prf: :sha256}
      opts = server(:"tlsv1.2", ciphers: [cbc], verify_fun: recording(self(), &default_answer/2))
      # (The client names it too: OTP 26+ offers no CBC suite by default.)
      client = Certs.client_cert_opts(:self_client) ++ [ciphers: [cbc]]

      yes =
        server(:"tlsv1.2",
          ciphers: [cbc],
          verify_fun: recording(self(), accepting([:selfsigned_peer]))
        )

      {observe(mod, opts, client), observe(mod, yes, client)}
    end)
  end

  # OTP 25's :ssl needs no cacerts then; OTP 27.3's refuses to listen
  # ({options, incompatible, [verify: verify_peer, cacerts: undefined]}).
  test "verify_fun without any trusted certificate" do
    assert_same(fn mod ->
      opts =
        :"tlsv1.3"
        |> server(verify_fun: recording(self(), accepting([:unknown_ca])))
        |> Keyword.delete(:cacertfile)

      case mod.listen(0, opts ++ [ip: :loopback] ++ Certs.server_opts()) do
        {:ok, l} ->
          :ok = mod.close(l)
          observe(mod, opts, Certs.client_cert_opts(:client))

        refused ->
          {:listen, refused}
      end
    end)
  end

  # A client connected through a relay to `mod`'s listener `l`, and the
  # task doing the server's handshake. (The client's socket is handed to
  # this process: it would close with the task that made it.)
  defp connect_through(mod, l, relay_port, client) do
    me = self()

    connecting =
      Task.async(fn ->
        with {:ok, c} <- :ssl.connect(~c"localhost", relay_port, client, 10_000),
             :ok <- :ssl.controlling_process(c, me),
             do: {:ok, c}
      end)

    {:ok, s} = mod.accept(l)
    handshaking = Task.async(fn -> mod.handshake(s, 10_000) end)
    {:ok, c} = Task.await(connecting)
    {c, handshaking}
  end

  # A relay that forwards the ClientHello at once but holds what the
  # client sends after it until told, then passes it in one write; it
  # reports how the server's side of the connection ended.
  defp relay(server_port), do: start_relay(server_port, &relay_loop(&1, &2, &3, []))

  # A relay between a client (on the port returned) and the server: it
  # passes the ClientHello, then `loop` takes over (client socket, server
  # socket, the test's pid).
  defp start_relay(server_port, loop) do
    parent = self()
    {:ok, l} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(l)

    pid =
      spawn_link(fn ->
        {:ok, c} = :gen_tcp.accept(l)
        opts = [:binary, active: true, show_econnreset: true, exit_on_close: false]
        {:ok, up} = :gen_tcp.connect({127, 0, 0, 1}, server_port, opts)
        {:ok, hello} = :gen_tcp.recv(c, 0)
        :ok = :gen_tcp.send(up, hello)
        :ok = :inet.setopts(c, active: true)
        loop.(c, up, parent)
      end)

    {port, pid}
  end

  defp relay_loop(c, up, parent, held) do
    receive do
      {:tcp, ^c, data} ->
        relay_loop(c, up, parent, [held, data])

      :flush ->
        :ok = :gen_tcp.send(up, held)
        relay_loop(c, up, parent, [])

      {:tcp, ^up, data} ->
        _ = :gen_tcp.send(c, data)
        relay_loop(c, up, parent, held)

      {:tcp_closed, ^up} ->
        Kernel.send(parent, {:server_end, after_fin(up)})

      {:tcp_error, ^up, reason} ->
        Kernel.send(parent, {:server_end, reason})

      {:tcp_closed, ^c} ->
        relay_loop(c, up, parent, held)
    end
  end

  # A FIN came: whether a reset followed it (the server closed with data
  # unread), as a client that looks at its socket a little later sees it.
  defp after_fin(up) do
    Process.sleep(100)

    case :inet.peername(up) do
      {:ok, _} -> :fin
      {:error, _} -> :reset
    end
  end

  test "a refused client whose request came with its flight: the alert, then a FIN" do
    # The server reads the client's flight and the request that came in the
    # same segment before it refuses: its close is a FIN after the alert,
    # not a reset (which could keep the client from reading the alert).
    assert_same(fn mod ->
      opts = [
        verify: :verify_peer,
        fail_if_no_peer_cert: true,
        cacertfile: Certs.file(:ca, :cert)
      ]

      l = listen(mod, opts)
      {relay_port, relay} = relay(port(mod, l))

      client =
        Keyword.merge(Certs.client_opts(), versions: [:"tlsv1.3"])
        |> Keyword.delete(:reuse_sessions)

      {c, handshaking} = connect_through(mod, l, relay_port, client)
      :ok = :ssl.send(c, "GET / HTTP/1.0\r\n\r\n")
      Process.sleep(100)
      Kernel.send(relay, :flush)
      handshake = Task.await(handshaking)
      ended = receive(do: ({:server_end, how} -> how), after: (5_000 -> :open))
      {handshake, ended}
    end)
  end

  # A relay for a request that comes after the refusal: it passes the
  # ClientHello and the server's flight, holds the client's last flight
  # until told (:flush), then keeps what the server sends from the client
  # (which must not learn of the refusal before it sends). Once the
  # server's FIN came it says so (:server_fin), passes the next bytes the
  # client sends, and reports how the server's side ended.
  defp late_relay(server_port),
    do: start_relay(server_port, &late_loop(&1, &2, &3, :handshake, []))

  defp late_loop(c, up, parent, phase, held) do
    receive do
      {:tcp, ^c, data} when phase == :fin ->
        # (A server already gone answers with a reset, which this reports.)
        _ = :gen_tcp.send(up, data)
        Kernel.send(parent, {:server_end, after_fin(up)})

      {:tcp, ^c, data} when phase == :flushed ->
        # The rest of the flight, come after the :flush.
        :ok = :gen_tcp.send(up, data)
        late_loop(c, up, parent, phase, held)

      {:tcp, ^c, data} ->
        late_loop(c, up, parent, phase, [held, data])

      :flush ->
        :ok = :gen_tcp.send(up, held)
        late_loop(c, up, parent, :flushed, [])

      {:send_up, data} ->
        Kernel.send(parent, {:sent_up, :gen_tcp.send(up, data)})
        late_loop(c, up, parent, phase, held)

      {:tcp, ^up, data} when phase == :handshake ->
        :ok = :gen_tcp.send(c, data)
        late_loop(c, up, parent, phase, held)

      {:tcp, ^up, _alert} ->
        late_loop(c, up, parent, phase, held)

      {:tcp_closed, ^up} ->
        Kernel.send(parent, :server_fin)
        late_loop(c, up, parent, :fin, held)

      {:tcp_error, ^up, reason} ->
        Kernel.send(parent, {:server_end, reason})
    end
  end

  # A TLS 1.3 client refused by Islet.TLS (no certificate, or a verify_fun
  # that says no) through late_relay: returns once the server's FIN came,
  # with the relay, the client and the task doing the server's handshake.
  defp refused_late(refusal) do
    opts =
      [verify: :verify_peer, fail_if_no_peer_cert: true, cacertfile: Certs.file(:ca, :cert)] ++
        if refusal == :verify_fun,
          do: [verify_fun: {fn _, _, _ -> {:fail, :refused} end, nil}],
          else: []

    l = listen(Islet.TLS, opts)
    {relay_port, relay} = late_relay(port(Islet.TLS, l))

    client =
      Certs.client_opts()
      |> Keyword.merge(versions: [:"tlsv1.3"])
      |> Keyword.merge(if refusal == :verify_fun, do: Certs.client_cert_opts(:client), else: [])
      |> Keyword.delete(:reuse_sessions)

    {c, handshaking} = connect_through(Islet.TLS, l, relay_port, client)
    Kernel.send(relay, :flush)
    assert_receive :server_fin, 5_000
    {relay, c, handshaking}
  end

  for {refusal, alert} <- [no_certificate: :certificate_required, verify_fun: :handshake_failure] do
    test "a refused client's request sent after the refusal is not met by a reset (#{refusal})" do
      # A TLS 1.3 client sends its request before it can have read the
      # alert about its last flight. Had the server closed, the kernel would
      # answer the request with a reset, which can reach the client before
      # it reads the alert: curl then reported a reset or a failed
      # getpeername instead of certificate_required. Islet.TLS reads and
      # drops what comes until the client closes (:ssl, which closes at
      # once, resets here unless it happened to read the request first).
      {_relay, c, handshaking} = refused_late(unquote(refusal))
      :ok = :ssl.send(c, "GET / HTTP/1.0\r\n\r\n")
      assert_receive {:server_end, :fin}, 5_000
      # The relay ended, closing its side: the server's wait ends with it.
      assert {:error, {:tls_alert, {unquote(alert), _}}} = Task.await(handshaking, 2_000)
      :ssl.close(c)
    end
  end

  test "the wait after a refusal is bounded in time and in bytes" do
    # A client that neither closes nor stops sending does not hold the
    # handshake's caller: about a second (not the 10 s handshake timeout),
    # or 1 MiB read and dropped, whichever comes first.
    {_relay, c, handshaking} = refused_late(:no_certificate)
    started = System.monotonic_time(:millisecond)
    assert {:error, {:tls_alert, {:certificate_required, _}}} = Task.await(handshaking, 5_000)
    assert (System.monotonic_time(:millisecond) - started) in 500..3_000
    :ssl.close(c)

    {relay, c, handshaking} = refused_late(:no_certificate)
    started = System.monotonic_time(:millisecond)
    Kernel.send(relay, {:send_up, :binary.copy(<<0>>, 4 <<< 20)})
    assert {:error, {:tls_alert, {:certificate_required, _}}} = Task.await(handshaking, 5_000)
    assert System.monotonic_time(:millisecond) - started < 800
    # The server closed with bytes unread: the rest met a reset.
    assert_receive {:server_end, how} when how in [:econnreset, :reset], 5_000
    :ssl.close(c)
  end

  # The signature algorithm of each certificate of a client's path, checked
  # as :ssl checks it against signature_algs_cert, else signature_algs, else
  # its default for the listener's versions: refused with bad_certificate,
  # or, for algorithms :ssl has no TLS name for (MD5, SHA-224), its check
  # fails with internal_error. OpenSSL (at security level 0) took them all.
  # Each case runs with the chain checked by OpenSSL (no verify_fun) and in
  # Erlang (a verify_fun, which sees a refused peer as {bad_cert,
  # invalid_signature}).
  describe "the signature algorithms of a client's chain" do
    # client: ECDSA key, the RSA CA's SHA-256 signature; inter_client: an
    # ECDSA signature by the intermediate, which the CA signed with SHA-256.
    # (client_pss is tested apart: OTP 25's :ssl finds no issuer for it.)
    @sig_clients [:client, :client_sha1, :client_md5, :client_sha224, :inter_client]

    defp sig_client(:inter_client),
      do: Certs.client_cert_opts(:inter_client) ++ [cacertfile: Certs.file(:ca_inter, :cert)]

    defp sig_client(name), do: Certs.client_cert_opts(name)

    # Every client of @sig_clients, against a listener with `extra`, the
    # chain checked natively and in Erlang.
    defp sig_matrix(mod, version, extra) do
      for name <- @sig_clients, erlang? <- [false, true] do
        fun = if erlang?, do: [verify_fun: recording(self(), &default_answer/2)], else: []
        opts = Keyword.delete(server(version, fun), :versions) ++ extra
        client = sig_client(name) ++ [versions: [version]]
        {name, erlang?, observe(mod, opts, client)}
      end
    end

    for version <- [:"tlsv1.2", :"tlsv1.3"] do
      @version version

      test "#{version}: the listener's default versions (:ssl's default list for both)" do
        assert_same_but_sha1(@version, fn mod ->
          sig_matrix(mod, @version, [])
        end)
      end

      test "#{version}: this version only (:ssl's default list for it)" do
        assert_same_but_sha1(@version, fn mod ->
          sig_matrix(mod, @version, versions: [@version])
        end)
      end

      test "#{version}: signature_algs_cert without SHA-1" do
        algs = [:ecdsa_secp256r1_sha256, :rsa_pss_rsae_sha256, :rsa_pss_pss_sha256]
        scenario = &sig_matrix(&1, @version, versions: [@version], signature_algs_cert: algs)

        # (ssl 11: Islet's CertificateRequest lists the same as :ssl's
        # signature_algorithms_cert, so the same certificates come.)
        if @version == :"tlsv1.2" or Islet.Compat.ssl11?() do
          assert_same(scenario)
        else
          # :ssl's TLS 1.3 server names the list in its CertificateRequest
          # (OpenSSL 3.0 cannot), and :ssl's client then sends no
          # certificate the list refuses (certificate_required); to Islet
          # it sends it, and Islet refuses it as :ssl's server refuses one
          # that comes all the same. The same clients get through.
          {ssl, islet} = run(scenario)
          accepted = fn results -> for {n, e, {{:ok, _}, _, _}} <- results, do: {n, e} end
          assert accepted.(ssl) == accepted.(islet)

          assert accepted.(islet) |> Enum.map(&elem(&1, 0)) |> Enum.uniq() == [
                   :client,
                   :inter_client
                 ]

          # (:ssl's client does not send the MD5 and SHA-224 certificates to
          # either server: OpenSSL's signature_algorithms lack them too.)
          for {name, _erlang?, {hs, _, _}} <- islet, name == :client_sha1 do
            assert hs == {:error, {:tls_alert, :bad_certificate}}, "#{name}: #{inspect(hs)}"
          end
        end
      end

      test "#{version}: signature_algs without RSA with SHA-256, which refuses the CA's signatures" do
        # (RSA with SHA-384 for the server's own signature, ECDSA for the
        # clients'.)
        algs =
          if @version == :"tlsv1.3",
            do: [:ecdsa_secp256r1_sha256, :rsa_pss_rsae_sha384],
            else: [{:sha256, :ecdsa}, {:sha384, :rsa}]

        assert_same(fn mod ->
          sig_matrix(mod, @version, versions: [@version], signature_algs: algs)
        end)
      end
    end

    # The check follows a connection to the context of its SNI host. (:ssl
    # 10.8 refuses signature_algs in sni_hosts: the host inherits them.)
    test "a host of sni_hosts that asks for client certificates checks them" do
      host = Keyword.take(server(:"tlsv1.2", []), [:verify, :fail_if_no_peer_cert, :cacertfile])

      assert_same(fn mod ->
        opts = [
          versions: [:"tlsv1.2"],
          signature_algs_cert: [:ecdsa_secp256r1_sha256, :rsa_pss_rsae_sha256],
          sni_hosts: [{~c"localhost", host}]
        ]

        for name <- [:client, :client_sha1], do: observe(mod, opts, sig_client(name))
      end)
    end

    # OTP 25's :ssl looks a certificate's issuer up by checking the
    # signature with each candidate's key, which fails for RSASSA-PSS
    # signatures: it refuses such a client certificate with unknown_ca.
    # Islet.TLS.Verify builds paths as :ssl does (verify_fun, partial_chain)
    # and refuses it the same way; OpenSSL validates the chain, and Islet
    # then applies :ssl's rule for the algorithm (rsa_pss_pss_sha256 in the
    # list).
    test "an RSASSA-PSS-signed client certificate" do
      for version <- [:"tlsv1.2", :"tlsv1.3"] do
        client = Certs.client_cert_opts(:client_pss) ++ [versions: [version]]

        assert {{:ok, _}, {:exchanged, {:ok, "ping"}, :client_pss}, _} =
                 observe(Islet.TLS, server(version, []), client)

        narrow = server(version, signature_algs_cert: [:rsa_pss_rsae_sha256])

        refused = if Islet.Compat.ssl11?(), do: :unsupported_certificate, else: :bad_certificate
        assert {{:error, {:tls_alert, {^refused, _}}}, _, _} = observe(Islet.TLS, narrow, client)

        assert_same(fn mod ->
          fun = {fn _, e, s -> default_answer(e, s) end, nil}
          observe(mod, server(version, verify_fun: fun), client)
        end)
      end
    end
  end

  describe "Islet.TLS.Verify.check/3 on chains a client could craft" do
    defp der_of(dir, name) do
      [{:Certificate, der, _}] =
        :public_key.pem_decode(File.read!(Path.join(dir, name <> ".pem")))

      der
    end

    defp sh!(dir, cmd) do
      {out, 0} = System.cmd("sh", ["-c", cmd], cd: dir, stderr_to_stdout: true)
      out
    end

    # Two CAs, each issued by the other (the client holds both keys), and
    # a leaf issued by the first.
    defp mutual_chain do
      dir = Path.join(System.tmp_dir!(), "islet_mutual_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf(dir) end)
      ec = "-algorithm EC -pkeyopt ec_paramgen_curve:P-256"

      for n <- ["a", "b", "leaf"] do
        sh!(
          dir,
          "openssl genpkey #{ec} -out #{n}.key && openssl req -new -key #{n}.key -subj /CN=#{n} -out #{n}.csr"
        )
      end

      sh!(dir, "openssl req -new -x509 -key a.key -subj /CN=a -days 30 -out a0.pem")
      sh!(dir, "openssl req -new -x509 -key b.key -subj /CN=b -days 30 -out b0.pem")
      sign = "openssl x509 -req -days 30 -CAcreateserial"
      sh!(dir, "#{sign} -in a.csr -CA b0.pem -CAkey b.key -out a.pem")
      sh!(dir, "#{sign} -in b.csr -CA a0.pem -CAkey a.key -out b.pem")
      sh!(dir, "#{sign} -in leaf.csr -CA a.pem -CAkey a.key -out leaf.pem")
      Enum.map(["leaf", "b", "a"], &der_of(dir, &1))
    end

    defp config(extra) do
      fun = Map.get(extra, :verify_fun)
      Islet.TLS.Verify.config([Certs.der(:ca)], fun, fn _ -> :unknown_ca end, 10, nil)
    end

    defp within(fun) do
      task = Task.async(fun)
      Task.yield(task, 10_000) || Task.shutdown(task, :brutal_kill) || :did_not_return
    end

    test "certificates issuing each other: the path building ends" do
      chain = mutual_chain()

      assert {:ok, {:error, _alert}} =
               within(fn -> Islet.TLS.Verify.check(chain, config(%{}), :"tlsv1.3") end)
    end

    test "a verify_fun failing a good path with unknown_ca: tried once" do
      parent = self()

      fun = fn
        _, {:extension, _}, s ->
          {:unknown, s}

        _, :valid_peer, _ ->
          Kernel.send(parent, :asked)
          {:fail, {:bad_cert, :unknown_ca}}

        _, _, s ->
          {:valid, s}
      end

      chain = [Certs.der(:client)]
      config = config(%{verify_fun: {fun, []}})

      assert {:ok, {:error, 48}} =
               within(fn -> Islet.TLS.Verify.check(chain, config, :"tlsv1.3") end)

      assert_received :asked
      refute_received :asked
    end

    test "a good chain passes" do
      assert {:ok, :ok} =
               within(fn ->
                 Islet.TLS.Verify.check([Certs.der(:client)], config(%{}), :"tlsv1.3")
               end)
    end
  end

  test "verify_fun of arity 4 gets each certificate's DER" do
    assert_same(fn mod ->
      parent = self()

      fun = fn _cert, der, ev, s ->
        Kernel.send(parent, {:der, name_of(der), event(ev)})
        default_answer(ev, s)
      end

      observe(mod, server(:"tlsv1.3", verify_fun: {fun, []}), Certs.client_cert_opts(:client))
    end)
  end

  test "the older verify_fun form: a fun given the list of errors" do
    assert_same(fn mod ->
      opts = server(:"tlsv1.3", verify_fun: fn [{:bad_cert, r}] -> r == :selfsigned_peer end)
      observe(mod, opts, Certs.client_cert_opts(:self_client))
    end)
  end

  test "verify_fun with verify_none: no client certificate is asked for" do
    assert_same(fn mod ->
      opts = [verify: :verify_none, verify_fun: recording(self(), &default_answer/2)]
      observe(mod, opts, Certs.client_cert_opts(:client))
    end)
  end

  test "verify_fun or partial_chain of the wrong form" do
    assert_same(fn mod ->
      for opt <- [verify_fun: :bad, verify_fun: {:bad, []}, partial_chain: :bad] do
        Diff.catching(fn ->
          mod.listen(0, [ip: :loopback, verify: :verify_peer] ++ Certs.server_opts() ++ [opt])
        end)
      end
    end)
  end

  test "a verify_fun that raises: internal_error, and the listener goes on" do
    assert_same(fn mod ->
      fun = fn _, _, _ -> raise "boom" end
      opts = server(:"tlsv1.3", verify_fun: {fun, []})
      l = listen(mod, opts)
      port = port(mod, l)

      for _ <- 1..2 do
        tag = connect_async(port, Certs.client_cert_opts(:client))
        {:ok, s} = mod.accept(l)
        hs = mod.handshake(s, 30_000)
        _ = await_client(tag)
        hs
      end
    end)
  end
end
