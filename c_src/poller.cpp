// Islet: active-mode delivery without a process per socket, in one of two
// ways (docs/design.md compares them):
//
// - pumps (the default): enif_select notifies one of a few pump processes
//   (Islet.Pump, one per scheduler), which calls deliver/1: it reads and
//   sends {tcp, Socket, Data} to the owner, all on the BEAM's schedulers;
// - poller: one native thread waits on an epoll set of the sockets in active
//   mode (EPOLLONESHOT, re-armed only while still active), reads on
//   readiness and enif_sends straight to the owner, like quicer does.
//
// Passive calls never go through here: they wait with enif_select.
//
// The poller holds a resource reference for each registered socket. A socket
// that closes is removed from the set under its lock and its reference is
// released by the thread itself, after the batch of events that may still
// name it has been handled (see docs/design.md).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common.hpp"

namespace islet {

namespace {

struct Poller {
  int epfd = -1;
  int evfd = -1;
  ErlNifTid tid;
  bool running = false;
  std::atomic<bool> stopping{false};
  std::mutex rel_mu;
  std::vector<Sock*> release;
};

Poller poller;

// Pump processes, registered by Islet.Pump; none means the poller thread.
constexpr int kMaxPumps = 64;
std::mutex pumps_mu;
ErlNifPid pumps[kMaxPumps];
int pump_count = 0;
// In poller mode one Islet.Pump runs as a flusher only: it writes out what a
// timed-out send left, as pumps do in the default mode.
ErlNifPid flusher;
bool has_flusher = false;


ERL_NIF_TERM tag_atom(Tag t, int which) {
  static const ERL_NIF_TERM* tcp[] = {&atom.tcp, &atom.tcp_closed, &atom.tcp_error,
                                      &atom.tcp_passive};
  static const ERL_NIF_TERM* ssl[] = {&atom.ssl, &atom.ssl_closed, &atom.ssl_error,
                                      &atom.ssl_passive};
  return t == Tag::Tcp ? *tcp[which] : *ssl[which];
}

void send_owner(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv, ERL_NIF_TERM msg) {
  enif_send(caller, &s->owner, menv, msg);
  enif_clear_env(menv);
}

// Counts one delivered packet against the active setting; returns true when
// the socket stays active.
bool consume_active(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv) {
  if (s->active == kActiveTrue) return true;
  if (s->active == kActiveOnce) {
    s->active = 0;
    return false;
  }
  if (s->active > 0 && --s->active == 0) {
    ERL_NIF_TERM msg = enif_make_tuple2(menv, tag_atom(s->tag, 3), enif_make_resource(menv, s));
    send_owner(s, caller, menv, msg);
    return false;
  }
  return s->active != 0;
}

void deliver_data(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv, const unsigned char* data,
                  size_t n) {
  ERL_NIF_TERM bin;
  unsigned char* p = enif_make_new_binary(menv, n, &bin);
  std::memcpy(p, data, n);
  ERL_NIF_TERM msg = enif_make_tuple3(menv, tag_atom(s->tag, 0), enif_make_resource(menv, s), bin);
  send_owner(s, caller, menv, msg);
  s->recv_oct += n;
  s->recv_cnt++;
  if (n > s->recv_max) s->recv_max = n;
}

// The end of the connection in active mode: {tcp_closed, S}, after which
// gen_tcp's port is closed (exit_on_close): calls answer closed or einval.
void deliver_closed(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv) {
  s->peer_closed = true;
  s->eof_reported = true;
  s->dead = true;
  conn_ended(caller, s);
  ERL_NIF_TERM msg = enif_make_tuple2(menv, tag_atom(s->tag, 1), enif_make_resource(menv, s));
  send_owner(s, caller, menv, msg);
}

// Readiness of one active socket: read and deliver while active. `caller` is
// the calling process's env (a pump), or null on the poller thread.
void read_and_deliver(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv, unsigned char* buf) {
  s->armed = s->armed_pump = false;
  if (!s->open || s->dead || s->active == 0 || s->kind != Kind::Conn) return;
  // Bounded work per wake-up so that one busy socket cannot starve others.
  for (int round = 0; round < 16; round++) {
    int err = 0;
    ssize_t n = conn_read(s, buf, kReadChunk, &err);
    if (n > 0) {
      deliver_data(s, caller, menv, buf, static_cast<size_t>(n));
      bool slice_used = charge(caller, static_cast<size_t>(n));
      if (!consume_active(s, caller, menv)) return;
      if (slice_used) break;  // re-armed below: the rest comes in a new call
      continue;
    }
    // A TLS read that must write first (rare: a key update) is retried when
    // readable again; the pending write goes out with the next send.
    if (n == kWantRead || n == kWantWrite) break;
    if (n == kReadError && err != ECONNRESET) {
      // Like inet: the error, then the close.
      ERL_NIF_TERM msg = enif_make_tuple3(menv, tag_atom(s->tag, 2), enif_make_resource(menv, s),
                                          errno_atom(menv, err));
      send_owner(s, caller, menv, msg);
    }
    deliver_closed(s, caller, menv);
    return;
  }
  poller_arm(caller, s);
}

void on_ready(Sock* s, ErlNifEnv* menv, unsigned char* buf) {
  std::lock_guard<std::mutex> lk(s->mu);
  read_and_deliver(s, nullptr, menv, buf);
}

void* poller_main(void*) {
  ErlNifEnv* menv = enif_alloc_env();
  std::vector<unsigned char> buf(kReadChunk);
  epoll_event evs[256];
  while (!poller.stopping.load()) {
    int n = epoll_wait(poller.epfd, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == nullptr) {
        uint64_t v;
        ssize_t r = read(poller.evfd, &v, sizeof v);
        (void)r;
        continue;
      }
      on_ready(static_cast<Sock*>(evs[i].data.ptr), menv, buf.data());
    }
    std::vector<Sock*> rel;
    {
      std::lock_guard<std::mutex> lk(poller.rel_mu);
      rel.swap(poller.release);
    }
    for (Sock* s : rel) enif_release_resource(s);
  }
  enif_free_env(menv);
  return nullptr;
}

void poke() {
  uint64_t one = 1;
  ssize_t r = write(poller.evfd, &one, sizeof one);
  (void)r;
}

}  // namespace

