defmodule Islet.CompatTest do
  # Islet.Compat asks gen_tcp what this OTP does: each question must leave
  # nothing behind (no descriptor, no socket file), answered or not.
  # async: false: it changes TMPDIR and counts this BEAM's descriptors.
  use ExUnit.Case, async: false

  @key {Islet.Compat, :unix_accept_copies_reuseaddr}

  defp fd_count, do: length(File.ls!("/proc/self/fd"))

  defp ask_afresh do
    :persistent_term.erase(@key)
    Islet.Compat.unix_accept_copies_reuseaddr?()
  end

  setup do
    tmpdir = System.get_env("TMPDIR")
    answer = :persistent_term.get(@key, nil)

    on_exit(fn ->
      if tmpdir, do: System.put_env("TMPDIR", tmpdir), else: System.delete_env("TMPDIR")
      if answer == nil, do: :persistent_term.erase(@key), else: :persistent_term.put(@key, answer)
    end)
  end

  test "the reuseaddr question: gen_tcp's own answer, and nothing left" do
    dir = Path.join(System.tmp_dir!(), "islet_compat_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    System.put_env("TMPDIR", dir)
    before = fd_count()

    answer = ask_afresh()
    assert is_boolean(answer)
    # The answer stays: asked again, nothing is opened.
    assert Islet.Compat.unix_accept_copies_reuseaddr?() == answer
    assert fd_count() == before
    assert File.ls!(dir) == []

    # A directory whose socket paths are too long for AF_UNIX: the listen
    # fails, the answer is false, and still nothing is left.
    long = Path.join(dir, String.duplicate("d", 120))
    File.mkdir_p!(long)
    System.put_env("TMPDIR", long)
    assert ask_afresh() == false
    assert fd_count() == before
    File.rm_rf!(dir)
  end

  test "gen_tcp26?/0 says what this gen_tcp does with a bare byte" do
    {:ok, l} = :gen_tcp.listen(0, ip: :loopback, active: false)
    {:ok, port} = :inet.port(l)
    {:ok, c} = :gen_tcp.connect(~c"localhost", port, active: false)
    {:ok, s} = :gen_tcp.accept(l)

    try do
      sent = :gen_tcp.send(c, 42)

      if Islet.Compat.gen_tcp26?() do
        assert sent == :ok and :gen_tcp.recv(s, 1, 1_000) == {:ok, ~c"*"}
      else
        assert sent == {:error, :einval}
      end
    after
      Enum.each([c, s, l], &:gen_tcp.close/1)
    end
  end
end
