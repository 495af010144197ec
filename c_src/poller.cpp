// Islet: active-mode delivery without a process per socket, in one of two
// ways (docs/design.md compares them):
//
// - pumps (the default): each of a few pump processes (Islet.Pump, one per
//   scheduler) polls an epoll set of its own from its scheduler, as the BEAM
//   polls gen_tcp's busy ports: a socket is registered once, edge-triggered,
//   so no syscall re-arms it per packet, and a pump that found events polls
//   again after the processes it woke have run, so under load nothing wakes
//   a sleeping thread per packet either. Readiness that comes while a socket
//   is not active is remembered (ready) and served by the setopts that
//   activates it, on the caller's scheduler. An idle pump waits with one
//   enif_select on its epoll fd;
// - poller: one native thread waits on an epoll set of the sockets in active
//   mode (EPOLLONESHOT, re-armed only while still active), reads on
//   readiness and enif_sends straight to the owner, like quicer does.
//
// Passive calls never go through here: they wait with enif_select.
//
// An epoll set (a pump's, or the poller's) holds a resource reference for
// each registered socket. A socket that closes is removed from the set under
// its lock, and its reference is released by whoever polls the set, after
// the batch of events that may still name it has been handled (see
// docs/design.md).
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

// Never destroyed (nor psets below): at exit the BEAM's threads, the poller
// thread among them, may still use them while static destructors run
// (ThreadSanitizer saw the poller's release list freed under it).
Poller& poller = *new Poller;

// Pump processes, registered by Islet.Pump; none means the poller thread.
constexpr int kMaxPumps = 64;
std::mutex pumps_mu;
ErlNifPid pumps[kMaxPumps];
int pump_count = 0;
// Each pump's poll set (pump mode), indexed as pumps[].
struct PumpSet {
  int epfd = -1;
  void* res = nullptr;  // a resource standing for epfd, for enif_select
  std::mutex mu;        // guards release and backlog
  // Removed sockets whose reference the pump drops after its next batch.
  std::vector<Sock*> release;
  // Active sockets with data left to read (a slice was used up): no new
  // edge will announce it, so the pump reads them in its next poll.
  std::vector<Sock*> backlog;
  std::atomic<bool> wake_sent{false};  // a $islet_poll message is on its way
};
PumpSet* const psets = new PumpSet[kMaxPumps];
ErlNifResourceType* pset_type = nullptr;

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
  count_delivered(s, n);
}

// The end of the connection in active mode: {tcp_closed, S} (unless
// `quiet`), after which gen_tcp's port is closed (exit_on_close): calls
// answer closed or einval.
void deliver_closed(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv, bool quiet = false) {
  s->peer_closed = true;
  s->eof_reported = true;
  s->dead = true;
  conn_ended(caller, s);
  if (quiet) return;
  ERL_NIF_TERM msg = enif_make_tuple2(menv, tag_atom(s->tag, 1), enif_make_resource(menv, s));
  send_owner(s, caller, menv, msg);
}

void backlog_push(ErlNifEnv* env, Sock* s);

// What a pump's set listens for on a socket (ADD, and MOD when unparked).
epoll_event pump_event(Sock* s) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = s;
  return ev;
}

// Registers s in its pump's set (s->pset), edge-triggered and for good.
bool pump_register(Sock* s) {
  epoll_event ev = pump_event(s);
  enif_keep_resource(s);
  if (epoll_ctl(psets[s->pset].epfd, EPOLL_CTL_ADD, s->fd, &ev) != 0) {
    enif_release_resource(s);
    s->pset = -1;
    return false;
  }
  s->in_poll = true;
  return true;
}

// A read that ended the connection (n: 0, kReadError or kTlsFailed, with
// err) in active mode: like inet, the error if any, then the close; a TLS
// alert only as {ssl_error, S, {tls_alert, _}}, as :ssl sends it.
void deliver_end(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv, ssize_t n, int err) {
  ERL_NIF_TERM reason = 0;
  if (n == kTlsFailed)
    reason = tls_failure_term(menv, err);
  else if (n == kReadError && err != ECONNRESET)
    reason = errno_atom(menv, err);
  if (reason != 0) {
    ERL_NIF_TERM msg =
        enif_make_tuple3(menv, tag_atom(s->tag, 2), enif_make_resource(menv, s), reason);
    send_owner(s, caller, menv, msg);
  }
  deliver_closed(s, caller, menv, n == kTlsFailed);
}

