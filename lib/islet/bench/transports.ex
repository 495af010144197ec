defmodule Islet.Bench.Transports do
  @moduledoc """
  The transport pairs the benchmark compares: a candidate (Islet's) and the
  reference it replaces, with the listen options both get, how clients
  connect, which workloads apply and the goals.

  Adding a pair is adding a function here and listing it in `all/0`. Both
  pairs run by default: TCP (`Islet.TCP` vs `:gen_tcp`) and TLS (`Islet.TLS`
  vs `:ssl`, once both modules exist). The TLS pair's clients speak TLS
  (`https://` for wrk and curl, `openssl s_time` for the handshake rows,
  `:ssl` for the idle client); its main listener has a self-signed RSA-2048
  certificate, a second one (`:ecdsa`) an ECDSA P-256 certificate.
  """

  @typedoc "A goal on the candidate/reference ratio of one metric."
  @type goal :: {:>= | :<=, float()}

  @typedoc """
  A further goal of a row, on another quotient than candidate/reference:
  `{:candidate_of, pair_id}` divides the candidate's figure by the
  candidate's of the same workload and metric in pair `pair_id` (when that
  pair ran), run by run (the two samples of a run are taken one after the
  other), and takes the median of those quotients; `{:ratio_of, workload,
  metric}` divides the row's ratio by the ratio of another row of the same
  pair. The runner adds checks without a goal for the pair's `:outside`
  references (`Islet.Bench.Nginx`): the reference's figure against the
  built-in transport's, and the candidate's against the reference's.
  """
  @type check :: %{
          label: String.t(),
          against: {:candidate_of, atom()} | {:ratio_of, atom(), atom()},
          goal: goal()
        }

  @typedoc "A transport pair."
  @type pair :: %{
          id: atom(),
          title: String.t(),
          candidate: module(),
          reference: module(),
          labels: %{module() => String.t()},
          scheme: String.t(),
          workloads: [atom()],
          listen_options: (Path.t() -> keyword()),
          extra_listeners: (Path.t() -> [{atom(), keyword()}]),
          idle_listener: atom(),
          client_tls: keyword() | nil,
          downloads: pos_integer(),
          goals: %{{atom(), atom()} => goal()},
          checks: %{{atom(), atom()} => [check()]},
          outside: [module()],
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
  The pairs named (`"all"` for every available pair, `nil` for the default
  ones that are available); raises on an unknown name or an unavailable pair
  that was asked for by name. A `t:pair/0` map may be given instead of a
  name (to compare another transport programmatically).
  """
  @spec select([String.t() | pair()] | nil) :: [pair()]
  def select(nil), do: Enum.filter(all(), &(&1.default? and available?(&1)))
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
      workloads: [:keepalive, :close, :download, :upload, :idle],
      listen_options: fn _workdir -> [ip: @loopback] end,
      extra_listeners: fn _workdir -> [] end,
      idle_listener: :main,
      client_tls: nil,
      downloads: 4,
      outside: [],
      goals: %{
        {:keepalive, :req_per_s} => {:>=, 1.15},
        {:keepalive, :cpu_s_per_100k} => {:<=, 0.85},
        {:download, :mb_per_s} => {:>=, 1.0},
        {:idle, :beam_bytes_per_conn} => {:<=, 1.0},
        {:idle, :rss_bytes_per_conn} => {:<=, 1.0}
      },
      checks: %{},
      default?: true
    }
  end

  @doc """
  TLS: `Islet.TLS` against `:ssl` (`Islet.Reference.SSL`), both with their
  defaults (TLS 1.2 and 1.3, no session tickets, TLS 1.2 session cache).

  The handshake goals (2.5x, more with ECDSA) are on handshakes per
  second of server CPU: on two CPUs the client, pinned to one, cannot keep
  Islet.TLS busy (see `Islet.Bench.Workloads`); the measured handshakes/s
  are shown beside them.

  The main listener has an RSA-2048 certificate (keep-alive, conn/request,
  download, upload, and the RSA handshake rows); the `:ecdsa` listener an
  ECDSA P-256 one (the ECDSA handshake rows, and the idle connections, whose
  10,000 handshakes it makes cheaper without changing what a connection
  holds afterwards). One file is downloaded per sample (TLS is slower).
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
      workloads: [:keepalive, :close, :handshake, :download, :upload, :idle],
      listen_options: fn workdir ->
        {certfile, keyfile} = self_signed_certificate(workdir, :rsa)
        [ip: @loopback, certfile: certfile, keyfile: keyfile]
      end,
      extra_listeners: fn workdir ->
        {certfile, keyfile} = self_signed_certificate(workdir, :ecdsa)
        [ecdsa: [ip: @loopback, certfile: certfile, keyfile: keyfile]]
      end,
      idle_listener: :ecdsa,
      # The idle client's: TLS 1.3 with one key share, as a browser would.
      client_tls: [
        verify: :verify_none,
        versions: [:"tlsv1.3"],
        supported_groups: [:x25519],
        server_name_indication: :disable
      ],
      downloads: 1,
      # nginx, when installed: the handshake goal is "about what nginx
      # reaches on the same machine", measured in the same run.
      outside: [Islet.Bench.Nginx],
      goals: %{
        {:keepalive, :req_per_s} => {:>=, 1.3},
        {:handshake, :rsa13_per_cpu_s} => {:>=, 2.5},
        {:handshake, :rsa12_per_cpu_s} => {:>=, 2.5},
        {:handshake, :ecdsa13_per_cpu_s} => {:>=, 2.5},
        {:handshake, :ecdsa12_per_cpu_s} => {:>=, 2.5},
        {:download, :cpu_s_per_gb} => {:<=, 0.9},
        {:idle, :beam_bytes_per_conn} => {:<=, 0.25},
        {:idle, :rss_bytes_per_conn} => {:<=, 0.25}
      },
      checks: %{
        {:keepalive, :req_per_s} => [
          %{label: "vs Islet.TCP", against: {:candidate_of, :tcp}, goal: {:>=, 0.9}}
        ],
        # The same goal in server CPU per request (client-bound rates).
        {:keepalive, :cpu_s_per_100k} => [
          %{label: "vs Islet.TCP", against: {:candidate_of, :tcp}, goal: {:<=, 1.11}}
        ],
        {:handshake, :ecdsa13_per_cpu_s} => [
          %{label: "vs RSA", against: {:ratio_of, :handshake, :rsa13_per_cpu_s}, goal: {:>=, 1.0}}
        ],
        {:handshake, :ecdsa12_per_cpu_s} => [
          %{label: "vs RSA", against: {:ratio_of, :handshake, :rsa12_per_cpu_s}, goal: {:>=, 1.0}}
        ]
      },
      default?: true
    }
  end

  @doc """
  Whether the TLS session of a connection just handshaken was resumed:
  `session_resumption` of `connection_information/1` (asked of `:ssl`
  directly for `Islet.Reference.SSL`'s sockets, whose default answer leaves
  it out; told by the transport, as the shape of an `:ssl` socket is
  `:ssl`'s own and changed after OTP 27).

  Only Islet.TLS's answer can be trusted: OTP 25's `:ssl` server answers
  `false` for sessions it did resume (seen with `openssl s_client
  -reconnect`, which reports them reused). The benchmark's TLS clients
  cannot resume anyway (`s_time -new`; wrk and the idle client negotiate
  TLS 1.3, and neither server issues tickets by default), so this is a
  check of that, not a defence.
  """
  @spec session_resumed?(module(), term()) :: boolean()
  def session_resumed?(Islet.Reference.SSL, socket) do
    match?(
      {:ok, [session_resumption: true]},
      :ssl.connection_information(socket, [:session_resumption])
    )
  end

  def session_resumed?(transport, socket) do
    case transport.connection_information(socket) do
      {:ok, info} -> Keyword.get(info, :session_resumption) == true
      _ -> false
    end
  end

  @doc """
  A self-signed certificate for localhost in `dir`, made with openssl once:
  `:rsa` (RSA-2048) or `:ecdsa` (ECDSA P-256).
  """
  @spec self_signed_certificate(Path.t(), :rsa | :ecdsa) :: {Path.t(), Path.t()}
  def self_signed_certificate(dir, kind \\ :rsa) do
    {name, key_args} =
      case kind do
        :rsa -> {"islet_bench", ~w(-newkey rsa:2048)}
        :ecdsa -> {"islet_bench_ecdsa", ~w(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)}
      end

    certfile = Path.join(dir, "#{name}_cert.pem")
    keyfile = Path.join(dir, "#{name}_key.pem")

    unless File.exists?(certfile) and File.exists?(keyfile) do
      File.mkdir_p!(dir)

      {output, status} =
        System.cmd(
          "openssl",
          ["req", "-x509"] ++
            key_args ++
            ~w(-nodes -days 30 -subj /CN=localhost -keyout) ++ [keyfile, "-out", certfile],
          stderr_to_stdout: true
        )

      if status != 0, do: raise("openssl failed: #{output}")
    end

    {certfile, keyfile}
  end
end
