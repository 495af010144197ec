defmodule Islet.TLSPropertyTest do
  # Random sequences of a server's reads, on :ssl and on Islet.TLS,
  # compared call by call (Islet.Test.ReadProperty). Left out, as
  # on-purpose differences (README): a send while bytes are unread (:ssl
  # delivers one record per call, Islet all that has come), and a timeout
  # of 0 (:ssl's fires before its connection process reads the socket, so
  # it answers only what was read before the call).
  use ExUnit.Case, async: true

  alias Islet.Test.{ReadProperty, TLSDiff}

  @moduletag :proper
  @moduletag timeout: 180_000

  defp transport do
    %{
      pair: &pair/1,
      send: &:ssl.send/2,
      finish: &:ssl.close/1,
      tags: {:ssl, :ssl_closed, :ssl_passive, :ssl_error},
      timeouts: [5],
      one_record: true
    }
  end

  defp pair(mod) do
    {_l, s, c} = TLSDiff.pair!(mod)
    :ok = :ssl.setopts(c, nodelay: true)
    {s, c}
  end

  test "any sequence of reads gives what :ssl gives, call by call" do
    assert ReadProperty.check(transport(), &TLSDiff.run/1, &TLSDiff.report/2, 60) == true
  end
end
