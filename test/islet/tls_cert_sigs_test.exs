defmodule Islet.TLSCertSigsTest do
  # Islet.TLS.CertSigs' verdicts on their own; the handshakes that apply
  # them, against :ssl, are in tls_verify_test.exs.
  use ExUnit.Case, async: true

  alias Islet.TLS.CertSigs

  test "the default list is :ssl's for the listener's versions (the check is on)" do
    both = CertSigs.list([])
    assert is_list(both) and :rsa_pss_rsae_sha256 in both and {:sha, :rsa} in both
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
    assert CertSigs.verdict({:rsa_pkcs1, :sha256}, :"tlsv1.2", [7, "x", {:a, :b, :c}]) == 42
  end

  test "verdicts: TLS 1.3 reads the list's pairs as schemes, TLS 1.2 its PSS schemes as pairs" do
    both = CertSigs.list([])
    # ({sha, rsa} is in the default list for both versions: rsa_pkcs1_sha1.)
    assert CertSigs.verdict({:rsa_pkcs1, :sha}, :"tlsv1.3", both) == :ok
    assert CertSigs.verdict({:rsa_pkcs1, :sha}, :"tlsv1.3", [:rsa_pss_rsae_sha256]) == 42
    # rsa_pkcs1_sha256 is taken where rsa_pss_rsae_sha256 is.
    assert CertSigs.verdict({:rsa_pkcs1, :sha256}, :"tlsv1.3", [:rsa_pss_rsae_sha256]) == :ok
    assert CertSigs.verdict({:rsa_pkcs1, :sha256}, :"tlsv1.2", [:rsa_pss_rsae_sha256]) == :ok
    assert CertSigs.verdict({:ecdsa, :sha256}, :"tlsv1.2", [:ecdsa_secp256r1_sha256]) == 42
    assert CertSigs.verdict({:ecdsa, :sha256}, :"tlsv1.2", [{:sha256, :ecdsa}]) == :ok
    assert CertSigs.verdict({:dsa, :sha}, :"tlsv1.2", both) == :ok
    assert CertSigs.verdict(:ed25519, :"tlsv1.2", both) == 42
    assert CertSigs.verdict(:ed25519, :"tlsv1.3", both) == :ok
    # No TLS name: :ssl's own check fails.
    for alg <- [{:rsa_pkcs1, :md5}, {:ecdsa, :sha224}, {:dsa, :sha256}, :other],
        version <- [:"tlsv1.2", :"tlsv1.3"] do
      assert CertSigs.verdict(alg, version, both) == 80
    end

    assert CertSigs.verdict({:rsa_pkcs1, :md5}, :"tlsv1.2", nil) == :ok
  end

  test "the NIF's table names each algorithm by OID, with PSS's hash" do
    {v12, v13} = CertSigs.nif_rules([:rsa_pss_pss_sha256, {:sha256, :rsa}])
    assert {"1.2.840.113549.1.1.10", "2.16.840.1.101.3.4.2.1", 0} in v12
    assert {"1.2.840.113549.1.1.11", "", 0} in v12
    assert {"1.2.840.113549.1.1.5", "", 42} in v12
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
