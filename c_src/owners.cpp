// Islet: the owners of Islet.TCP's connections, watched by a link as gen_tcp
// links its port to the process that owns it.
//
// A socket must close when its owner dies. A monitor from the socket's
// resource (enif_monitor_process) does that, and listeners and Islet.TLS's
// sockets have one (see Islet.Owners for why); but a monitor shows where
// gen_tcp's link does not: the owner's Process.info(pid, :monitored_by)
// lists it (Thousand Island's tests assert that a TCP connection's process
// is monitored by nothing). So the owners of TCP connections are linked to
// one process, Islet.Owners, which traps exits and, when an owner dies,
// closes what it still owns (owners_down/1). This registry maps each owner
// to its open connections. Islet.Owners links an owner when it first
// registers, and the owner stays registered and linked until it dies:
// unlinking it when its last connection goes would cost a message per
// connection, and an acceptor would be linked again at its next accept.
//
// Lock order: a socket's lock, then the registry's (owners_down takes the
// registry's alone, then each socket's through sock_close).
#include <unordered_map>
#include <vector>

#include "common.hpp"

namespace islet {

namespace {

std::mutex reg_mu;
// Owners by their pid term (a local pid is an immediate, unique while the
// process lives; the registry drops it when the process dies).
std::unordered_map<ERL_NIF_TERM, std::vector<Sock*>> owners;
ErlNifPid linker;
bool have_linker = false;

ERL_NIF_TERM pid_key(const ErlNifPid& pid) { return pid.pid; }

// Takes the sockets registered under key (each with a reference of its
// own, so that none can go before the caller is done with it). Under reg_mu.
std::vector<Sock*> take_owner(ERL_NIF_TERM key) {
  std::vector<Sock*> socks;
  auto it = owners.find(key);
  if (it == owners.end()) return socks;
  socks.swap(it->second);
  owners.erase(it);
  // Registered means open, and an open socket holds a reference to itself
  // until sock_close takes it out of here: keeping one more is safe.
  for (Sock* s : socks) enif_keep_resource(s);
  return socks;
}

}  // namespace

bool owner_link(ErlNifEnv* env, Sock* s, const ErlNifPid& pid) {
  std::lock_guard<std::mutex> lk(reg_mu);
  if (!have_linker) return false;
  auto [it, created] = owners.try_emplace(pid_key(pid));
  it->second.push_back(s);
  if (created) {
    // Islet.Owners links it. Should the owner die first, the link answers
    // with a noproc exit, which closes the socket all the same.
    ErlNifEnv* menv = enif_alloc_env();
    ErlNifPid p = pid;
    ERL_NIF_TERM msg = enif_make_tuple2(menv, atom.islet_link, enif_make_pid(menv, &p));
    enif_send(env, &linker, menv, msg);
    enif_free_env(menv);
  }
  return true;
}

void owner_unlink(Sock* s, const ErlNifPid& owner) {
  std::lock_guard<std::mutex> lk(reg_mu);
  auto it = owners.find(pid_key(owner));
  if (it == owners.end()) return;  // its owner died: owners_down has it
  std::vector<Sock*>& v = it->second;
  for (size_t i = 0; i < v.size(); i++) {
    if (v[i] != s) continue;
    v[i] = v.back();
    v.pop_back();
    return;
  }
}

bool owners_linker_pid(ErlNifPid* out) {
  std::lock_guard<std::mutex> lk(reg_mu);
  if (!have_linker) return false;
  *out = linker;
  return true;
}

// owners_down(Pid) -> [Sock]: Pid, linked by Islet.Owners, died; its sockets
// close, as a port dies with the process it is linked to. Those with data
// still queued are returned instead, orphaned and owned by the caller
// (sock_orphan), which lets the queue go out before they close, as ERTS
// keeps a closing port until its driver's queue is empty.
ERL_NIF_TERM nif_owners_down(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  ErlNifPid pid;
  if (!enif_get_local_pid(env, argv[0], &pid)) return enif_make_badarg(env);
  std::vector<Sock*> socks;
  {
    std::lock_guard<std::mutex> lk(reg_mu);
    socks = take_owner(pid_key(pid));
  }
  // Each was owned by Pid when taken, and stays so: only its owner may hand
  // a TCP socket over, and Pid is dead.
  ERL_NIF_TERM draining = enif_make_list(env, 0);
  for (Sock* s : socks) {
    if (sock_orphan(env, s)) draining = enif_make_list_cell(env, enif_make_resource(env, s), draining);
    enif_release_resource(s);
  }
  return draining;
}

// owners_linker(Pid | undefined) -> [Owner]: Islet.Owners starting (it links
// the owners returned: those registered while no linker ran, after a
// restart) or stopping. Once none runs, new sockets get monitors, and so do
// the registered ones (the registry empties). Only the process registered
// as Islet.Owners may start, and only the running linker may stop: any
// other caller would leave every later owner unwatched (badarg).
ERL_NIF_TERM nif_owners_linker(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  ErlNifPid pid;
  bool start = enif_get_local_pid(env, argv[0], &pid);
  if (!start && !enif_is_identical(argv[0], atom.undefined)) return enif_make_badarg(env);
  ErlNifPid me;
  enif_self(env, &me);
  ErlNifPid registered;
  if (start && !(enif_whereis_pid(env, enif_make_atom(env, "Elixir.Islet.Owners"), &registered) &&
                 enif_compare_pids(&registered, &pid) == 0 && enif_compare_pids(&me, &pid) == 0))
    return enif_make_badarg(env);
  ERL_NIF_TERM list = enif_make_list(env, 0);
  std::vector<Sock*> socks;
  {
    std::lock_guard<std::mutex> lk(reg_mu);
    if (!start && !(have_linker && enif_compare_pids(&linker, &me) == 0)) return enif_make_badarg(env);
    have_linker = start;
    if (start) {
      linker = pid;
      for (auto& [key, v] : owners) list = enif_make_list_cell(env, key, list);
      return list;
    }
    for (auto& [key, v] : owners)
      for (Sock* s : v) {
        enif_keep_resource(s);
        socks.push_back(s);
      }
    owners.clear();
  }
  for (Sock* s : socks) {
    bool dead = false;
    {
      std::lock_guard<std::mutex> lk(s->mu);
      if (s->open && s->linked) {
        s->linked = false;  // out of the registry already
        s->owner_mon_set = enif_monitor_process(env, s, &s->owner, &s->owner_mon) == 0;
        dead = !s->owner_mon_set;
      }
    }
    if (dead) sock_close(env, s, nullptr);
    enif_release_resource(s);
  }
  return list;
}

}  // namespace islet
