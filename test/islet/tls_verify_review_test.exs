defmodule Islet.TLSVerifyReviewTest do
  # Client certificates that the fixtures of Islet.Test.Certs do not cover
  # (not yet valid, an intermediate that is no CA, a path longer than
  # `depth`...), checked by OpenSSL (no verify_fun) and in Erlang (with
  # one), and the peer information calls, against :ssl.
  use ExUnit.Case, async: true

  import Islet.Test.TLSDiff

  alias Islet.Test.Certs

  @moduletag :capture_log
  @moduletag timeout: 120_000

  @extensions """
  [ client ]
  basicConstraints = critical, CA:FALSE
  keyUsage = critical, digitalSignature
  extendedKeyUsage = clientAuth
  [ client_no_ds ]
  basicConstraints = critical, CA:FALSE
  keyUsage = critical, keyEncipherment
  extendedKeyUsage = clientAuth
  [ not_ca ]
  basicConstraints = critical, CA:FALSE
  keyUsage = critical, keyCertSign, cRLSign
  [ no_certsign ]
  basicConstraints = critical, CA:TRUE
  keyUsage = critical, cRLSign, digitalSignature
  [ inter ]
  basicConstraints = critical, CA:TRUE
  keyUsage = critical, keyCertSign, cRLSign
  """

  # Extra certificates, made once per test run: name => {cert pem, key pem}.
  setup_all do
    Certs.dir()
    dir = Path.join(System.tmp_dir!(), "islet_review_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    File.write!(Path.join(dir, "x.cnf"), Certs.openssl_conf(@extensions))
    File.write!(Path.join(dir, "index.txt"), "")
    File.write!(Path.join(dir, "serial"), "2000\n")
    ca = Certs.file(:ca, :cert)
    ca_key = Certs.file(:ca, :key)

    # A client certificate valid from 2099 on.
    leaf(dir, "future", ca, ca_key, "client", {"20990101000000Z", "20990102000000Z"})
    # Without digitalSignature in its key usage.
    leaf(dir, "no_ds", ca, ca_key, "client_no_ds", nil)
    # Intermediates: two in a row, one that is no CA, one without keyCertSign.
    leaf(dir, "i1", ca, ca_key, "inter", nil)
    leaf(dir, "i2", pem(dir, "i1"), key(dir, "i1"), "inter", nil)
    leaf(dir, "i2_client", pem(dir, "i2"), key(dir, "i2"), "client", nil)
    leaf(dir, "notca", ca, ca_key, "not_ca", nil)
    leaf(dir, "notca_client", pem(dir, "notca"), key(dir, "notca"), "client", nil)
    leaf(dir, "nocs", ca, ca_key, "no_certsign", nil)
    leaf(dir, "nocs_client", pem(dir, "nocs"), key(dir, "nocs"), "client", nil)
    # An expired intermediate.
    leaf(dir, "old_inter", ca, ca_key, "inter", {"20200101000000Z", "20200102000000Z"})
    leaf(dir, "old_client", pem(dir, "old_inter"), key(dir, "old_inter"), "client", nil)

    # Certificates with their signature spoilt (its last byte): the CA's
    # client certificate, and one below two intermediates.
    spoil(dir, Certs.file(:client, :cert), Certs.file(:client, :key), "bad_sig")
    spoil(dir, pem(dir, "i2_client"), key(dir, "i2_client"), "bad_sig_i2")

    for {chain_name, certs} <- [
          {"i2_chain", ["i2", "i1"]},
          {"notca_chain", ["notca"]},
          {"nocs_chain", ["nocs"]},
          {"old_chain", ["old_inter"]}
        ] do
      # (With the CA: what the client's cacertfile holds.)
      File.write!(
        pem(dir, chain_name),
        Enum.map(certs, &File.read!(pem(dir, &1))) ++ [File.read!(Certs.file(:ca, :cert))]
      )
    end

    %{dir: dir}
  end

  defp pem(dir, name), do: Path.join(dir, name <> ".pem")
  defp key(dir, name), do: Path.join(dir, name <> ".key")

  defp leaf(dir, name, ca, ca_key, ext, dates) do
    sh!(dir, ~w(openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out #{name}.key))

    sh!(
      dir,
      ~w(openssl req -new -key #{name}.key -subj /CN=review-#{name} -out #{name}.csr)
    )

    validity =
      case dates do
        nil -> ~w(-days 30)
        {from, to} -> ~w(-startdate #{from} -enddate #{to})
      end

    sh!(
      dir,
      ~w(openssl ca -batch -config x.cnf -in #{name}.csr -cert #{ca} -keyfile #{ca_key}
         -extensions #{ext} -notext -out #{name}.pem) ++ validity
    )
  end

  defp spoil(dir, cert, key, name) do
    [{:Certificate, der, _}] = :public_key.pem_decode(File.read!(cert))
    head = binary_part(der, 0, byte_size(der) - 1)
    last = :binary.last(der)
    spoilt = <<head::binary, Bitwise.bxor(last, 1)>>
    File.write!(pem(dir, name), :public_key.pem_encode([{:Certificate, spoilt, :not_encrypted}]))
    File.cp!(key, key(dir, name))
  end

  defp sh!(dir, [cmd | args]) do
    case System.cmd(cmd, args, cd: dir, stderr_to_stdout: true) do
      {_, 0} -> :ok
      {out, st} -> raise "#{cmd} #{Enum.join(args, " ")} failed (#{st}): #{out}"
    end
  end

  # A client presenting `name`'s certificate (`chain`: the file of the
  # certificates it sends above it, with the CA).
  defp client(dir, name, chain) do
    cacert = if chain, do: pem(dir, chain), else: Certs.file(:ca, :cert)

    [certfile: pem(dir, name), keyfile: key(dir, name), cacertfile: cacert]
  end

  defp server(version, extra), do: Certs.require_client_cert(version, extra)

  defp event({:extension, ext}), do: {:extension, elem(ext, 1)}
  defp event(e), do: e

  defp recording(to) do
    {fn _cert, ev, state ->
       Kernel.send(to, {:verify_fun, event(ev)})

       case ev do
         {:extension, _} -> {:unknown, state}
         {:bad_cert, _} = r -> {:fail, r}
         _ -> {:valid, state}
       end
     end, []}
  end

  defp observe(mod, server_opts, client_opts),
    do: verify_outcome(mod, server_opts, client_opts, &elem(&1, 0))

  for version <- [:"tlsv1.2", :"tlsv1.3"] do
    @version version

    describe "#{version}" do
      for {what, name, chain} <- [
            {"a client certificate not yet valid", "future", nil},
            {"a client certificate without digitalSignature", "no_ds", nil},
            {"a client certificate whose signature is wrong", "bad_sig", nil},
            {"the same below intermediates the client sent", "bad_sig_i2", "i2_chain"},
            {"a chain of two intermediates", "i2_client", "i2_chain"},
            {"an intermediate that is no CA", "notca_client", "notca_chain"},
            {"an intermediate without keyCertSign", "nocs_client", "nocs_chain"},
            {"an expired intermediate", "old_client", "old_chain"}
          ] do
        @name name
        @chain chain
        test "#{what}: OpenSSL's check and Erlang's", %{dir: dir} do
          assert_same(fn mod ->
            c = client(dir, @name, @chain)

            {observe(mod, server(@version, []), c),
             observe(mod, server(@version, verify_fun: recording(self())), c)}
          end)
        end
      end

      test "depth: a path of two intermediates", %{dir: dir} do
        assert_same(fn mod ->
          c = client(dir, "i2_client", "i2_chain")

          for depth <- [0, 1, 2], fun <- [[], [verify_fun: recording(self())]] do
            observe(mod, server(@version, [depth: depth] ++ fun), c)
          end
        end)
      end

      test "depth 0: a client certificate the CA signed", %{dir: _dir} do
        assert_same(fn mod ->
          for fun <- [[], [verify_fun: recording(self())]] do
            observe(mod, server(@version, [depth: 0] ++ fun), Certs.client_cert_opts(:client))
          end
        end)
      end

      test "self-signed and unknown CA without verify_fun" do
        assert_same(fn mod ->
          for name <- [:self_client, :other_client, :client_expired] do
            observe(mod, server(@version, []), Certs.client_cert_opts(name))
          end
        end)
      end

      test "a self-signed client certificate among the trusted ones" do
        assert_same(fn mod ->
          trusted = [cacerts: [Certs.der(:ca), Certs.der(:self_client)]]

          for fun <- [[], [verify_fun: recording(self())]] do
            opts = @version |> server(trusted ++ fun) |> Keyword.delete(:cacertfile)
            observe(mod, opts, Certs.client_cert_opts(:self_client))
          end
        end)
      end

      test "partial_chain trusting the client's own certificate (an empty path)" do
        # Islet raised on the empty path below the anchor (internal_error).
        result =
          assert_same(fn mod ->
            client =
              Certs.client_cert_opts(:inter_client) ++ [cacertfile: Certs.file(:ca_inter, :cert)]

            # (certificate_authorities: see tls_verify_test's partial_chain test.)
            no_names = if @version == :"tlsv1.3", do: [certificate_authorities: false], else: []

            for cacerts <- [[Certs.der(:ca)], [Certs.der(:other_ca)]],
                fun <- [[], [verify_fun: recording(self())]] do
              opts =
                @version
                |> server(
                  [cacerts: cacerts, partial_chain: &{:trusted_ca, List.last(&1)}] ++
                    no_names ++ fun
                )
                |> Keyword.delete(:cacertfile)

              observe(mod, opts, client)
            end
          end)

        # (Handshakes, not a scenario that raised with both modules.)
        assert [{{:ok, _}, _, _} | _] = result
      end

      test "verify_peer without fail_if_no_peer_cert, no client certificate" do
        assert_same(fn mod ->
          for fun <- [[], [verify_fun: recording(self())]] do
            observe(mod, server(@version, [fail_if_no_peer_cert: false] ++ fun), [])
          end
        end)
      end
    end
  end
end
