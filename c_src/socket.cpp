// Islet: the socket resource's lifecycle (create, close, stop, owner death)
// and the per-direction waiter queues.
//
// Rules (after OTP's socket NIF): every syscall on the fd happens under the
// socket's lock and only while `open`; close flips `open`, wakes every waiter,
// and retires the fd with enif_select(STOP); the fd is closed in the stop
// callback, never while a select may still refer to it.
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <new>

#include "common.hpp"

namespace islet {

Atoms atom;
int max_fds = 0;
bool sendfile_cut_ends_sends = true;
int default_buffer = 1460;
bool ssl_names_decompression_failure = false;
ErlNifResourceType* sock_type = nullptr;
ErlNifResourceType* file_type = nullptr;

void init_atoms(ErlNifEnv* env) {
  auto a = [env](const char* n) { return enif_make_atom(env, n); };
  atom = Atoms{a("ok"), a("error"), a("true"), a("false"), a("undefined"), a("closed"),
               a("timeout"), a("einval"), a("enotconn"), a("enomem"), a("badarg"),
               a("not_owner"), a("wait"), a("wait_turn"), a("wait_drain"), a("wait_close"),
               a("paused"), a("more"), a("once"), a("infinity"), a("$islet"),
               a("$islet_closed"), a("inet"), a("inet6"), a("local"), a("read"), a("write"),
               a("read_write"), a("active"), a("mode"), a("binary"), a("packet"), a("raw"),
               a("nodelay"), a("reuseaddr"), a("reuseport"), a("reuseport_lb"), a("keepalive"),
               a("linger"), a("buffer"), a("recbuf"), a("sndbuf"), a("send_timeout"),
               a("send_timeout_close"), a("exit_on_close"), a("backlog"), a("ipv6_v6only"),
               a("tcp"), a("tcp_closed"), a("tcp_error"), a("tcp_passive"), a("ssl"),
               a("ssl_closed"), a("ssl_error"), a("ssl_passive"), a("recv_oct"), a("recv_cnt"),
               a("recv_max"), a("recv_avg"), a("recv_dvi"), a("send_oct"), a("send_cnt"),
               a("send_max"), a("send_avg"), a("send_pend"), a("unspec"), a("eof"),
               a("tos"), a("priority"), a("nopush"),
               a("$islet_flush"), a("idle"), a("wait_busy"), a("high_watermark"),
               a("low_watermark"), a("ttl"), a("recvtos"), a("recvttl"), a("dontroute"),
               a("tclass"), a("recvtclass"), a("bind_to_device"), a("delay_send"),
               a("packet_size"), a("high_msgq_watermark"), a("low_msgq_watermark"),
               a("header"), a("deliver"), a("term"), a("show_econnreset"), a("debug"),
               a("broadcast"), a("netns"), a("read_packets"),
               a("notsup_on_transport_accept_socket"), a("accept_copies_reuseaddr"),
               a("link_owner"), a("$islet_link"), a("$islet_orphan"),
               a("$islet_downs"), a("multicast_ttl"), a("multicast_loop"),
               a("multicast_if"), a("pktoptions")};
}

ERL_NIF_TERM make_error(ErlNifEnv* env, ERL_NIF_TERM reason) {
  return enif_make_tuple2(env, atom.error, reason);
}

bool charge(ErlNifEnv* env, size_t bytes) {
  if (env == nullptr) return false;
  // About 1% of a 1 ms slice for the syscall, and 1% per 8 KiB moved
  // (copies, message building): generous, since undercharging is what hurts.
  size_t pct = 1 + bytes / 8192;
  return enif_consume_timeslice(env, static_cast<int>(pct > 100 ? 100 : pct)) != 0;
}

ERL_NIF_TERM make_ok(ErlNifEnv* env, ERL_NIF_TERM value) {
  return enif_make_tuple2(env, atom.ok, value);
}

ERL_NIF_TERM errno_atom(ErlNifEnv* env, int err) {
  // glibc names errnos ("ECONNRESET"); inet reports them in lower case.
  const char* name = strerrorname_np(err);
  if (name == nullptr) return enif_make_atom(env, "unknown");
  char buf[32];
  size_t i = 0;
  for (; name[i] != '\0' && i + 1 < sizeof buf; i++)
    buf[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(name[i])));
  buf[i] = '\0';
  return enif_make_atom(env, buf);
}

