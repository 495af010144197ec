defmodule Islet.Bench.Child do
  @moduledoc """
  A child BEAM of the benchmark (or of a test), seen from its parent.

  Started as `/bin/sh -c 'ulimit -n FDS ...; exec "$@"' taskset -c CPUS
  elixir --erl FLAGS -pa EBIN... -e 'Islet.Bench.Agent.main()'`: the shell
  raises the open-files limit (the BEAM inherits it; 10,000 connections need
  more than the usual 1024), `taskset` pins it, and `--erl` sets the number
  of schedulers. The ebin directories are those of the running build (so
  `MIX_BUILD_PATH` is honoured, and a test build's support modules are
  there). Commands go over stdin/stdout (see `Islet.Bench.Agent`, whose
  command loop other entry points reuse with `Islet.Bench.Agent.run/3`);
  other output of the child (logs, crash reports) is echoed to stderr with
  the child's name.
  """

  alias Islet.Bench.Agent

  defstruct [:name, :port, :os_pid, :info]

  @typedoc "A running child."
  @type t :: %__MODULE__{name: String.t(), port: port(), os_pid: non_neg_integer(), info: map()}

  @typedoc """
  Options of `start/2`: `:cpus` (taskset list; not pinned without it),
  `:schedulers` (default 1; `:all` for the BEAM's default), `:fds` (open-files
  limit wanted, default 65536; the hard limit if lower), `:erl_flags` (more
  emulator flags, e.g. `"+JPperf true"` to profile with perf), `:main` (the
  entry point, an Elixir expression; default `"Islet.Bench.Agent.main()"`).
  """
  @type option ::
          {:cpus, String.t()}
          | {:schedulers, pos_integer() | :all}
          | {:fds, pos_integer()}
          | {:erl_flags, String.t()}
          | {:main, String.t()}

  @start_timeout 60_000
  @marker Agent.marker()
  @echo_lines 60

  @doc "Starts a child BEAM and waits until it is ready."
  @spec start(String.t(), [option()]) :: {:ok, t()} | {:error, term()}
  def start(name, options) do
    schedulers = Keyword.get(options, :schedulers, 1)
    fds = Keyword.get(options, :fds, 65_536)

    # No busy-waiting schedulers: idle time is then not counted as CPU time.
    erl_flags =
      if(schedulers == :all, do: "", else: "+S #{schedulers}:#{schedulers} ") <>
        "+sbwt none +sbwtdcpu none +sbwtdio none " <> Keyword.get(options, :erl_flags, "")

    script = ~s[ulimit -n #{fds} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"]

    pin =
      case Keyword.fetch(options, :cpus) do
        {:ok, cpus} -> [executable!("taskset"), "-c", cpus]
        :error -> []
      end

    args =
      ["-c", script, "islet-child"] ++
        pin ++
        [executable!("elixir"), "--erl", erl_flags] ++
        Enum.flat_map(code_paths(), &["-pa", &1]) ++
        ["-e", Keyword.get(options, :main, "Islet.Bench.Agent.main()")]

    port =
      Port.open({:spawn_executable, "/bin/sh"}, [
        :binary,
        :exit_status,
        :use_stdio,
        :stderr_to_stdout,
        {:line, 1_048_576},
        args: args
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    child = %__MODULE__{name: name, port: port, os_pid: os_pid}

    case await(child, @start_timeout) do
      {:ok, {:ready, info}} ->
        {:ok, %{child | info: info}}

      {:ok, other} ->
        kill(child)
        {:error, {:unexpected, other}}

      {:error, _} = error ->
        kill(child)
        error
    end
  end

  @doc "The ebin directories a child needs: Islet's (with the bench) and consolidated protocols."
  @spec code_paths() :: [String.t()]
  def code_paths do
    # (:code.lib_dir/2 is deprecated from OTP 27.)
    ebin = :islet |> :code.lib_dir() |> List.to_string() |> Path.join("ebin")
    consolidated = Path.expand("../../../consolidated", ebin)
    [ebin | Enum.filter([consolidated], &File.dir?/1)]
  end

  defp executable!(name) do
    System.find_executable(name) || raise "#{name} not found in PATH"
  end

  @doc "Sends a command and waits up to `timeout` ms for the answer."
  @spec call(t(), term(), timeout()) :: {:ok, term()} | {:error, term()}
  def call(%__MODULE__{port: port} = child, command, timeout) do
    Port.command(port, [Agent.encode(command), ?\n])
    await(child, timeout)
  catch
    :error, :badarg -> {:error, :child_gone}
  end

  @doc "Like `call/3`, but raises unless the answer is there."
  @spec call!(t(), term(), timeout()) :: term()
  def call!(child, command, timeout) do
    case call(child, command, timeout) do
      {:ok, answer} -> answer
      {:error, reason} -> raise "#{child.name}: #{inspect(command)} failed: #{inspect(reason)}"
    end
  end

  defp await(%__MODULE__{port: port, name: name} = child, timeout) do
    receive do
      {^port, {:data, {:eol, @marker <> line}}} ->
        {:ok, Agent.decode(line)}

      {^port, {:data, {_eol, line}}} ->
        echo(port, name, line)
        await(child, timeout)

      {^port, {:exit_status, status}} ->
        {:error, {:exited, status}}
    after
      timeout -> {:error, :timeout}
    end
  end

  # Echoes the child's own output (logs, crash reports), up to a limit.
  defp echo(port, name, line) do
    count = Process.get({__MODULE__, port}, 0)
    Process.put({__MODULE__, port}, count + 1)

    cond do
      count < @echo_lines -> IO.puts(:stderr, "[#{name}] #{line}")
      count == @echo_lines -> IO.puts(:stderr, "[#{name}] (further output not shown)")
      true -> :ok
    end
  end

  @doc "Asks the child to stop, and kills it if it does not exit within a few seconds."
  @spec stop(t() | nil) :: :ok
  def stop(nil), do: :ok

  def stop(%__MODULE__{port: port} = child) do
    _ = call(child, :stop, 10_000)

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      5_000 -> kill(child)
    end

    flush(port)
  end

  @doc "Kills the child (SIGKILL to its OS process) if it is still running."
  @spec kill(t()) :: :ok
  def kill(%__MODULE__{port: port, os_pid: os_pid}) do
    if File.exists?("/proc/#{os_pid}") do
      _ = System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true)
    end

    try do
      Port.close(port)
    rescue
      ArgumentError -> :ok
    end

    flush(port)
  end

  defp flush(port) do
    receive do
      {^port, _} -> flush(port)
    after
      0 ->
        Process.delete({__MODULE__, port})
        :ok
    end
  end
end
