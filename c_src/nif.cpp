// Islet: the NIF's function table, load and unload.
#include "common.hpp"

namespace islet {

bool open_resource_types(ErlNifEnv* env);
bool open_poller_types(ErlNifEnv* env);
bool open_tls_types(ErlNifEnv* env);

#define ISLET_NIF(name) ERL_NIF_TERM name(ErlNifEnv*, int, const ERL_NIF_TERM[]);
ISLET_NIF(nif_listen)
ISLET_NIF(nif_accept)
ISLET_NIF(nif_recv)
ISLET_NIF(nif_send)
ISLET_NIF(nif_send_more)
ISLET_NIF(nif_sendfile_open)
ISLET_NIF(nif_sendfile_size)
ISLET_NIF(nif_sendfile)
ISLET_NIF(nif_cancel)
ISLET_NIF(nif_close)
ISLET_NIF(nif_send_timeout_close)
ISLET_NIF(nif_ktls)
ISLET_NIF(nif_kernel_tls)
ISLET_NIF(nif_send_timeout_keep)
ISLET_NIF(nif_flush_bg)
ISLET_NIF(nif_drain)
ISLET_NIF(nif_shutdown)
ISLET_NIF(nif_lock_probe)
ISLET_NIF(nif_largest_write)
ISLET_NIF(nif_live_sockets)
ISLET_NIF(nif_is_listener)
ISLET_NIF(nif_controlling_process)
ISLET_NIF(nif_set_owner)
ISLET_NIF(nif_adopt_orphan)
ISLET_NIF(nif_set_active)
ISLET_NIF(nif_owners_down)
ISLET_NIF(nif_owners_linker)
ISLET_NIF(nif_setopts)
ISLET_NIF(nif_getopts)
ISLET_NIF(nif_getstat)
ISLET_NIF(nif_sockname)
ISLET_NIF(nif_peername)
ISLET_NIF(nif_register_pump)
ISLET_NIF(nif_pump_poll)
ISLET_NIF(nif_tls_ctx)
ISLET_NIF(nif_tls_listener)
ISLET_NIF(nif_tls_upgrade_pause)
ISLET_NIF(nif_tls_upgrade)
ISLET_NIF(nif_tls_set_ctx)
ISLET_NIF(nif_tls_verify_failed)
ISLET_NIF(nif_tls_handshake)
ISLET_NIF(nif_tls_linger)
ISLET_NIF(nif_tls_info)
ISLET_NIF(nif_tls_sweep)
ISLET_NIF(nif_deferred_downs)
#undef ISLET_NIF

namespace {

using NifFn = ERL_NIF_TERM (*)(ErlNifEnv*, int, const ERL_NIF_TERM[]);

// A call on a socket whose lock a dirty scheduler holds for long work (a
// costly handshake step, a kernel TLS sendfile; see LongHold) would wait
// for it on this normal scheduler: it goes to a dirty I/O scheduler first
// and waits there. Every NIF on a normal scheduler whose first argument may
// be a socket goes through here (lock_probe, a test's look at the lock,
// does not). A pump meeting such a socket among its events still waits
// (kernel TLS with active mode; see docs/design.md).
// Owner and waiter deaths left meanwhile (sock_down) are settled first, on
// the dirty scheduler: a call made after an owner's death finds the socket
// as that death left it, whoever else runs first.
template <NifFn F>
ERL_NIF_TERM settled(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  settle_downs(env, argv[0]);
  return F(env, argc, argv);
}

template <NifFn F>
ERL_NIF_TERM on_socket(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  if (argc > 0 && held_long(env, argv[0]))
    return enif_schedule_nif(env, "islet_wait_lock", ERL_NIF_DIRTY_JOB_IO_BOUND, settled<F>, argc,
                             argv);
  return F(env, argc, argv);
}

// A dirty NIF that may hold a socket for long (LongHold: kernel TLS's
// sendfile) settles the deaths its hold deferred once it is over.
template <NifFn F>
ERL_NIF_TERM settle_after(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  ERL_NIF_TERM r = F(env, argc, argv);
  settle_downs(env, argv[0]);
  return r;
}

ErlNifFunc nif_funcs[] = {
    {"listen", 4, nif_listen, 0},
    {"accept", 1, on_socket<nif_accept>, 0},
    {"recv", 2, on_socket<nif_recv>, 0},
    {"send", 2, on_socket<nif_send>, 0},
    {"send_more", 1, on_socket<nif_send_more>, 0},
    {"sendfile_open", 1, nif_sendfile_open, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"sendfile_size", 1, nif_sendfile_size, 0},
    {"sendfile", 4, settle_after<nif_sendfile>, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"cancel", 2, on_socket<nif_cancel>, 0},
    {"close", 1, on_socket<nif_close>, 0},
    {"send_timeout_close", 1, on_socket<nif_send_timeout_close>, 0},
    {"ktls", 1, on_socket<nif_ktls>, 0},
    {"kernel_tls", 0, nif_kernel_tls, 0},
    {"send_timeout_keep", 2, on_socket<nif_send_timeout_keep>, 0},
    {"flush_bg", 1, on_socket<nif_flush_bg>, 0},
    {"drain", 1, on_socket<nif_drain>, 0},
    {"shutdown", 2, on_socket<nif_shutdown>, 0},
    {"lock_probe", 1, nif_lock_probe, 0},
    {"largest_write", 1, on_socket<nif_largest_write>, 0},
    {"live_sockets", 0, nif_live_sockets, 0},
    {"is_listener", 1, nif_is_listener, 0},
    {"controlling_process", 2, on_socket<nif_controlling_process>, 0},
    {"set_owner", 3, on_socket<nif_set_owner>, 0},
    {"adopt_orphan", 2, on_socket<nif_adopt_orphan>, 0},
    {"set_active", 2, on_socket<nif_set_active>, 0},
    {"owners_down", 1, nif_owners_down, 0},
    {"owners_linker", 1, nif_owners_linker, 0},
    {"setopts", 2, on_socket<nif_setopts>, 0},
    {"getopts", 2, on_socket<nif_getopts>, 0},
    {"getstat", 1, on_socket<nif_getstat>, 0},
    {"sockname", 1, on_socket<nif_sockname>, 0},
    {"peername", 1, on_socket<nif_peername>, 0},
    {"register_pump", 2, nif_register_pump, 0},
    {"pump_poll", 1, nif_pump_poll, 0},
    // Building a context parses keys and certificates: dirty CPU.
    {"tls_ctx", 1, nif_tls_ctx, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"tls_listener", 2, on_socket<nif_tls_listener>, 0},
    {"tls_upgrade_pause", 1, on_socket<nif_tls_upgrade_pause>, 0},
    {"tls_upgrade", 2, on_socket<nif_tls_upgrade>, 0},
    {"tls_set_ctx", 2, on_socket<nif_tls_set_ctx>, 0},
    {"tls_verify_failed", 2, on_socket<nif_tls_verify_failed>, 0},
    // A handshake step moves itself to a dirty CPU scheduler when costly.
    {"tls_handshake", 1, on_socket<nif_tls_handshake>, 0},
    {"tls_linger", 1, on_socket<nif_tls_linger>, 0},
    {"tls_info", 1, on_socket<nif_tls_info>, 0},
    // Visits every TLS connection: dirty CPU.
    {"tls_sweep", 0, nif_tls_sweep, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"deferred_downs", 1, on_socket<nif_deferred_downs>, 0},
};

int load(ErlNifEnv* env, void** priv, ERL_NIF_TERM info) {
  init_atoms(env);
  // {MaxFds, SendfileCutEndsSends, DefaultBuffer, SslNamesDecompressionFailure}
  const ERL_NIF_TERM* t;
  int arity;
  int buffer;
  if (!enif_get_tuple(env, info, &arity, &t) || arity != 4 || !enif_get_int(env, t[0], &max_fds)) {
    max_fds = 0;
  } else {
    sendfile_cut_ends_sends = enif_is_identical(t[1], enif_make_atom(env, "true"));
    if (enif_get_int(env, t[2], &buffer) && buffer > 0) default_buffer = buffer;
    ssl_names_decompression_failure = enif_is_identical(t[3], enif_make_atom(env, "true"));
  }
  if (!open_resource_types(env) || !open_tls_types(env) || !open_poller_types(env)) return 1;
  return poller_start() ? 0 : 1;
}

void unload(ErlNifEnv* env, void* priv) { poller_stop(); }

}  // namespace
}  // namespace islet

ERL_NIF_INIT(Elixir.Islet.Nif, islet::nif_funcs, islet::load, nullptr, nullptr, islet::unload)
