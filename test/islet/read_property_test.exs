defmodule Islet.ReadPropertyTest do
  # Random sequences of a server's reads, on the built-in transport and on
  # Islet's, compared call by call (Islet.Test.ReadProperty, with PropEr).
  use ExUnit.Case, async: true

  alias Islet.Test.{Diff, ReadProperty, TLSDiff}

  @moduletag :proper
  @moduletag timeout: 180_000

  # gen_tcp's `buffer` is raised to Islet's read size (64 KiB; a case
  # sends less), so that a recv(0) or a message takes all that has come on
  # both.
  test "TCP: any sequence of reads gives what gen_tcp gives, call by call" do
    pair = fn mod ->
      {_l, s, c} = Diff.pair(mod, buffer: 65_536)
      :ok = :inet.setopts(c, nodelay: true)
      {s, c}
    end

    transport = %{
      pair: pair,
      send: &:gen_tcp.send/2,
      finish: &:gen_tcp.shutdown(&1, :write),
      tags: {:tcp, :tcp_closed, :tcp_passive, :tcp_error},
      timeouts: [0, 5],
      one_record: false
    }

    assert ReadProperty.check(transport, &Diff.run/1, &Diff.report/2, 60) == true
  end

  # Left out, as on-purpose differences (README): a send while bytes are
  # unread (:ssl delivers one record per call, Islet all that has come),
  # and a timeout of 0 (:ssl's fires before its connection process reads
  # the socket, so it answers only what was read before the call).
  test "TLS: any sequence of reads gives what :ssl gives, call by call" do
    pair = fn mod ->
      {_l, s, c} = TLSDiff.pair!(mod, [], versions: [:"tlsv1.3"])
      :ok = :ssl.setopts(c, nodelay: true)
      {s, c}
    end

    transport = %{
      pair: pair,
      send: &:ssl.send/2,
      # (Not close: on OTP 27, :ssl's close waits up to 5 s for the
      # server's close_notify, which a server that is not reading sends
      # only when it next reads.)
      finish: &:ssl.shutdown(&1, :write),
      tags: {:ssl, :ssl_closed, :ssl_passive, :ssl_error},
      timeouts: [5],
      one_record: true,
      update: &:ssl.update_keys(&1, if(&2, do: :read_write, else: :write))
    }

    assert ReadProperty.check(transport, &TLSDiff.run/1, &TLSDiff.report/2, 60) == true
  end
end
