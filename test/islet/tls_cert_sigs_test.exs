defmodule Islet.TLSCertSigsTest do
  # Islet.TLS.CertSigs' verdicts on their own; the handshakes that apply
  # them, against :ssl, are in tls_verify_test.exs.
  use ExUnit.Case, async: true

  alias Islet.TLS.CertSigs

  # ssl 11 (OTP 26+) refuses a certificate's algorithm with
  # unsupported_certificate, ssl 10 (OTP 25) with bad_certificate.
  @refused if Islet.Compat.ssl11?(), do: 43, else: 42

  test "the default list is :ssl's for the listener's versions (the check is on)" do
    both = CertSigs.list([])
    assert is_list(both) and :rsa_pss_rsae_sha256 in both

    # RSA with SHA-1: ssl 10's default signature_algs has it; ssl 11's
    # signature_algs_cert adds it, in the highest version's form.
    if Islet.Compat.ssl11?() do
      assert List.last(both) == :rsa_pkcs1_sha1 and {:sha, :rsa} not in both
      assert List.last(CertSigs.list(versions: [:"tlsv1.2"])) == {:sha, :rsa}
    else
      assert {:sha, :rsa} in both
    end

    only13 = CertSigs.list(versions: [:"tlsv1.3"])
    assert :rsa_pkcs1_sha1 in only13 and not Enum.any?(only13, &is_tuple/1)
    assert CertSigs.list(signature_algs: [:ecdsa_secp256r1_sha256]) == [:ecdsa_secp256r1_sha256]

    assert CertSigs.list(signature_algs: [{:sha256, :rsa}], signature_algs_cert: [:eddsa_ed25519]) ==
             [:eddsa_ed25519]
  end

  test "options of the wrong form leave it to the option checks (no check, no crash)" do
    assert CertSigs.list(signature_algs: :bad) == nil
    assert CertSigs.list(signature_algs_cert: "bad") == nil
    assert CertSigs.list(versions: :bad) == nil
    assert CertSigs.verdict({:rsa_pkcs1, :sha256}, :"tlsv1.2", [7, "x", {:a, :b, :c}]) == @refused
  end

  test "verdicts: TLS 1.3 reads the list's pairs as schemes, TLS 1.2 its PSS schemes as pairs" do
    both = CertSigs.list([])
    # ({sha, rsa} is in the default list for both versions: rsa_pkcs1_sha1.)
    assert CertSigs.verdict({:rsa_pkcs1, :sha}, :"tlsv1.3", both) == :ok
    assert CertSigs.verdict({:rsa_pkcs1, :sha}, :"tlsv1.3", [:rsa_pss_rsae_sha256]) == @refused
    # rsa_pkcs1_sha256 is taken where rsa_pss_rsae_sha256 is.
    assert CertSigs.verdict({:rsa_pkcs1, :sha256}, :"tlsv1.3", [:rsa_pss_rsae_sha256]) == :ok
    assert CertSigs.verdict({:rsa_pkcs1, :sha256}, :"tlsv1.2", [:rsa_pss_rsae_sha256]) == :ok
    assert CertSigs.verdict({:ecdsa, :sha256}, :"tlsv1.2", [{:sha256, :ecdsa}]) == :ok
    assert CertSigs.verdict(:ed25519, :"tlsv1.2", both) == @refused

    # TLS 1.2 reads ECDSA and RSA PKCS #1 schemes as pairs on ssl 11 only.
    ecdsa_scheme = CertSigs.verdict({:ecdsa, :sha256}, :"tlsv1.2", [:ecdsa_secp256r1_sha256])
    rsa_scheme = CertSigs.verdict({:rsa_pkcs1, :sha384}, :"tlsv1.2", [:rsa_pkcs1_sha384])

    if Islet.Compat.ssl11?() do
      assert ecdsa_scheme == :ok and rsa_scheme == :ok
      assert CertSigs.verdict({:dsa, :sha}, :"tlsv1.2", both) == 43
      assert CertSigs.verdict({:dsa, :sha}, :"tlsv1.2", [{:sha, :dsa}]) == :ok
    else
      assert ecdsa_scheme == 42 and rsa_scheme == 42
      assert CertSigs.verdict({:dsa, :sha}, :"tlsv1.2", both) == :ok
    end

    assert CertSigs.verdict(:ed25519, :"tlsv1.3", both) == :ok
    # No TLS name: :ssl's own check fails.
    for alg <- [{:rsa_pkcs1, :md5}, {:ecdsa, :sha224}, {:dsa, :sha256}, :other],
        version <- [:"tlsv1.2", :"tlsv1.3"] do
      assert CertSigs.verdict(alg, version, both) == 80
    end

    assert CertSigs.verdict({:rsa_pkcs1, :md5}, :"tlsv1.2", nil) == :ok
  end

  test "OpenSSL's names for :ssl's schemes and pairs" do
    assert CertSigs.openssl_name(:eddsa_ed25519) == "ed25519"
    assert CertSigs.openssl_name(:rsa_pss_rsae_sha256) == "rsa_pss_rsae_sha256"
    assert CertSigs.openssl_name({:sha256, :rsa_pss_pss}) == "rsa_pss_pss_sha256"
    assert CertSigs.openssl_name({:sha, :rsa}) == "RSA+SHA1"
    assert CertSigs.openssl_name({:sha384, :ecdsa}) == "ECDSA+SHA384"
    assert CertSigs.openssl_name({:md5, :rsa}) == nil
    assert CertSigs.openssl_name("x") == nil
  end

  test "the CertificateRequest's lists (ssl 11; OpenSSL's own before)" do
    if Islet.Compat.ssl11?() do
      {tls12, tls13} = CertSigs.request_lists([])
      # TLS 1.2: signature_algs as pairs (no EdDSA, no SHA-1);
      assert "ECDSA+SHA256" in tls12 and "RSA+SHA256" in tls12 and "rsa_pss_rsae_sha256" in tls12
      refute "ed25519" in tls12 or "RSA+SHA1" in tls12 or "rsa_pkcs1_sha1" in tls12
      # TLS 1.3: signature_algs as schemes, and signature_algs_cert's RSA with SHA-1.
      assert "ed25519" in tls13 and "rsa_pkcs1_sha256" in tls13
      assert List.last(tls13) == "rsa_pkcs1_sha1"

      # signature_algs given, signature_algs_cert not: :ssl names no
      # signature_algorithms_cert, so TLS 1.3's is signature_algs alone.
      algs = [:ecdsa_secp256r1_sha256, {:sha256, :rsa}]

      assert CertSigs.request_lists(signature_algs: algs) ==
               {["ECDSA+SHA256", "RSA+SHA256"], ["ecdsa_secp256r1_sha256", "rsa_pkcs1_sha256"]}

      assert {_, ["ecdsa_secp256r1_sha256", "rsa_pkcs1_sha256", "rsa_pss_rsae_sha256"]} =
               CertSigs.request_lists(
                 signature_algs: algs,
                 signature_algs_cert: [:rsa_pss_rsae_sha256]
               )

      assert CertSigs.request_lists(signature_algs: :bad) == nil
    else
      assert CertSigs.request_lists([]) == nil
    end
  end

  test "the NIF's table names each algorithm by OID, with PSS's hash" do
    {v12, v13} = CertSigs.nif_rules([:rsa_pss_pss_sha256, {:sha256, :rsa}])
    assert {"1.2.840.113549.1.1.10", "2.16.840.1.101.3.4.2.1", 0} in v12
    assert {"1.2.840.113549.1.1.11", "", 0} in v12
    assert {"1.2.840.113549.1.1.5", "", @refused} in v12
    assert {"1.2.840.113549.1.1.4", "", 80} in v13
    assert {"1.2.840.113549.1.1.11", "", 0} in v13
    assert CertSigs.nif_rules(nil) == nil
  end

  test "the table agrees with verdict/3 and answers internal_error for the others" do
    list = CertSigs.list([])
    table = CertSigs.table(list)

    for version <- [:"tlsv1.2", :"tlsv1.3"],
        alg <- [{:rsa_pkcs1, :sha256}, {:rsa_pkcs1, :md5}, {:rsa_pss, :sha256}, :ed25519] do
      assert CertSigs.lookup(table, version, alg) == CertSigs.verdict(alg, version, list)
    end

    assert CertSigs.lookup(table, :"tlsv1.3", :other) == 80
    assert CertSigs.lookup(CertSigs.table(nil), :"tlsv1.3", :other) == :ok
  end

  test "the algorithm of a decoded certificate" do
    alg = fn name ->
      Islet.Test.Certs.der(name) |> :public_key.pkix_decode_cert(:otp) |> CertSigs.alg_of()
    end

    assert alg.(:client) == {:rsa_pkcs1, :sha256}
    assert alg.(:client_sha1) == {:rsa_pkcs1, :sha}
    assert alg.(:client_md5) == {:rsa_pkcs1, :md5}
    assert alg.(:client_pss) == {:rsa_pss, :sha256}
    assert alg.(:inter_client) == {:ecdsa, :sha256}
  end
end