ERL_NIF_TERM closed_answer(ErlNifEnv* env, const Sock* s) {
  return make_error(env, s->tag == Tag::Ssl ? atom.closed : atom.einval);
}

ERL_NIF_TERM make_errno_error(ErlNifEnv* env, int err) {
  return make_error(env, errno_atom(env, err));
}

bool WaitQueue::is_head(const ErlNifPid& p) const {
  return !q.empty() && enif_compare_pids(&q.front().pid, &p) == 0;
}

bool WaitQueue::contains(const ErlNifPid& p) const {
  for (const Waiter& w : q)
    if (enif_compare_pids(&w.pid, &p) == 0) return true;
  return false;
}

// Sockets made and not yet destroyed (tests: nothing may keep a closed one).
static std::atomic<long> live_socks{0};

Sock* sock_create(ErlNifEnv* env, int fd, Kind kind, int family, bool link_owner) {
  void* mem = enif_alloc_resource(sock_type, sizeof(Sock));
  if (mem == nullptr) return nullptr;
  Sock* s = new (mem) Sock();
  // The marks a call reads before it takes the lock (held_long), stored
  // again with release: a thread that gets the socket through a message,
  // whose ordering ThreadSanitizer cannot see inside the BEAM, then reads
  // after the construction for it too (it reported the zeroing as a race).
  s->long_hold.store(0, std::memory_order_release);
  s->downs_pending.store(false, std::memory_order_release);
  live_socks.fetch_add(1, std::memory_order_relaxed);
  enif_keep_resource(s);  // the open socket's reference to itself (Sock::self_ref)
  s->fd = fd;
  s->kind = kind;
  s->family = family;
  ErlNifPid self;
  enif_self(env, &self);
  s->owner = self;
  if (link_owner && owner_link(env, s, self))
    s->linked = true;
  else
    s->owner_mon_set = enif_monitor_process(env, s, &self, &s->owner_mon) == 0;
  return s;
}

bool get_sock(ErlNifEnv* env, ERL_NIF_TERM t, Sock** out) {
  return enif_get_resource(env, t, sock_type, reinterpret_cast<void**>(out)) != 0;
}

void wake(ErlNifEnv* env, Sock* s, const ErlNifPid& pid) {
  ErlNifEnv* menv = enif_alloc_env();
  ERL_NIF_TERM msg = enif_make_tuple2(menv, atom.islet, enif_make_resource(menv, s));
  enif_send(env, &pid, menv, msg);
  enif_free_env(menv);
}

int select_for(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid, int dir) {
  ERL_NIF_TERM msg = enif_make_tuple2(env, atom.islet, enif_make_resource(env, s));
  // enif_select_read/_write are macros that OR two enum values, which C++
  // will not convert back to the enum: call enif_select_x directly.
  auto mode = static_cast<ErlNifSelectFlags>(dir | ERL_NIF_SELECT_CUSTOM_MSG);
  int r = enif_select_x(env, s->fd, mode, s, &pid, msg, nullptr);
  if (r >= 0) wq.selected = dir;
  return r;
}

void waiter_push(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid) {
  if (wq.contains(pid)) return;
  Waiter w;
  w.pid = pid;
  if (enif_monitor_process(env, s, &pid, &w.mon) != 0) return;  // caller is dying
  wq.q.push_back(w);
}

