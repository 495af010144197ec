defmodule Islet.Bench.Report do
  @moduledoc """
  Presents `Islet.Bench.Runner` results: a text table (median [min..max]
  per transport, the ratio of medians and what it means against the goals,
  including goals against another row, such as Islet.TLS against Islet.TCP),
  a JSON file and a PNG bar chart of the ratios drawn with gnuplot.
  """

  alias Islet.Bench.JSON

  # The chart's highest ratio; taller bars are cut there.
  @chart_cap 4.0

  @doc "Formats a figure for the table (`n/a` for `nil`)."
  @spec format_number(number() | nil) :: String.t()
  def format_number(nil), do: "n/a"
  def format_number(value) when is_integer(value), do: format_number(value * 1.0)

  def format_number(value) do
    magnitude = abs(value)

    cond do
      magnitude >= 1000 -> Integer.to_string(round(value))
      magnitude >= 10 -> :erlang.float_to_binary(value, decimals: 1)
      magnitude >= 1 or magnitude == 0 -> :erlang.float_to_binary(value, decimals: 2)
      true -> :erlang.float_to_binary(value, [{:decimals, 3 - floor(:math.log10(magnitude))}])
    end
  end

  @doc "The results as a text table, one block per transport pair."
  @spec table(Islet.Bench.Runner.results()) :: String.t()
  def table(%{meta: meta, rows: rows, failures: failures}) do
    blocks =
      rows
      |> Enum.chunk_by(& &1.pair)
      |> Enum.map(&pair_block(&1, meta))

    # One note per workload and warning (the rows of a workload share most).
    notes =
      for row <- rows, warning <- row.warnings, uniq: true do
        "  ! #{row.pair}.#{row.workload}: #{warning}"
      end

    failed =
      for f <- failures,
          do: "  FAILED #{f.pair} #{f.workload} #{f.module} run #{f.run}: #{f.reason}"

    Enum.join(blocks ++ [Enum.join(notes ++ failed, "\n")], "\n")
  end

  defp pair_block([first | _] = rows, meta) do
    header = [
      "workload",
      "metric",
      first.candidate.label,
      first.reference.label,
      "ratio",
      "interpretation"
    ]

    lines =
      Enum.map(rows, fn row ->
        [
          row.workload_label,
          row.label,
          figure(row.candidate),
          figure(row.reference),
          ratio(row.ratio, row.goal) <> if(row.warnings == [], do: "", else: " !"),
          interpretation(row)
        ]
      end)

    widths =
      Enum.reduce([header | lines], List.duplicate(0, 6), fn cells, widths ->
        Enum.zip_with(cells, widths, &max(String.length(&1), &2))
      end)

    render = fn cells ->
      cells
      |> Enum.zip(widths)
      |> Enum.map_join("  ", fn {cell, width} -> String.pad_trailing(cell, width) end)
      |> String.trim_trailing()
    end

    title =
      "#{first.pair_title}: #{first.candidate.module} vs #{first.reference.module} " <>
        "(#{first.reference.label}) - median [min..max] of #{meta.runs} run(s), " <>
        "ratio = #{first.candidate.label} / #{first.reference.label}"

    Enum.join(
      [title, render.(header), render.(Enum.map(widths, &String.duplicate("-", &1)))] ++
        Enum.map(lines, render) ++ [""],
      "\n"
    )
  end

  defp figure(%{median: nil, failed: failed}), do: "n/a (#{failed} failed)"

  defp figure(side) do
    "#{format_number(side.median)} [#{format_number(side.min)}..#{format_number(side.max)}]"
  end

  @doc """
  Formats a ratio: two decimals, or three where two would print the goal's
  own figure for a ratio that is not exactly it (0.998 against a goal of
  1.0 reads `0.998x`, not a `1.00x` beside "MISSED").
  """
  @spec ratio(number() | nil, %{value: number()} | nil) :: String.t()
  def ratio(value, goal \\ nil)
  def ratio(nil, _goal), do: "n/a"

  def ratio(value, %{value: goal}) when value != goal do
    decimals = if Float.round(value * 1.0, 2) == Float.round(goal * 1.0, 2), do: 3, else: 2
    :erlang.float_to_binary(value * 1.0, decimals: decimals) <> "x"
  end

  def ratio(value, _goal), do: :erlang.float_to_binary(value * 1.0, decimals: 2) <> "x"

  @doc "What a row's ratio means: better or worse for the candidate, and the goal's verdict."
  @spec interpretation(map()) :: String.t()
  def interpretation(%{ratio: nil}), do: "no data"

  def interpretation(row) do
    gain = if row.better == :higher, do: row.ratio - 1, else: 1 - row.ratio
    percent = round(abs(gain) * 100)

    trend =
      cond do
        percent < 1 -> "same"
        gain > 0 -> "#{percent}% better"
        true -> "#{percent}% worse"
      end

    goal =
      case row.goal do
        nil -> []
        %{op: op, value: value} -> ["goal #{op} #{value}x: #{verdict(row.met)}"]
      end

    checks =
      for check <- Map.get(row, :checks, []) do
        case check.goal do
          nil ->
            "#{check.label} #{ratio(check.quotient)}"

          goal ->
            "#{check.label} #{ratio(check.quotient, goal)} (goal #{goal.op} #{goal.value}x): " <>
              if(check.quotient, do: verdict(check.met), else: "n/a")
        end
      end

    Enum.join([trend | goal ++ checks], "; ")
  end

  defp verdict(true), do: "met"
  defp verdict(_), do: "MISSED"

  @doc "Writes the results as JSON."
  @spec write_json(Islet.Bench.Runner.results(), Path.t()) :: :ok
  def write_json(results, path) do
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, JSON.encode(results))
  end

  @doc """
  Draws the ratios as a PNG bar chart with gnuplot: green where a goal is
  met, red where missed, blue where there is no goal; goals as diamonds, a
  dashed line at 1.
  """
  @spec write_png(Islet.Bench.Runner.results(), Path.t()) :: :ok | {:error, term()}
  def write_png(%{meta: meta, rows: rows}, path) do
    case System.find_executable("gnuplot") do
      nil -> {:error, :gnuplot_not_found}
      gnuplot -> plot(gnuplot, meta, rows, Path.expand(path))
    end
  end

  defp plot(gnuplot, meta, rows, path) do
    File.mkdir_p!(Path.dirname(path))
    data = path <> ".dat"
    several_pairs? = rows |> Enum.map(& &1.pair) |> Enum.uniq() |> length() > 1
    bars = bars(rows, several_pairs?)

    lines =
      bars
      |> Enum.with_index()
      |> Enum.map(fn {bar, index} ->
        goal = if bar.goal, do: Float.to_string(bar.goal * 1.0), else: "?"
        value = if bar.value, do: Float.to_string(bar.value * 1.0), else: "?"
        missing = if bar.value, do: "", else: "n/a"
        ~s(#{index} "#{bar.label}" #{value} #{bar.color} #{goal} "#{missing}"\n)
      end)

    File.write!(data, lines)

    title =
      "Islet vs reference, ratio of medians (#{meta.runs} run(s), #{meta.schedulers} scheduler(s)" <>
        if(meta.quick, do: ", QUICK", else: "") <> ") - #{meta.date}"

    script = """
    set terminal pngcairo size #{max(1280, 34 * length(bars) + 240)},760 font ",10"
    set output "#{path}"
    set title "#{title}\\nhigher is better for throughput, lower for latency, CPU and memory\\nbars named 'vs ...': Islet.TLS / Islet.TCP, ECDSA ratio / RSA ratio, or Islet.TLS / nginx; 'nginx vs :ssl': nginx / :ssl"
    set datafile missing "?"
    set style fill solid 0.8 border -1
    set boxwidth 0.7
    # Bars above #{@chart_cap}x (outliers, such as a p99 on a noisy run) are
    # cut at the top of the chart; their labels give the figure.
    cap = #{@chart_cap}
    set yrange [0:#{y_max(bars)}]
    set ylabel "candidate / reference"
    set grid ytics
    set xtics rotate by 35 right nomirror
    set bmargin 14
    set key top right
    set xrange [-0.6:#{length(bars) - 0.4}]
    set lmargin 26
    set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb "black"
    #{separators(bars)}
    plot "#{data}" using 1:($3 > cap ? cap : $3):4:xtic(2) with boxes lc rgb variable notitle, \\
         "" using 1:($3 > cap ? cap : $3):(sprintf("%.2f", $3)) with labels offset 0,0.8 notitle, \\
         "" using 1:(0):6 with labels offset 0,1 tc rgb "#D62728" notitle, \\
         "" using 1:5 with points pt 13 ps 1.6 lc rgb "black" title "goal"
    """

    script_file = path <> ".gnuplot"
    File.write!(script_file, script)
    result = System.cmd(gnuplot, [script_file], stderr_to_stdout: true)
    File.rm(data)
    File.rm(script_file)

    case result do
      {_, 0} -> :ok
      {output, status} -> {:error, {:gnuplot, status, output}}
    end
  end

  defp y_max(bars) do
    values = for bar <- bars, v <- [bar.value, bar.goal], is_number(v), do: v
    top = Enum.max([1.0 | values])
    if top > @chart_cap, do: @chart_cap * 1.08, else: Float.round(top * 1.1 + 0.05, 2)
  end

  # A vertical line between the bars of two pairs.
  defp separators(bars) do
    bars
    |> Enum.with_index()
    |> Enum.chunk_by(fn {bar, _index} -> bar.pair end)
    |> Enum.drop(1)
    |> Enum.map_join("\n", fn [{_bar, index} | _] ->
      "set arrow from #{index - 0.5}, graph 0 to #{index - 0.5}, graph 1 nohead lc rgb \"gray\""
    end)
  end

  # One bar per row (candidate / reference), then one per check, after its row.
  defp bars(rows, several_pairs?) do
    Enum.flat_map(rows, fn row ->
      prefix = if several_pairs?, do: "#{row.pair} ", else: ""
      label = "#{prefix}#{row.workload_label}: #{row.label}"

      main = %{
        pair: row.pair,
        label: label,
        value: row.ratio,
        goal: row.goal && row.goal.value,
        color: color(row.goal, row.met)
      }

      checks =
        for check <- Map.get(row, :checks, []) do
          %{
            pair: row.pair,
            label: "#{label} #{check.label}",
            value: check.quotient,
            goal: check.goal && check.goal.value,
            color: color(check.goal, check.met)
          }
        end

      [main | checks]
    end)
  end

  defp color(nil, _met), do: 0x4C78A8
  defp color(_goal, true), do: 0x2CA02C
  defp color(_goal, _met), do: 0xD62728
end
