defmodule Islet.TCPPropertyTest do
  # Random sequences of a server's reads, on gen_tcp and on Islet.TCP,
  # compared call by call (Islet.Test.ReadProperty). gen_tcp's `buffer` is
  # raised to Islet's read size (64 KiB; a case sends less), so that a
  # recv(0) or a message takes all that has come on both.
  use ExUnit.Case, async: true

  alias Islet.Test.{Diff, ReadProperty}

  @moduletag :proper
  @moduletag timeout: 180_000

  defp transport do
    %{
      pair: &pair/1,
      send: &:gen_tcp.send/2,
      finish: &:gen_tcp.shutdown(&1, :write),
      tags: {:tcp, :tcp_closed, :tcp_passive, :tcp_error},
      timeouts: [0, 5],
      one_record: false
    }
  end

  defp pair(mod) do
    {_l, s, c} = Diff.pair(mod, buffer: 65_536)
    :ok = :inet.setopts(c, nodelay: true)
    {s, c}
  end

  test "any sequence of reads gives what gen_tcp gives, call by call" do
    assert ReadProperty.check(transport(), &Diff.run/1, &Diff.report/2, 60) == true
  end
end