// Cancels the head's select, if it holds one. True when it was cancelled
// before it fired (or was not there): no message will come of it. False when
// its message is sent already, or on its way: that message wakes the head.
static bool cancel_select(ErlNifEnv* env, Sock* s, WaitQueue& wq) {
  int mode = wq.selected;
  wq.selected = 0;
  if (mode == 0 || !s->open) return true;
  auto flags = static_cast<ErlNifSelectFlags>(ERL_NIF_SELECT_CANCEL | mode);
  int r = enif_select(env, s->fd, flags, s, nullptr, atom.undefined);
  int cancelled = mode == ERL_NIF_SELECT_READ ? ERL_NIF_SELECT_READ_CANCELLED
                                              : ERL_NIF_SELECT_WRITE_CANCELLED;
  return r < 0 || (r & cancelled) != 0;
}

void reader_outrun(ErlNifEnv* env, Sock* s) {
  if (s->rq.q.empty() || s->rq.q.front().outrun) return;
  // A head reader without a select is between two calls (a recv(n) that
  // said more): it calls again without a wake, as one whose select fired
  // does, and the end must not send it one (it would stay in the mailbox).
  bool had_select = s->rq.selected != 0;
  s->rq.q.front().outrun = true;
  s->rq.q.front().woken = !cancel_select(env, s, s->rq) || !had_select;
}

bool waiter_remove(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid, int dir) {
  for (auto it = wq.q.begin(); it != wq.q.end(); ++it) {
    if (enif_compare_pids(&it->pid, &pid) != 0) continue;
    bool was_head = it == wq.q.begin();
    enif_demonitor_process(env, s, &it->mon);
    wq.q.erase(it);
    if (was_head) {
      cancel_select(env, s, wq);
      if (!wq.q.empty()) wake(env, s, wq.q.front().pid);
    }
    return true;
  }
  return false;
}

void waiter_done(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid) {
  if (!wq.is_head(pid)) return;
  enif_demonitor_process(env, s, &wq.q.front().mon);
  wq.q.erase(wq.q.begin());
  wq.selected = 0;
  if (!wq.q.empty()) wake(env, s, wq.q.front().pid);
}

// Lets every waiter of a queue go (a close, or the connection's end): each
// waiting one gets one {'$islet', S} message and calls again, to find the
// socket closed. One, not two: the Elixir side takes one message per wait,
// and a second would stay in the mailbox (a handler's handle_info), where
// gen_tcp leaves nothing. So the head's select is cancelled first, and when
// it fired already its message is the head's wake. A head without a select
// waits for nothing from here: it was just made head and its wake is on its
// way, or it is between two calls that need no wait (a recv(n) past 1 MiB
// that said `more`, a sendfile running without the lock, a TLS handshake
// asking Erlang for an sni_fun's answer), and its next call finds the
// socket closed. Off the schedulers (the poller thread, no env) no select
// is cancelled (Islet calls enif_select only with a caller's env): the head
// is woken, and may also get its select's message.
static void wake_all(ErlNifEnv* env, Sock* s, WaitQueue& wq) {
  bool wake_head = wq.selected != 0 && (env == nullptr || cancel_select(env, s, wq));
  // An outrun recv holds no select and waits for this wake (or its old one).
  if (!wq.q.empty() && wq.q.front().outrun && !wq.q.front().woken) wake_head = true;
  for (const Waiter& w : wq.q) {
    // Off the schedulers (poller thread) the monitor is left to fire; the
    // down callback then finds no waiter.
    if (env != nullptr) enif_demonitor_process(env, s, &w.mon);
    if (&w == &wq.q.front() && !wake_head) continue;
    wake(env, s, w.pid);
  }
  wq.q.clear();
  wq.selected = 0;
}

void conn_ended(ErlNifEnv* env, Sock* s) {
  if (s->open && !s->fd_closed) ::shutdown(s->fd, SHUT_RDWR);
  if (s->wioq != nullptr) enif_ioq_destroy(s->wioq);
  s->wioq = nullptr;
  s->shut_pending = -1;  // its queue went with the connection
  s->busy = false;
  s->rlen = 0;  // a partial recv(n) is lost, as with gen_tcp
  wake_all(env, s, s->rq);
  wake_all(env, s, s->wq);
}

