defmodule Islet.TLSCraftedRecordsTest do
  # Records a real client would not send, sealed with a TLS 1.2 client's
  # own keys (so that they open) and written on its TCP socket behind
  # :ssl's back: what the server makes of them, against :ssl's server.
  # (tls_records_test.exs injects records that do not open.)
  use ExUnit.Case, async: true

  import Islet.Test.TLSDiff, only: [listen: 2, port: 2]

  alias Islet.Test.{Certs, Diff}

  @moduletag :capture_log

  @suite ~c"ECDHE-RSA-AES128-GCM-SHA256"

  # The client's write key and implicit IV, from the master secret (RFC
  # 5246 6.3; AES-128-GCM: 16-byte keys, 4-byte IVs).
  defp client_keys(c) do
    {:ok, info} = :ssl.connection_information(c, [:master_secret, :client_random, :server_random])

    seed = "key expansion" <> info[:server_random] <> info[:client_random]

    <<key::binary-16, _::binary-16, iv::binary-4, _::binary>> =
      prf(info[:master_secret], seed, 40)

    %{key: key, iv: iv}
  end

  defp prf(secret, seed, len, a \\ nil, acc \\ <<>>) do
    a = :crypto.mac(:hmac, :sha256, secret, a || seed)
    acc = acc <> :crypto.mac(:hmac, :sha256, secret, a <> seed)
    if byte_size(acc) >= len, do: binary_part(acc, 0, len), else: prf(secret, seed, len, a, acc)
  end

  # The client's n-th record after its Finished (sequence number n).
  defp seal(%{key: key, iv: iv}, n, type, plain) do
    aad = <<n::64, type, 3, 3, byte_size(plain)::16>>

    {ct, tag} =
      :crypto.crypto_one_time_aead(:aes_128_gcm, key, iv <> <<n::64>>, plain, aad, 16, true)

    body = <<n::64>> <> ct <> tag
    <<type, 3, 3, byte_size(body)::16>> <> body
  end

  # "hi", then, once the server waits in recv again, a record of `type`
  # holding `plain` and "after" in one write. The server reads until an
  # error or 1.5 s without data (:ssl's connection process ends at a fatal
  # alert and a recv that was not waiting then says :closed; Islet reads a
  # record when asked, so the waiting recv makes both report the same).
  defp serve(mod, type, plain) do
    l = listen(mod, versions: [:"tlsv1.2"])
    port = port(mod, l)
    parent = self()

    client =
      spawn_link(fn ->
        {:ok, tcp} = :gen_tcp.connect(~c"localhost", port, [:binary, active: false])

        opts =
          Keyword.merge(Certs.client_opts(),
            versions: [:"tlsv1.2"],
            keep_secrets: true,
            ciphers: [:ssl.str_to_suite(@suite)]
          )

        {:ok, c} = :ssl.connect(tcp, opts, 10_000)
        k = client_keys(c)
        :ok = :gen_tcp.send(tcp, seal(k, 1, 23, "hi"))
        receive(do: (:go -> :ok))
        :ok = :gen_tcp.send(tcp, seal(k, 2, type, plain) <> seal(k, 3, 23, "after"))
        Kernel.send(parent, :sent)
        receive(do: (:done -> :ok))
      end)

    {:ok, s} = mod.accept(l)
    {:ok, ^s} = mod.handshake(s, 30_000)
    {:ok, "hi"} = mod.recv(s, 0, 10_000)
    reader = Task.async(fn -> read_all(mod, s, []) end)
    Diff.wait_blocked(reader.pid)
    Kernel.send(client, :go)
    assert_receive :sent, 10_000
    result = Task.await(reader, 15_000)
    Kernel.send(client, :done)
    mod.close(s)
    result
  end

  defp read_all(mod, s, acc) do
    case mod.recv(s, 0, 1_500) do
      {:ok, data} -> read_all(mod, s, [data | acc])
      {:error, {:tls_alert, {name, _}}} -> Enum.reverse([{:alert, name} | acc])
      error -> Enum.reverse([error | acc])
    end
  end

  defp same(type, plain) do
    ssl = serve(Islet.Reference.SSL, type, plain)
    assert serve(Islet.TLS, type, plain) == ssl
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
end