// Readiness of one active socket: read and deliver while active. `caller` is
// the calling process's env (a pump, or the process that activated the
// socket), or null on the poller thread. Returns whether the caller's time
// slice is used up.
bool read_and_deliver(Sock* s, ErlNifEnv* caller, ErlNifEnv* menv, unsigned char* buf) {
  bool et = s->pset >= 0;  // in a pump's set: registered for good
  bool slice_used = false;
  s->armed = false;
  if (!s->open || s->dead || s->active == 0 || s->kind != Kind::Conn) return false;
  // Bounded work per wake-up so that one busy socket cannot starve others.
  for (int round = 0; round < 16; round++) {
    int err = 0;
    ssize_t n = conn_read(s, buf, kReadChunk, &err);
    if (n > 0) {
      // Edge-triggered: whether more may be there without a new edge. A
      // short plain read emptied the socket; over TLS, the socket read under
      // SSL_read tells, unless OpenSSL still holds records.
      if (et)
        s->ready = s->hup ||
                   (is_tls(s) ? tls_may_have_more(s) : static_cast<size_t>(n) == kReadChunk);
      deliver_data(s, caller, menv, buf, static_cast<size_t>(n));
      slice_used = charge(caller, static_cast<size_t>(n));
      if (!consume_active(s, caller, menv)) return slice_used;
      if (slice_used) break;  // the rest comes in a new call
      continue;
    }
    // A TLS read that must write first (rare: a key update) is retried when
    // readable again; the pending write goes out with the next send.
    if (n == kWantRead || n == kWantWrite) {
      s->ready = false;
      break;
    }
    deliver_end(s, caller, menv, n, err);
    return slice_used;
  }
  if (!et) {
    poller_arm(caller, s);
    return slice_used;
  }
  if (!s->in_poll && !pump_register(s)) return slice_used;
  s->armed = true;
  if (s->ready) backlog_push(caller, s);
  return slice_used;
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

// The pump whose set takes s, or -1 (no pumps: poller mode).
int pump_index(const Sock* s) {
  std::lock_guard<std::mutex> lk(pumps_mu);
  if (pump_count == 0) return -1;
  return static_cast<int>((reinterpret_cast<uintptr_t>(s) >> 6) % pump_count);
}

// Asks pump i to poll (it may be waiting for its set's select).
void wake_pump(ErlNifEnv* env, int i) {
  if (psets[i].wake_sent.exchange(true)) return;
  ErlNifPid pid;
  {
    std::lock_guard<std::mutex> lk(pumps_mu);
    pid = pumps[i];
  }
  ErlNifEnv* m = enif_alloc_env();
  enif_send(env, &pid, m, enif_make_atom(m, "$islet_poll"));
  enif_free_env(m);
}

namespace {

void backlog_push(ErlNifEnv* env, Sock* s) {
  if (s->in_backlog) return;
  s->in_backlog = true;
  enif_keep_resource(s);
  {
    std::lock_guard<std::mutex> lk(psets[s->pset].mu);
    psets[s->pset].backlog.push_back(s);
  }
  wake_pump(env, s->pset);
}

// Ready, but this pump's slice is used up: read in its next poll.
void defer(ErlNifEnv* env, Sock* s) {
  s->ready = true;
  if (s->open && s->active != 0) backlog_push(env, s);
}

// What a pump passed over, in Sock::pump_missed beside its epoll events.
constexpr uint32_t kPumpMissed = 1u << 30;
constexpr uint32_t kPumpBacklog = 1u << 29;

// Takes s's lock for a pump, unless long work on a dirty scheduler holds it
// (LongHold: a costly handshake step, a kernel TLS sendfile), which would
// hold this normal scheduler for milliseconds: then the socket is passed
// over, what the pump was to do left in pump_missed for the holder to hand
// back (pump_resume), and false returned. A lock held briefly is waited for.
bool pump_lock(Sock* s, std::unique_lock<std::mutex>& lk, uint32_t left) {
  lk = std::unique_lock<std::mutex>(s->mu, std::try_to_lock);
  if (lk.owns_lock()) return true;
  {
    // Under downs_mu, as the holder lets go of the mark: either the holder
    // sees what is left here once its work is over, or the mark is off and
    // the lock is about to be free.
    std::lock_guard<std::mutex> dl(s->downs_mu);
    if (s->long_hold.load(std::memory_order_acquire) > 0) {
      s->pump_missed.fetch_or(left | kPumpMissed, std::memory_order_acq_rel);
      return false;
    }
  }
  lk.lock();
  return true;
}

}  // namespace

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
  if (!s->open) return;
  int i = env != nullptr ? (s->pset >= 0 ? s->pset : pump_index(s)) : -1;
  if (i >= 0) {
    if (!s->in_poll) {
      // First activation: read what is already there, and register only if
      // the socket is still active after it (read_and_deliver does). A
      // socket whose request (or end) came with the connection, as most do,
      // then costs no epoll_ctl now, and is not registered ready, which
      // would wake the pump for an event already served.
      s->pset = static_cast<int8_t>(i);
      s->ready = true;
    } else if (s->parked) {
      // Readiness came while it was passive, and the set stopped listening.
      epoll_event ev = pump_event(s);
      epoll_ctl(psets[i].epfd, EPOLL_CTL_MOD, s->fd, &ev);
      s->parked = false;
    }
    s->armed = s->in_poll;
    if (s->ready) {
      // Served right here, on the caller's scheduler: no hop to a pump.
      static thread_local ErlNifEnv* menv = enif_alloc_env();
      static thread_local unsigned char buf[kReadChunk];
      read_and_deliver(s, env, menv, buf);
      enif_clear_env(menv);
    }
    return;
  }
  if (s->armed) return;
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

void poller_disarm(ErlNifEnv*, Sock* s) {
  // A pump's set keeps the socket; its events now only mark it ready. The
  // poller's one-shot event, if it comes, finds the socket passive.
  if (s->pset >= 0) s->armed = false;
}

void poller_remove(ErlNifEnv* env, Sock* s) {
  if (!s->in_poll) return;
  s->in_poll = false;
  s->armed = false;
  if (s->pset >= 0) {
    PumpSet& p = psets[s->pset];
    epoll_ctl(p.epfd, EPOLL_CTL_DEL, s->fd, nullptr);
    {
      std::lock_guard<std::mutex> lk(p.mu);
      p.release.push_back(s);
    }
    if (env != nullptr) wake_pump(env, s->pset);
    return;
  }
  epoll_ctl(poller.epfd, EPOLL_CTL_DEL, s->fd, nullptr);
  bool first;
  {
    std::lock_guard<std::mutex> lk(poller.rel_mu);
    first = poller.release.empty();
    poller.release.push_back(s);
  }
  if (first) poke();
}

void pump_resume(ErlNifEnv* env, Sock* s) {
  uint32_t left = s->pump_missed.exchange(0, std::memory_order_acq_rel);
  if (left == 0) return;
  // The pump dropped its backlog entry: none is queued any more.
  if (left & kPumpBacklog) s->in_backlog = false;
  if (!s->in_poll || s->pset < 0) return;
  // As the pump would have: ready (and the peer's end seen); read in the
  // pump's next poll if active. A passive socket is parked by its next
  // event, as it would have been by this one.
  s->ready = true;
  if (left & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s->hup = true;
  if (s->open && s->active != 0) backlog_push(env, s);
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
  while (s->active != 0 && !s->eof_reported && tls_pending(s)) {
    static thread_local unsigned char buf[kReadChunk];
    int err = 0;
    ssize_t n = conn_read(s, buf, sizeof buf, &err);
    if (n == kWantRead || n == kWantWrite) break;
    if (n <= 0) {
      // The connection ended in what OpenSSL or the record layer held.
      deliver_end(s, env, menv, n, err);
      enif_free_env(menv);
      return;
    }
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
  PumpSet& p = psets[i];
  if (p.epfd < 0) {  // kept across pump restarts
    p.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p.epfd < 0) return make_errno_error(env, errno);
    int* res = static_cast<int*>(enif_alloc_resource(pset_type, sizeof(int)));
    if (res == nullptr) {
      close(p.epfd);
      p.epfd = -1;
      return make_error(env, atom.enomem);
    }
    *res = p.epfd;
    p.res = res;  // never released: the set lives as long as the library
  }
  pumps[i] = pid;
  if (i == pump_count) pump_count++;
  return atom.ok;
}

// pump_poll(Index) -> more | idle: pump Index reads and delivers what its
// set has ready. `more`: it found work and should poll again once the
// processes it woke have run; `idle`: nothing was ready, and
// {select, _, undefined, ready_input} will come when something is.
ERL_NIF_TERM nif_pump_poll(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  int i;
  ErlNifPid me;
  enif_self(env, &me);
  {
    // Only the pump itself: its set's select notifies the caller.
    std::lock_guard<std::mutex> lk(pumps_mu);
    if (!enif_get_int(env, argv[0], &i) || i < 0 || i >= pump_count ||
        enif_compare_pids(&pumps[i], &me) != 0)
      return enif_make_badarg(env);
  }
  PumpSet& p = psets[i];
  p.wake_sent = false;  // a wake-up sent from now on is needed
  // One message env and read buffer per scheduler thread, reused.
  static thread_local ErlNifEnv* menv = enif_alloc_env();
  static thread_local unsigned char buf[kReadChunk];
  std::vector<Sock*> backlog;
  {
    std::lock_guard<std::mutex> lk(p.mu);
    backlog.swap(p.backlog);
  }
  // Once this call's time slice is used up, what is ready is only noted
  // (backlog) and read in the next call, after other processes have run.
  bool spent = false;
  for (Sock* s : backlog) {
    std::unique_lock<std::mutex> lk;
    if (pump_lock(s, lk, kPumpBacklog)) {
      s->in_backlog = false;
      if (spent)
        defer(env, s);
      else
        spent = read_and_deliver(s, env, menv, buf);
      lk.unlock();
    }
    enif_release_resource(s);
  }
  constexpr int kBatch = 64;
  epoll_event evs[kBatch];
  int n = spent ? 0 : epoll_wait(p.epfd, evs, kBatch, 0);
  for (int k = 0; k < n; k++) {
    Sock* s = static_cast<Sock*>(evs[k].data.ptr);
    std::unique_lock<std::mutex> lk;
    if (!pump_lock(s, lk, evs[k].events)) continue;
    if (!s->in_poll) continue;  // removed meanwhile: only its reference is left
    s->ready = true;
    if (evs[k].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s->hup = true;
    if (s->open && s->active != 0) {
      if (spent)
        defer(env, s);
      else
        spent = read_and_deliver(s, env, menv, buf);
    } else if (!s->parked) {
      // Passive: stop hearing about it (a passive reader waits with its own
      // select) until an activation finds nothing left to read.
      epoll_event ev{};
      ev.data.ptr = s;
      epoll_ctl(p.epfd, EPOLL_CTL_MOD, s->fd, &ev);
      s->parked = true;
    }
  }
  // References of removed sockets go after the batch that may name them.
  std::vector<Sock*> release;
  {
    std::lock_guard<std::mutex> lk(p.mu);
    release.swap(p.release);
  }
  for (Sock* s : release) enif_release_resource(s);
  if (n > 0 || !backlog.empty() || spent) return atom.more;
  if (enif_select(env, p.epfd, ERL_NIF_SELECT_READ, p.res, &me, atom.undefined) < 0)
    return atom.more;  // cannot wait: poll again
  return atom.idle;
}

bool open_poller_types(ErlNifEnv* env) {
  ErlNifResourceTypeInit init{};
  // enif_select wants a stop callback; the fd is never closed.
  init.stop = [](ErlNifEnv*, void*, ErlNifEvent, int) {};
  auto flags = static_cast<ErlNifResourceFlags>(ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER);
  pset_type = enif_open_resource_type_x(env, "islet_poll_set", &init, flags, nullptr);
  return pset_type != nullptr;
}

}  // namespace islet