bool set_owner(ErlNifEnv* env, Sock* s, const ErlNifPid& pid) {
  if (s->linked) {
    // gen_tcp refuses a dead new owner (its port could not link to it).
    // One that dies after this check is linked all the same: Islet.Owners
    // then gets a noproc exit and closes the socket.
    ErlNifPid p = pid;
    if (!enif_is_process_alive(env, &p)) return false;
    // The new owner is watched before the old one stops watching: the old
    // registration goes only once a link or a monitor is in place, so no
    // moment leaves the socket with nobody to close it.
    ErlNifPid old = s->owner;
    if (owner_link(env, s, pid)) {
      owner_unlink(s, old);
      s->owner = pid;
      return true;
    }
    // Islet.Owners stopped meanwhile: a monitor instead. A dead new owner
    // leaves the socket with the old one, still registered (the stopping
    // linker converts it to a monitor).
    ErlNifMonitor mon;
    if (enif_monitor_process(env, s, &pid, &mon) != 0) return false;
    owner_unlink(s, old);
    s->linked = false;
    s->owner = pid;
    s->owner_mon = mon;
    s->owner_mon_set = true;
    return true;
  }
  // Monitor the new owner first: a dead one leaves everything as it was.
  ErlNifMonitor mon;
  if (enif_monitor_process(env, s, &pid, &mon) != 0) return false;
  if (s->owner_mon_set) enif_demonitor_process(env, s, &s->owner_mon);
  s->owner = pid;
  s->owner_mon = mon;
  s->owner_mon_set = true;
  return true;
}

void owner_watch_by_monitor(ErlNifEnv* env, Sock* s) {
  if (!s->linked) return;
  owner_unlink(s, s->owner);
  s->linked = false;
  s->owner_mon_set = enif_monitor_process(env, s, &s->owner, &s->owner_mon) == 0;
}

ERL_NIF_TERM sock_close(ErlNifEnv* env, Sock* s, const ErlNifPid* closer) {
  {
    std::lock_guard<std::mutex> lk(s->mu);
    if (!s->open) return atom.ok;  // gen_tcp: a second close is ok
    // close_notify says that everything was sent: not when queued data is
    // dropped here (an owner's death without Islet.Owners, a drain that
    // gave up), where :ssl's alert, queued behind that data in its port,
    // goes with it. The client then sees a truncated stream, as it is.
    if (queued(s) == 0 || s->peer_closed) tls_close_notify(s);
    // The TLS state goes now, not with the destructor: a context can hold
    // terms that refer to this socket (an sni_fun's closure), and that
    // cycle would keep both alive. Nothing reads it after `open` is false.
    tls_free(s);
    // Before `open` goes: the heads' selects are cancelled on the open fd.
    wake_all(env, s, s->rq);
    wake_all(env, s, s->wq);
    s->open = false;
    s->closing.store(true, std::memory_order_relaxed);
    if (s->owner_mon_set) {
      enif_demonitor_process(env, s, &s->owner_mon);
      s->owner_mon_set = false;
    }
    if (s->linked) {
      owner_unlink(s, s->owner);
      s->linked = false;
    }
    poller_remove(env, s);
    if (s->wioq != nullptr) {
      enif_ioq_destroy(s->wioq);
      s->wioq = nullptr;
    }
    if (s->rbuf_alloc) {
      enif_release_binary(&s->rbuf);
      s->rbuf_alloc = false;
      s->rlen = 0;
    }
    if (closer != nullptr) {
      s->closer = *closer;
      s->closer_waiting = true;
    }
  }
  // Outside the lock: the stop callback may run right here and takes it.
  int r = enif_select(env, s->fd, ERL_NIF_SELECT_STOP, s, nullptr, atom.undefined);
  bool scheduled = r >= 0 && (r & ERL_NIF_SELECT_STOP_SCHEDULED);
  ERL_NIF_TERM result = scheduled && closer != nullptr ? atom.wait_close : atom.ok;
  // The self reference goes now, or with the stop callback when it runs
  // later (the resource must outlive it). Nothing touches s after this.
  bool release = false;
  bool deferred = false;
  if (!scheduled) {
    std::lock_guard<std::mutex> lk(s->mu);
    release = s->self_ref;
    s->self_ref = false;
    deferred = s->close_deferred;  // a sendfile closes the fd, and says so
  }
  if (deferred && closer != nullptr) result = atom.wait_close;
  if (release) enif_release_resource(s);
  return result;
}

