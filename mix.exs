defmodule Mix.Tasks.Compile.IsletNif do
  @moduledoc """
  Builds Islet's C++ NIF with CMake into `priv/`.

  A Mix compiler of the project's own (hex-only build helpers are not
  reachable where Islet is built). It configures once per build path,
  lets CMake decide what to rebuild, and installs the library atomically so
  that a BEAM loading it never sees a half-written file.

  Environment:
    * `ISLET_CMAKE_BUILD_TYPE` - CMake build type (default `Release`).
    * `ISLET_SANITIZE` - `1` builds with AddressSanitizer and UBSan,
      `thread` with ThreadSanitizer.
  """
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    root = File.cwd!()
    sanitize = System.get_env("ISLET_SANITIZE", "0")
    build_dir = configure!(root, sanitize)
    jobs = System.schedulers_online() |> Integer.to_string()
    cmd!("cmake", ["--build", build_dir, "--parallel", jobs])

    built = Path.join(build_dir, "libislet_nif.so")
    priv = Path.join(root, "priv")
    File.mkdir_p!(priv)
    # A sanitizer build gets its own name, so that it never replaces the
    # library a normal BEAM loads (Islet.Nif picks it by ISLET_SANITIZE).
    name =
      case sanitize do
        "1" -> "islet_nif_asan.so"
        "thread" -> "islet_nif_tsan.so"
        _ -> "islet_nif.so"
      end

    target = Path.join(priv, name)

    if stale?(built, target) do
      tmp = target <> ".tmp#{System.unique_integer([:positive])}"
      File.cp!(built, tmp)
      File.rename!(tmp, target)
    end

    {:ok, []}
  end

  @doc """
  Builds one of the CMake project's other targets (the benchmark's
  `islet_hsload`) in the same build directory, and returns its path.
  """
  @spec build_target!(String.t()) :: Path.t()
  def build_target!(target) do
    build_dir = configure!(File.cwd!(), System.get_env("ISLET_SANITIZE", "0"))
    cmd!("cmake", ["--build", build_dir, "--target", target])
    Path.join(build_dir, target)
  end

  # Configures the CMake build directory of this build path, build type and
  # sanitizer setting once; returns it.
  defp configure!(root, sanitize) do
    build_type = System.get_env("ISLET_CMAKE_BUILD_TYPE", "Release")
    build_dir = Path.join([Mix.Project.build_path(), "cmake", "#{build_type}-san#{sanitize}"])
    File.mkdir_p!(build_dir)

    erts_include =
      Path.join([:code.root_dir(), "erts-#{:erlang.system_info(:version)}", "include"])

    # A build directory configured for another source tree (a copy, a moved
    # checkout, another clone sharing a sanitizer's work directory) would
    # go on building that tree: configure it again.
    cache = Path.join(build_dir, "CMakeCache.txt")

    with {:ok, text} <- File.read(cache),
         false <- String.contains?(text, "\nCMAKE_HOME_DIRECTORY:INTERNAL=#{root}\n") do
      File.rm_rf!(build_dir)
      File.mkdir_p!(build_dir)
    end

    unless File.exists?(cache) do
      cmd!("cmake", [
        "-S",
        root,
        "-B",
        build_dir,
        "-DCMAKE_BUILD_TYPE=#{build_type}",
        "-DERTS_INCLUDE_DIR=#{erts_include}",
        "-DISLET_SANITIZE=#{sanitize}"
      ])
    end

    build_dir
  end

  defp stale?(built, target) do
    case {File.read(built), File.read(target)} do
      {{:ok, same}, {:ok, same}} -> false
      _ -> true
    end
  end

  defp cmd!(cmd, args) do
    {out, status} = System.cmd(cmd, args, stderr_to_stdout: true)

    if status != 0 do
      Mix.raise("#{cmd} #{Enum.join(args, " ")} failed (#{status}):\n#{out}")
    end

    if out =~ "warning" do
      Mix.shell().info(out)
    end
  end
end

defmodule Islet.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :islet,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:islet_nif | Mix.compilers()],
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      description: "Native TCP and TLS transports for Thousand Island",
      package: [files: ~w(lib c_src CMakeLists.txt mix.exs README.md)]
    ] ++ proper_xref()
  end

  # PropEr (Debian's erlang-proper, on the system's code path) serves only
  # the property tests in test/support, whose module says so with
  # `no_warn_undefined`. Before Elixir 1.20 that does not cover the check of
  # the application's dependencies, which only xref's exclude silences; 1.20
  # deprecates that option.
  defp proper_xref do
    {:ok, v} = Version.parse(System.version())
    if {v.major, v.minor} < {1, 20}, do: [xref: [exclude: [:proper, :proper_types]]], else: []
  end

  def application do
    [
      mod: {Islet.Application, []},
      extra_applications: [:logger, :ssl, :public_key, :crypto]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  # Thousand Island is optional: Islet only implements its behaviour. Mix
  # refuses a version-style dependency without Hex (even an optional one), so
  # it is declared only where Hex is present; that is where users fetch
  # Thousand Island from, and declaring it lets Mix compile it before Islet so
  # that the behaviour's callbacks are checked. Offline builds (like this
  # project's CI) compile Islet alone, warning-free.
  defp deps do
    if Code.ensure_loaded?(Hex) and System.get_env("ISLET_NO_HEX") == nil do
      [{:thousand_island, "~> 1.0", optional: true}]
    else
      []
    end
  end
end
