defmodule Islet.CompileOrderTest do
  # Islet.Nif's on_load calls Islet.Compat, and the compiler loads each
  # module (running its on_load) as soon as it has built it. Compiled as a
  # dependency on a busy machine, Islet.Nif once came first: its on_load
  # failed and the build logged it (an undef of Islet.Compat). Here a fresh
  # VM compiles the two with Islet.Nif first, as that build did.
  use ExUnit.Case, async: true

  @moduletag timeout: 120_000

  test "Islet.Nif compiled before Islet.Compat loads without an error" do
    root = Path.join(System.tmp_dir!(), "islet_order_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(root) end)
    ebin = Path.join(root, "islet/ebin")
    File.mkdir_p!(ebin)
    # The NIF comes from this build's priv (the new ebin's sibling).
    File.ln_s!(to_string(:code.priv_dir(:islet)), Path.join(root, "islet/priv"))

    # (Elixir 1.14 loads each module as it compiles it, which is when the
    # on_load ran too early; newer ones load it here, after.)
    script = """
    Code.prepend_path(#{inspect(ebin)})
    files = #{inspect(Enum.map(["lib/islet/nif.ex", "lib/islet/compat.ex"], &Path.expand/1))}
    opts = if Version.match?(System.version(), ">= 1.15.0"), do: [return_diagnostics: true], else: []
    {:ok, _, _} = Kernel.ParallelCompiler.compile_to_path(files, #{inspect(ebin)}, opts)
    IO.puts("loaded: \#{inspect(match?({:module, _}, Code.ensure_loaded(Islet.Nif)))}")
    """

    {out, status} =
      System.cmd(System.find_executable("elixir"), ["-e", script],
        stderr_to_stdout: true,
        env: [{"ISLET_SANITIZE", "0"}]
      )

    assert status == 0, out
    assert out =~ "loaded: true", out
    refute out =~ "on_load", out
    refute out =~ "[error]", out
  end
end