namespace {

// Whether a queue must still go out now that the owner of s died (under
// lock): an open connection that has not ended, with data queued (or, on
// TLS, records sealed that the socket has not taken, close_notify's
// among them), and linger not {true, 0}, whose abortive close drops the
// queue with gen_tcp too. Not one orphaned already: its new owner died, and
// it closes now.
bool queue_outlives_owner(Sock* s) {
  if (!s->open || s->kind != Kind::Conn || s->dead || s->orphaned || s->peer_closed ||
      s->send_eof_reported || s->write_failed || tls_before_handshake(s))
    return false;
  // TLS: with nothing queued, close_notify goes now, as the close would
  // send it; a socket still full from the last send refuses it, and the
  // drain lets it out then, as :ssl's port does (the close's one try lost
  // it: a third of owner exits right after a send, 4 KiB sndbuf). With
  // data queued, the drain sends it after the data.
  if (queued(s) == 0) tls_close_notify(s);
  if (unsent(s) == 0) return false;
  linger lg{};
  socklen_t len = sizeof lg;
  bool abortive =
      getsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, &len) == 0 && lg.l_onoff && lg.l_linger == 0;
  return !abortive;
}

// Leaves s open for its queue to go out, owned (monitored) by `to`, which
// hands it to the process that drains and closes it; false when `to` is
// dead (the caller closes s). Under lock.
bool orphan_to(ErlNifEnv* env, Sock* s, const ErlNifPid& to) {
  ErlNifMonitor mon;
  if (enif_monitor_process(env, s, &to, &mon) != 0) return false;
  // Sends and recvs now say closed; the waiters (other processes in recv
  // or send) hear it. Nothing is delivered any more.
  s->orphaned = true;
  wake_all(env, s, s->rq);
  wake_all(env, s, s->wq);
  poller_remove(env, s);
  // Out of the registry already (owners_down took it), or never in it (a
  // monitor watched the owner): from now on watched by a monitor on `to`.
  // Whoever owns it dying closes it, the queue with it.
  s->linked = false;
  if (s->owner_mon_set) enif_demonitor_process(env, s, &s->owner_mon);
  s->owner = to;
  s->owner_mon = mon;
  s->owner_mon_set = true;
  return true;
}

}  // namespace

bool sock_orphan(ErlNifEnv* env, Sock* s) {
  {
    std::lock_guard<std::mutex> lk(s->mu);
    ErlNifPid self;
    enif_self(env, &self);
    if (queue_outlives_owner(s) && orphan_to(env, s, self)) return true;
  }
  sock_close(env, s, nullptr);
  return false;
}

void close_fd(ErlNifEnv* env, Sock* s, bool tell_closer) {
  if (!s->fd_closed && s->fd >= 0) {
    close(s->fd);
    s->fd_closed = true;
  }
  if (s->closer_waiting) {
    s->closer_waiting = false;
    if (tell_closer) {
      ErlNifEnv* menv = enif_alloc_env();
      ERL_NIF_TERM msg = enif_make_tuple2(menv, atom.islet_closed, enif_make_resource(menv, s));
      enif_send(env, &s->closer, menv, msg);
      enif_free_env(menv);
    }
  }
}

