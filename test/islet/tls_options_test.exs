defmodule Islet.TLSOptionsTest do
  # Differential tests of :ssl's server options beyond certificates,
  # versions and ciphers (groups, signature algorithms, DH parameters, key
  # updates, and the options that have no effect on a server without
  # processes): what listen answers, and what handshakes negotiate, with
  # Islet.TLS and with :ssl (Islet.Reference.SSL) as the server, :ssl
  # clients. Plug.SSL's `cipher_suite: :strong | :compatible` (which Bandit
  # applies to every HTTPS listener) sets eccs and honor_cipher_order.
  use ExUnit.Case, async: true

  import Islet.Test.TLSDiff

  alias Islet.Test.{Certs, Diff}

  @moduletag :capture_log
  @moduletag timeout: 120_000

  setup_all do
    Certs.dir()
    :ok
  end

  # What listen answers, the listener closed again.
  defp listen_result(mod, opts) do
    case mod.listen(0, opts ++ [ip: :loopback] ++ Certs.server_opts(:server_ec)) do
      {:ok, l} ->
        mod.close(l)
        :ok

      other ->
        other
    end
  end

  # Both sides' handshake results, and what the client says it agreed on.
  defp handshake(mod, server_opts, client_opts) do
    %{handshake: hs, connect: connect, client: c} = pair(mod, server_opts, client_opts)

    agreed =
      with {:ok, _} <- connect do
        {:ok, info} = :ssl.connection_information(c, [:protocol, :selected_cipher_suite, :ecc])
        Map.new(info)
      end

    {ok_or(hs), ok_or(connect), agreed}
  end

  defp ok_or({:ok, _}), do: :ok
  defp ok_or(other), do: other

  defp ec(opts), do: opts ++ Certs.server_opts(:server_ec)
  defp tls12, do: [versions: [:"tlsv1.2"]]
  defp tls13, do: [versions: [:"tlsv1.3"]]

  # The key exchange's group as openssl s_client reports it ("Server Temp
  # Key"), s_client offering `groups`.
  defp temp_key(mod, server_opts, groups) do
    l = listen(mod, server_opts)

    spawn(fn ->
      with {:ok, s} <- mod.accept(l), {:ok, s} <- mod.handshake(s, 10_000) do
        Process.sleep(1_000)
        mod.close(s)
      end
    end)

    cmd =
      "echo | timeout 10 openssl s_client -connect 127.0.0.1:#{port(mod, l)} " <>
        "-groups #{groups} -brief 2>&1"

    {out, _} = System.cmd("sh", ["-c", cmd])
    mod.close(l)

    # ("Server Temp Key" up to OpenSSL 3.x, "Peer Temp Key" in 3.5.)
    case Regex.run(~r/(?:Server|Peer) Temp Key: ([^\n]*)/, out) do
      [_, key] -> key
      _ -> {:no_key, out}
    end
  end

  @doc false
  def unknown_ca(_chain), do: :unknown_ca
  @doc false
  def accept_all(_cert, _event, state), do: {:valid, state}

  describe "listen: the options, valid and not, as :ssl answers them" do
    @cases [
      [eccs: [:x25519]],
      [eccs: [:no_such_curve]],
      [eccs: []],
      [supported_groups: [:x25519, :secp256r1]],
      [supported_groups: [:no_such_group]],
      [supported_groups: [:ffdhe2048]],
      [supported_groups: [:x25519], versions: [:"tlsv1.2"]],
      [eccs: [:secp256r1], versions: [:"tlsv1.3"]],
      [honor_ecc_order: true],
      [honor_ecc_order: 1],
      [signature_algs: [:rsa_pss_rsae_sha256, {:sha256, :ecdsa}, :eddsa_ed25519]],
      [signature_algs: []],
      [signature_algs_cert: [:ecdsa_secp256r1_sha256]],
      [signature_algs_cert: []],
      [dhfile: ~c"/no/such/dhfile"],
      [dhfile: 1],
      [dh: 1],
      [client_renegotiation: false],
      [client_renegotiation: 1],
      [hibernate_after: 10],
      [hibernate_after: :infinity],
      [hibernate_after: -1],
      [key_update_at: 1],
      [key_update_at: 0],
      [key_update_at: :x],
      [middlebox_comp_mode: false],
      [middlebox_comp_mode: 1],
      [handshake: :full],
      [handshake: :x],
      [max_handshake_size: 10],
      [max_handshake_size: 0],
      [max_handshake_size: 8_388_608],
      [max_handshake_size: :x],
      [log_alert: true],
      [log_alert: 1],
      [keep_secrets: false],
      [keep_secrets: 1],
      [crl_check: false],
      [crl_check: :x],
      [crl_cache: {:ssl_crl_cache, {:internal, []}}],
      [crl_cache: :x],
      [protocol: :tls],
      [protocol: :x],
      [cookie: false],
      [cookie: 1],
      [certificate_authorities: false],
      [certificate_authorities: 1],
      [receiver_spawn_opts: [priority: :high]],
      [sender_spawn_opts: []],
      [receiver_spawn_opts: :x],
      [padding_check: true],
      [padding_check: true, versions: [:"tlsv1.2", :"tlsv1.1", :tlsv1]],
      [versions: [:"tlsv1.2", :"tlsv1.1", :tlsv1]],
      [versions: [:"tlsv1.3", :tlsv1]],
      [versions: [:sslv3]],
      [versions: [:"tlsv1.2", :no_such_version]],
      [beast_mitigation: :disabled],
      [anti_replay: :"10k"],
      [anti_replay: :"10k", session_tickets: :stateless],
      [early_data: :disabled],
      [early_data: :disabled, session_tickets: :stateless],
      [reuse_sessions: 1],
      [secure_renegotiate: 1],
      [honor_cipher_order: 1],
      # Found comparing option by option (2026-12-06): each was taken, or
      # refused with another error, or raised, where :ssl answers so.
      [reuse_sessions: :save],
      [reuse_sessions: true, versions: [:"tlsv1.3"]],
      [session_tickets: :bogus],
      [session_tickets: :stateful_with_cert],
      [session_tickets: :disabled, versions: [:"tlsv1.2"]],
      [session_tickets: :stateless, versions: [:"tlsv1.2"]],
      [ciphers: []],
      # ciphers as :ssl reads each form (Islet raised on entries of no
      # form, and let OpenSSL skip names it did not know).
      [ciphers: [:bogus]],
      [ciphers: [1]],
      [ciphers: [%{}]],
      [ciphers: [%{key_exchange: :x, cipher: :y, mac: :z, prf: :w}]],
      [ciphers: [{:a}]],
      [ciphers: [{:ecdhe_ecdsa, :aes_128_cbc, :sha256}]],
      [ciphers: [{:ecdhe_ecdsa, :aes_128_gcm, :aead, :sha256}]],
      [ciphers: [~c"bogus"]],
      [ciphers: [[:x]]],
      [ciphers: ~c"bogus"],
      [ciphers: ~c"ECDHE-ECDSA-AES128-GCM-SHA256:BOGUS-NAME"],
      [ciphers: ~c"ECDHE-ECDSA-AES128-GCM-SHA256::"],
      [ciphers: ~c":"],
      [ciphers: ["bogus"]],
      [ciphers: [<<0xC0, 0x2B>>, :x]],
      [depth: -1],
      [depth: 256],
      [depth: :x],
      [depth: 0],
      [verify: :verify_peer],
      [verify: :verify_peer, cacerts: []],
      [verify: :verify_peer, partial_chain: &__MODULE__.unknown_ca/1],
      [verify: :verify_peer, verify_fun: {&__MODULE__.accept_all/3, []}],
      [verify: :verify_peer, verify_fun: :undefined],
      [cacertfile: []],
      [fail_if_no_peer_cert: true],
      [fail_if_no_peer_cert: :x],
      [verify: :verify_none, fail_if_no_peer_cert: true],
      [log_level: :bogus],
      [log_level: true],
      [log_level: :info],
      [log_level: :none],
      [alpn_preferred_protocols: ["h2", ""]],
      [alpn_preferred_protocols: [:h2]],
      [alpn_preferred_protocols: [String.duplicate("a", 256)]],
      [alpn_preferred_protocols: :x],
      [sni_hosts: :x],
      [sni_hosts: [:x]],
      [sni_hosts: [{"localhost", []}]],
      [sni_hosts: [{~c"a", []}, {"b", []}]],
      [sni_hosts: [{~c"a", [sni_hosts: []]}]],
      # A host's options that OTP 25's :ssl refuses at listen (it has no
      # per-host check for them) and OTP 26's takes.
      [sni_hosts: [{~c"a", [eccs: [:secp256r1]]}]],
      [sni_hosts: [{~c"a", [versions: [:"tlsv1.2"]]}, {~c"b", [supported_groups: [:x25519]]}]],
      [sni_hosts: [{~c"a", [ciphers: [~c"TLS_AES_128_GCM_SHA256"]]}]],
      [sni_hosts: [{~c"a", [signature_algs: [:rsa_pss_rsae_sha256]]}]],
      [sni_hosts: [{~c"a", [signature_algs_cert: [:rsa_pss_rsae_sha256]]}]],
      [sni_hosts: [{~c"a", [session_tickets: :stateless]}]],
      [sni_hosts: [{~c"a", [log_alert: false]}]],
      [sni_hosts: [{~c"a", [early_data: :disabled]}]],
      [sni_hosts: [{~c"a", [active: true]}]],
      [sni_hosts: [{~c"a", [no_such_option: 1]}]],
      [sni_hosts: [{~c"a", [verify: :verify_none, honor_cipher_order: true, log_level: :error]}]],
      # A client's options in a server's list (OTP 25's :ssl checks their
      # form and ignores them; OTP 26's refuses them as client_only).
      [server_name_indication: ~c"example.com"],
      [server_name_indication: :disable],
      [server_name_indication: "example.com"],
      [alpn_advertised_protocols: ["h2", "http/1.1"]],
      [alpn_advertised_protocols: [""]],
      [alpn_advertised_protocols: :x],
      [client_preferred_next_protocols: {:client, ["h2"]}],
      [client_preferred_next_protocols: {:server, ["h2"], "http/1.1"}],
      [client_preferred_next_protocols: :x],
      [use_ticket: []],
      [use_ticket: :x],
      [customize_hostname_check: [match_fun: &__MODULE__.unknown_ca/1]],
      [customize_hostname_check: :x],
      [max_fragment_length: 1024],
      [max_fragment_length: 100],
      [fallback: false],
      [sni_hosts: [{~c"a", [fallback: true, server_name_indication: ~c"x", use_ticket: []]}]],
      # :ssl keeps these integers itself: any integer, anything else named.
      [packet_size: -1],
      [packet_size: :x],
      [header: :x],
      # The forms of the certificate, key and file options (:x and the like
      # were taken, or raised).
      [cert: :x],
      [key: :x],
      [key: {:NoSuchKey, <<1>>}],
      [certfile: :x],
      [keyfile: []],
      [cacertfile: :x],
      [cacerts: :x],
      [password: :x],
      [sni_fun: :x],
      [dhfile: []],
      [certs_keys: []],
      [certs_keys: :x],
      # (entries :ssl cannot use fail each handshake, see the conformance tests)
      [certs_keys: [:x]],
      [certs_keys: [%{}]],
      [certs_keys: [[certfile: "x"]]],
      [cacerts: :undefined],
      [sni_fun: :undefined],
      # sni_hosts or an sni_fun (Islet took both, the fun unused).
      [sni_fun: &__MODULE__.unknown_ca/1, sni_hosts: [{~c"a", []}]],
      [sni_hosts: [{~c"a", []}], sni_fun: &__MODULE__.unknown_ca/1],
      [sni_fun: &__MODULE__.unknown_ca/1, sni_hosts: []],
      [sni_fun: &__MODULE__.unknown_ca/1, sni_hosts: :x],
      # ssl 11's (OTP 25's :ssl passes it to inet, which exits).
      [allow_any_ca_purpose: true],
      [allow_any_ca_purpose: :x]
    ]

    test "each option list gives the same answer" do
      # (Where :ssl exits with badarg, as ssl 11 does for some values, or
      # raises, as ssl 11 on a certs_keys entry that is not a map, Islet
      # answers an error: the caller is not crashed.)
      differ =
        for opts <- @cases,
            {ssl, islet} = run(&listen_result(&1, opts)),
            ssl != islet and
              not ((ssl == {:exit, :badarg} or match?({:raised, _}, ssl)) and
                     match?({:error, _}, islet)),
            do: %{options: opts, ssl: ssl, islet: islet}

      assert differ == []
    end

    # OTP 29's :ssl knows ML-DSA and SLH-DSA schemes (OpenSSL 3.5+ signs
    # with ML-DSA; SLH-DSA it drops); OTP 25's crashes on names it does not
    # know (FunctionClauseError) and 27's refuses them, where Islet answers
    # the error.
    test "signature schemes only newer :ssl knows: taken where it knows them" do
      for opts <- [
            [signature_algs: [:mldsa65, :ecdsa_secp256r1_sha256]],
            [signature_algs: [:slh_dsa_sha2_128s, :ecdsa_secp256r1_sha256]],
            [signature_algs_cert: [:mldsa44, :slh_dsa_shake_256f, :ecdsa_secp256r1_sha256]]
          ] do
        [{key, list}] = opts
        {ssl, islet} = run(&listen_result(&1, opts))

        cond do
          :mldsa65 in Islet.Compat.ssl_signature_schemes() ->
            assert {ssl, islet} == {:ok, :ok}

          match?({:raised, _}, ssl) ->
            assert islet == {:error, {:options, {key, list}}}

          true ->
            assert islet == ssl
        end
      end
    end

    test "allow_any_ca_purpose with verify_peer: as :ssl (ssl 11), unsupported (ssl 10)" do
      opts = [verify: :verify_peer, cacertfile: Certs.file(:ca, :cert)]

      for value <- [true, false, :x] do
        if Islet.Compat.ssl11?() do
          assert_same(&listen_result(&1, [allow_any_ca_purpose: value] ++ opts))
        else
          assert {:error, {reason, {:allow_any_ca_purpose, ^value}}} =
                   listen_result(Islet.TLS, [allow_any_ca_purpose: value] ++ opts)

          assert reason == if(value == :x, do: :options, else: :unsupported_option)
        end
      end
    end

    test "Islet: what :ssl takes but Islet does not do is {:unsupported_option, _}" do
      for opt <- [
            handshake: :hello,
            crl_check: true,
            protocol: :dtls,
            versions: [:"tlsv1.1", :tlsv1]
          ] do
        assert Islet.TLS.listen(0, [opt, ip: :loopback] ++ Certs.server_opts()) ==
                 {:error, {:unsupported_option, opt}}
      end
    end
  end

  describe "Plug.SSL's cipher suites (as Bandit configures them)" do
    # What Plug.SSL.configure/1 adds for cipher_suite: :strong and
    # :compatible (Plug 1.16-era lists).
    @strong [
      honor_cipher_order: true,
      eccs: [:x25519, :secp256r1, :secp384r1, :secp521r1],
      ciphers: [~c"TLS_AES_256_GCM_SHA384", ~c"TLS_CHACHA20_POLY1305_SHA256"],
      versions: [:"tlsv1.3"]
    ]
    @compatible [
      secure_renegotiate: true,
      reuse_sessions: true,
      honor_cipher_order: true,
      eccs: [:secp256r1, :secp384r1, :secp521r1],
      ciphers:
        Enum.map(
          ~w(TLS_AES_256_GCM_SHA384 ECDHE-ECDSA-AES256-GCM-SHA384 ECDHE-RSA-AES256-GCM-SHA384
             ECDHE-RSA-AES128-GCM-SHA256 DHE-RSA-AES256-GCM-SHA384 DHE-RSA-AES128-GCM-SHA256
             ECDHE-RSA-AES128-SHA256 ECDHE-RSA-AES128-SHA),
          &String.to_charlist/1
        ),
      versions: [:"tlsv1.3", :"tlsv1.2"]
    ]

    test ":strong: listens, negotiates and carries data as with :ssl" do
      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, @strong)
        :ok = :ssl.send(c, "ping")
        {mod.recv(s, 4, 10_000), elem(:ssl.connection_information(c, [:protocol]), 1)}
      end)
    end

    test ":compatible, TLS 1.3 and 1.2 clients, RSA and ECDSA certificates" do
      for cert <- [:server_rsa, :server_ec], client <- [tls13(), tls12()] do
        assert_same(fn mod ->
          {handshake(mod, @compatible ++ Certs.server_opts(cert), client), cert}
        end)
      end
    end

    test "the older :compatible (TLS 1.2, 1.1 and 1.0): TLS 1.2 as with :ssl, 1.0 not offered" do
      old = Keyword.put(@compatible, :versions, [:"tlsv1.2", :"tlsv1.1", :tlsv1])
      assert_same(&handshake(&1, old, tls12()))

      # Islet does not serve TLS 1.0/1.1 (RFC 8996): such a client fails.
      %{handshake: hs} = pair(Islet.TLS, old, versions: [:tlsv1])
      assert {:error, _} = hs
    end

    test ":compatible, a TLS 1.2 client asking for DHE only (no DH parameters given)" do
      dhe = [ciphers: [:ssl.str_to_suite(~c"DHE-RSA-AES128-GCM-SHA256")]] ++ tls12()
      agreed = assert_same(&handshake(&1, @compatible, dhe))
      assert {:ok, :ok, %{selected_cipher_suite: %{key_exchange: :dhe_rsa}}} = agreed
    end
  end

  describe "groups: supported_groups (TLS 1.3) and eccs (TLS 1.2)" do
    test "TLS 1.3: the server's groups decide, the client's key share or not" do
      for {server, client} <- [
            {[supported_groups: [:secp384r1]], []},
            {[supported_groups: [:x25519]], [supported_groups: [:secp384r1]]},
            {[supported_groups: [:secp521r1], eccs: [:secp384r1]], [supported_groups: [:x25519]]},
            {[eccs: [:secp384r1]], []}
          ] do
        assert_same(&handshake(&1, ec(server), tls13() ++ client))
      end

      # What the server picked, seen by a client that offers both.
      for {opts, expected} <- [
            {[supported_groups: [:secp384r1]], "ECDH, secp384r1, 384 bits"},
            {[eccs: [:secp384r1]], "X25519, 253 bits"}
          ] do
        assert assert_same(&temp_key(&1, ec(opts), "X25519:P-384")) == expected
      end
    end

    test "TLS 1.2: eccs decides the curve; none in common fails as with :ssl" do
      for {server, client} <- [
            {[eccs: [:secp384r1]], []},
            {[eccs: [:secp384r1]], [eccs: [:secp256r1]]},
            {[eccs: [:secp521r1, :secp384r1], honor_ecc_order: true], []},
            {[supported_groups: [:secp384r1]], [eccs: [:secp256r1]]}
          ] do
        assert_same(&handshake(&1, ec(server), tls12() ++ client))
      end
    end

    test "a client offering TLS 1.3 and 1.2 gets TLS 1.3's groups" do
      opts = ec(supported_groups: [:secp384r1], eccs: [:secp256r1])
      assert_same(&handshake(&1, opts, versions: [:"tlsv1.3", :"tlsv1.2"]))

      assert assert_same(&temp_key(&1, opts, "P-256:P-384")) ==
               "ECDH, secp384r1, 384 bits"
    end
  end

  describe "DH parameters" do
    setup do
      path = Path.join(Certs.dir(), "ffdhe2048.pem")

      unless File.exists?(path) do
        {_, 0} =
          System.cmd(
            "openssl",
            ~w(genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048) ++
              ["-out", path <> ".tmp"]
          )

        File.rename!(path <> ".tmp", path)
      end

      %{dhfile: path}
    end

    test "dhfile and dh serve DHE suites", %{dhfile: path} do
      [{:DHParameter, der, _}] = path |> File.read!() |> :public_key.pem_decode()
      dhe = [ciphers: [~c"DHE-RSA-AES128-GCM-SHA256"]] ++ tls12()

      for given <- [[dhfile: path], [dhfile: String.to_charlist(path)], [dh: der]] do
        assert {:ok, :ok, %{selected_cipher_suite: %{key_exchange: :dhe_rsa}}} =
                 assert_same(&handshake(&1, given ++ dhe, tls12()))
      end
    end

    # :ssl takes any binary at listen, and each handshake fails (its
    # connection process crashes decoding it: the caller gets an exit where
    # Islet answers an error). Islet refused the listener.
    test "dh that does not decode: the listener opens, every handshake fails" do
      for mod <- [Islet.Reference.SSL, Islet.TLS] do
        result = Diff.run_one(mod, &handshake(&1, [dh: <<1, 2, 3>>], tls12()), 30_000)
        assert match?({:exit, _}, result) or match?({{:error, _}, _, _}, result), inspect(result)
      end

      assert {{:error, {:options, {:dh, <<1, 2, 3>>}}}, _, _} =
               handshake(Islet.TLS, [dh: <<1, 2, 3>>], tls13())
    end

    # OTP 29's :ssl refuses DH parameters no version it may negotiate can
    # use (Islet.Compat.ssl_dh_needs_tls12?/0); OTP 25's and 27's take them.
    test "dh and dhfile with TLS 1.3 only: as :ssl", %{dhfile: path} do
      [{:DHParameter, der, _}] = path |> File.read!() |> :public_key.pem_decode()
      tls13 = [versions: [:"tlsv1.3"]]

      cases = [
        [dh: der],
        [dhfile: path],
        # (the version check comes before the file is read)
        [dhfile: ~c"/no/such/dhfile"],
        # dh wins over dhfile
        [dh: der, dhfile: path],
        # TLS 1.2 beside it: taken
        [dh: der, versions: [:"tlsv1.3", :"tlsv1.2"]]
      ]

      results =
        for extra <- cases do
          opts = if Keyword.has_key?(extra, :versions), do: extra, else: extra ++ tls13
          {extra, assert_same(&listen_result(&1, opts))}
        end

      if Islet.Compat.ssl_dh_needs_tls12?() do
        assert [
                 {_, {:error, {:options, :incompatible, [:dh, {:versions, [:"tlsv1.3"]}]}}},
                 {_, {:error, {:options, :incompatible, [:dh_file, {:versions, _}]}}},
                 {_, {:error, {:options, :incompatible, [:dh_file, {:versions, _}]}}},
                 {_, {:error, {:options, :incompatible, [:dh, {:versions, _}]}}},
                 {_, :ok}
               ] = results
      else
        assert Enum.all?(results, &match?({_, :ok}, &1)), inspect(results)
      end
    end

    # OTP 25's and 27's :ssl listens and fails each handshake; OTP 29's
    # refuses the dhfile at listen (Islet.Compat.ssl_listen_checks_files?/0).
    test "a dhfile that cannot be read: refused at listen, or each handshake fails, as with :ssl" do
      if Islet.Compat.ssl_listen_checks_files?() do
        assert {:error, {:options, {:dhfile, :enoent}}} =
                 assert_same(&listen_result(&1, dhfile: ~c"/no/such/dhfile"))
      else
        assert_same(&handshake(&1, [dhfile: ~c"/no/such/dhfile"], tls13()))
      end
    end
  end

  describe "ciphers" do
    test "suites the versions cannot use are dropped, and with none left the defaults apply" do
      # As :ssl: binaries are two-byte suite codes (unknown ones dropped),
      # not OpenSSL names; a TLS 1.3 suite alone on a TLS 1.2 listener
      # leaves its defaults.
      for {server, client} <- [
            {[ciphers: [<<0xC0, 0x2B>>]], tls12()},
            {[ciphers: ["ECDHE-ECDSA-AES128-GCM-SHA256"]], tls12()},
            {[ciphers: ["bogus"]], []},
            {[ciphers: [~c"TLS_AES_128_GCM_SHA256"]] ++ tls12(), tls12()}
          ] do
        # (a curve both default lists have)
        client = client ++ [eccs: [:secp256r1]]
        result = assert_same(&handshake(&1, ec(server), client))
        assert {:ok, :ok, _} = result
      end
    end
  end

  describe "no suite in common" do
    test "a TLS 1.2 listener, a client whose TLS 1.2 suites it lacks: insufficient_security" do
      # The client offers TLS 1.3's suites too, which OpenSSL's list for
      # the listener holds whatever its versions: they must not count.
      # (OTP 27's client offers no CBC suite by default: this is it.)
      cbc = [ciphers: [~c"ECDHE-ECDSA-AES128-SHA256"]] ++ tls12()
      gcm = [ciphers: [~c"TLS_AES_128_GCM_SHA256", ~c"ECDHE-ECDSA-AES128-GCM-SHA256"]]

      result = assert_same(&handshake(&1, ec(cbc), gcm))

      assert {{:error, {:tls_alert, :insufficient_security}},
              {:error, {:tls_alert, :insufficient_security}}, _} = result
    end

    test "a TLS 1.3 handshake does not count TLS 1.2's suites" do
      tls13_only = [ciphers: [~c"TLS_AES_256_GCM_SHA384", ~c"ECDHE-ECDSA-AES128-GCM-SHA256"]]
      client = [ciphers: [~c"TLS_AES_128_GCM_SHA256", ~c"ECDHE-ECDSA-AES128-GCM-SHA256"]]
      result = assert_same(&handshake(&1, ec(tls13_only ++ tls13()), client))

      assert {{:error, {:tls_alert, :insufficient_security}},
              {:error, {:tls_alert, :insufficient_security}}, _} = result
    end
  end

  describe "signature_algs" do
    test "a list the certificate can use: the handshake completes" do
      # TLS 1.3 schemes for TLS 1.3, {Hash, Sign} for TLS 1.2 (:ssl signs
      # TLS 1.2 only with the latter; OpenSSL takes either).
      for {algs, client} <- [
            {[:ecdsa_secp256r1_sha256, :rsa_pss_rsae_sha256], tls13()},
            {[{:sha256, :ecdsa}, {:sha384, :ecdsa}], tls12()}
          ] do
        # (A curve both default lists have: :ssl's has binary curves, and
        # its client offers one first.)
        assert_same(&handshake(&1, ec(signature_algs: algs), client ++ [eccs: [:secp256r1]]))
      end
    end

    test "a list the certificate cannot use: the handshake fails on both" do
      # :ssl sends insufficient_security; OpenSSL a different alert
      # (docs: differences), so only the failure is compared.
      for {label, mod} <- modules() do
        {hs, connect, _} = handshake(mod, ec(signature_algs: [:ecdsa_secp384r1_sha384]), tls13())

        assert {{:error, {:tls_alert, _}}, {:error, {:tls_alert, _}}} = {hs, connect},
               "#{label}: #{inspect({hs, connect})}"
      end
    end
  end

  describe "key_update_at" do
    test "TLS 1.3: the server updates its key every key_update_at bytes" do
      big = Diff.pattern(300_000, 5)

      assert_same(fn mod ->
        {_l, s, c} = pair!(mod, [key_update_at: 16_384], tls13())
        :ok = mod.send(s, big)
        :ok = :ssl.send(c, "after")
        {ssl_recv_exact(c, byte_size(big)) == {:ok, big}, mod.recv(s, 5, 10_000)}
      end)

      {_l, s, c} = pair!(Islet.TLS, [key_update_at: 16_384], tls13())
      # Before any update, tls_info has no key_updates item: that list is
      # garbage in every connection's process, and a few words more moved the
      # bench's idle handlers onto a heap 1.6 KB larger.
      {:ok, info} = Islet.Nif.tls_info(s)
      refute Keyword.has_key?(info, :key_updates)
      :ok = Islet.TLS.send(s, big)
      {:ok, ^big} = ssl_recv_exact(c, byte_size(big))
      {:ok, info} = Islet.Nif.tls_info(s)
      assert info[:key_updates] >= div(byte_size(big), 16_384) - 1
    end
  end
end
