defmodule Islet.Test.Async do
  @moduledoc """
  Runs a function in a process of its own, for tests where several processes
  block on one socket: `async/1` starts it, `await/2` gives its result (or
  what it raised or threw) and fails the test if it does not come in time.
  """

  import ExUnit.Assertions, only: [flunk: 1]

  @doc "Runs `fun` in a new process; returns a reference for `await/2`."
  @spec async((() -> term())) :: reference()
  def async(fun) do
    parent = self()
    ref = make_ref()

    spawn(fn ->
      result =
        try do
          fun.()
        rescue
          e -> {:raised, e, __STACKTRACE__}
        catch
          kind, value -> {:caught, kind, value}
        end

      send(parent, {ref, result})
    end)

    ref
  end

  @doc "The result of an `async/1` call; fails the test after `timeout` ms (a hang)."
  @spec await(reference(), timeout()) :: term()
  def await(ref, timeout \\ 15_000) do
    receive do
      {^ref, result} -> result
    after
      timeout -> flunk("a call did not return within #{timeout} ms (hang)")
    end
  end
end
