defmodule Islet.BenchReportTest do
  # The benchmark's table: ratios and what they mean against the goals.
  use ExUnit.Case, async: true

  alias Islet.Bench.Report

  defp row(ratio, goal, checks \\ []) do
    %{
      ratio: ratio,
      better: :higher,
      goal: goal,
      met: goal != nil and ratio >= goal.value,
      checks: checks
    }
  end

  test "a ratio just under a goal does not print as the goal's figure" do
    goal = %{op: ">=", value: 1.0}
    assert Report.ratio(0.9977, goal) == "0.998x"
    assert Report.ratio(1.0031, goal) == "1.003x"
    assert Report.ratio(1.0, goal) == "1.00x"
    assert Report.ratio(0.95, goal) == "0.95x"
    assert Report.ratio(0.9977, nil) == "1.00x"
    assert Report.ratio(nil, goal) == "n/a"
    assert Report.interpretation(row(0.9977, goal)) == "same; goal >= 1.0x: MISSED"
  end

  test "a check against another row gets the same precision" do
    check = %{label: "vs RSA", quotient: 0.9961, goal: %{op: ">=", value: 1.0}, met: false}
    text = Report.interpretation(row(2.77, %{op: ">=", value: 2.5}, [check]))
    assert text == "177% better; goal >= 2.5x: met; vs RSA 0.996x (goal >= 1.0x): MISSED"
  end
end
