// A fake erl_nif for fuzzing the NIF's C++ without a BEAM (fuzz only).
//
// erl_nif_shim.cpp implements the enif_* functions that c_src/ uses, after
// the erl_nif documentation, so that the real NIF sources link and run in a
// libFuzzer binary. Terms are nodes owned by the env that made them (freed
// when it is cleared, so ASan sees a term used after its env); atoms, pids
// and [] are immediates, valid everywhere. Resources are reference counted
// and run their destructor at zero. enif_select only does the bookkeeping
// (nothing is ever polled); monitors never fire unless kill_pid says so.
// enif_inspect_iovec's vectors live until the NIF returns (check_result);
// I/O queues copy what they are given.
//
// Beyond the erl_nif API, the harness gets the helpers below.
#pragma once

#include <erl_nif.h>

#include <cstddef>
#include <string>

namespace shim {

// Pids are immediates made from a small id. The calling process is kSelf;
// ids of kFirstDead and up name processes that are not alive (monitors and
// sends to them fail, as for an exited process).
constexpr unsigned kSelf = 1;
constexpr unsigned kFirstDead = 8;
ERL_NIF_TERM make_pid(unsigned id, bool external);

// A process-bound env (what a NIF call gets): enif_self works in it, unlike
// in enif_alloc_env's. Free it with enif_free_env.
ErlNifEnv* process_env();

// Integers beyond 64 bits (the BEAM's bignums), and references.
ERL_NIF_TERM make_int128(ErlNifEnv* env, __int128 v);
ERL_NIF_TERM make_ref(ErlNifEnv* env);

// Runs what enif_schedule_nif left for after the NIF returned `r` (the VM
// runs it next, on the same process, as part of the same call), until a
// NIF returns without scheduling; returns that final result.
ERL_NIF_TERM run_scheduled_nifs(ErlNifEnv* env, ERL_NIF_TERM r);

// What a NIF returned: enif_make_badarg's exception, checked against the
// env's exception flag, or a well-formed term owned by env. Aborts with a
// message otherwise. Clears the exception flag.
bool check_result(ErlNifEnv* env, ERL_NIF_TERM t);

// The calling process is exiting: monitoring it fails (enif_monitor_process
// returns > 0), as the BEAM answers for a process on its way out.
void set_self_exiting(bool exiting);

// Process id dies: the down callbacks of the monitors on it run (once).
void kill_pid(unsigned id);

// Runs the stop callbacks that enif_select(STOP) scheduled (the BEAM runs
// them later, with is_direct_call = 0), then drops their references.
void run_scheduled_stops();

// The term in Erlang syntax (for traces and reports); resources print as
// #Ref<res:NAME>.
std::string format(ERL_NIF_TERM t);

// Bookkeeping, to check that an iteration left nothing behind.
size_t live_resources();
size_t live_selects();    // fds still registered with enif_select
size_t live_monitors();
size_t live_ioqs();       // I/O queues not destroyed

}  // namespace shim