ERL_NIF_TERM active_tag(Sock* s, int which) { return tag_atom(s->tag, which); }

bool pick_pump(Sock* s, ErlNifPid* out) {
  std::lock_guard<std::mutex> lk(pumps_mu);
  if (pump_count == 0) return false;
  *out = pumps[(reinterpret_cast<uintptr_t>(s) >> 6) % pump_count];
  return true;
}

bool pick_flusher(Sock* s, ErlNifPid* out) {
  if (pick_pump(s, out)) return true;
  std::lock_guard<std::mutex> lk(pumps_mu);
  if (has_flusher) *out = flusher;
  return has_flusher;
}

bool poller_start() {
  poller.epfd = epoll_create1(EPOLL_CLOEXEC);
  poller.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (poller.epfd < 0 || poller.evfd < 0) return false;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  if (epoll_ctl(poller.epfd, EPOLL_CTL_ADD, poller.evfd, &ev) != 0) return false;
  poller.stopping = false;
  if (enif_thread_create(const_cast<char*>("islet_poller"), &poller.tid, poller_main, nullptr,
                         nullptr) != 0)
    return false;
  poller.running = true;
  return true;
}

void poller_stop() {
  if (poller.running) {
    poller.stopping = true;
    poke();
    enif_thread_join(poller.tid, nullptr);
    poller.running = false;
  }
  for (Sock* s : poller.release) enif_release_resource(s);
  poller.release.clear();
  if (poller.epfd >= 0) close(poller.epfd);
  if (poller.evfd >= 0) close(poller.evfd);
  poller.epfd = poller.evfd = -1;
}

