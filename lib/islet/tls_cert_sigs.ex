defmodule Islet.TLS.CertSigs do
  @moduledoc """
  Which signature algorithms `:ssl`'s server takes in a client's certificate
  chain, so that Islet.TLS takes the same.

  `:ssl` checks the signature algorithm of each certificate of the path it
  validates (the client's own and the intermediates; not the trust anchor)
  against `signature_algs_cert`, or `signature_algs` when that is not given
  (its default depends on the listener's versions): a certificate signed
  with an algorithm the list lacks is refused with a `bad_certificate`
  alert (`{bad_cert, invalid_signature}`), and one signed with an algorithm
  `:ssl` has no TLS name for (MD5, SHA-224, DSA but for TLS 1.2's
  DSA-SHA-1) makes its check fail with an `internal_error` alert. OpenSSL
  knows none of this, so Islet computes the verdicts here, once per
  listener: `Islet.TLS.Verify` applies them in Erlang, and the NIF's chain
  check applies the table `nif_rules/1` makes.

  This follows `ssl_certificate:verify_sign/2` of OTP 25's `:ssl` (10.8),
  and on ssl 11 (`Islet.Compat.ssl11?/0`) `verify_sign_support/2` of OTP
  27's (11.2): a refused algorithm is answered `unsupported_certificate`,
  TLS 1.2 reads the list's ECDSA and RSA PKCS #1 schemes as pairs too, and
  the default list (`signature_algs_cert`'s) adds RSA with SHA-1.

  `request_lists/1` gives, on ssl 11, the lists `:ssl`'s server names in
  its CertificateRequest, by which clients choose the certificate they send.
  """

  alias Islet.Compat

  @typedoc "A certificate's signature algorithm, as the check sees it."
  @type alg ::
          {:rsa_pkcs1 | :rsa_pss | :ecdsa | :dsa, atom()} | :ed25519 | :ed448 | :other

  @typedoc "A verdict: `:ok`, or the TLS alert description `:ssl` refuses with."
  @type verdict :: :ok | 42 | 43 | 80

  @bad_certificate 42
  @unsupported_certificate 43
  @internal_error 80

  # OpenSSL's names for the parts of a {hash, sign} pair.
  @pair_hashes %{
    sha: "SHA1",
    sha224: "SHA224",
    sha256: "SHA256",
    sha384: "SHA384",
    sha512: "SHA512"
  }
  @pair_signs %{rsa: "RSA", ecdsa: "ECDSA", dsa: "DSA"}

  # The signature algorithms told apart, by OID (and, for RSASSA-PSS, by the
  # hash): what the NIF's table lists. Anything else is :other.
  @rsa_pss {1, 2, 840, 113_549, 1, 1, 10}
  @hashes [
    md5: {1, 2, 840, 113_549, 2, 5},
    sha: {1, 3, 14, 3, 2, 26},
    sha224: {2, 16, 840, 1, 101, 3, 4, 2, 4},
    sha256: {2, 16, 840, 1, 101, 3, 4, 2, 1},
    sha384: {2, 16, 840, 1, 101, 3, 4, 2, 2},
    sha512: {2, 16, 840, 1, 101, 3, 4, 2, 3}
  ]
  @by_oid %{
    {1, 2, 840, 113_549, 1, 1, 4} => {:rsa_pkcs1, :md5},
    {1, 2, 840, 113_549, 1, 1, 5} => {:rsa_pkcs1, :sha},
    {1, 3, 14, 3, 2, 29} => {:rsa_pkcs1, :sha},
    {1, 2, 840, 113_549, 1, 1, 14} => {:rsa_pkcs1, :sha224},
    {1, 2, 840, 113_549, 1, 1, 11} => {:rsa_pkcs1, :sha256},
    {1, 2, 840, 113_549, 1, 1, 12} => {:rsa_pkcs1, :sha384},
    {1, 2, 840, 113_549, 1, 1, 13} => {:rsa_pkcs1, :sha512},
    {1, 2, 840, 10_045, 4, 1} => {:ecdsa, :sha},
    {1, 2, 840, 10_045, 4, 3, 1} => {:ecdsa, :sha224},
    {1, 2, 840, 10_045, 4, 3, 2} => {:ecdsa, :sha256},
    {1, 2, 840, 10_045, 4, 3, 3} => {:ecdsa, :sha384},
    {1, 2, 840, 10_045, 4, 3, 4} => {:ecdsa, :sha512},
    {1, 2, 840, 10_040, 4, 3} => {:dsa, :sha},
    {2, 16, 840, 1, 101, 3, 4, 3, 1} => {:dsa, :sha224},
    {2, 16, 840, 1, 101, 3, 4, 3, 2} => {:dsa, :sha256},
    {1, 3, 101, 112} => :ed25519,
    {1, 3, 101, 113} => :ed448
  }

  @doc """
  The list the check uses for a listener's `:ssl` options: `signature_algs_cert`,
  else `signature_algs`, else `:ssl`'s default `signature_algs` for the
  listener's versions (`nil` when this OTP does not tell it: no check).
  """
  @spec list(keyword()) :: list() | nil
  def list(tls) do
    case Keyword.get(tls, :signature_algs_cert) || Keyword.get(tls, :signature_algs) ||
           default_cert_list(versions(tls)) do
      list when is_list(list) -> list
      # (A value of the wrong form: Islet.TLS.Options answers :ssl's error.)
      _ -> nil
    end
  end

  @doc """
  On ssl 11, the signature algorithms `:ssl`'s server names in a
  CertificateRequest, as OpenSSL's names: `{tls12, tls13}` (nil before ssl
  11, or for options of the wrong form). TLS 1.2's is `signature_algs` as
  pairs; TLS 1.3's is `signature_algs` and, as OpenSSL cannot send a
  separate `signature_algorithms_cert`, the schemes `:ssl` lists there
  (`signature_algs_cert`, or by default `signature_algs` and RSA with SHA-1).
  """
  @spec request_lists(keyword()) :: {[String.t()], [String.t()]} | nil
  def request_lists(tls) do
    sa = Keyword.get(tls, :signature_algs) || default_list(versions(tls))

    sac =
      Keyword.get(tls, :signature_algs_cert) ||
        if(Keyword.has_key?(tls, :signature_algs), do: [], else: default_cert_list(versions(tls)))

    if Compat.ssl11?() and is_list(sa) and is_list(sac) do
      tls12 = if Enum.any?(sa, &is_atom/1), do: schemes_1_2(sa, true), else: sa
      {names(tls12), names(tls13_list(sa) ++ tls13_list(sac))}
    end
  end

  defp names(list), do: list |> Enum.map(&openssl_name/1) |> Enum.reject(&is_nil/1) |> Enum.uniq()

  @doc """
  OpenSSL's name for a signature scheme or a `{hash, sign}` pair of `:ssl`'s
  options (nil for a form it has none for; names OpenSSL does not know are
  dropped where the list is set).
  """
  @spec openssl_name(atom() | {atom(), atom()}) :: String.t() | nil
  def openssl_name(scheme) when scheme in [:eddsa_ed25519, :eddsa_ed448],
    do: String.replace_prefix(Atom.to_string(scheme), "eddsa_", "")

  def openssl_name(scheme) when is_atom(scheme), do: Atom.to_string(scheme)

  def openssl_name({hash, sign}) when sign in [:rsa_pss_rsae, :rsa_pss_pss] and is_atom(hash),
    do: "#{sign}_#{hash}"

  def openssl_name({hash, sign})
      when is_map_key(@pair_hashes, hash) and is_map_key(@pair_signs, sign),
      do: @pair_signs[sign] <> "+" <> @pair_hashes[hash]

  def openssl_name(_), do: nil

  defp versions(tls), do: Keyword.get(tls, :versions, [:"tlsv1.3", :"tlsv1.2"])

  # :ssl's default signature_algs_cert on ssl 11: the default
  # signature_algs and RSA with SHA-1 in the highest version's form. (ssl
  # 10's is signature_algs', which has SHA-1.)
  defp default_cert_list(versions) do
    case default_list(versions) do
      list when is_list(list) and is_list(versions) ->
        cond do
          not Compat.ssl11?() -> list
          :"tlsv1.3" in versions -> list ++ [:rsa_pkcs1_sha1]
          true -> list ++ [{:sha, :rsa}]
        end

      other ->
        other
    end
  end

  # (The wire form of a version, written out: tls_record's function for it
  # changed name in OTP 26.)
  @wire_versions %{"tlsv1.3": {3, 4}, "tlsv1.2": {3, 3}, "tlsv1.1": {3, 2}, tlsv1: {3, 1}}

  defp default_list(versions) do
    tuples =
      versions
      |> Enum.map(&Map.fetch!(@wire_versions, &1))
      |> Enum.sort(:desc)

    :tls_v1.default_signature_algs(tuples)
  rescue
    _ -> nil
  catch
    _, _ -> nil
  end

  @doc """
  The algorithm a decoded (`:otp`) certificate is signed with.
  """
  @spec alg_of(tuple()) :: alg()
  def alg_of(otp_cert) do
    # {:OTPCertificate, tbs, {:SignatureAlgorithm, oid, params}, signature}
    {:SignatureAlgorithm, oid, params} = elem(otp_cert, 2)

    if oid == @rsa_pss do
      {:rsa_pss, pss_hash(params)}
    else
      Map.get(@by_oid, oid, :other)
    end
  end

  # :ssl names a PSS signature by the hash of its mask generation function.
  defp pss_hash({:"RSASSA-PSS-params", _hash, {:MaskGenAlgorithm, _mgf1, mgf_hash}, _, _}) do
    hash_oid =
      case mgf_hash do
        {:HashAlgorithm, hoid, _} -> hoid
        {_, hoid, _} -> hoid
        _ -> nil
      end

    Enum.find_value(@hashes, :other, fn {name, oid} -> oid == hash_oid and name end)
  end

  defp pss_hash(_), do: :other

  @doc """
  `:ssl`'s verdict on a certificate signed with `alg` in a chain checked
  for a TLS `version` (`:"tlsv1.2"` or `:"tlsv1.3"`) with the list `list`
  (see `list/1`; `nil`: no check).
  """
  @spec verdict(alg(), :"tlsv1.2" | :"tlsv1.3", list() | nil) :: verdict()
  def verdict(_alg, _version, nil), do: :ok
  def verdict(alg, version, list), do: verdict(alg, version, list, Compat.ssl11?())

  defp verdict({:dsa, :sha}, :"tlsv1.2", list, ssl11),
    do: ok_if({:sha, :dsa} in list, ssl11)

  # (is_supported_signature_algorithm_1_3/2 on the list as it is.)
  defp verdict({:rsa_pss, _} = alg, :"tlsv1.2", list, ssl11) do
    case scheme(alg) do
      nil -> @internal_error
      scheme -> ok_if(supported_1_3?(scheme, list), ssl11)
    end
  end

  defp verdict(alg, :"tlsv1.2", list, ssl11) do
    case scheme(alg) do
      nil -> @internal_error
      scheme -> ok_if(supported_1_2?(components(scheme), schemes_1_2(list, ssl11)), ssl11)
    end
  end

  defp verdict(alg, :"tlsv1.3", list, ssl11) do
    case scheme(alg) do
      nil -> @internal_error
      scheme -> ok_if(supported_1_3?(scheme, tls13_list(list)), ssl11)
    end
  end

  # tls_handshake_1_3's filter_tls13_algs/1: a TLS 1.3 chain is checked
  # against the list's schemes and its RSA and SHA-1 pairs as schemes.
  defp tls13_list(list) do
    Enum.flat_map(list, fn
      scheme when is_atom(scheme) -> [scheme]
      {h, :rsa} when h in [:sha256, :sha384, :sha512] -> [:"rsa_pkcs1_#{h}"]
      {:sha, :rsa} -> [:rsa_pkcs1_sha1]
      {:sha, :ecdsa} -> [:ecdsa_sha1]
      _ -> []
    end)
  end

  defp ok_if(true, _ssl11), do: :ok
  defp ok_if(false, false), do: @bad_certificate
  defp ok_if(false, true), do: @unsupported_certificate

  # ssl_cipher:signature_algorithm_to_scheme/1 (nil where it has no clause).
  defp scheme({:rsa_pss, h}) when h in [:sha256, :sha384, :sha512], do: :"rsa_pss_pss_#{h}"
  defp scheme({:rsa_pkcs1, h}) when h in [:sha256, :sha384, :sha512], do: :"rsa_pkcs1_#{h}"
  defp scheme({:rsa_pkcs1, :sha}), do: :rsa_pkcs1_sha1
  defp scheme({:ecdsa, :sha256}), do: :ecdsa_secp256r1_sha256
  defp scheme({:ecdsa, :sha384}), do: :ecdsa_secp384r1_sha384
  defp scheme({:ecdsa, :sha512}), do: :ecdsa_secp521r1_sha512
  defp scheme({:ecdsa, :sha}), do: :ecdsa_sha1
  defp scheme(:ed25519), do: :eddsa_ed25519
  defp scheme(:ed448), do: :eddsa_ed448
  defp scheme(_), do: nil

  # A scheme as TLS 1.2's {hash, sign} pair (nil for a name it is not).
  defp components(:rsa_pkcs1_sha1), do: {:sha, :rsa}
  defp components(:ecdsa_sha1), do: {:sha, :ecdsa}
  defp components(:eddsa_ed25519), do: {:none, :eddsa}
  defp components(:eddsa_ed448), do: {:none, :eddsa}

  defp components(scheme) do
    parts =
      case Atom.to_string(scheme) do
        "rsa_pkcs1_" <> h -> {h, :rsa}
        "rsa_pss_pss_" <> h -> {h, :rsa_pss_pss}
        "rsa_pss_rsae_" <> h -> {h, :rsa_pss_rsae}
        "ecdsa_" <> rest -> {rest |> String.split("_") |> List.last(), :ecdsa}
        _ -> nil
      end

    with {hash, sign} <- parts, do: {String.to_atom(hash), sign}
  end

  # ssl_cipher:signature_schemes_1_2/1: the pairs of a list, and its PSS
  # schemes as pairs; ssl 11's also its ECDSA and RSA PKCS #1 schemes
  # (not EdDSA's).
  defp schemes_1_2(list, ssl11) do
    list
    |> Enum.flat_map(fn
      {_, _} = pair ->
        [pair]

      scheme when is_atom(scheme) ->
        case components(scheme) do
          {_, sign} = pair when sign in [:rsa_pss_pss, :rsa_pss_rsae] -> [pair]
          {_, sign} = pair when ssl11 and sign in [:ecdsa, :rsa] -> [pair]
          _ -> []
        end

      _ ->
        []
    end)
    |> Enum.uniq()
  end

  # ssl_cipher:is_supported_sign/2.
  defp supported_1_2?({hash, :rsa} = pair, pairs),
    do: pair in pairs or {hash, :rsa_pss_rsae} in pairs

  defp supported_1_2?(pair, pairs), do: pair in pairs

  defp supported_1_3?(scheme, list)
       when scheme in [:rsa_pkcs1_sha256, :rsa_pkcs1_sha384, :rsa_pkcs1_sha512] do
    "rsa_pkcs1_" <> hash = Atom.to_string(scheme)
    scheme in list or :"rsa_pss_rsae_#{hash}" in list
  end

  defp supported_1_3?(scheme, list), do: scheme in list

  @doc """
  The NIF's table for a listener's list: `{rules_1_2, rules_1_3}`, each a
  list of `{signature_oid, hash_oid, alert}` (dotted strings; the hash only
  for RSASSA-PSS, else `""`; alert 0 for accepted) for the algorithms this
  module tells apart; the NIF answers `internal_error` for the others, as
  `:ssl` does. `nil` for a `nil` list: no check.
  """
  @spec nif_rules(list() | nil) :: {list(), list()} | nil
  def nif_rules(nil), do: nil

  def nif_rules(list) do
    known =
      Enum.map(@by_oid, fn {oid, alg} -> {dotted(oid), "", alg} end) ++
        for {name, hoid} <- @hashes, do: {dotted(@rsa_pss), dotted(hoid), {:rsa_pss, name}}

    rules = fn version ->
      for {oid, hash, alg} <- known do
        {oid, hash, with(:ok <- verdict(alg, version, list), do: 0)}
      end
    end

    {rules.(:"tlsv1.2"), rules.(:"tlsv1.3")}
  end

  defp dotted(oid), do: oid |> Tuple.to_list() |> Enum.map_join(".", &Integer.to_string/1)

  @typedoc "The verdicts for a list, made once per listener by `table/1`."
  @type table :: %{(:"tlsv1.2" | :"tlsv1.3") => %{alg() => verdict()}} | nil

  @doc """
  The verdicts on every algorithm this module tells apart, per version, for
  a listener's list (`nil` for a `nil` list: no check): what
  `Islet.TLS.Verify` looks up at each handshake (`lookup/3`) instead of
  walking the list.
  """
  @spec table(list() | nil) :: table()
  def table(nil), do: nil

  def table(list) do
    algs = Map.values(@by_oid) ++ for {name, _} <- @hashes, do: {:rsa_pss, name}

    Map.new(
      [:"tlsv1.2", :"tlsv1.3"],
      &{&1, Map.new(algs, fn alg -> {alg, verdict(alg, &1, list)} end)}
    )
  end

  @doc "The verdict of `table/1`'s table on `alg` (`internal_error` for the algorithms it lacks)."
  @spec lookup(table(), :"tlsv1.2" | :"tlsv1.3", alg()) :: verdict()
  def lookup(nil, _version, _alg), do: :ok
  def lookup(table, version, alg), do: Map.get(Map.fetch!(table, version), alg, @internal_error)
end
