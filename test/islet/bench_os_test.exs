defmodule Islet.Bench.OSTest do
  # The benchmark's wait for RSS to settle after a GC (the idle samples):
  # driven by a scripted sequence of readings instead of the real RSS.
  use ExUnit.Case, async: true

  alias Islet.Bench.OS

  # A reader returning `values` one by one (the last one forever after),
  # and a function telling how many readings were taken.
  defp script(values) do
    taken = :counters.new(1, [])
    values = List.to_tuple(values)

    read = fn ->
      :counters.add(taken, 1, 1)
      i = min(:counters.get(taken, 1), tuple_size(values)) - 1
      elem(values, i)
    end

    {read, fn -> :counters.get(taken, 1) end}
  end

  test "waits while RSS falls, and until it has stayed put for 8 readings" do
    {read, taken} = script([100, 90, 80, 70, 60, 50])
    assert OS.await_rss_settled(60_000, read: read, interval_ms: 0) == :ok
    # The 6th reading (50) is the first of the flat run; the 14th is the
    # first one 8 readings after a 50.
    assert taken.() == 14
  end

  test "a flat or rising RSS settles once the window is full" do
    {read, taken} = script([100])
    assert OS.await_rss_settled(60_000, read: read, interval_ms: 0) == :ok
    assert taken.() == 9

    {read, taken} = script([100, 101, 102, 103, 104, 105, 106, 107, 108, 109])
    assert OS.await_rss_settled(60_000, read: read, interval_ms: 0) == :ok
    assert taken.() == 9
  end

  test "a fall of at most 0.5% over the window counts as settled" do
    {read, taken} = script([1000, 999, 998, 997, 996, 996, 996, 996, 996])
    assert OS.await_rss_settled(60_000, read: read, interval_ms: 0) == :ok
    assert taken.() == 9

    {read, taken} = script([1000, 996, 996, 996, 996, 996, 996, 996, 994])
    assert OS.await_rss_settled(60_000, read: read, interval_ms: 0) == :ok
    # 994 is 0.6% below 1000; one reading later the window starts at 996.
    assert taken.() == 10
  end

  test "gives up at max_ms while RSS keeps falling, and at once with 0" do
    # 1% less at each reading: 7.7% over any window.
    falling = for i <- 0..2_000, do: round(1.0e12 * :math.pow(0.99, i))
    {read, taken} = script(falling)
    started = System.monotonic_time(:millisecond)
    assert OS.await_rss_settled(200, read: read, interval_ms: 10) == :ok
    elapsed = System.monotonic_time(:millisecond) - started
    assert elapsed >= 200 and elapsed < 2_000
    # It kept reading until then (how often depends on the machine's load:
    # CI's sanitizer run once managed only 9 readings of 10 ms in 200 ms).
    assert taken.() > 1

    {read, taken} = script(falling)
    assert OS.await_rss_settled(0, read: read, interval_ms: 10) == :ok
    assert taken.() == 1
  end

  test "reads this process's real RSS by default" do
    assert OS.await_rss_settled(0) == :ok
    assert OS.rss_bytes() > 0
  end
end
