defmodule Islet.TLS.Verify do
  @moduledoc """
  Checks a client's certificate chain in Erlang, the way `:ssl`'s server
  does, for the listeners that give `verify_fun` or `partial_chain` with
  `verify: :verify_peer`.

  OpenSSL runs the handshake and checks that the client holds the key of
  the certificate it sent; for these listeners it accepts any chain, and
  `Islet.TLS.handshake/2` hands the chain here once OpenSSL's part is done.
  The path is built as `:ssl` builds it (from the chain the client sent and
  the trusted certificates of `cacerts`/`cacertfile`: ordered or not,
  completed from the trusted certificates, shortened by `partial_chain`,
  another root tried when one has expired or is unknown) and validated with
  `:public_key.pkix_path_validation/3`, `verify_fun` seeing the same events
  as with `:ssl` (`{:bad_cert, reason}`, `{:extension, ext}`, `:valid`,
  `:valid_peer`), after `:ssl`'s own checks of each event (a client
  certificate's extended key usage must allow client authentication). A
  failure is answered with the alert `:ssl` sends for it.

  Each certificate's signature algorithm is checked as `:ssl` checks it
  (`Islet.TLS.CertSigs`). Not done, as with Islet's other options: CRL and
  OCSP checks.
  """

  require Record

  alias Islet.Compat
  alias Islet.TLS.CertSigs

  for {name, tag} <- [
        otp_cert: :OTPCertificate,
        otp_tbs: :OTPTBSCertificate,
        spki: :OTPSubjectPublicKeyInfo,
        pk_alg: :PublicKeyAlgorithm,
        extension: :Extension
      ] do
    Record.defrecordp(
      name,
      tag,
      Record.extract(tag, from_lib: "public_key/include/public_key.hrl")
    )
  end

  @ext_key_usage {2, 5, 29, 37}
  @client_auth {1, 3, 6, 1, 5, 5, 7, 3, 2}
  @any_purpose {2, 5, 29, 37, 0}
  @ec {1, 2, 840, 10_045, 2, 1}
  @ed25519 {1, 3, 101, 112}
  @ed448 {1, 3, 101, 113}
  @rsa_pss {1, 2, 840, 113_549, 1, 1, 10}
  @dsa {1, 2, 840, 10_040, 4, 1}

  # :ssl's alerts for path validation errors (ssl_handshake's
  # path_validation_alert), as TLS alert descriptions.
  @bad_certificate 42
  @unsupported_certificate 43
  @certificate_revoked 44
  @certificate_expired 45
  @certificate_unknown 46
  @unknown_ca 48
  @handshake_failure 40
  @internal_error 80

  @typedoc "What the listener's context keeps for the check (made by `config/5`)."
  @type config :: %{
          trusted: list(),
          verify_fun: {function(), term()} | nil,
          partial_chain: (list() -> term()),
          depth: non_neg_integer(),
          sigs: CertSigs.table(),
          allow_any_ca_purpose: boolean()
        }

  @doc """
  The check's configuration, made once per listener: the trusted
  certificates (DER) are decoded here, not at every handshake, and the
  signature algorithm list (`Islet.TLS.CertSigs.list/1`) becomes its table
  of verdicts.
  """
  @spec config(
          [binary()],
          {function(), term()} | nil,
          (list() -> term()),
          non_neg_integer(),
          list() | nil,
          boolean()
        ) :: config()
  def config(cacerts, verify_fun, partial_chain, depth, sigs, allow_any_ca_purpose \\ false) do
    trusted = cacerts |> Enum.map(&trusted_entry/1) |> Enum.reject(&is_nil/1)

    %{
      trusted: trusted,
      verify_fun: verify_fun,
      partial_chain: partial_chain,
      depth: depth,
      sigs: CertSigs.table(sigs),
      allow_any_ca_purpose: allow_any_ca_purpose
    }
  end

  # A certificate: its DER and its decoded form.
  defp cert(der), do: {der, :public_key.pkix_decode_cert(der, :otp)}

  @doc """
  Checks `chain` (DER, the client's own certificate first, as it was sent)
  for a connection of TLS `version`. Returns `:ok`, or `{:error, alert}`
  with the TLS alert description `:ssl` would send.
  """
  @spec check([binary()], config(), :"tlsv1.2" | :"tlsv1.3") :: :ok | {:error, 0..255}
  def check(chain, config, version) do
    certs =
      try do
        Enum.map(chain, &cert/1)
      rescue
        _ -> throw({:alert, @certificate_unknown})
      end

    db = config.trusted
    ctx = %{db: db, config: Map.put(config, :version, version), invalidated: [], tried: []}

    case path_validate(trusted_and_paths(certs, db, config), ctx, {:bad_cert, :unknown_ca}) do
      {:ok, _} -> :ok
      {:error, reason} -> {:error, alert(reason)}
    end
  catch
    {:alert, code} -> {:error, code}
    _kind, _reason -> {:error, @internal_error}
  end

  # A trusted certificate with the key a certificate names its issuer by
  # ({issuer's serial, issuer's issuer}), as :ssl's certificate database.
  defp trusted_entry(der) do
    {_, otp} = c = cert(der)
    {:ok, key} = :public_key.pkix_issuer_id(otp, :self)
    {key, c}
  rescue
    _ -> nil
  end

  defp lookup(db, key) do
    case List.keyfind(db, key, 0) do
      {_, c} -> {:ok, c}
      nil -> :undefined
    end
  end

  defp self_signed?({_, otp}), do: :public_key.pkix_is_self_signed(otp)

  ## Paths: {trust anchor (a certificate or an error atom), path from the
  ## anchor's child down to the client's certificate}.

  defp trusted_and_paths([peer], db, config) do
    if self_signed?(peer),
      do: [{:selfsigned_peer, [peer]}],
      else: [incomplete_chain([peer], config, {:unknown_ca, [peer]}, db)]
  end

  defp trusted_and_paths(chain, db, config) do
    for path <- paths(chain) do
      case partial_chain(path, config, db) do
        {:unknown_ca, _} = result -> incomplete_chain(chain, config, result, db)
        result -> result
      end
    end
  end

  # The chain as sent, top first, when each certificate issued the one
  # before it; else the paths the client's own certificate leads to
  # through the others.
  defp paths(chain), do: paths(chain, chain, [])

  defp paths([top], _chain, path), do: [[top | path]]

  defp paths([{_, c1} = cert1, {_, c2} = cert2 | rest], chain, path) do
    if :public_key.pkix_is_issuer(c1, c2),
      do: paths([cert2 | rest], chain, [cert1 | path]),
      else: unordered(chain)
  end

  defp unordered([peer | others]) do
    for candidates <- candidate_sets(others) do
      list_db = candidates |> Enum.map(&trusted_entry(elem(&1, 0))) |> Enum.reject(&is_nil/1)

      case build_chain(peer, list_db, [peer]) do
        {:ok, :undefined, chain} -> Enum.reverse(chain)
        {:ok, root, chain} -> [root | Enum.reverse(chain)]
      end
    end
  end

  # Certificates claiming the same subject make one candidate set each (at
  # most 4 such subjects and 16 sets, as :ssl).
  defp candidate_sets(certs) do
    by_subject =
      Enum.reduce(certs, %{}, fn {_, otp} = c, acc ->
        {_, subject} = :public_key.pkix_subject_id(otp)
        Map.update(acc, subject, {[c], 1}, fn {cs, n} -> {[c | cs], n + 1} end)
      end)

    {sets, _, _} =
      Enum.reduce(Map.keys(by_subject), {[], 4, 1}, fn subject, {acc, dups, combos} ->
        case Map.fetch!(by_subject, subject) do
          {cs, n} when n > 1 and dups > 0 and n * combos <= 16 ->
            sets =
              if acc == [], do: Enum.map(cs, &[&1]), else: for(c <- cs, l <- acc, do: [c | l])

            {sets, dups - 1, combos * n}

          {[c | _], _} ->
            sets = if acc == [], do: [[c]], else: Enum.map(acc, &[c | &1])
            {sets, dups, combos}
        end
      end)

    sets
  end

  # Up from `cert` through `db`: {:ok, root | :undefined, chain (own first)}.
  # The chain ends where an issuer is already in it: certificates that
  # name each other as issuers (which a client can make, and send as its
  # chain) would otherwise lead round for ever.
  defp build_chain(cert, db, chain) do
    if self_signed?(cert) do
      {:ok, hd(chain), Enum.reverse(chain)}
    else
      issuer =
        case :public_key.pkix_issuer_id(elem(cert, 1), :other) do
          {:ok, id} -> {:ok, id}
          {:error, :issuer_not_found} -> find_issuer(cert, db, [])
        end

      with {:ok, id} <- issuer, {:ok, next} <- lookup(db, id), false <- next in chain do
        build_chain(next, db, [next | chain])
      else
        _ -> {:ok, :undefined, Enum.reverse(chain)}
      end
    end
  end

  # The trusted certificate that signed `cert`, by name and signature.
  defp find_issuer({der, otp}, db, invalidated) do
    Enum.find_value(db, {:error, :issuer_not_found}, fn {_, {_, candidate}} ->
      if :public_key.pkix_is_issuer(otp, candidate) and
           :public_key.pkix_verify(der, public_key(candidate)) and
           candidate not in invalidated,
         do: :public_key.pkix_issuer_id(candidate, :self)
    end)
  end

  defp public_key(cert) do
    otp_cert(tbsCertificate: tbs) = cert

    spki(algorithm: pk_alg(algorithm: alg, parameters: params), subjectPublicKey: key) =
      otp_tbs(tbs, :subjectPublicKeyInfo)

    case alg do
      @ec -> {key, params}
      @ed25519 -> {key, {:namedCurve, @ed25519}}
      @ed448 -> {key, {:namedCurve, @ed448}}
      @rsa_pss -> {key, params}
      @dsa -> {key, elem(params, 1)}
      _ -> key
    end
  end

  # The top of `path` is trusted, or issued by a trusted certificate, or
  # neither; partial_chain may then name a certificate of the path to trust.
  defp partial_chain([{der, _} = top | rest] = path, config, db) do
    if self_signed?(top) do
      {:ok, id} = :public_key.pkix_issuer_id(elem(top, 1), :self)

      case lookup(db, id) do
        {:ok, {^der, _}} -> shorten(path, config, {top, rest})
        {:ok, _} -> shorten(path, config, {:invalid_issuer, path})
        :undefined -> shorten(path, config, {:unknown_ca, path})
      end
    else
      issuer =
        case :public_key.pkix_issuer_id(elem(top, 1), :other) do
          {:ok, id} -> {:ok, id}
          {:error, _} -> find_issuer(top, db, [])
        end

      with {:ok, id} <- issuer, {:ok, new} <- lookup(db, id) do
        if self_signed?(new),
          do: shorten([new | path], config, {new, path}),
          else: shorten([new | path], config, {:unknown_ca, [new | path]})
      else
        _ -> shorten(path, config, {:unknown_ca, path})
      end
    end
  end

  defp shorten(path, %{partial_chain: fun}, default) do
    ders = for {der, _} <- path, do: der

    answer =
      try do
        {:ok, fun.(ders)}
      catch
        _, _ -> :raised
      end

    case answer do
      {:ok, {:trusted_ca, root}} -> trusted_path(root, path, default)
      {:ok, :unknown_ca} -> default
      :raised -> default
      {:ok, other} -> throw({:bad_partial_chain_answer, other})
    end
  end

  defp trusted_path(der, [{der, _} = cert | rest], _default), do: {cert, rest}
  defp trusted_path(der, [_ | rest], default), do: trusted_path(der, rest, default)
  defp trusted_path(_der, [], default), do: default

  # The client sent only part of its chain: completed from the trusted
  # certificates when what it sent leads into them.
  defp incomplete_chain([peer | _] = sent, config, default, db) do
    case build_chain(peer, db, [peer]) do
      {:ok, _, [^peer | _] = candidate} when candidate != sent ->
        if List.starts_with?(candidate, sent),
          do: partial_chain(Enum.reverse(candidate), config, db),
          else: default

      _ ->
        default
    end
  end

  ## Validation.

  # Each {anchor, path} is tried once: a verify_fun that fails a good path
  # with {:bad_cert, :unknown_ca} would otherwise have the same root found
  # for it again and again.
  defp path_validate([], _ctx, {:bad_cert, :root_cert_expired}),
    do: {:error, {:bad_cert, :cert_expired}}

  defp path_validate([], _ctx, error), do: {:error, error}

  defp path_validate([{trusted, path} = candidate | rest], ctx, error) do
    ctx = %{ctx | tried: [candidate | ctx.tried]}

    retry = fn invalidated ->
      Enum.reject(cross_signed(path, ctx.db, invalidated), &(&1 in ctx.tried))
    end

    case validate_path(trusted, path, ctx.config) do
      {:error, {:bad_cert, :root_cert_expired} = new} ->
        invalidated = [anchor(trusted) | ctx.invalidated]
        path_validate(retry.(invalidated) ++ rest, %{ctx | invalidated: invalidated}, new)

      {:error, {:bad_cert, :unknown_ca} = new} ->
        error = if error == {:bad_cert, :root_cert_expired}, do: error, else: new
        path_validate(retry.(ctx.invalidated) ++ rest, ctx, error)

      {:error, _} when rest != [] ->
        path_validate(rest, ctx, error)

      result ->
        result
    end
  end

  # Another root for the path, or for its tail: a trusted, self-signed
  # issuer of its first certificate not already found expired.
  defp cross_signed([], _db, _invalidated), do: []

  defp cross_signed([first | rest] = path, db, invalidated) do
    with {:ok, id} <- find_issuer(first, db, invalidated),
         {:ok, {_, otp} = root} <- lookup(db, id),
         true <- :public_key.pkix_is_self_signed(otp) do
      [{root, path}]
    else
      _ -> cross_signed(rest, db, invalidated)
    end
  end

  defp anchor({_der, otp}), do: otp
  defp anchor(atom) when is_atom(atom), do: atom

  defp validate_path(trusted, path, config) do
    ders = for {der, _} <- path, do: der

    state = %{
      issuer: anchor(trusted),
      path: path,
      # (None when partial_chain trusts the client's own certificate: the
      # path below the anchor is then empty, and valid, as with :ssl.)
      peer: with({_, otp} <- List.last(path), do: otp),
      allow_any: config.allow_any_ca_purpose,
      sigs: config.sigs,
      version: config.version
    }

    :public_key.pkix_path_validation(anchor(trusted), ders,
      max_path_length: config.depth,
      verify_fun: verify_fun(config.verify_fun, state)
    )
  end

  # :ssl's own checks of each event, then the user's function (ssl_handshake's
  # validation_fun_and_state, for a server: no host name to check).
  defp verify_fun(nil, state) do
    {fn
       cert, {:extension, _} = ext, st -> ssl_validate_extension(cert, ext, st)
       cert, event, st -> ssl_validate(cert, event, st)
     end, state}
  end

  defp verify_fun({fun, user_state}, state) do
    {fn
       cert, {:extension, _} = ext, {st, us} ->
         case ssl_validate_extension(cert, ext, st) do
           {:valid, st} -> {:valid, {st, us}}
           {:fail, reason} -> user(fun, cert, reason, st, us)
           {:unknown, _} -> user(fun, cert, ext, st, us)
         end

       cert, :valid_peer, {st, us} ->
         # As :ssl: the user's function sees the peer's signature algorithm
         # refused as a bad_cert event.
         event = if sign_ok?(cert, st), do: :valid_peer, else: sign_refused()
         user(fun, cert, event, st, us)

       cert, :valid, {st, us} ->
         # An intermediate's algorithm: checked likewise by newer :ssl
         # (its ssl_handshake:tls_verify_fun/4), not by ssl 10 and 11.2,
         # whose user's function sees it as valid.
         event =
           if not Compat.ssl_checks_ca_sigs_for_verify_fun?() or sign_ok?(cert, st),
             do: :valid,
             else: sign_refused()

         user(fun, cert, event, st, us)

       cert, event, {st, us} ->
         user(fun, cert, event, st, us)
     end, {state, user_state}}
  end

  # ssl_certificate's verify_sign/2. Where :ssl's own check fails (an
  # algorithm it has no TLS name for), it raises, and the handshake ends in
  # internal_error: so does this (check/3 catches it; a throw would be
  # taken by the path validation for a verdict).
  defp sign_ok?(cert, st) do
    alg = CertSigs.alg_of(cert)

    case CertSigs.lookup(st.sigs, st.version, alg) do
      :ok -> true
      refused when refused in [@bad_certificate, @unsupported_certificate] -> false
      _ -> :erlang.error({:no_tls_name_for_signature, alg})
    end
  end

  # The reason :ssl gives a refused signature algorithm.
  defp sign_refused do
    if Compat.ssl11?(),
      do: {:bad_cert, :unsupported_signature},
      else: {:bad_cert, :invalid_signature}
  end

  defp user(fun, cert, event, st, us) do
    case apply_user(fun, cert, event, us, st) do
      {valid, us} when valid in [:valid, :valid_peer] -> {valid, {st, us}}
      {:fail, _} = fail -> fail
      {:unknown, us} when event not in [:valid, :valid_peer] -> {:unknown, {st, us}}
    end
  end

  defp apply_user(fun, cert, event, us, %{path: path}) when is_function(fun, 4) do
    {der, _} = List.keyfind(path, cert, 1)
    fun.(cert, der, event, us)
  end

  defp apply_user(fun, cert, event, us, _st) when is_function(fun, 3), do: fun.(cert, event, us)

  # ssl_certificate:validate/3 for a server (the peer is a client): the
  # extended key usage must allow client authentication. ssl 11 names the
  # usages in its reason, which tells the client's own certificate from
  # its CAs, and with allow_any_ca_purpose takes a CA allowing any purpose.
  defp ssl_validate_extension(
         cert,
         {:extension, extension(extnID: @ext_key_usage, extnValue: uses)},
         st
       ) do
    cond do
      @client_auth in uses -> {:valid, st}
      not Compat.ssl11?() -> {:fail, {:bad_cert, :invalid_ext_key_usage}}
      cert == st.peer -> {:fail, {:bad_cert, {:invalid_ext_keyusage, uses}}}
      st.allow_any and @any_purpose in uses -> {:valid, st}
      true -> {:fail, {:bad_cert, {:ca_invalid_ext_keyusage, uses}}}
    end
  end

  defp ssl_validate_extension(_cert, {:extension, _}, st), do: {:unknown, st}

  defp ssl_validate(cert, {:bad_cert, :cert_expired}, %{issuer: cert}),
    do: {:fail, {:bad_cert, :root_cert_expired}}

  defp ssl_validate(_cert, {:bad_cert, _} = reason, _st), do: {:fail, reason}

  defp ssl_validate(cert, event, st) when event in [:valid, :valid_peer] do
    if sign_ok?(cert, st),
      do: {:valid, %{st | issuer: cert}},
      else: {:fail, sign_refused()}
  end

  # ssl_handshake's path_validation_alert (and ssl 11's additions).
  defp alert(reason) do
    case Compat.ssl11?() and alert11(reason) do
      alert when is_integer(alert) -> alert
      _ -> alert10(reason)
    end
  end

  defp alert11({:bad_cert, reason})
       when reason in [:unsupported_signature, :invalid_ext_keyusage],
       do: @unsupported_certificate

  defp alert11({:bad_cert, {reason, _}})
       when reason in [:invalid_ext_keyusage, :ca_invalid_ext_keyusage, :key_usage_mismatch],
       do: @unsupported_certificate

  defp alert11({:bad_cert, reason})
       when reason in [:distinguished_name_not_permitted, :policy_tree_exceeded],
       do: @bad_certificate

  defp alert11(_reason), do: nil

  defp alert10({:bad_cert, :cert_expired}), do: @certificate_expired
  defp alert10({:bad_cert, :unknown_critical_extension}), do: @unsupported_certificate
  defp alert10({:bad_cert, {:revoked, _}}), do: @certificate_revoked
  defp alert10({:bad_cert, :unknown_ca}), do: @unknown_ca

  defp alert10({:bad_cert, reason})
       when reason in [:invalid_issuer, :invalid_signature, :name_not_permitted, :selfsigned_peer],
       do: @bad_certificate

  defp alert10({:bad_cert, {:revocation_status_undetermined, _}}), do: @bad_certificate
  defp alert10(_other), do: @handshake_failure
end
