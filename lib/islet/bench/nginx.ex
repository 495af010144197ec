defmodule Islet.Bench.Nginx do
  @moduledoc """
  nginx as an outside reference for the TLS handshake rows: the issue's
  handshake goal (2.5x `:ssl`) is "about what nginx reaches on the same
  machine", so when an `nginx` binary is installed (Debian's `nginx-light`
  is enough) the benchmark measures it with the same handshake client, in
  the same minutes, and reports nginx against `:ssl` and
  Islet.TLS against nginx next to the goal's ratio.

  nginx runs in the foreground as one process (`master_process off`: no
  workers, so its CPU time is one process's), pinned to the server CPUs,
  with the pair's two certificates on two loopback ports, TLS 1.2 and 1.3,
  no session cache and no tickets (as the BEAM servers), and `stub_status`
  on a third port. Its files (configuration, error log, temporary
  directories) live in the benchmark's work directory.

  A sample gives what a benchmark server's `:sample` gives: the time, the
  process's CPU time and counters, `:accepted` being the connections
  nginx handled less its status requests (the handshake clients make one
  full handshake per connection and send no request).
  """

  alias Islet.Bench.OS

  @enforce_keys [:port, :os_pid, :status_port, :ports, :dir]
  defstruct @enforce_keys

  @typedoc "A running nginx."
  @type t :: %__MODULE__{
          port: port(),
          os_pid: non_neg_integer(),
          status_port: :inet.port_number(),
          ports: %{atom() => :inet.port_number()},
          dir: Path.t()
        }

  @doc "The label used in reports."
  @spec label() :: String.t()
  def label, do: "nginx"

  @doc "The `nginx` executable: on `PATH`, else Debian's `/usr/sbin/nginx`; `nil` when absent."
  @spec executable() :: Path.t() | nil
  def executable do
    System.find_executable("nginx") ||
      Enum.find(["/usr/sbin/nginx"], &File.regular?/1)
  end

  @doc "The workloads nginx is a reference for."
  @spec workloads() :: [atom()]
  def workloads, do: [:handshake]

  @doc "nginx's version (`nginx -v`), or `nil` when it is not installed."
  @spec version() :: String.t() | nil
  def version do
    with nginx when is_binary(nginx) <- executable(),
         {output, 0} <- System.cmd(nginx, ["-v"], stderr_to_stdout: true),
         [_, version] <- Regex.run(~r{nginx/(\S+)}, output) do
      version
    else
      _ -> nil
    end
  end

  @doc "Whether nginx is installed."
  @spec available?() :: boolean()
  def available?, do: executable() != nil

  @doc """
  Starts nginx in `dir`, pinned to `cpus` (a taskset list), serving one
  TLS listener per entry of `certificates` (`name => {certfile, keyfile}`).
  Returns once its status page answers.
  """
  @spec start(Path.t(), String.t(), %{atom() => {Path.t(), Path.t()}}) ::
          {:ok, t()} | {:error, term()}
  def start(dir, cpus, certificates) do
    with nginx when is_binary(nginx) <- executable() || {:error, :nginx_not_found},
         {:ok, [status_port | tls_ports]} <- free_ports(map_size(certificates) + 1) do
      names = Map.keys(certificates)
      ports = Map.new(Enum.zip(names, tls_ports))
      File.mkdir_p!(Path.join(dir, "tmp"))
      conf = Path.join(dir, "nginx.conf")
      File.write!(conf, config(dir, status_port, ports, certificates, without_modules(nginx)))

      # Under a shell that stops nginx when its stdin closes: if this
      # process, or the benchmark's BEAM, goes, nginx goes too. The shell
      # first says nginx's pid (taskset execs it).
      script = ~s("$@" & child=$!; echo "$child"; read _; kill "$child" 2>/dev/null; wait)
      taskset = System.find_executable("taskset")
      nginx_args = [nginx, "-p", dir <> "/", "-c", conf, "-e", error_log(dir)]

      port =
        Port.open({:spawn_executable, System.find_executable("sh")}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          args: ["-c", script, "sh", taskset, "-c", cpus | nginx_args]
        ])

      # 0 when the shell said nothing usable: the status check below fails.
      os_pid =
        receive do
          {^port, {:data, line}} ->
            case Integer.parse(line) do
              {pid, _} -> pid
              :error -> 0
            end
        after
          5_000 -> 0
        end

      nginx = %__MODULE__{
        port: port,
        os_pid: os_pid,
        status_port: status_port,
        ports: ports,
        dir: dir
      }

      case await_status(nginx, 50) do
        {:ok, _} ->
          {:ok, nginx}

        {:error, reason} ->
          stop(nginx)
          {:error, {:nginx_start, reason, tail(error_log(dir))}}
      end
    end
  end

  @doc "Stops nginx (its shell kills it when the port closes; KILL if it lingers)."
  @spec stop(t()) :: :ok
  def stop(%__MODULE__{port: port, os_pid: os_pid}) do
    if Port.info(port) != nil, do: Port.close(port)

    if os_pid > 0 and not gone?(os_pid, 30) do
      _ = System.cmd("kill", ["-KILL", "#{os_pid}"], stderr_to_stdout: true)
    end

    :ok
  catch
    # The port was closed already (nginx exited).
    :error, :badarg -> :ok
  end

  defp gone?(os_pid, tries) do
    cond do
      not File.exists?("/proc/#{os_pid}") ->
        true

      tries <= 0 ->
        false

      true ->
        Process.sleep(100)
        gone?(os_pid, tries - 1)
    end
  end

  @doc """
  A sample: `%{at_ns:, cpu_ns:, counters: %{accepted:, ...}}`, the counters
  of a benchmark server (failed handshakes and errors nginx does not count,
  given as 0).
  """
  @spec sample(t()) :: {:ok, map()} | {:error, term()}
  def sample(%__MODULE__{} = nginx) do
    with {:ok, %{handled: handled, requests: requests}} <- status(nginx),
         {:ok, cpu_ns} <- OS.cpu_ns_of(nginx.os_pid) do
      {:ok,
       %{
         at_ns: System.monotonic_time(:nanosecond),
         cpu_ns: cpu_ns,
         counters: %{accepted: handled - requests, failed_handshakes: 0, resumed: 0, errors: 0}
       }}
    end
  end

  @doc """
  The configuration file's text. `without` lists the HTTP modules this
  build lacks (`nginx -V`'s `--without-http_NAME_module`), whose
  temporary-path directives it would refuse.
  """
  @spec config(Path.t(), :inet.port_number(), map(), map(), [String.t()]) :: String.t()
  def config(dir, status_port, ports, certificates, without \\ []) do
    temp_paths =
      for {directive, module} <- [
            {"client_body_temp_path", nil},
            {"proxy_temp_path", "proxy"},
            {"fastcgi_temp_path", "fastcgi"},
            {"uwsgi_temp_path", "uwsgi"},
            {"scgi_temp_path", "scgi"}
          ],
          module not in without,
          do: "  #{directive} #{Path.join([dir, "tmp", directive])};\n"

    servers =
      for {name, {certfile, keyfile}} <- Enum.sort(certificates) do
        """
          server {
            listen 127.0.0.1:#{Map.fetch!(ports, name)} ssl;
            ssl_certificate #{certfile};
            ssl_certificate_key #{keyfile};
            return 200 "ok\\n";
          }
        """
      end

    """
    # Written by Islet.Bench.Nginx for one benchmark run.
    daemon off;
    master_process off;
    worker_processes 1;
    pid #{Path.join(dir, "nginx.pid")};
    error_log #{error_log(dir)} warn;
    events { worker_connections 16384; }
    http {
      access_log off;
    #{temp_paths}  ssl_protocols TLSv1.2 TLSv1.3;
      ssl_session_cache off;
      ssl_session_tickets off;
    #{servers}  server {
        listen 127.0.0.1:#{status_port};
        location / { stub_status; }
      }
    }
    """
  end

  @doc "Parses a `stub_status` page: `{:ok, %{accepts:, handled:, requests:}}`."
  @spec parse_status(String.t()) :: {:ok, map()} | {:error, term()}
  def parse_status(text) do
    case Regex.run(~r/server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)/, text) do
      [_, accepts, handled, requests] ->
        {:ok,
         %{
           accepts: String.to_integer(accepts),
           handled: String.to_integer(handled),
           requests: String.to_integer(requests)
         }}

      nil ->
        {:error, {:bad_status_page, String.slice(text, 0, 200)}}
    end
  end

  defp status(nginx) do
    with {:ok, socket} <-
           :gen_tcp.connect({127, 0, 0, 1}, nginx.status_port, [:binary, active: false], 2_000) do
      try do
        :ok = :gen_tcp.send(socket, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")

        with {:ok, response} <- read_all(socket, []) do
          parse_status(response)
        end
      after
        :gen_tcp.close(socket)
      end
    end
  end

  defp read_all(socket, acc) do
    case :gen_tcp.recv(socket, 0, 5_000) do
      {:ok, data} -> read_all(socket, [acc | data])
      {:error, :closed} -> {:ok, IO.iodata_to_binary(acc)}
      {:error, _} = error -> error
    end
  end

  defp await_status(nginx, tries) do
    case status(nginx) do
      {:ok, _} = ok ->
        ok

      {:error, _} = error when tries <= 1 ->
        error

      {:error, _} ->
        receive do
          {port, {:exit_status, status}} when port == nginx.port -> {:error, {:exited, status}}
        after
          100 -> await_status(nginx, tries - 1)
        end
    end
  end

  # Ports the kernel picks, released at once for nginx to bind (loopback,
  # in the moments before nginx starts).
  defp free_ports(count) do
    sockets =
      for _ <- 1..count do
        {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, reuseaddr: true)
        socket
      end

    ports = Enum.map(sockets, fn socket -> elem(:inet.port(socket), 1) end)
    Enum.each(sockets, &:gen_tcp.close/1)
    {:ok, ports}
  end

  defp without_modules(nginx) do
    {output, _} = System.cmd(nginx, ["-V"], stderr_to_stdout: true)
    Regex.scan(~r/--without-http_(\w+)_module/, output) |> Enum.map(&Enum.at(&1, 1))
  end

  defp error_log(dir), do: Path.join(dir, "nginx_error.log")

  defp tail(path) do
    case File.read(path) do
      {:ok, text} -> String.slice(text, -300, 300)
      {:error, _} -> ""
    end
  end
end
