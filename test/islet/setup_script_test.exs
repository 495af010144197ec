defmodule Islet.SetupScriptTest do
  # The README's first commands run `scripts/setup.sh` on a fresh Debian 12
  # machine, then the tests or the benchmark. The script installed no curl,
  # which the benchmark's download and upload run: on a fresh system (a
  # minbase debootstrap) the benchmark's smoke test failed. Here, each
  # program the benchmark runs must come from a package the script installs
  # or from one every Debian system has (Essential: yes).
  use ExUnit.Case, async: true

  # The packages of setup.sh's `packages=( ... )` list.
  defp setup_packages do
    script = File.read!(Path.expand("../../scripts/setup.sh", __DIR__))
    [_, list] = Regex.run(~r/packages=\((.*?)\n\)/s, script)

    list
    |> String.split("\n")
    |> Enum.flat_map(fn line -> line |> String.replace(~r/#.*/, "") |> String.split() end)
  end

  # The Debian package that owns `program` in PATH, or, for a link no
  # package owns (an alternative, such as gnuplot), the file it resolves to.
  defp package_of(program) do
    path = System.find_executable(program)
    assert path, "#{program} is not installed here"

    {owner, 0} =
      with {_, status} when status != 0 <-
             System.cmd("dpkg", ["-S", path], stderr_to_stdout: true) do
        {real, 0} = System.cmd("readlink", ["-f", path])
        System.cmd("dpkg", ["-S", String.trim(real)])
      end

    owner |> String.split(":") |> hd()
  end

  defp essential?(package) do
    {flag, 0} = System.cmd("dpkg-query", ["-W", "-f=${Essential}", package])
    flag == "yes"
  end

  test "setup.sh installs the package of every program the benchmark runs" do
    listed = setup_packages()
    # (The report's chart, and the builds of the NIF and of the handshake
    # client.)
    programs = Islet.Bench.Load.programs() ++ ~w(gnuplot cmake g++ openssl)

    missing =
      for program <- programs,
          package = package_of(program),
          package not in listed and not essential?(package),
          do: {program, package}

    assert missing == []
  end
end