void poller_arm(ErlNifEnv* env, Sock* s) {
  if (s->armed || !s->open) return;
  ErlNifPid pump;
  if (env != nullptr && pick_pump(s, &pump)) {
    ERL_NIF_TERM msg = enif_make_tuple2(env, atom.islet_ready, enif_make_resource(env, s));
    auto mode = static_cast<ErlNifSelectFlags>(ERL_NIF_SELECT_READ | ERL_NIF_SELECT_CUSTOM_MSG);
    if (enif_select_x(env, s->fd, mode, s, &pump, msg, nullptr) >= 0) s->armed = s->armed_pump = true;
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.ptr = s;
  if (!s->in_poll) {
    enif_keep_resource(s);
    if (epoll_ctl(poller.epfd, EPOLL_CTL_ADD, s->fd, &ev) != 0) {
      enif_release_resource(s);
      return;
    }
    s->in_poll = true;
  } else if (epoll_ctl(poller.epfd, EPOLL_CTL_MOD, s->fd, &ev) != 0) {
    return;
  }
  s->armed = true;
}

void poller_disarm(ErlNifEnv* env, Sock* s) {
  if (!s->armed || !s->armed_pump || !s->open) return;
  auto mode = static_cast<ErlNifSelectFlags>(ERL_NIF_SELECT_CANCEL | ERL_NIF_SELECT_READ);
  enif_select(env, s->fd, mode, s, nullptr, atom.undefined);
  s->armed = s->armed_pump = false;
}

void poller_remove(Sock* s) {
  if (!s->in_poll) return;
  epoll_ctl(poller.epfd, EPOLL_CTL_DEL, s->fd, nullptr);
  s->in_poll = false;
  s->armed = false;
  bool first;
  {
    std::lock_guard<std::mutex> lk(poller.rel_mu);
    first = poller.release.empty();
    poller.release.push_back(s);
  }
  if (first) poke();
}

void active_started(ErlNifEnv* env, Sock* s) {
  ErlNifEnv* menv = enif_alloc_env();
  // Bytes a timed-out recv(n) left behind go first, as gen_tcp delivers them.
  if (s->rlen > 0) {
    deliver_data(s, env, menv, s->rbuf.data, s->rlen);
    s->rlen = 0;
    consume_active(s, env, menv);
  }
  // TLS: a recv(n) may have left decrypted bytes inside OpenSSL that no
  // readiness event will announce; deliver them now.
  while (s->active != 0 && tls_pending(s)) {
    static thread_local unsigned char buf[kReadChunk];
    int err = 0;
    ssize_t n = conn_read(s, buf, sizeof buf, &err);
    if (n <= 0) break;
    deliver_data(s, env, menv, buf, static_cast<size_t>(n));
    consume_active(s, env, menv);
  }
  if (s->active != 0 && s->eof_reported) {
    deliver_closed(s, env, menv);
  } else if (s->active != 0) {
    poller_arm(env, s);
  }
  enif_free_env(menv);
}

}  // namespace islet

namespace islet {

// register_pump(Index, Pid) -> ok: Islet.Pump announces itself (again after
// a restart); from then on active sockets are delivered through pumps.
// register_pump(flusher, Pid) -> ok: poller mode's background-flush process.
ERL_NIF_TERM nif_register_pump(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  int i;
  ErlNifPid pid;
  if (enif_is_identical(argv[0], enif_make_atom(env, "flusher"))) {
    if (!enif_get_local_pid(env, argv[1], &pid)) return enif_make_badarg(env);
    std::lock_guard<std::mutex> lk(pumps_mu);
    flusher = pid;
    has_flusher = true;
    return atom.ok;
  }
  if (!enif_get_int(env, argv[0], &i) || i < 0 || i >= kMaxPumps ||
      !enif_get_local_pid(env, argv[1], &pid))
    return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(pumps_mu);
  if (i > pump_count) return enif_make_badarg(env);  // registered in order
  pumps[i] = pid;
  if (i == pump_count) pump_count++;
  return atom.ok;
}

// deliver(Sock) -> ok: a pump's answer to {'$islet_ready', Sock}.
ERL_NIF_TERM nif_deliver(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  // One message env and read buffer per scheduler thread, reused.
  static thread_local ErlNifEnv* menv = enif_alloc_env();
  static thread_local unsigned char buf[kReadChunk];
  std::lock_guard<std::mutex> lk(s->mu);
  read_and_deliver(s, env, menv, buf);
  return atom.ok;
}

}  // namespace islet
