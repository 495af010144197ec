defmodule Islet.Bench.Transports do
  @moduledoc """
  The transport pairs the benchmark compares: a candidate (Islet's) and the
  reference it replaces, with the listen options both get, how clients
  connect, and the ratio goals.

  Adding a pair is adding a function here and listing it in `all/0`. The TLS
  pair (`Islet.TLS` vs `Islet.Reference.SSL`) is defined already: its
  clients speak TLS (`https://` for wrk and curl, `:ssl` for the idle
  client) and its listen options carry a self-signed certificate. It runs
  only with `--pair tls` (or `all`) and only once both modules exist; set
  `default?: true` in `tls/0` to make it part of the default run.
  """

  @typedoc "A goal on the candidate/reference ratio of one metric."
  @type goal :: {:>= | :<=, float()}

  @typedoc "A transport pair."
  @type pair :: %{
          id: atom(),
          title: String.t(),
          candidate: module(),
          reference: module(),
          labels: %{module() => String.t()},
          scheme: String.t(),
          listen_options: (Path.t() -> keyword()),
          client_tls: keyword() | nil,
          goals: %{{atom(), atom()} => goal()},
          default?: boolean()
        }

  @loopback {127, 0, 0, 1}

  @doc "Every pair, available or not."
  @spec all() :: [pair()]
  def all, do: [tcp(), tls()]

  @doc "Whether both modules of the pair are compiled into this build."
  @spec available?(pair()) :: boolean()
  def available?(pair),
    do: Code.ensure_loaded?(pair.candidate) and Code.ensure_loaded?(pair.reference)

  @doc """
  The pairs named (`"all"` for every pair, `nil` for the default ones);
  raises on an unknown name or an unavailable pair that was asked for by name.
  A `t:pair/0` map may be given instead of a name (to compare another
  transport programmatically).
  """
  @spec select([String.t() | pair()] | nil) :: [pair()]
  def select(nil), do: Enum.filter(all(), & &1.default?)
  def select(["all"]), do: Enum.filter(all(), &available?/1)

  def select(names) do
    Enum.map(names, fn
      %{} = pair -> pair
      name -> select_one(name)
    end)
  end

  defp select_one(name) do
    pair = Enum.find(all(), &(Atom.to_string(&1.id) == name)) || raise "unknown pair #{name}"

    unless available?(pair) do
      raise "pair #{name} needs #{inspect(pair.candidate)} and #{inspect(pair.reference)}"
    end

    pair
  end

  @doc "Plain TCP: `Islet.TCP` against `:gen_tcp` (`Islet.Reference.TCP`)."
  @spec tcp() :: pair()
  def tcp do
    %{
      id: :tcp,
      title: "TCP",
      candidate: Islet.TCP,
      reference: Islet.Reference.TCP,
      labels: %{Islet.TCP => "Islet.TCP", Islet.Reference.TCP => "gen_tcp"},
      scheme: "http",
      listen_options: fn _workdir -> [ip: @loopback] end,
      client_tls: nil,
      goals: %{
        {:keepalive, :req_per_s} => {:>=, 1.15},
        {:keepalive, :cpu_s_per_100k} => {:<=, 0.85},
        {:download, :mb_per_s} => {:>=, 1.0},
        {:idle, :beam_bytes_per_conn} => {:<=, 1.0},
        {:idle, :rss_bytes_per_conn} => {:<=, 1.0}
      },
      default?: true
    }
  end

  @doc """
  TLS: `Islet.TLS` against `:ssl` (`Islet.Reference.SSL`). The hook for the
  TLS rows; not run by default (see the module doc). Goals to be set.
  """
  @spec tls() :: pair()
  def tls do
    %{
      id: :tls,
      title: "TLS",
      candidate: Islet.TLS,
      reference: Islet.Reference.SSL,
      labels: %{Islet.TLS => "Islet.TLS", Islet.Reference.SSL => ":ssl"},
      scheme: "https",
      listen_options: fn workdir ->
        {certfile, keyfile} = self_signed_certificate(workdir)
        [ip: @loopback, certfile: certfile, keyfile: keyfile]
      end,
      client_tls: [verify: :verify_none],
      goals: %{},
      default?: false
    }
  end

  @doc "A self-signed RSA-2048 certificate for localhost in `dir` (made with openssl once)."
  @spec self_signed_certificate(Path.t()) :: {Path.t(), Path.t()}
  def self_signed_certificate(dir) do
    certfile = Path.join(dir, "islet_bench_cert.pem")
    keyfile = Path.join(dir, "islet_bench_key.pem")

    unless File.exists?(certfile) and File.exists?(keyfile) do
      File.mkdir_p!(dir)

      {output, status} =
        System.cmd(
          "openssl",
          ~w(req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost -keyout) ++
            [keyfile, "-out", certfile],
          stderr_to_stdout: true
        )

      if status != 0, do: raise("openssl failed: #{output}")
    end

    {certfile, keyfile}
  end
end
