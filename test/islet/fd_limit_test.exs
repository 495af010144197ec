defmodule Islet.FdLimitTest do
  # Regression: when the fd limit was raised after the BEAM started (its poll
  # sets keep the size they had), a socket whose fd was past that size could
  # never wait or close: enif_select failed silently, active mode delivered
  # nothing and close left the fd open. Such sockets are now refused with
  # {:error, :system_limit}, as gen_tcp does.
  use ExUnit.Case, async: false

  @moduletag timeout: 120_000

  @script ~S"""
  {_, 0} = System.cmd("prlimit", ["--pid", System.pid(), "--nofile=4096:4096"])
  {:ok, l} = Islet.TCP.listen(0, ip: :loopback)
  {:ok, {_, port}} = Islet.TCP.sockname(l)
  client = "import socket,time; s=socket.create_connection(('127.0.0.1',#{port})); time.sleep(3)"
  Port.open({:spawn_executable, System.find_executable("python3")}, args: ["-c", client])
  # Push the next fd numbers past 1023, the poll sets' size at start.
  _files = for _ <- 1..1100, do: elem(:file.open("/dev/null", [:read, :raw]), 1)
  IO.puts("RESULT #{inspect(Islet.TCP.accept(l))}")
  """

  @tag :tmp_dir
  test "a connection past the BEAM's poll-set size is refused with system_limit", %{tmp_dir: dir} do
    if System.find_executable("prlimit") && System.find_executable("python3") do
      script = Path.join(dir, "fd_limit.exs")
      File.write!(script, @script)
      pa = Enum.flat_map(:code.get_path(), &["-pa", to_string(&1)])
      elixir = System.find_executable("elixir")
      cmd = "ulimit -Sn 1024; exec \"$0\" \"$@\""

      {out, _} =
        System.cmd("sh", ["-c", cmd, elixir | pa ++ [script]],
          stderr_to_stdout: true,
          env: [{"ISLET_SANITIZE", "0"}]
        )

      assert out =~ "RESULT {:error, :system_limit}", out
    end
  end
end
