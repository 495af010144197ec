defmodule Islet.TLS.Options do
  @moduledoc """
  Translates `:ssl` server options into an OpenSSL context built once per
  listener (`Islet.Nif.tls_ctx/1`).

  Accepted, in the forms `:ssl` takes them: `certfile`, `keyfile`, `cert` (DER
  or a list of DER, leaf first), `key` (`{type, der}`), `certs_keys`,
  `cacertfile`, `cacerts`, `password` (encrypted PEM keys), `verify`,
  `fail_if_no_peer_cert`, `depth`, `versions` (`:"tlsv1.2"`, `:"tlsv1.3"`),
  `ciphers` (in `:ssl`'s forms, read as `:ssl` reads them, or a binary
  OpenSSL cipher string; without it, `:ssl`'s default suites, less the
  fixed ECDH ones OpenSSL lacks),
  `honor_cipher_order`, `alpn_preferred_protocols`, `sni_hosts`, `sni_fun`,
  `reuse_sessions`, `session_tickets`, `eccs` (TLS 1.2's curves) and
  `supported_groups` (TLS 1.3's groups: OpenSSL has one list, so each
  connection gets its version's; without it, `:ssl`'s default groups),
  `honor_ecc_order`, `signature_algs`, `dh` and `dhfile` (DHE suites
  without either use OpenSSL's RFC 7919 groups, as `:ssl` has default
  parameters), `key_update_at` (on Islet's record layer),
  `max_handshake_size` and, on ssl 11 (OTP 26+), `allow_any_ca_purpose`. The session cache and the TLS 1.3 tickets follow
  the ssl application's settings as `:ssl` does: `session_cache_server_max`,
  `server_session_ticket_store_size`, `server_session_tickets_amount`,
  `session_lifetime` and `server_session_ticket_lifetime`.

  Accepted and ignored on purpose, with their values checked as `:ssl`
  checks them: `log_level` and `log_alert` (OpenSSL does not log through
  Logger), `secure_renegotiate` and `client_renegotiation` (OpenSSL always
  renegotiates securely, and Islet refuses client renegotiation
  altogether), `hibernate_after`, `receiver_spawn_opts` and
  `sender_spawn_opts` (no process per connection), `middlebox_comp_mode`
  (the server follows the client), `cookie`,
  `keep_secrets`, `signature_algs_cert` (client chains are checked
  against it, see `Islet.TLS.CertSigs`, but OpenSSL 3.0 cannot send it:
  on ssl 11 its schemes join TLS 1.3's CertificateRequest list instead),
  `handshake: :full`, `crl_check: false`, `crl_cache`, `protocol:
  :tls`, `early_data: :disabled` and `anti_replay`; a client's options
  (`server_name_indication`, `alpn_advertised_protocols`, ...), which ssl
  10 checks and ignores on a server and ssl 11 refuses (`client_only`).
  `:ssl`'s dependency
  errors are kept (`supported_groups` and `certificate_authorities`
  without TLS 1.3, the TLS 1.0 options, `early_data` and `anti_replay`
  without tickets). As `:ssl`'s server, Islet names the CAs of `cacerts` /
  `cacertfile` in its certificate requests (TLS 1.3: unless
  `certificate_authorities: false`). With `verify_fun` or
  `partial_chain` (and `verify: :verify_peer`), client certificates are
  checked in Erlang as `:ssl` checks them (`Islet.TLS.Verify`). CRL checks,
  `handshake: :hello`, early data and DTLS are
  `{:error, {:unsupported_option, option}}`.
  """

  alias Islet.TLS.CertSigs

  @tls_keys [
    :certfile,
    :keyfile,
    :cert,
    :key,
    :certs_keys,
    :cacertfile,
    :cacerts,
    :password,
    :verify,
    :fail_if_no_peer_cert,
    :depth,
    :versions,
    :ciphers,
    :honor_cipher_order,
    :alpn_preferred_protocols,
    :sni_hosts,
    :sni_fun,
    :reuse_sessions,
    :session_tickets,
    :secure_renegotiate,
    :log_level,
    :eccs,
    :supported_groups,
    :honor_ecc_order,
    :signature_algs,
    :signature_algs_cert,
    :dh,
    :dhfile,
    :key_update_at,
    :middlebox_comp_mode,
    :max_handshake_size,
    :client_renegotiation,
    :hibernate_after,
    :handshake,
    :log_alert,
    :keep_secrets,
    :cookie,
    :certificate_authorities,
    :crl_check,
    :crl_cache,
    :protocol,
    :receiver_spawn_opts,
    :sender_spawn_opts,
    :padding_check,
    :beast_mitigation,
    :early_data,
    :anti_replay,
    :verify_fun,
    :partial_chain,
    :allow_any_ca_purpose
  ]

  # A client's options, which :ssl's server does not use: ssl 10 (OTP 25)
  # checks their form and ignores them (fallback excepted), ssl 11 refuses
  # each as {:option, :client_only, key}. A list of options shared by
  # clients and servers listens as it does with :ssl.
  @client_only [
    :server_name_indication,
    :alpn_advertised_protocols,
    :client_preferred_next_protocols,
    :use_ticket,
    :customize_hostname_check,
    :max_fragment_length,
    :fallback
  ]

  @doc "The option keys handled here rather than by the TCP layer."
  @spec tls_keys() :: [atom()]
  def tls_keys, do: @tls_keys ++ @client_only

  @doc """
  Raises as Thousand Island's SSL transport does when no key or no
  certificate source is given.
  """
  @spec check_cert_key!(keyword()) :: :ok
  def check_cert_key!(opts) do
    unless Enum.any?([:certs_keys, :sni_fun, :sni_hosts], &Keyword.has_key?(opts, &1)) do
      unless Enum.any?([:keyfile, :key], &Keyword.has_key?(opts, &1)) do
        raise "transport_options must include one of keyfile or key"
      end

      unless Enum.any?([:certfile, :cert], &Keyword.has_key?(opts, &1)) do
        raise "transport_options must include one of certfile or cert"
      end
    end

    :ok
  end

  @undefinable [:cert, :key, :certfile, :keyfile, :cacerts, :cacertfile, :dhfile, :sni_fun]
  # What ssl 11 names for an option that is not given, in its errors.
  @dependency_defaults %{versions: [:"tlsv1.3", :"tlsv1.2"], session_tickets: :disabled}
  @key_types [:rsa, :dsa, :RSAPrivateKey, :DSAPrivateKey, :ECPrivateKey, :PrivateKeyInfo]

  @doc """
  Builds the native context for `opts` (TCP options are ignored).

  Options of the wrong form are refused here, as `:ssl.listen/2` refuses
  them. What is wrong with the certificates and keys themselves (a file
  that cannot be read, a PEM file without a certificate or key, a wrong
  password, a key that does not match) is found here too, but, as with
  `:ssl`, reported by each handshake: the context is built without them and
  carries the error, which `Islet.TLS.handshake/2` returns (in `:ssl`'s
  shape, e.g. `{:options, {:certfile, path, {:error, :enoent}}}`) after
  closing the connection.

  With `check_files` (what `Islet.TLS.listen/2` passes where the running
  `:ssl.listen/2` checks them, `Islet.Compat.ssl_listen_checks_files?/0`),
  the certificate, key, CA and DH files are checked as that `:ssl` checks
  them when it listens, and a file it refuses is the error, in its shape
  (e.g. `{:options, {:certfile, {path, :enoent}}}`), after the errors of
  the other options. (`:ssl` checks no file when it upgrades a connection
  or for its SNI hosts: nor does Islet.)
  """
  @spec context(list(), boolean()) :: {:ok, reference()} | {:error, term()}
  def context(opts, check_files \\ false) do
    # (`undefined` is :ssl's "not given" for these, and so is an empty
    # certs_keys.)
    undefinable = if modern?(), do: @undefinable -- [:cacerts, :sni_fun], else: @undefinable

    tls =
      for {k, v} = kv <- opts,
          is_atom(k),
          k in @tls_keys or k in @client_only,
          not (v == :undefined and k in undefinable),
          kv != {:certs_keys, []},
          do: kv

    Enum.each(tls, fn {k, v} -> unless form_ok?(k, v), do: bad(k, v) end)
    dh_versions_check(tls)

    with {:ok, keys, others} <- nif_opts(tls) do
      case build(keys ++ others) do
        # Certificates or keys OpenSSL refused: reported by each handshake.
        {:error, {:options, {k, _}} = reason} when k in [:cert_key, :cacerts] ->
          build([deferred_error: reason] ++ others)

        {:error, {:options, {:signature_algs, :no_supported_signature_schemes}}} ->
          {:error,
           {:options, :no_supported_signature_schemes,
            {:signature_algs, Keyword.get(tls, :signature_algs)}}}

        result ->
          result
      end
      |> refuse_files(check_files, tls)
    end
  catch
    {:option, error} -> error
  end

  # A context otherwise fine is refused for its files (:ssl checks them
  # after the other options).
  defp refuse_files({:ok, _ctx} = ok, true, tls) do
    case listen_file_error(tls) do
      nil -> ok
      reason -> {:error, {:options, reason}}
    end
  end

  defp refuse_files(result, _check_files, _tls), do: result

  # The forms :ssl takes for the certificate, key and file options (its
  # validate_option/3); what is wrong inside them is found later.
  defp form_ok?(:cert, v), do: is_binary(v) or is_list(v)
  defp form_ok?(:key, {type, der}) when is_binary(der), do: type in @key_types
  defp form_ok?(:key, v), do: is_map(v) and is_map_key(v, :algorithm)
  defp form_ok?(:certfile, v), do: is_binary(v) or is_list(v)

  defp form_ok?(k, v) when k in [:keyfile, :cacertfile, :dhfile],
    do: is_binary(v) or (is_list(v) and v != [])

  defp form_ok?(k, v) when k in [:cacerts, :certs_keys], do: is_list(v)
  defp form_ok?(:password, v), do: is_list(v) or is_binary(v) or is_function(v, 0)
  defp form_ok?(:sni_fun, v), do: is_function(v)
  defp form_ok?(_, _), do: true

  defp build(nif_opts), do: Islet.Nif.tls_ctx(nif_opts ++ [records: record_layer() == :islet])

  @doc """
  Who protects the records of a connection once its handshake is over:
  `:islet` (the default: Islet's own record layer for the AEAD suites,
  which frees the OpenSSL object and costs less per record) or `:openssl`
  (OpenSSL's record layer, as during the handshake). Set with `config
  :islet, tls_records: :openssl` or the environment variable
  `ISLET_TLS_RECORDS=openssl` (which wins); read when a listener is opened.
  """
  @spec record_layer() :: :islet | :openssl
  def record_layer do
    case System.get_env("ISLET_TLS_RECORDS") do
      "openssl" -> :openssl
      "islet" -> :islet
      _ -> if Application.get_env(:islet, :tls_records) == :openssl, do: :openssl, else: :islet
    end
  end

  # {:ok, KeyOptions, OtherOptions}: the certificates, keys and CAs apart
  # from the rest, so that a context can be built without them. When they
  # cannot be loaded, KeyOptions is the deferred error instead.
  defp nif_opts(tls) do
    keys =
      try do
        Enum.map(cert_key_pairs(tls), &{:cert_key, &1}) ++ cacerts(tls) ++ dh(tls)
      catch
        {:deferred, reason} -> [deferred_error: {:options, reason}]
      end

    ciphers =
      case Keyword.fetch(tls, :ciphers) do
        # (an empty list is the default, as with :ssl)
        {:ok, spec} when spec != [] -> ciphers(spec, Keyword.get(tls, :versions))
        _ -> default_ciphers(Keyword.get(tls, :versions))
      end

    others =
      verify(tls) ++
        versions(Keyword.get(tls, :versions)) ++
        ciphers ++
        dh_auto(tls, ciphers) ++
        simple(tls) ++
        extras(tls) ++
        groups13(tls) ++
        session_cache(tls) ++
        sni(tls)

    {:ok, keys, others}
  end

  defp cert_key_pairs(tls) do
    case Keyword.fetch(tls, :certs_keys) do
      {:ok, list} when is_list(list) ->
        Enum.map(list, &certs_keys_pair/1)

      {:ok, other} ->
        throw({:option, {:error, {:options, {:certs_keys, other}}}})

      :error ->
        # A listener may serve only the hosts its SNI options name.
        if Enum.any?([:cert, :certfile], &Keyword.has_key?(tls, &1)) or
             not Enum.any?([:sni_fun, :sni_hosts], &Keyword.has_key?(tls, &1)),
           do: [cert_key(Map.new(tls))],
           else: []
    end
  end

  # A certs_keys entry :ssl cannot use (not a map, a keyword list among
  # them, or without a certificate or key): ssl 10 listens, and each
  # handshake fails (its connection process crashes). Islet's handshakes
  # answer {:options, {:certs_keys, reason}}. ssl 11 raises at listen on an
  # entry that is not a map (BadMapError): Islet answers the error there.
  defp certs_keys_pair(entry) when is_map(entry) do
    cert_key(entry)
  catch
    {:option, {:error, {:options, reason}}} -> throw({:deferred, {:certs_keys, reason}})
  end

  defp certs_keys_pair(entry) do
    if modern?(), do: bad(:certs_keys, entry)
    throw({:deferred, {:certs_keys, plain(entry)}})
  end

  # A certs_keys entry's password is its own: :ssl does not fall back on
  # the top-level one (OTP 25 to 29).
  defp cert_key(map) do
    password = Map.get(map, :password, ~c"")
    {chain(map), key(map, password)}
  end

  defp chain(%{cert: der}) when is_binary(der), do: [der]
  defp chain(%{cert: ders}) when is_list(ders), do: ders

  defp chain(%{certfile: file}) do
    case for {:Certificate, der, _} <- pem(file, :certfile), do: der do
      [] -> throw({:deferred, {:certfile, to_charlist(file), []}})
      ders -> ders
    end
  end

  defp chain(_), do: throw({:option, {:error, {:options, {:certfile, :missing}}}})

  defp key(%{key: {_type, der}}, _password) when is_binary(der), do: der

  # As :ssl reports them: a keyfile without a key is {:keyfile, Path, []},
  # one that does not decode (a wrong password) {:keyfile, Path, {:error, _}}.
  defp key(%{keyfile: file}, password) do
    case Enum.find(pem(file, :keyfile), &key_entry?/1) do
      nil ->
        throw({:deferred, {:keyfile, to_charlist(file), []}})

      {type, der, :not_encrypted} when type != :EncryptedPrivateKeyInfo ->
        der

      entry ->
        pw = if is_function(password, 0), do: password.(), else: password

        try do
          record = :public_key.pem_entry_decode(entry, to_charlist(pw))
          :public_key.der_encode(elem(record, 0), record)
        rescue
          e -> throw({:deferred, {:keyfile, to_charlist(file), {:error, decode_error(e)}}})
        end
    end
  end

  defp key(%{certfile: file} = map, password) when not is_map_key(map, :keyfile),
    do: key(%{keyfile: file}, password)

  defp key(_, _), do: throw({:option, {:error, {:options, {:keyfile, :missing}}}})

  defp key_entry?({type, _, _}),
    do:
      type in [:RSAPrivateKey, :ECPrivateKey, :PrivateKeyInfo, :DSAPrivateKey] or
        type == :EncryptedPrivateKeyInfo

  # public_key fails to decode with a wrong password as a badmatch on
  # {:error, Reason}; :ssl reports that Reason. The context keeps it, so
  # only plain data is kept (the NIF refuses pids, references and funs).
  defp decode_error(%MatchError{term: {:error, reason}}), do: plain(reason)
  defp decode_error(%ErlangError{original: reason}), do: plain(reason)
  defp decode_error(e), do: Exception.message(e)

  defp plain(t) when is_atom(t) or is_number(t) or is_binary(t), do: t

  defp plain(t) when is_tuple(t),
    do: t |> Tuple.to_list() |> Enum.map(&plain/1) |> List.to_tuple()

  defp plain([h | t]), do: [plain(h) | plain(t)]
  defp plain([]), do: []
  defp plain(_), do: :undefined

  defp pem(file, key) do
    case File.read(file) do
      {:ok, data} -> :public_key.pem_decode(data)
      {:error, reason} -> throw({:deferred, {key, to_charlist(file), {:error, reason}}})
    end
  end

  defp cacerts(tls) do
    # With cacerts, :ssl reads no cacertfile (OTP 25 to 29).
    from_file =
      case {Keyword.fetch(tls, :cacertfile), Keyword.get(tls, :cacerts)} do
        {{:ok, file}, none} when none in [nil, :undefined] ->
          for {:Certificate, der, _} <- pem(file, :cacertfile), do: der

        _ ->
          []
      end

    ders =
      for c <- Keyword.get(tls, :cacerts, []) do
        case c do
          der when is_binary(der) -> der
          {:cert, der} -> der
          other -> throw({:option, {:error, {:options, {:cacerts, other}}}})
        end
      end

    case from_file ++ ders do
      [] -> []
      all -> [cacerts: all]
    end
  end

  defp verify(tls) do
    peer? =
      case Keyword.get(tls, :verify, :verify_none) do
        :verify_peer -> true
        :verify_none -> false
        other -> throw({:option, {:error, {:options, {:verify, other}}}})
      end

    # :ssl's default is true with verify_peer from OTP 26 (ssl 11), false
    # before: a client without a certificate is refused, or let in, as by
    # the :ssl this VM runs.
    fail? =
      case Keyword.get(tls, :fail_if_no_peer_cert, peer? and modern?()) do
        true when not peer? ->
          if modern?(),
            do: incompatible(verify: :verify_none, fail_if_no_peer_cert: true),
            else:
              throw(
                {:option,
                 {:error,
                  {:options, :incompatible, {:verify, :verify_none},
                   {:fail_if_no_peer_cert, true}}}}
              )

        b when is_boolean(b) ->
          b

        other ->
          bad(:fail_if_no_peer_cert, other)
      end

    depth =
      case Keyword.get(tls, :depth) do
        d when is_nil(d) or (is_integer(d) and d >= 0 and d <= 255) -> d
        other -> bad(:depth, other)
      end

    # :ssl's server that verifies clients must be given trusted
    # certificates: ssl 10 (OTP 25) unless it has a verify_fun (cacerts
    # that are not empty, else a cacertfile); ssl 11 (OTP 26) in any case
    # (cacerts, even empty, or a cacertfile), which it checks before the
    # form of verify_fun and partial_chain.
    if peer? and modern?() and
         not (Keyword.has_key?(tls, :cacerts) or Keyword.get(tls, :cacertfile, []) != []),
       do: incompatible(verify: :verify_peer, cacerts: :undefined)

    verify_fun = verify_fun(Keyword.get(tls, :verify_fun))
    partial_chain = partial_chain(Keyword.get(tls, :partial_chain))

    # ssl 11's: a CA in a client's chain whose extended key usage lacks
    # client authentication passes if it allows any purpose. (ssl 10 has
    # no such option: Islet answers as for any option it does not know.)
    allow_any? =
      case Keyword.fetch(tls, :allow_any_ca_purpose) do
        :error -> false
        {:ok, v} when not is_boolean(v) -> bad(:allow_any_ca_purpose, v)
        {:ok, v} -> if modern?(), do: v, else: unsupported(:allow_any_ca_purpose, v)
      end

    cond do
      not peer? or modern?() ->
        :ok

      verify_fun == nil and not match?([_ | _], Keyword.get(tls, :cacerts)) and
          Keyword.get(tls, :cacertfile, []) == [] ->
        bad(:cacertfile, [])

      true ->
        :ok
    end

    # With verify_fun or partial_chain, client chains are checked in Erlang
    # (Islet.TLS.Verify); otherwise by OpenSSL.
    in_erlang =
      if peer? and (verify_fun != nil or partial_chain != nil) do
        cacerts =
          try do
            Keyword.get(cacerts(tls), :cacerts, [])
          catch
            {:deferred, _} -> []
          end

        partial_chain = partial_chain || fn _ -> :unknown_ca end
        depth = if is_integer(depth), do: depth, else: 10
        sigs = CertSigs.list(tls)

        config =
          Islet.TLS.Verify.config(cacerts, verify_fun, partial_chain, depth, sigs, allow_any?)

        [erl_verify: config]
      else
        []
      end

    # The signature algorithms :ssl takes in a client's chain: checked by
    # the NIF when OpenSSL checks the chain, else by Islet.TLS.Verify.
    cert_sigs =
      case peer? and in_erlang == [] and CertSigs.nif_rules(CertSigs.list(tls)) do
        {_, _} = rules -> [cert_sigs: rules]
        _ -> []
      end

    # What the CertificateRequest names (ssl 11: :ssl's lists; else OpenSSL's).
    request =
      case peer? and CertSigs.request_lists(tls) do
        {_, _} = lists -> [client_sigalgs: lists]
        _ -> []
      end

    # OpenSSL's purpose check, where it checks the chain: :ssl's verdicts.
    purpose =
      if peer? and in_erlang == [],
        do: [
          eku_handshake_failure: not modern?(),
          allow_any_ca_purpose: allow_any?,
          leaf_key_usage_ignored: not modern?()
        ],
        else: []

    [verify_peer: peer?, fail_if_no_peer_cert: fail?] ++
      if(is_integer(depth), do: [depth: depth], else: []) ++
      in_erlang ++ cert_sigs ++ request ++ purpose
  end

  # As :ssl takes them: {fun, state}, or (older form) a fun given the
  # list of errors, which :ssl wraps.
  defp verify_fun(nil), do: nil
  defp verify_fun(:undefined), do: nil
  defp verify_fun({fun, _state} = value) when is_function(fun), do: value

  defp verify_fun(old) when is_function(old) do
    {fn
       _, {:bad_cert, _} = reason, f -> if f.([reason]), do: {:valid, f}, else: {:fail, reason}
       _, {:extension, _}, state -> {:unknown, state}
       _, event, state when event in [:valid, :valid_peer] -> {:valid, state}
     end, old}
  end

  defp verify_fun(other), do: bad(:verify_fun, other)

  defp partial_chain(nil), do: nil
  defp partial_chain(fun) when is_function(fun), do: fun
  defp partial_chain(other), do: bad(:partial_chain, other)

  @version_codes %{tlsv1: 0x0301, "tlsv1.1": 0x0302, "tlsv1.2": 0x0303, "tlsv1.3": 0x0304}

  defp versions(nil), do: []

  # As :ssl: known names, no gap between them. TLS 1.0 and 1.1 are taken
  # beside TLS 1.2 (Plug.SSL's older :compatible suite lists them) and not
  # offered (RFC 8996); alone, Islet has nothing to serve.
  defp versions(list) when is_list(list) and list != [] do
    codes =
      for v <- list do
        Map.get(@version_codes, v) ||
          throw({:option, {:error, {:options, {v, {:versions, list}}}}})
      end

    {low, high} = Enum.min_max(codes)

    case Enum.find(high..low//-1, &(&1 not in codes)) do
      nil ->
        :ok

      gap ->
        throw({:option, {:error, {:options, :missing_version, {name(gap), {:versions, list}}}}})
    end

    if high < 0x0303, do: throw({:option, {:error, {:unsupported_option, {:versions, list}}}})
    [min_version: max(low, 0x0303), max_version: high]
  end

  defp versions(other), do: throw({:option, {:error, {:options, {:versions, other}}}})

  defp name(code), do: Enum.find_value(@version_codes, fn {n, c} -> c == code && n end)

  # Without `ciphers`, :ssl's default suites for the highest version
  # offered, not OpenSSL's defaults (those add the static RSA key exchange
  # and leave out the CCM suites and, without DH parameters, DHE), so that
  # a client offering only some suites is accepted or refused as by :ssl.
  # OpenSSL skips the names it lacks (the fixed ECDH suites). Built once
  # per version.
  defp default_ciphers(versions) do
    high = if tls13?(versions), do: :"tlsv1.3", else: :"tlsv1.2"

    key = {__MODULE__, :default_ciphers, high}

    case :persistent_term.get(key, nil) do
      nil ->
        names = for suite <- :ssl.cipher_suites(:default, high), do: suite_name(suite)
        list = openssl_ciphers(names, :default)
        :persistent_term.put(key, list)
        list

      list ->
        list
    end
  end

  # `ciphers` as :ssl reads it (its binary_cipher_suites/2, OTP 25 to 29):
  # the first element's form says how all are read (suite maps, tuples,
  # OpenSSL names, two-byte suite codes); a charlist is OpenSSL names
  # separated by colons. An entry that is not a suite :ssl knows is
  # {:options, {:ciphers, spec}}, as is a value of no such form. Suites the
  # versions cannot use are dropped (so are codes :ssl does not know), and
  # with none left, the defaults apply. (A binary is Islet's own: an
  # OpenSSL cipher string, given to OpenSSL as it is.)
  defp ciphers(spec, _versions) when is_binary(spec),
    do: openssl_ciphers(String.split(spec, ":", trim: true), spec)

  defp ciphers(spec, versions) when is_list(spec) do
    known = all_suites(versions)

    codes =
      try do
        suite_codes(spec)
      catch
        _, _ -> :error
      end

    if codes == :error, do: bad(:ciphers, spec)

    case for code <- codes, Map.has_key?(known, code), do: Map.fetch!(known, code) do
      [] -> default_ciphers(versions)
      names -> openssl_ciphers(names, spec)
    end
  end

  defp ciphers(spec, _versions), do: bad(:ciphers, spec)

  # The suites as :ssl's codes; raises on what it does not know (through
  # its own conversions, whose errors :ssl reports as the option's).
  defp suite_codes([suite | _] = list) when is_map(suite),
    do: Enum.map(list, &:ssl_cipher_format.suite_map_to_bin/1)

  defp suite_codes([suite | _] = list) when is_tuple(suite),
    do: Enum.map(list, &:ssl_cipher_format.suite_map_to_bin(tuple_to_map(&1)))

  defp suite_codes([code | _] = list) when is_binary(code), do: list

  defp suite_codes([name | _] = list) when is_list(name), do: Enum.map(list, &name_code/1)

  defp suite_codes(string), do: string |> :string.lexemes(~c":") |> Enum.map(&name_code/1)

  defp name_code(name),
    do:
      name
      |> :ssl_cipher_format.suite_openssl_str_to_map()
      |> :ssl_cipher_format.suite_map_to_bin()

  # The suites :ssl takes in `ciphers` for these versions (its
  # all_suites/1), by code, with their OpenSSL names: TLS 1.3's and those of
  # the next version below it, anonymous ones included.
  defp all_suites(versions) do
    sorted =
      case Enum.filter(List.wrap(versions), &Map.has_key?(@version_codes, &1)) do
        [] -> [:"tlsv1.3", :"tlsv1.2"]
        list -> list |> Enum.uniq() |> Enum.sort_by(&Map.fetch!(@version_codes, &1), :desc)
      end

    suites =
      case sorted do
        [:"tlsv1.3"] ->
          :ssl.cipher_suites(:exclusive, :"tlsv1.3")

        [:"tlsv1.3", next | _] ->
          :ssl.cipher_suites(:exclusive, :"tlsv1.3") ++
            :ssl.cipher_suites(:all, next) ++ :ssl.cipher_suites(:anonymous, next)

        [high | _] ->
          :ssl.cipher_suites(:all, high) ++ :ssl.cipher_suites(:anonymous, high)
      end

    Map.new(suites, &{:ssl_cipher_format.suite_map_to_bin(&1), suite_name(&1)})
  end

  # What the NIF takes: TLS 1.3's suites apart from the others.
  defp openssl_ciphers(names, spec) do
    {v13, v12} = Enum.split_with(names, &String.starts_with?(&1, "TLS_"))

    Enum.reject(
      [cipher_list: Enum.join(v12, ":"), ciphersuites: Enum.join(v13, ":")],
      fn {_, v} -> v == "" end
    )
    |> case do
      [] -> bad(:ciphers, spec)
      list -> list
    end
  end

  defp suite_name(suite), do: to_string(:ssl.suite_to_openssl_str(suite))

  # A suite tuple as :ssl reads it (its tuple_to_map/1): {kex, cipher, mac}
  # has the default PRF; {kex, cipher, mac, prf} names its PRF, and the MAC
  # of an AEAD cipher is aead whatever the tuple says.
  defp tuple_to_map({kex, cipher, mac}),
    do: %{key_exchange: kex, cipher: cipher, mac: mac, prf: :default_prf}

  defp tuple_to_map({kex, cipher, mac, prf}) do
    mac = if cipher in [:aes_128_gcm, :aes_256_gcm, :chacha20_poly1305], do: :aead, else: mac
    %{key_exchange: kex, cipher: cipher, mac: mac, prf: prf}
  end

  defp simple(tls) do
    Enum.flat_map(tls, fn
      {:honor_cipher_order, b} when is_boolean(b) -> [honor_cipher_order: b]
      {:reuse_sessions, b} when is_boolean(b) -> [reuse_sessions: b]
      # (save is a client's value; :ssl's server takes it as true)
      {:reuse_sessions, :save} -> [reuse_sessions: true]
      {:alpn_preferred_protocols, list} when is_list(list) -> [alpn: list]
      {:session_tickets, t} -> [session_tickets: tickets(t)]
      {key, _} when key in [:secure_renegotiate, :log_level] -> []
      _ -> []
    end)
  end

  # DH parameters serve TLS 1.2's DHE suites only: where the running :ssl
  # refuses them without a version to use them (OTP 29), so does Islet, as
  # an option check (before any file is read). dh wins over dhfile.
  defp dh_versions_check(tls) do
    versions = Keyword.get(tls, :versions)
    dh? = is_binary(Keyword.get(tls, :dh))
    dhfile? = not Keyword.has_key?(tls, :dh) and Keyword.has_key?(tls, :dhfile)

    if (dh? or dhfile?) and not tls12?(versions) and
         Islet.Compat.ssl_dh_needs_tls12?(),
       do: incompatible([if(dh?, do: :dh, else: :dh_file), {:versions, versions}])

    :ok
  end

  # DH parameters for the DHE suites: dh (DER) or dhfile (PEM), as :ssl
  # takes them; a dhfile that cannot be read fails each handshake, as with
  # :ssl.
  defp dh(tls) do
    case {Keyword.fetch(tls, :dh), Keyword.fetch(tls, :dhfile)} do
      # Parameters that do not decode: :ssl takes them, and each handshake
      # fails (its connection process crashes decoding them).
      {{:ok, der}, _} when is_binary(der) ->
        if dh_params?(der), do: [dh: der], else: throw({:deferred, {:dh, der}})

      {{:ok, other}, _} ->
        throw({:option, {:error, {:options, {:dh, other}}}})

      {:error, {:ok, file}} when is_binary(file) or is_list(file) ->
        case for {:DHParameter, der, _} <- pem(file, :dhfile), do: der do
          [der | _] -> [dh: der]
          [] -> throw({:deferred, {:dhfile, to_charlist(file), []}})
        end

      {:error, {:ok, other}} ->
        throw({:option, {:error, {:options, {:dhfile, other}}}})

      {:error, :error} ->
        []
    end
  end

  defp dh_params?(der) do
    _ = :public_key.der_decode(:DHParameter, der)
    true
  rescue
    _ -> false
  end

  # Ciphers that name DHE suites without parameters: OpenSSL's built-in
  # groups, as :ssl has default parameters.
  defp dh_auto(tls, ciphers) do
    dhe? = ciphers |> Keyword.get(:cipher_list, "") |> String.split(":") |> Enum.any?(&dhe?/1)

    if dhe? and not Keyword.has_key?(tls, :dh) and not Keyword.has_key?(tls, :dhfile),
      do: [dh_auto: true],
      else: []
  end

  defp dhe?("DHE-" <> _), do: true
  defp dhe?("EDH-" <> _), do: true
  defp dhe?(_), do: false

  @booleans [:honor_cipher_order, :secure_renegotiate, :honor_ecc_order] ++
              [:client_renegotiation, :middlebox_comp_mode, :log_alert, :keep_secrets] ++
              [:cookie, :certificate_authorities]

  @log_levels [:none, :all, :emergency, :alert, :critical, :error, :warning, :notice] ++
                [:info, :debug]

  # OpenSSL's names of :ssl's groups (its short names, where they differ;
  # the ML-KEM ones, ssl 11.7's (OTP 29) default x25519mlkem768 among
  # them, by their OpenSSL 3.5 group names: OpenSSL 3.0 has none of them,
  # and the NIF drops them there, as names it does not know).
  @group_names %{
    x25519: "X25519",
    x448: "X448",
    secp256r1: "prime256v1",
    secp192r1: "prime192v1",
    x25519mlkem768: "X25519MLKEM768",
    secp256r1mlkem768: "SecP256r1MLKEM768",
    secp384r1mlkem1024: "SecP384r1MLKEM1024",
    mlkem512: "MLKEM512",
    mlkem768: "MLKEM768",
    mlkem1024: "MLKEM1024"
  }

  # :ssl's signature schemes (TLS 1.3 names) and, for TLS 1.2, {Hash, Sign}.
  @schemes [:rsa_pkcs1_sha256, :rsa_pkcs1_sha384, :rsa_pkcs1_sha512, :rsa_pkcs1_sha1] ++
             [:ecdsa_secp256r1_sha256, :ecdsa_secp384r1_sha384, :ecdsa_secp521r1_sha512] ++
             [:ecdsa_sha1, :rsa_pss_rsae_sha256, :rsa_pss_rsae_sha384, :rsa_pss_rsae_sha512] ++
             [:rsa_pss_pss_sha256, :rsa_pss_pss_sha384, :rsa_pss_pss_sha512] ++
             [:eddsa_ed25519, :eddsa_ed448, :ecdsa_brainpoolP256r1tls13_sha256] ++
             [:ecdsa_brainpoolP384r1tls13_sha384, :ecdsa_brainpoolP512r1tls13_sha512]

  # The other :ssl server options, checked as :ssl checks them (same
  # errors), and what the NIF takes of them.
  defp extras(tls), do: Enum.flat_map(tls, fn {k, v} -> extra(k, v, tls) end)

  # TLS 1.3 only (checked first, as :ssl does); false leaves the CA names
  # out of TLS 1.3's CertificateRequest (TLS 1.2's always has them).
  # (:ssl 11, OTP 26, takes it with any versions.)
  defp extra(:certificate_authorities, b, tls) do
    unless modern?() or tls13?(Keyword.get(tls, :versions)),
      do: dependency(:certificate_authorities, :versions, [:"tlsv1.3"], tls)

    if is_boolean(b), do: [certificate_authorities: b], else: bad(:certificate_authorities, b)
  end

  defp extra(k, v, _) when k in @booleans and not is_boolean(v), do: bad(k, v)
  defp extra(:honor_ecc_order, b, _), do: [honor_ecc_order: b]

  defp extra(:eccs, list, _) when is_list(list) do
    # ssl 11 (OTP 26) refuses names it does not know, and an empty list.
    if modern?() do
      cond do
        list == [] -> bad(:eccs, :none_valid)
        not Enum.all?(list, &(&1 in :ssl.eccs())) -> bad(:eccs, list)
        true -> :ok
      end
    end

    [groups12: group_names(list)]
  end

  defp extra(:eccs, v, _), do: bad(:eccs, v)

  defp extra(:supported_groups, list, tls) when is_list(list) do
    unless tls13?(Keyword.get(tls, :versions)),
      do: dependency(:supported_groups, :versions, [:"tlsv1.3"], tls)

    # ssl 11 (OTP 26) drops the names it does not know, and refuses a list
    # that keeps none.
    if modern?() and not Enum.any?(list, &(&1 in :ssl.groups())),
      do: bad(:supported_groups, :none_valid)

    [groups13: group_names(list)]
  end

  defp extra(:supported_groups, v, _), do: bad(:supported_groups, v)

  defp extra(k, [], _) when k in [:signature_algs, :signature_algs_cert] do
    cond do
      not modern?() ->
        throw({:option, {:error, {:options, :no_supported_signature_schemes, {k, []}}}})

      k == :signature_algs ->
        bad(:no_supported_algorithms, {k, []})

      true ->
        bad(:no_supported_signature_schemes, {k, []})
    end
  end

  defp extra(:signature_algs, list, _) when is_list(list),
    do: [sigalgs: Enum.map(list, &sigalg(&1, :signature_algs, list))]

  # Checked here; client chains are checked against it (verify/1), but
  # OpenSSL 3.0 has no setting for the signature_algorithms_cert a server
  # sends.
  defp extra(:signature_algs_cert, list, _) when is_list(list) do
    Enum.each(list, &sigalg(&1, :signature_algs_cert, list))
    []
  end

  defp extra(:key_update_at, n, _) when is_integer(n) and n > 0, do: [key_update_at: n]
  defp extra(:key_update_at, v, _), do: bad(:key_update_at, v)

  # (0 and below: taken and ignored by ssl 10, refused by ssl 11.)
  defp extra(:max_handshake_size, n, _) when is_integer(n) and n < 8_388_608 do
    cond do
      n > 0 -> [max_handshake_size: n]
      modern?() -> bad(:max_handshake_size, n)
      true -> []
    end
  end

  defp extra(:max_handshake_size, v, _), do: bad(:max_handshake_size, v)
  defp extra(:hibernate_after, v, _) when v == :infinity or (is_integer(v) and v >= 0), do: []
  defp extra(:hibernate_after, v, _), do: bad(:hibernate_after, v)
  defp extra(:handshake, :full, _), do: []
  defp extra(:handshake, :hello, _), do: unsupported(:handshake, :hello)
  defp extra(:handshake, v, _), do: bad(:handshake, v)
  defp extra(:crl_check, false, _), do: []

  defp extra(:crl_check, v, _) when v in [true, :peer, :best_effort],
    do: unsupported(:crl_check, v)

  defp extra(:crl_check, v, _), do: bad(:crl_check, v)
  defp extra(:crl_cache, {m, {_, _}}, _) when is_atom(m), do: []
  defp extra(:crl_cache, v, _), do: bad(:crl_cache, v)
  defp extra(:protocol, :tls, _), do: []
  defp extra(:protocol, :dtls, _), do: unsupported(:protocol, :dtls)
  defp extra(:protocol, v, _), do: bad(:protocol, v)

  defp extra(k, v, _) when k in [:receiver_spawn_opts, :sender_spawn_opts],
    do: if(is_list(v), do: [], else: bad(k, v))

  # TLS 1.0 options: :ssl asks for that version (which Islet takes but
  # does not offer, so they have nothing to act on).
  defp extra(k, _, tls) when k in [:padding_check, :beast_mitigation] do
    versions = Keyword.get(tls, :versions)

    if is_list(versions) and :tlsv1 in versions,
      do: [],
      else: dependency(k, :versions, [:tlsv1], tls)
  end

  defp extra(:early_data, v, tls) do
    unless tickets(Keyword.get(tls, :session_tickets)) in [:stateful, :stateless] or
             (modern?() and v == :disabled),
           do: dependency(:early_data, :session_tickets, [:stateful, :stateless], tls)

    case v do
      :disabled -> []
      :enabled -> unsupported(:early_data, :enabled)
      _ -> bad(:early_data, v)
    end
  end

  defp extra(:anti_replay, v, tls) do
    unless tickets(Keyword.get(tls, :session_tickets)) == :stateless,
      do: dependency({:anti_replay, v}, :session_tickets, [:stateless], tls)

    []
  end

  defp extra(:log_level, v, _) when v in @log_levels, do: []
  defp extra(:log_level, v, _), do: bad(:log_level, v)

  # A TLS 1.2 option for :ssl (it needs a version below 1.3); `save` is
  # a client's value, which its server takes.
  defp extra(:reuse_sessions, v, tls) do
    unless tls12?(Keyword.get(tls, :versions)),
      do: dependency(:reuse_sessions, :versions, [:tlsv1, :"tlsv1.1", :"tlsv1.2"], tls)

    if is_boolean(v) or (v == :save and not modern?()), do: [], else: bad(:reuse_sessions, v)
  end

  # session_tickets as this OTP's :ssl checks it: ssl 10 (OTP 25) wants TLS
  # 1.3 for any value and names its values in a role error; ssl 11 (OTP 26)
  # added the _with_cert modes and asks TLS 1.3 of the enabled ones only.
  defp extra(:session_tickets, v, tls) do
    modern? = modern?()

    if (v != :disabled or not modern?) and not tls13?(Keyword.get(tls, :versions)),
      do: dependency(:session_tickets, :versions, [:"tlsv1.3"], tls)

    allowed =
      [:disabled, :stateful, :stateless] ++
        if modern?, do: [:stateful_with_cert, :stateless_with_cert], else: []

    cond do
      v in allowed ->
        []

      modern? ->
        bad(:session_tickets, v)

      true ->
        throw({:option, {:error, {:options, :role, {:session_tickets, {v, {:server, allowed}}}}}})
    end
  end

  defp extra(:alpn_preferred_protocols, v, _), do: protocols_check(:alpn_preferred_protocols, v)

  defp extra(k, v, _) when k in @client_only do
    cond do
      k == :fallback or modern?() ->
        throw({:option, {:error, {:option, :client_only, k}}})

      k == :alpn_advertised_protocols ->
        protocols_check(k, v)

      client_form_ok?(k, v) ->
        []

      true ->
        bad(k, v)
    end
  end

  # A listener has sni_hosts or an sni_fun, not both (once the hosts'
  # form is checked; an empty list of hosts goes with a fun): ssl 10 (OTP
  # 25) says conflict_options, ssl 11 (OTP 26) incompatible.
  defp extra(:sni_hosts, hosts, tls) do
    sni_hosts_check(hosts)

    if hosts != [] and is_function(Keyword.get(tls, :sni_fun)) do
      if modern?(),
        do: incompatible([:sni_fun, :sni_hosts]),
        else: throw({:option, {:error, {:conflict_options, [:sni_fun, :sni_hosts]}}})
    end

    []
  end

  defp extra(_, _, _), do: []

  defp protocols_check(key, list) when is_list(list) do
    for p <- list, not (is_binary(p) and byte_size(p) in 1..255) do
      bad(key, {:invalid_protocol, p})
    end

    []
  end

  defp protocols_check(key, v), do: bad(key, v)

  defp client_form_ok?(:server_name_indication, v), do: v == :disable or is_list(v)

  defp client_form_ok?(:client_preferred_next_protocols, {p, list}),
    do: p in [:client, :server] and is_list(list)

  defp client_form_ok?(:client_preferred_next_protocols, {p, list, default}),
    do: p in [:client, :server] and is_list(list) and is_binary(default)

  defp client_form_ok?(k, v) when k in [:use_ticket, :customize_hostname_check], do: is_list(v)
  defp client_form_ok?(:max_fragment_length, v), do: v in [512, 1024, 2048, 4096, :undefined]
  defp client_form_ok?(_, _), do: false

  # As :ssl's check: a list of {charlist, options}, without sni_hosts of
  # their own; the error names the list from the first wrong entry on (or
  # the nested sni_hosts).
  defp sni_hosts_check([]), do: []

  defp sni_hosts_check([{name, opts} | rest] = hosts) when is_list(name) do
    unless is_list(opts), do: bad(:sni_hosts, hosts)

    case List.keyfind(opts, :sni_hosts, 0) do
      {:sni_hosts, nested} -> bad(:sni_hosts, nested)
      nil -> :ok
    end

    unless modern?(), do: sni_host_keys_check(opts)
    sni_hosts_check(rest)
  end

  # (ssl 11 names the wrong entry itself.)
  defp sni_hosts_check([entry | _] = hosts),
    do: if(modern?(), do: bad(:sni_hosts, entry), else: bad(:sni_hosts, hosts))

  defp sni_hosts_check(hosts), do: bad(:sni_hosts, hosts)

  # ssl 10 (OTP 25) checks a host's options at listen with its per-option
  # validation, which has no clause for the options it handles apart
  # (ciphers, groups, signature schemes, tickets) nor for socket options
  # or unknown keys: each is {:options, {key, value}}. ssl 11 postpones
  # the check to the handshake (and Islet applies what it knows).
  @sni_host_refused_ssl10 [
    :ciphers,
    :eccs,
    :supported_groups,
    :signature_algs,
    :signature_algs_cert,
    :session_tickets,
    :log_alert,
    :early_data
  ]

  defp sni_host_keys_check(opts) do
    for {k, v} <- opts,
        k in @sni_host_refused_ssl10 or not (k in @tls_keys or k in @client_only),
        do: bad(k, v)

    :ok
  end

  # Whether this VM's :ssl checks options as ssl 11 (OTP 26) and later do.
  defp modern?, do: Islet.Compat.ssl11?()

  defp bad(k, v), do: throw({:option, {:error, {:options, {k, v}}}})

  # ssl 11 (OTP 26) names both options, and their values, when two options
  # do not go together.
  defp incompatible(pair), do: throw({:option, {:error, {:options, :incompatible, pair}}})

  defp unsupported(k, v), do: throw({:option, {:error, {:unsupported_option, {k, v}}}})

  # An option that needs another one to have one of `values`: ssl 10 (OTP
  # 25) names the values needed, ssl 11 (OTP 26) the value it has (or its
  # default). `k` is the option's key, or {key, value} where ssl 11 names
  # the value too.
  defp dependency(k, on, values, tls) do
    if modern?() do
      incompatible([k, {on, Keyword.get(tls, on, Map.fetch!(@dependency_defaults, on))}])
    else
      key = with {key, _value} <- k, do: key
      throw({:option, {:error, {:options, :dependency, {key, {on, values}}}}})
    end
  end

  # The server's session cache, bounded per listener as :ssl bounds its
  # stores (dropping the oldest session first): session_cache_server_max
  # TLS 1.2 sessions and, with stateful tickets, server_session_ticket_store_size
  # TLS 1.3 ones (the ssl application's settings, 1000 each by default).
  # OpenSSL keeps both in one cache, of 20480 sessions by default. With
  # tickets, as many per handshake as :ssl sends (server_session_tickets_amount,
  # 3 by default; OpenSSL's default is 2), and lifetimes as :ssl's
  # (session_lifetime, 24 hours, and server_session_ticket_lifetime, 2 hours;
  # OpenSSL's default is 2 hours for both).
  defp session_cache(tls) do
    versions = Keyword.get(tls, :versions)
    mode = tickets(Keyword.get(tls, :session_tickets))
    stateful13? = tls13?(versions) and mode == :stateful

    sessions = if tls12?(versions), do: ssl_env(:session_cache_server_max, 1000), else: 0
    tickets = if stateful13?, do: ssl_env(:server_session_ticket_store_size, 1000), else: 0

    ticket_opts =
      if mode == :disabled,
        do: [],
        else: [
          tickets_amount: ssl_env(:server_session_tickets_amount, 3),
          ticket_lifetime: ticket_lifetime()
        ]

    # (With neither store, nothing is cached; the bound must still be positive.)
    [
      session_cache_size: max(sessions + tickets, 1),
      session_lifetime: ssl_env(:session_lifetime, 24 * 3600)
    ] ++ ticket_opts
  end

  # server_session_ticket_lifetime, as :ssl takes it: at most 7 days.
  defp ticket_lifetime do
    case ssl_env(:server_session_ticket_lifetime, 7200) do
      seconds when seconds <= 604_800 -> seconds
      _ -> 7200
    end
  end

  # An integer setting of the ssl application, as :ssl reads it.
  defp ssl_env(key, default) do
    case Application.get_env(:ssl, key) do
      n when is_integer(n) and n > 0 -> n
      _ -> default
    end
  end

  # Without supported_groups, TLS 1.3 gets :ssl's default groups, not
  # OpenSSL's (which add P-521 and the ffdhe groups): a client offering only
  # those is refused, as by :ssl. (TLS 1.2 keeps OpenSSL's curves without
  # eccs, see Islet.TLS's README.)
  defp groups13(tls) do
    if Keyword.has_key?(tls, :supported_groups) or not tls13?(Keyword.get(tls, :versions)),
      do: [],
      else: [groups13: group_names(:ssl.groups(:default))]
  end

  # Whether `versions` offers TLS 1.3 (as :ssl's default does when it is
  # not given; a list that is not a valid one is refused by versions/1).
  defp tls13?(versions) when is_list(versions) and versions != [], do: :"tlsv1.3" in versions
  defp tls13?(_versions), do: true

  # Whether `versions` offers TLS 1.2 or below (:ssl's default does).
  defp tls12?(versions) when is_list(versions) and versions != [],
    do: Enum.any?(versions, &(&1 in [:tlsv1, :"tlsv1.1", :"tlsv1.2"]))

  defp tls12?(_versions), do: true

  defp group_names(list),
    do: for(g <- list, is_atom(g), do: Map.get(@group_names, g, Atom.to_string(g)))

  defp sigalg(scheme, _, _) when scheme in @schemes, do: CertSigs.openssl_name(scheme)

  # The schemes newer :ssl knows (OTP 29: ML-DSA, SLH-DSA) are taken as it
  # takes them; OpenSSL drops those it cannot sign or check with (3.5+ has
  # ML-DSA; no release has SLH-DSA in TLS).
  defp sigalg(scheme, key, list) when is_atom(scheme) do
    if scheme in Islet.Compat.ssl_signature_schemes(),
      do: CertSigs.openssl_name(scheme),
      else: bad(key, list)
  end

  defp sigalg({_hash, sign} = pair, key, list) when sign in [:rsa, :ecdsa, :dsa],
    do: CertSigs.openssl_name(pair) || bad(key, list)

  defp sigalg(_, key, list), do: bad(key, list)

  defp tickets(t) when t in [:stateless, :stateless_with_cert], do: :stateless
  defp tickets(t) when t in [:stateful, :stateful_with_cert], do: :stateful
  defp tickets(_), do: :disabled

  defp sni(tls) do
    hosts =
      for {name, host_opts} <- Keyword.get(tls, :sni_hosts, []) do
        # (a client's options mean nothing to a host: :ssl takes them there)
        merged = Keyword.merge(Keyword.drop(tls, [:sni_hosts, :sni_fun]), host_opts)
        merged = Keyword.drop(merged, @client_only)

        case context(merged) do
          {:ok, ctx} -> {to_string(name), ctx}
          error -> throw({:option, error})
        end
      end

    host_opt = if hosts == [], do: [], else: [sni_hosts: hosts]

    case Keyword.get(tls, :sni_fun) do
      fun when is_function(fun, 1) ->
        host_opt ++ [sni_fun: {fun, Keyword.drop(tls, [:sni_fun, :sni_hosts])}]

      _ ->
        host_opt
    end
  end

  # What the running :ssl.listen/2 refuses of the files it is given, when it
  # checks them (ssl_config's validate_present_pem_files, OTP 29): each
  # certificate/key pair's certfile, then its keyfile, then cacertfile, then
  # dhfile; nil if all are usable. (Whether a key matches its certificate is
  # not checked there: that stays the handshakes' error.)
  defp listen_file_error(tls) do
    pairs =
      case Keyword.get(tls, :certs_keys, []) do
        # (with certs_keys, :ssl ignores the top-level password)
        # (an entry of no form is the handshakes' error)
        [_ | _] = list -> Enum.filter(list, &is_map/1)
        _ -> [Map.new(tls)]
      end

    Enum.find_value(pairs, &pair_file_error/1) || cacertfile_error(tls) || dhfile_error(tls)
  end

  defp pair_file_error(pair) do
    # The files :ssl uses: cert wins over certfile, key over keyfile, and a
    # certfile without keyfile holds the key too.
    certfile = if Map.has_key?(pair, :cert), do: nil, else: Map.get(pair, :certfile)
    keyfile = if Map.has_key?(pair, :key), do: nil, else: Map.get(pair, :keyfile, certfile)

    (certfile && certfile_error(certfile)) ||
      (keyfile && keyfile_error(keyfile, Map.get(pair, :password, ~c"")))
  end

  defp certfile_error(file), do: certs_file_error(:certfile, file, ssl_path(file))

  # A file that must hold a certificate: read from `path`, named `name`.
  defp certs_file_error(key, path, name) do
    case File.read(path) do
      {:ok, data} ->
        if List.keymember?(:public_key.pem_decode(data), :Certificate, 0),
          do: nil,
          else: {key, {name, :no_certs}}

      {:error, reason} ->
        {key, {name, reason}}
    end
  end

  # :ssl wants exactly one key entry, which decodes with the password (any
  # failure to decode it is :wrong_password) to a private key.
  defp keyfile_error(file, password) do
    case File.read(file) do
      {:ok, data} ->
        case Enum.filter(:public_key.pem_decode(data), &listen_key_entry?/1) do
          [entry] ->
            pw = if is_function(password, 0), do: password.(), else: password

            try do
              :public_key.pem_entry_decode(entry, to_charlist(pw))
            catch
              _, _ -> {:keyfile, {ssl_path(file), :wrong_password}}
            else
              key ->
                if private_key?(key),
                  do: nil,
                  else: {:keyfile, {ssl_path(file), {:unexpected_content, key}}}
            end

          _ ->
            {:keyfile,
             {ssl_path(file), {:unexpected_content, {:missing_single_key, native_name(file)}}}}
        end

      {:error, reason} ->
        {:keyfile, {ssl_path(file), reason}}
    end
  end

  # (an encrypted PKCS #8 key is a PrivateKeyInfo entry)
  defp listen_key_entry?({type, _, _}),
    do: type in [:RSAPrivateKey, :DSAPrivateKey, :ECPrivateKey, :PrivateKeyInfo]

  # (an RSA-PSS key comes with its parameters)
  defp private_key?({rsa, params})
       when is_tuple(rsa) and tuple_size(rsa) > 0 and elem(rsa, 0) == :RSAPrivateKey and
              is_tuple(params),
       do: true

  defp private_key?(key) when is_tuple(key) and tuple_size(key) > 0,
    do:
      elem(key, 0) in [
        :RSAPrivateKey,
        :DSAPrivateKey,
        :ECPrivateKey,
        :"ML-DSAPrivateKey",
        :"SLH-DSAPrivateKey"
      ]

  defp private_key?(_), do: false

  # Not checked when cacerts is given: :ssl ignores cacertfile then. The
  # path is the one :ssl reads, absolute with a symbolic link resolved.
  defp cacertfile_error(tls) do
    with file when is_binary(file) or is_list(file) <- Keyword.get(tls, :cacertfile),
         cacerts when cacerts in [nil, :undefined] <- Keyword.get(tls, :cacerts) do
      path = unambiguous_path(file)
      certs_file_error(:cacertfile, path, :erlang.binary_to_list(path))
    else
      _ -> nil
    end
  end

  # dh wins over dhfile. :ssl crashes (a MatchError) on a file that is not
  # one DH parameters entry: Islet answers an error instead.
  defp dhfile_error(tls) do
    with file when is_binary(file) or is_list(file) <- Keyword.get(tls, :dhfile),
         false <- Keyword.has_key?(tls, :dh) do
      case File.read(file) do
        {:ok, data} ->
          case :public_key.pem_decode(data) do
            [{:DHParameter, der, _}] ->
              case dh_decode_error(der) do
                nil -> nil
                reason -> {:dhfile, reason}
              end

            entries ->
              {:dhfile, {:badmatch, entries}}
          end

        {:error, reason} ->
          {:dhfile, reason}
      end
    else
      _ -> nil
    end
  end

  defp dh_decode_error(der) do
    _ = :public_key.der_decode(:DHParameter, der)
    nil
  rescue
    e in MatchError ->
      case e.term do
        {:error, reason} -> reason
        other -> other
      end

    e ->
      e
  end

  # A file name as :ssl keeps it (a binary in the native encoding), and as
  # it names it in its errors (that binary's bytes as a list).
  defp native_name(file) when is_binary(file), do: file

  defp native_name(file),
    do: :unicode.characters_to_binary(file, :unicode, :file.native_name_encoding())

  defp ssl_path(file), do: file |> native_name() |> :erlang.binary_to_list()

  defp unambiguous_path(file) do
    abs = file |> native_name() |> :filename.absname()

    case :file.read_link(abs) do
      {:ok, target} ->
        if :filename.pathtype(target) == :relative,
          do: native_name(:filename.join([:filename.dirname(abs), target])),
          else: native_name(target)

      _ ->
        abs
    end
  end
end
