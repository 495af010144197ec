defmodule Islet.Bench.OS do
  @moduledoc """
  What the benchmark reads about its own OS process from `/proc`: CPU time
  (all threads, so native threads such as Islet's poller count, which
  `:erlang.statistics(:runtime)` would miss), resident memory and the file
  descriptor limit.
  """

  @doc """
  CPU time used so far by this OS process, all threads, in nanoseconds.

  Summed from `/proc/self/task/*/schedstat` (nanosecond resolution); falls
  back to `utime + stime` from `/proc/self/stat` (clock ticks, usually 10 ms)
  where schedstat is missing. The second element names the source.
  """
  @spec cpu_ns() :: {non_neg_integer(), :schedstat | :stat}
  def cpu_ns do
    case schedstat_ns() do
      {:ok, ns} -> {ns, :schedstat}
      :error -> {stat_ticks() * div(1_000_000_000, clock_ticks()), :stat}
    end
  end

  @doc """
  Time CPU `cpu` (a number, as a string or integer) has spent so far, from
  `/proc/stat`, in clock ticks: `{busy, total}`, where idle and iowait are
  not busy. `:error` where the line is missing.
  """
  @spec cpu_ticks(String.t() | non_neg_integer()) :: {:ok, {integer(), integer()}} | :error
  def cpu_ticks(cpu) do
    name = "cpu#{cpu} "

    with {:ok, stat} <- File.read("/proc/stat"),
         line when is_binary(line) <-
           Enum.find(String.split(stat, "\n"), &String.starts_with?(&1, name)) do
      [_ | fields] = String.split(line)
      # user nice system idle iowait irq softirq steal (guest time is in user)
      ticks = fields |> Enum.take(8) |> Enum.map(&String.to_integer/1)
      idle = Enum.at(ticks, 3) + Enum.at(ticks, 4)
      total = Enum.sum(ticks)
      {:ok, {total - idle, total}}
    else
      _ -> :error
    end
  end

  @doc "`utime + stime` of this OS process from `/proc/self/stat`, in clock ticks."
  @spec stat_ticks() :: non_neg_integer()
  def stat_ticks do
    stat = File.read!("/proc/self/stat")
    # The command name (field 2) is in parentheses and may contain spaces.
    [_, after_comm] = :binary.split(stat, ") ")
    fields = String.split(after_comm, " ")
    # after_comm starts at field 3 (state); utime and stime are fields 14, 15.
    String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
  end

  @doc "Clock ticks per second (`getconf CLK_TCK`; 100 when unknown)."
  @spec clock_ticks() :: pos_integer()
  def clock_ticks do
    case :persistent_term.get({__MODULE__, :clk_tck}, nil) do
      nil ->
        hz =
          case System.cmd("getconf", ["CLK_TCK"], stderr_to_stdout: true) do
            {out, 0} -> String.to_integer(String.trim(out))
            _ -> 100
          end

        :persistent_term.put({__MODULE__, :clk_tck}, hz)
        hz

      hz ->
        hz
    end
  rescue
    _ -> 100
  end

  @doc """
  CPU time used so far by another OS process, all threads, in nanoseconds
  (from `/proc/PID/task/*/schedstat`).
  """
  @spec cpu_ns_of(non_neg_integer()) :: {:ok, non_neg_integer()} | {:error, :no_schedstat}
  def cpu_ns_of(os_pid) do
    case schedstat_ns("/proc/#{os_pid}") do
      {:ok, ns} -> {:ok, ns}
      :error -> {:error, :no_schedstat}
    end
  end

  defp schedstat_ns(proc \\ "/proc/self") do
    case File.ls("#{proc}/task") do
      {:ok, tids} ->
        Enum.reduce_while(tids, {:ok, 0}, fn tid, {:ok, sum} ->
          case File.read("#{proc}/task/#{tid}/schedstat") do
            {:ok, text} ->
              [ns | _] = String.split(text, " ")
              {:cont, {:ok, sum + String.to_integer(ns)}}

            # A thread may have exited since the listing.
            {:error, :enoent} ->
              {:cont, {:ok, sum}}

            {:error, _} ->
              {:halt, :error}
          end
        end)

      {:error, _} ->
        :error
    end
  end

  @doc """
  Waits until this process's RSS has stopped falling: until a reading is
  no more than 0.5% below the one 8 readings earlier (readings a second
  apart), or `max_ms` has passed.

  After a forced collection of every process the VM gives memory back to
  the OS over the next 20-30 seconds (emptied carriers leave its cache,
  free blocks are discarded): with 10,000 idle TLS connections the
  server's RSS fell by 30% (Islet.TLS) and 70% (`:ssl`, whose collected
  heaps are larger) before it stayed put, and a sample taken at once read
  an arbitrary point of that fall (Islet.TLS: 10.8 KB per connection at
  once, 7.0 KB settled). Options (for tests): `:read` (a function returning
  the RSS, default `rss_bytes/0`), `:interval_ms` (default 1000).
  """
  @spec await_rss_settled(non_neg_integer(), keyword()) :: :ok
  def await_rss_settled(max_ms, options \\ []) do
    read = Keyword.get(options, :read, &rss_bytes/0)
    interval = Keyword.get(options, :interval_ms, 1_000)
    deadline = System.monotonic_time(:millisecond) + max_ms
    settle([read.()], read, interval, deadline)
  end

  @settle_window 8

  # `readings`: newest first, the last @settle_window + 1 kept.
  defp settle(readings, read, interval, deadline) do
    settled = length(readings) > @settle_window and hd(readings) >= List.last(readings) * 0.995

    if settled or System.monotonic_time(:millisecond) >= deadline do
      :ok
    else
      Process.sleep(interval)
      settle(Enum.take([read.() | readings], @settle_window + 1), read, interval, deadline)
    end
  end

  @doc "Resident set size of this OS process in bytes (`VmRSS` in `/proc/self/status`)."
  @spec rss_bytes() :: non_neg_integer()
  def rss_bytes, do: status_kb("VmRSS") * 1024

  defp status_kb(field) do
    "/proc/self/status"
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(0, fn line ->
      case String.split(line, ~r/[:\s]+/, trim: true) do
        [^field, kb, "kB"] -> String.to_integer(kb)
        _ -> nil
      end
    end)
  end

  @doc """
  The soft limit on open files of this OS process (`/proc/self/limits`);
  "unlimited" is given as 1,000,000,000.
  """
  @spec fd_limit() :: non_neg_integer()
  def fd_limit do
    "/proc/self/limits"
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(0, fn
      "Max open files" <> rest ->
        case String.split(rest, " ", trim: true) do
          ["unlimited" | _] -> 1_000_000_000
          [soft | _] -> String.to_integer(soft)
        end

      _ ->
        nil
    end)
  end
end