static void sock_stop(ErlNifEnv* env, void* obj, ErlNifEvent event, int is_direct_call) {
  Sock* s = static_cast<Sock*>(obj);
  bool release = false;
  {
    std::lock_guard<std::mutex> lk(s->mu);
    // A sendfile is in a syscall on this fd without the lock: closing it now
    // could hand its number to another open mid-call. That call closes it.
    if (s->file_sending)
      s->close_deferred = true;
    else
      close_fd(env, s, !is_direct_call);
    // A scheduled stop: sock_close left the self reference for here.
    if (!is_direct_call && s->self_ref) {
      s->self_ref = false;
      release = true;
    }
  }
  if (release) enif_release_resource(s);  // may run the destructor: lock released
}

// A death among a socket's owner and waiters (mon: its monitor).
static void on_down(ErlNifEnv* env, Sock* s, const ErlNifMonitor* mon) {
  bool owner_died = false;
  {
    std::lock_guard<std::mutex> lk(s->mu);
    if (s->owner_mon_set && enif_compare_monitors(&s->owner_mon, mon) == 0) {
      s->owner_mon_set = false;
      // Data still queued goes out first, as :ssl's TCP port (and gen_tcp's)
      // writes its queue out after its owner has gone. A down callback
      // cannot start the process that does it: Islet.Owners becomes the
      // owner (monitored, so that its death closes the socket) and is told
      // to hand it to one ({'$islet_orphan', S}), as owners_down does for
      // linked owners. Without Islet.Owners it closes now.
      ErlNifPid linker;
      if (queue_outlives_owner(s) && owners_linker_pid(&linker) && orphan_to(env, s, linker)) {
        ErlNifEnv* menv = enif_alloc_env();
        ERL_NIF_TERM msg = enif_make_tuple2(menv, atom.islet_orphan, enif_make_resource(menv, s));
        enif_send(env, &linker, menv, msg);
        enif_free_env(menv);
        return;
      }
      owner_died = true;
    } else {
      // A waiter died: drop it; when it was the head, the next one takes over.
      for (int dir : {ERL_NIF_SELECT_READ, ERL_NIF_SELECT_WRITE}) {
        WaitQueue& wq = dir == ERL_NIF_SELECT_READ ? s->rq : s->wq;
        for (auto it = wq.q.begin(); it != wq.q.end(); ++it) {
          if (enif_compare_monitors(&it->mon, mon) != 0) continue;
          bool was_head = it == wq.q.begin();
          wq.q.erase(it);
          if (was_head) {
            cancel_select(env, s, wq);
            if (!wq.q.empty()) wake(env, s, wq.q.front().pid);
          }
          // A writer that died waiting leaves the queue to a pump.
          if (dir == ERL_NIF_SELECT_WRITE) queue_unattended(env, s);
          return;
        }
      }
    }
  }
  if (owner_died) sock_close(env, s, nullptr);  // gen_tcp: the port dies with its owner
}

static void sock_down(ErlNifEnv* env, void* obj, ErlNifPid* pid, ErlNifMonitor* mon) {
  Sock* s = static_cast<Sock*>(obj);
  // The lock is held for long (LongHold; the owner dying in a costly
  // handshake step is the usual case): this runs on a normal scheduler, so
  // the death waits in downs, and Islet.Owners, told of it, hands it back
  // through deferred_downs, which waits for the lock on a dirty scheduler.
  // (Without Islet.Owners, it waits here.)
  // The holder lets go of the mark under downs_mu, then settles: a death
  // queued while the mark is seen here is settled by that holder at the
  // latest.
  bool deferred = false;
  {
    std::lock_guard<std::mutex> lk(s->downs_mu);
    if (s->long_hold.load(std::memory_order_acquire) > 0) {
      s->downs.emplace_back(*pid, *mon);
      s->downs_pending.store(true, std::memory_order_release);
      deferred = true;
    }
  }
  ErlNifPid linker;
  if (deferred && owners_linker_pid(&linker)) {
    ErlNifEnv* menv = enif_alloc_env();
    ERL_NIF_TERM msg = enif_make_tuple2(menv, atom.islet_downs, enif_make_resource(menv, s));
    enif_send(env, &linker, menv, msg);
    enif_free_env(menv);
  }
  if (!deferred) on_down(env, s, mon);
}

