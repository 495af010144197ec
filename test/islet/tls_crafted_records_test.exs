defmodule Islet.TLSCraftedRecordsTest do
  # Records a real client would not send, sealed with a TLS 1.2 or 1.3
  # client's own keys (so that they open) and written on its TCP socket
  # behind :ssl's back, or plaintext ones during a TLS 1.2 handshake: what
  # the server makes of them, against :ssl's server. (tls_records_test.exs
  # injects records that do not open.)
  use ExUnit.Case, async: true

  import Islet.Test.TLSDiff,
    only: [
      listen: 2,
      port: 2,
      tidy: 1,
      assert_same: 1,
      connect_async: 2,
      await_client: 1,
      assert_read_one_answer_waiting: 3,
      request_until_full: 3
    ]

  alias Islet.Test.{Certs, Diff, RecordingProxy}

  @moduletag :capture_log

  @suites %{
    "tlsv1.2": ~c"ECDHE-RSA-AES128-GCM-SHA256",
    "tlsv1.3": ~c"TLS_AES_128_GCM_SHA256"
  }

  # The client's write keys, and the sequence number of its first record
  # after the handshake. TLS 1.2: from the master secret (RFC 5246 6.3;
  # AES-128-GCM: 16-byte keys, 4-byte IVs), the Finished was record 0.
  defp client_keys(c, :"tlsv1.2", _label) do
    {:ok, info} = :ssl.connection_information(c, [:master_secret, :client_random, :server_random])

    seed = "key expansion" <> info[:server_random] <> info[:client_random]

    <<key::binary-16, _::binary-16, iv::binary-4, _::binary>> =
      prf(info[:master_secret], seed, 40)

    {%{key: key, iv: iv}, 1}
  end

  # TLS 1.3: from the client's application traffic secret (RFC 8446 7.3),
  # in the keylog keep_secrets gives. OTP 27's :ssl client writes the two
  # traffic secrets under each other's label (OTP 25's and 29's do not):
  # which one is the client's is asked once (traffic_label/0).
  defp client_keys(c, :"tlsv1.3", label) do
    {:ok, [keylog: log]} = :ssl.connection_information(c, [:keylog])

    [secret] =
      for line <- log,
          [^label, _random, hex] <- [String.split(to_string(line))],
          do: Base.decode16!(hex, case: :mixed)

    {%{key13: expand_label(secret, "key", 16), iv: expand_label(secret, "iv", 12)}, 0}
  end

  defp expand_label(secret, label, len) do
    full = "tls13 " <> label
    info = <<len::16, byte_size(full), full::binary, 0>>
    binary_part(:crypto.mac(:hmac, :sha256, secret, info <> <<1>>), 0, len)
  end

  defp prf(secret, seed, len, a \\ nil, acc \\ <<>>) do
    a = :crypto.mac(:hmac, :sha256, secret, a || seed)
    acc = acc <> :crypto.mac(:hmac, :sha256, secret, a <> seed)
    if byte_size(acc) >= len, do: binary_part(acc, 0, len), else: prf(secret, seed, len, a, acc)
  end

  # The client's n-th record of `type` after its Finished (sequence number n).
  defp seal(%{key13: key, iv: iv}, n, type, plain) do
    inner = plain <> <<type>>
    header = <<23, 3, 3, byte_size(inner) + 16::16>>
    nonce = :crypto.exor(iv, <<0::32, n::64>>)
    {ct, tag} = :crypto.crypto_one_time_aead(:aes_128_gcm, key, nonce, inner, header, 16, true)
    header <> ct <> tag
  end

  defp seal(%{key: key, iv: iv}, n, type, plain) do
    aad = <<n::64, type, 3, 3, byte_size(plain)::16>>

    {ct, tag} =
      :crypto.crypto_one_time_aead(:aes_128_gcm, key, iv <> <<n::64>>, plain, aad, 16, true)

    body = <<n::64>> <> ct <> tag
    <<type, 3, 3, byte_size(body)::16>> <> body
  end

  # Which keylog label holds the TLS 1.3 client's write secret here: a
  # record sealed with CLIENT_TRAFFIC_SECRET_0's keys either reaches an
  # :ssl server or fails there as bad_record_mac.
  defp traffic_label do
    key = {__MODULE__, :traffic_label}

    with nil <- :persistent_term.get(key, nil) do
      probe = &serve(&1, :"tlsv1.3", :probe, "CLIENT_TRAFFIC_SECRET_0")
      got = Diff.run_one(Islet.Reference.SSL, probe, 30_000)

      label = if got == :probe_ok, do: "CLIENT_TRAFFIC_SECRET_0", else: "SERVER_TRAFFIC_SECRET_0"
      :persistent_term.put(key, label)
      label
    end
  end

  # "hi", then, once the server waits in recv again, a record of `type`
  # holding `plain` and "after" in one write. The server reads until an
  # error or 1.5 s without data (:ssl's connection process ends at a fatal
  # alert and a recv that was not waiting then says :closed; Islet reads a
  # record when asked, so the waiting recv makes both report the same).
  # Returns the server's reads and what a recv of the client, waiting from
  # before the record went, got: the alert the server sent, or :closed
  # (the server closes the connection once it has read).
  defp serve(mod, version, type, plain) when is_integer(type) do
    label = if version == :"tlsv1.3", do: traffic_label()
    serve(mod, version, {type, plain}, label)
  end

  defp serve(mod, version, what, label) do
    l = listen(mod, versions: [version])
    port = port(mod, l)
    parent = self()

    client =
      spawn_link(fn ->
        {:ok, tcp} = :gen_tcp.connect(~c"localhost", port, [:binary, active: false])

        opts =
          Keyword.merge(Certs.client_opts(),
            versions: [version],
            keep_secrets: true,
            ciphers: [:ssl.str_to_suite(@suites[version])]
          )

        opts = if version == :"tlsv1.3", do: Keyword.delete(opts, :reuse_sessions), else: opts
        {:ok, c} = :ssl.connect(tcp, opts, 10_000)
        # (The client's Finished may still be on its way from :ssl's sender.)
        Process.sleep(50)
        {k, n} = client_keys(c, version, label)
        :ok = :gen_tcp.send(tcp, seal(k, n, 23, "hi"))
        receive(do: (:go -> :ok))
        reader = Task.async(fn -> :ssl.recv(c, 0, 10_000) end)
        Diff.wait_blocked(reader.pid)
        {type, plain} = what
        :ok = :gen_tcp.send(tcp, seal(k, n + 1, type, plain) <> seal(k, n + 2, 23, "after"))
        Kernel.send(parent, :sent)
        receive(do: (:done -> :ok))
        Kernel.send(parent, {:client, Task.await(reader, 15_000)})
      end)

    {:ok, s} = mod.accept(l)
    {:ok, ^s} = mod.handshake(s, 30_000)

    case {mod.recv(s, 0, 10_000), what} do
      {{:ok, "hi"}, :probe} ->
        :probe_ok

      {_, :probe} ->
        :probe_failed

      {{:ok, "hi"}, _} ->
        reader = Task.async(fn -> read_all(mod, s, []) end)
        Diff.wait_blocked(reader.pid)
        Kernel.send(client, :go)
        assert_receive :sent, 10_000
        result = Task.await(reader, 15_000)
        # (A connection still open ends here: the client's recv says closed.)
        mod.close(s)
        Kernel.send(client, :done)
        assert_receive {:client, client_got}, 20_000
        {result, tidy(client_got)}
    end
  end

  defp read_all(mod, s, acc) do
    case mod.recv(s, 0, 1_500) do
      {:ok, data} -> read_all(mod, s, [data | acc])
      {:error, {:tls_alert, {name, _}}} -> Enum.reverse([{:alert, name} | acc])
      error -> Enum.reverse([error | acc])
    end
  end

  # The server's reads (what the existing tests compare).
  defp same(type, plain), do: same(:"tlsv1.2", type, plain) |> elem(0)

  defp same(version, type, plain) do
    ssl = serve(Islet.Reference.SSL, version, type, plain)
    assert serve(Islet.TLS, version, type, plain) == ssl
    ssl
  end

  test "a warning alert, then data: the warning is passed over" do
    assert same(21, <<1, 90>>) == ["after", {:error, :timeout}]
  end

  # RFC 5246 6.2.1 lets a record hold several alerts: Islet answered
  # decode_error to a record holding two.
  test "two alerts in one record (user_canceled, close_notify)" do
    assert same(21, <<1, 90, 1, 0>>) == [{:error, :closed}]
  end

  test "an alert of a level that is neither warning nor fatal (illegal_parameter)" do
    assert same(21, <<3, 42>>) == [{:alert, :illegal_parameter}]
  end

  test "a fatal alert" do
    assert same(21, <<2, 40>>) == [{:alert, :handshake_failure}]
  end

  # :ssl passes over an empty handshake record; Islet ended the connection
  # with unexpected_message.
  test "an empty handshake record is passed over" do
    assert same(22, <<>>) == ["after", {:error, :timeout}]
  end

  test "an empty data record is passed over" do
    assert same(23, <<>>) == ["after", {:error, :timeout}]
  end

  # Alert records :ssl takes apart before it acts on them (ssl_alert:decode
  # and tls_gen_connection, the same on OTP 25, 27 and 29, TLS 1.2 and 1.3):
  # empty, the record is its handshake_failure; a byte short of an alert
  # (1 byte, 3 bytes, after alerts that parsed) is illegal_parameter; a
  # 12th warning is decode_error; a fatal alert ends the list. Islet
  # answered decode_error to every record whose length was not even (TLS
  # 1.2) or not 2 (TLS 1.3). Compared: the server's reads, and what the
  # client's waiting recv got (the alert the server sent, or closed).
  # Islet answers a TLS 1.2 renegotiation with a no_renegotiation warning.
  # A client that asked again and again (with data between, so the guard
  # against records without data never trips) and never read grew the
  # record layer's buffer by a warning each time once the socket was full:
  # now none more is sealed while one waits. (:ssl renegotiates instead.)
  test "TLS 1.2 renegotiations from a client that does not read: the server's buffer stays bounded" do
    l = listen(Islet.TLS, versions: [:"tlsv1.2"], sndbuf: 4096, nodelay: true)
    # (:ssl's connection process reads its socket: a paused proxy holds
    # the server's bytes instead.)
    # (16 KiB, not 4: see the key-update test in tls_records_test.exs.)
    proxy = RecordingProxy.start(port(Islet.TLS, l), recbuf: 16_384)
    {:ok, tcp} = :gen_tcp.connect(~c"localhost", proxy.port, [:binary])
    {:ok, s} = Islet.TLS.accept(l)
    handshake = Task.async(fn -> Islet.TLS.handshake(s, 30_000) end)

    opts =
      Keyword.merge(Certs.client_opts(),
        versions: [:"tlsv1.2"],
        ciphers: [:ssl.str_to_suite(@suites[:"tlsv1.2"])]
      )

    {:ok, c} = :ssl.connect(tcp, opts, 10_000)
    {:ok, ^s} = Task.await(handshake, 30_000)
    :ok = Islet.TLS.setopts(s, active: true)
    Process.sleep(50)
    {k, n} = client_keys(c, :"tlsv1.2", nil)
    :ok = RecordingProxy.pause(proxy)
    hello = <<1, 0, 0, 0>>

    request = fn i ->
      records = seal(k, n + 2 * i, 22, hello) <> seal(k, n + 2 * i + 1, 23, "k")
      :ok = :gen_tcp.send(tcp, records)
    end

    pending = fn -> Islet.TLS.getstat(s) |> elem(1) |> Keyword.fetch!(:send_pend) end
    n = request_until_full(request, pending, 300)
    assert_read_one_answer_waiting(s, n, [proxy.port, port(Islet.TLS, l)])
    :ssl.close(c)
    Islet.TLS.close(s)
  end

  describe "malformed alert records after the handshake" do
    for version <- [:"tlsv1.2", :"tlsv1.3"] do
      @version version

      test "#{version}: an empty alert record is handshake_failure" do
        assert same(@version, 21, <<>>) ==
                 {[alert: :handshake_failure], {:error, {:tls_alert, :handshake_failure}}}
      end

      test "#{version}: one byte, or a byte past the alerts, is illegal_parameter" do
        for plain <- [<<1>>, <<2>>, <<1, 0, 0>>, <<1, 90, 1>>, <<1, 0, 5>>] do
          assert same(@version, 21, plain) ==
                   {[alert: :illegal_parameter], {:error, {:tls_alert, :illegal_parameter}}},
                 inspect(plain)
        end
      end

      test "#{version}: what follows a fatal alert in its record is not looked at" do
        assert same(@version, 21, <<2, 40, 0>>) ==
                 {[alert: :handshake_failure], {:error, :closed}}
      end

      test "#{version}: a 12th warning in one record is decode_error" do
        warnings = :binary.copy(<<1, 90>>, 12)

        assert same(@version, 21, warnings) ==
                 {[alert: :decode_error], {:error, {:tls_alert, :decode_error}}}

        assert same(@version, 21, warnings <> <<2, 40>>) ==
                 {[alert: :decode_error], {:error, {:tls_alert, :decode_error}}}
      end

      # Islet named an alert it had no name for handshake_failure.
      test "#{version}: a fatal alert :ssl has no name for" do
        assert same(@version, 21, <<2, 255>>) ==
                 {[alert: :"unsupported/unknown_alert"], {:error, :closed}}

        # decompression_failure, which only OTP 25's :ssl still names.
        name =
          if Islet.Compat.ssl_names_decompression_failure?(),
            do: :decompression_failure,
            else: :"unsupported/unknown_alert"

        assert same(@version, 21, <<2, 30>>) == {[alert: name], {:error, :closed}}

        assert same(@version, 21, <<2, 21>>) ==
                 {[alert: :decryption_failed_reserved], {:error, :closed}}
      end
    end

    # TLS 1.3: every alert but close_notify ends the connection with :ssl,
    # a warning too, user_canceled included (Islet passed user_canceled
    # over, even fatal); several in one record are taken as in TLS 1.2.
    test "TLS 1.3: a warning, user_canceled too, ends the connection" do
      for plain <- [
            <<1, 90>>,
            <<2, 90>>,
            <<1, 90, 1, 90>>,
            :binary.copy(<<1, 90>>, 11) <> <<2, 40>>
          ] do
        assert same(:"tlsv1.3", 21, plain) == {[alert: :user_canceled], {:error, :closed}},
               inspect(plain)
      end

      assert same(:"tlsv1.3", 21, <<1, 255>>) ==
               {[alert: :"unsupported/unknown_alert"], {:error, :closed}}

      assert same(:"tlsv1.3", 21, <<1, 0, 2, 40>>) == {[error: :closed], {:error, :closed}}
    end

    test "TLS 1.2: warnings are passed over, a fatal alert after them is not" do
      assert same(:"tlsv1.2", 21, <<1, 255>>) ==
               {["after", {:error, :timeout}], {:error, :closed}}

      assert same(:"tlsv1.2", 21, <<1, 255, 2, 255>>) ==
               {[alert: :"unsupported/unknown_alert"], {:error, :closed}}

      assert same(:"tlsv1.2", 21, :binary.copy(<<1, 90>>, 11) <> <<2, 40>>) ==
               {[alert: :handshake_failure], {:error, :closed}}
    end

    # :ssl (OTP 25, 27 and 29) loses the data that came in the same read as
    # a TLS 1.2 record of several warnings ("after" here; later data does
    # come). Islet passes the warnings over and delivers it, as it does
    # behind one warning.
    test "TLS 1.2: data behind a record of several warnings is delivered (:ssl drops it)" do
      for plain <- [<<1, 90, 1, 90>>, :binary.copy(<<1, 90>>, 11)] do
        ssl = serve(Islet.Reference.SSL, :"tlsv1.2", 21, plain)
        islet = serve(Islet.TLS, :"tlsv1.2", 21, plain)
        assert islet == {["after", {:error, :timeout}], {:error, :closed}}
        assert ssl in [islet, {[error: :timeout], {:error, :closed}}]
      end
    end
  end

  # Bytes of the test's sent to the server in the client's name once the
  # server has answered the ClientHello (so that the server reads them as
  # the next record, before the client's own second flight).
  defp inject_proxy(port, bytes) do
    {:ok, front} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, front_port} = :inet.port(front)

    spawn_link(fn ->
      {:ok, down} = :gen_tcp.accept(front)
      {:ok, up} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false, nodelay: true])
      spawn_link(fn -> pipe(up, down, bytes) end)
      pipe(down, up, nil)
    end)

    front_port
  end

  # From one socket to the other; on the server's side, `inject` goes back
  # up to the server when its first answer comes, before that is passed on.
  defp pipe(from, to, inject) do
    case :gen_tcp.recv(from, 0) do
      {:ok, data} ->
        if inject != nil, do: :gen_tcp.send(from, inject)
        :gen_tcp.send(to, data)
        pipe(from, to, nil)

      {:error, _} ->
        :gen_tcp.close(to)
    end
  end

  # The server's handshake and the client's connect (and, connected, its
  # first recv) when the server reads `bytes` after its first flight.
  defp during_handshake(mod, bytes) do
    l = listen(mod, versions: [:"tlsv1.2"])
    tag = connect_async(inject_proxy(port(mod, l), bytes), versions: [:"tlsv1.2"])
    {:ok, s} = mod.accept(l)
    hs = with {:ok, _} <- mod.handshake(s, 10_000), do: :ok

    client = with {:ok, c} <- await_client(tag), do: {:connected, :ssl.recv(c, 0, 5_000)}

    {hs, client}
  end

  describe "alert records during the TLS 1.2 handshake (plaintext, after the server's first flight)" do
    # OpenSSL reports a close_notify sent as a fatal alert as an alert
    # received, {tls_alert, {close_notify, _}}; :ssl says closed.
    test "a close_notify sent as a fatal alert is closed" do
      assert assert_same(&during_handshake(&1, <<21, 3, 3, 0, 2, 2, 0>>)) ==
               {{:error, :closed}, {:error, :closed}}
    end

    test "a fatal alert :ssl has no name for" do
      for {desc, name} <- [{255, :"unsupported/unknown_alert"}, {115, :unknown_psk_identity}] do
        assert assert_same(&during_handshake(&1, <<21, 3, 3, 0, 2, 2, desc>>)) ==
                 {{:error, {:tls_alert, name}}, {:error, :closed}}
      end
    end

    # Not followed: OpenSSL (which runs the handshake) takes only alert
    # records of exactly two bytes, and answers any other with
    # unexpected_message; :ssl decodes them as after the handshake.
    test "a malformed alert record: OpenSSL's unexpected_message, not :ssl's answer" do
      for {bytes, ssl_alert} <- [{<<>>, :handshake_failure}, {<<1>>, :illegal_parameter}] do
        record = <<21, 3, 3, byte_size(bytes)::16>> <> bytes
        {ssl, islet} = Islet.Test.TLSDiff.run(&during_handshake(&1, record))
        assert ssl == {{:error, {:tls_alert, ssl_alert}}, {:error, {:tls_alert, ssl_alert}}}

        assert islet ==
                 {{:error, {:tls_alert, :unexpected_message}},
                  {:error, {:tls_alert, :unexpected_message}}}
      end
    end
  end
end