void settle_downs(ErlNifEnv* env, Sock* s) {
  if (!s->downs_pending.load(std::memory_order_acquire)) return;
  std::vector<std::pair<ErlNifPid, ErlNifMonitor>> downs;
  {
    std::lock_guard<std::mutex> lk(s->downs_mu);
    downs.swap(s->downs);
    s->downs_pending.store(false, std::memory_order_release);
  }
  for (const auto& d : downs) on_down(env, s, &d.second);
}

void settle_downs(ErlNifEnv* env, ERL_NIF_TERM t) {
  Sock* s;
  if (get_sock(env, t, &s)) settle_downs(env, s);
}

// deferred_downs(Sock) -> ok: the deaths sock_down left (Islet.Owners).
ERL_NIF_TERM nif_deferred_downs(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  settle_downs(env, s);
  return atom.ok;
}

LongHold::LongHold(Sock* s) : s_(s) { s_->long_hold.fetch_add(1, std::memory_order_acq_rel); }
LongHold::~LongHold() {
  // Under downs_mu: see sock_down. The holder settles the deaths after this.
  std::lock_guard<std::mutex> lk(s_->downs_mu);
  s_->long_hold.fetch_sub(1, std::memory_order_acq_rel);
}

bool held_long(ErlNifEnv* env, ERL_NIF_TERM t) {
  Sock* s;
  return get_sock(env, t, &s) && (s->long_hold.load(std::memory_order_acquire) > 0 ||
                                  s->downs_pending.load(std::memory_order_acquire));
}

static void sock_dtor(ErlNifEnv* env, void* obj) {
  Sock* s = static_cast<Sock*>(obj);
  // Only reached when nothing refers to the socket any more: either the stop
  // callback already closed the fd, or the fd was never handed to a select.
  {
    // Nobody else can hold the lock now. Taking it anyway shows
    // ThreadSanitizer (scripts/tsan.sh), which does not see the BEAM's
    // reference count, that this comes after the last locked section on
    // another thread (a stop callback's close, on another scheduler).
    std::lock_guard<std::mutex> lk(s->mu);
    if (!s->fd_closed && s->fd >= 0) close(s->fd);
    if (s->wioq != nullptr) enif_ioq_destroy(s->wioq);
    if (s->rbuf_alloc) enif_release_binary(&s->rbuf);
    tls_free(s);
  }
  s->~Sock();
  live_socks.fetch_sub(1, std::memory_order_relaxed);
}

// live_sockets() -> Count: socket resources not destroyed yet. For tests:
// once closed and unreferenced, a socket must go (no reference cycle).
ERL_NIF_TERM nif_live_sockets(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return enif_make_long(env, live_socks.load(std::memory_order_relaxed));
}

// is_listener(Sock) -> boolean: Islet.TLS.setopts/2 takes a listener's
// option list with the rules of :ssl's listener. No lock: a socket's kind
// is set when it is made.
ERL_NIF_TERM nif_is_listener(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  return s->kind == Kind::Conn ? atom.false_ : atom.true_;
}

static void file_dtor(ErlNifEnv* env, void* obj) {
  FileRes* f = static_cast<FileRes*>(obj);
  if (f->fd >= 0) close(f->fd);
}

bool open_resource_types(ErlNifEnv* env) {
  ErlNifResourceTypeInit init{};
  init.dtor = sock_dtor;
  init.stop = sock_stop;
  init.down = sock_down;
  auto flags = static_cast<ErlNifResourceFlags>(ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER);
  sock_type = enif_open_resource_type_x(env, "islet_socket", &init, flags, nullptr);
  file_type = enif_open_resource_type(env, nullptr, "islet_file", file_dtor, flags, nullptr);
  return sock_type != nullptr && file_type != nullptr;
}

}  // namespace islet
