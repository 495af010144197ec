// Islet: the I/O calls (listen, accept, recv, send, sendfile) and the calls
// that go with them (cancel, close, shutdown, ownership).
//
// Every call tries the syscall first. On EAGAIN the caller becomes (or stays)
// the head of the direction's waiter queue, enif_select is armed for it with
// the message {'$islet', Socket}, and the call returns `wait`: the Elixir side
// waits in `receive` with its timeout and calls again.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common.hpp"
#include "records.hpp"

namespace islet {

namespace {

ErlNifPid self_pid(ErlNifEnv* env) {
  ErlNifPid p;
  enif_self(env, &p);
  return p;
}

bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }

// The caller may go ahead in this direction: the queue is empty or it is the
// head. Otherwise it is queued behind the others.
bool take_turn(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& me) {
  if (wq.q.empty() || wq.is_head(me)) {
    if (wq.is_head(me)) wq.selected = 0;  // its notification was consumed
    return true;
  }
  waiter_push(env, s, wq, me);
  return false;
}

ERL_NIF_TERM wait_for(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& me, int dir,
                      ERL_NIF_TERM result) {
  if (wq.q.empty()) waiter_push(env, s, wq, me);
  if (!wq.is_head(me)) return make_error(env, atom.closed);  // caller is exiting
  int r = select_for(env, s, wq, me, dir);
  if (r < 0) {
    waiter_done(env, s, wq, me);
    return make_error(env, atom.einval);
  }
  return result;
}

// recv/send on a socket that is not a connection, or that is closed.
bool conn_check(ErlNifEnv* env, Sock* s, ERL_NIF_TERM* err) {
  if (!s->open || s->dead || s->orphaned) {
    *err = make_error(env, atom.closed);
    return false;
  }
  if (s->kind != Kind::Conn) {
    *err = make_error(env, atom.enotconn);
    return false;
  }
  return true;
}

}  // namespace

// listen(Family, Address, Port, Opts) -> {ok, Sock} | {error, Reason}
ERL_NIF_TERM nif_listen(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  int port;
  if (!enif_get_int(env, argv[2], &port) || port < 0 || port > 65535 || !enif_is_list(env, argv[3]))
    return enif_make_badarg(env);
  sockaddr_storage ss{};
  unsigned salen = 0;
  int fam = 0;
  if (!parse_sockaddr(env, argv[0], argv[1], port, &ss, &salen, &fam)) return enif_make_badarg(env);
  int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_errno_error(env, errno);
  if (max_fds > 0 && fd >= max_fds) {  // the BEAM could not poll it
    close(fd);
    return make_error(env, enif_make_atom(env, "system_limit"));
  }
  // buffer follows recbuf unless given itself, wherever it comes in the list.
  bool explicit_buffer = false;
  bool link_owner = false;  // from Islet.Socket: the TCP transport's connections
  for (ERL_NIF_TERM h, t = argv[3]; enif_get_list_cell(env, t, &h, &t);) {
    int n;
    const ERL_NIF_TERM* kv;
    if (!enif_get_tuple(env, h, &n, &kv) || n != 2) continue;
    if (enif_is_identical(kv[0], atom.buffer)) explicit_buffer = true;
    if (enif_is_identical(kv[0], atom.link_owner)) link_owner = enif_is_identical(kv[1], atom.true_);
  }
  // The listener itself is monitored even then: its owner's death closes it
  // at once (in the monitor's callback), so the processes waiting in accept
  // hear of it before anything else happens, as when gen_tcp's port dies
  // with its owner. (Thousand Island's acceptors report their end then, just
  // before their supervisor stops them.) A link would close it only once
  // Islet.Owners has run.
  Sock* s = sock_create(env, fd, Kind::Listener, fam, false);
  if (s == nullptr) {
    close(fd);
    return make_error(env, atom.enomem);
  }
  ERL_NIF_TERM res = enif_make_resource(env, s);
  enif_release_resource(s);
  if (!owner_watched(s)) {  // the caller is exiting: nobody would close it
    sock_close(env, s, nullptr);
    return make_error(env, atom.closed);
  }
  s->buffer_set = explicit_buffer;
  s->link_accepted = link_owner;

  int backlog = 5;
  ERL_NIF_TERM head, tail = argv[3];
  int err = 0;
  while (err == 0 && enif_get_list_cell(env, tail, &head, &tail)) {
    int arity;
    const ERL_NIF_TERM* kv;
    if (!enif_get_tuple(env, head, &arity, &kv) || arity != 2) {
      err = EINVAL;
      break;
    }
    if (enif_is_identical(kv[0], atom.link_owner)) continue;  // read above
    if (enif_is_identical(kv[0], atom.accept_copies_reuseaddr)) {  // from Islet.Socket
      s->copy_reuseaddr = enif_is_identical(kv[1], atom.true_);
      continue;
    }
    if (enif_is_identical(kv[0], atom.backlog)) {
      // Any int, as inet takes it: the kernel reads a negative one as its
      // maximum (somaxconn).
      if (!enif_get_int(env, kv[1], &backlog)) err = EINVAL;
      continue;
    }
    bool bad = false;
    err = apply_opt(s, env, kv[0], kv[1], &bad);
    if (bad) err = EINVAL;
  }
  if (err == 0 && bind(fd, reinterpret_cast<sockaddr*>(&ss), salen) != 0) err = errno;
  if (err == 0 && listen(fd, backlog) != 0) err = errno;
  if (err != 0) {
    // Never selected: the resource's destructor closes the fd once the term
    // is gone; mark it closed now so no call can use it meanwhile.
    sock_close(env, s, nullptr);
    return make_errno_error(env, err);
  }
  return make_ok(env, res);
}

// accept(Listener) -> {ok, Sock} | wait | {error, Reason}
ERL_NIF_TERM nif_accept(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* l;
  if (!get_sock(env, argv[0], &l)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(l->mu);
  if (!l->open) return make_error(env, atom.closed);
  if (l->kind != Kind::Listener) return make_error(env, atom.einval);
  if (!take_turn(env, l, l->rq, me)) return atom.wait;
  for (;;) {
    int fd = accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == EINTR || e == ECONNABORTED) continue;
      if (would_block(e)) return wait_for(env, l, l->rq, me, ERL_NIF_SELECT_READ, atom.wait);
      waiter_done(env, l, l->rq, me);
      return make_errno_error(env, e);
    }
    waiter_done(env, l, l->rq, me);
    charge(env, 0);
    if (max_fds > 0 && fd >= max_fds) {
      // Past the BEAM's poll sets (the fd limit was raised after it
      // started): refuse it as gen_tcp does, rather than a socket that
      // could never wait or close.
      close(fd);
      return make_error(env, enif_make_atom(env, "system_limit"));
    }
    Sock* c = sock_create(env, fd, Kind::Conn, l->family, l->link_accepted);
    if (c == nullptr) {
      close(fd);
      return make_error(env, atom.enomem);
    }
    if (!owner_watched(c)) {  // the caller is exiting: nobody would close it
      sock_close(env, c, nullptr);
      enif_release_resource(c);
      return make_error(env, atom.closed);
    }
    // What gen_tcp copies from the listener to an accepted socket.
    c->tag = l->tag;
    c->active = l->active;
    c->buffer = l->buffer;
    c->send_timeout = l->send_timeout;
    c->high_watermark = l->high_watermark;
    c->low_watermark = l->low_watermark;
    c->send_timeout_close = l->send_timeout_close;
    c->exit_on_close = l->exit_on_close;
    c->buffer_set = l->buffer_set;
    c->delay_send = l->delay_send;
    c->packet_size = l->packet_size;
    c->msgq_high = l->msgq_high;
    c->msgq_low = l->msgq_low;
    if (l->family == AF_UNIX) {
      // TCP sockets inherit these from the listener in the kernel; Unix
      // sockets do not, and gen_tcp copies them.
      int ka = 0, ra = 0;
      linger lg{};
      socklen_t n1 = sizeof ka, n2 = sizeof lg, n3 = sizeof ra;
      if (getsockopt(l->fd, SOL_SOCKET, SO_KEEPALIVE, &ka, &n1) == 0)
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &ka, sizeof ka);
      if (getsockopt(l->fd, SOL_SOCKET, SO_LINGER, &lg, &n2) == 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      // Newer OTPs copy reuseaddr too (Islet.Compat asks gen_tcp which).
      if (l->copy_reuseaddr && getsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &ra, &n3) == 0 && ra != 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &ra, sizeof ra);
    }
    // Linux does not pass SO_PRIORITY to an accepted socket; inet_drv
    // copies it from the listener (only where it was set, as the default
    // is the kernel's own).
    if (l->priority >= 0 && setsockopt(fd, SOL_SOCKET, SO_PRIORITY, &l->priority,
                                       sizeof l->priority) == 0)
      c->priority = l->priority;
    if (l->ctx != nullptr && !tls_attach(l, c)) {
      sock_close(env, c, nullptr);
      enif_release_resource(c);
      return make_error(env, atom.enomem);
    }
    ERL_NIF_TERM res = enif_make_resource(env, c);
    if (c->active != 0 && c->ssl == nullptr) {
      std::lock_guard<std::mutex> clk(c->mu);
      poller_arm(env, c);
    }
    enif_release_resource(c);
    return make_ok(env, res);
  }
}

namespace {

// Takes `len` bytes from the front of rbuf into a new term.
ERL_NIF_TERM take_rbuf(ErlNifEnv* env, Sock* s, size_t len) {
  ERL_NIF_TERM out;
  if (len == s->rlen && len == s->rbuf.size) {
    out = enif_make_binary(env, &s->rbuf);  // ownership moves to the term
    s->rbuf_alloc = false;
  } else {
    unsigned char* p = enif_make_new_binary(env, len, &out);
    std::memcpy(p, s->rbuf.data, len);
    std::memmove(s->rbuf.data, s->rbuf.data + len, s->rlen - len);
  }
  s->rlen -= len;
  count_delivered(s, len);
  return out;
}

// A TLS alert ended the connection under a passive recv: :ssl answers it
// once, then closed.
ERL_NIF_TERM passive_tls_failure(ErlNifEnv* env, Sock* s, int code) {
  s->peer_closed = true;
  s->eof_reported = true;
  s->dead = true;  // :ssl's connection process is gone: every call says closed
  conn_ended(env, s);
  return make_error(env, tls_failure_term(env, code));
}

// EOF or a reset under a passive recv: gen_tcp says closed once, closes its
// fd (the peer sees the end) and later answers enotconn. Over TLS, :ssl's
// connection process ends there, as with an end in active mode: closed
// (einval for addresses and statistics) from then on.
ERL_NIF_TERM passive_end(ErlNifEnv* env, Sock* s, bool reset) {
  s->peer_closed = true;
  s->eof_reported = true;
  if (s->tag == Tag::Ssl) s->dead = true;
  s->reset_reported = reset;
  // The end came from a write the background found failing: gen_tcp's port
  // then answers sends enotconn at once.
  if (s->write_failed) s->send_eof_reported = true;
  conn_ended(env, s);
  return make_error(env, atom.closed);
}

}  // namespace

// recv(Sock, Length) -> {ok, Bin} | wait | {error, Reason}
ERL_NIF_TERM nif_recv(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  unsigned long len;
  if (!get_sock(env, argv[0], &s) || !enif_get_ulong(env, argv[1], &len))
    return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  ERL_NIF_TERM err;
  if (!conn_check(env, s, &err)) return err;
  if (s->eof_reported) return make_error(env, s->tag == Tag::Ssl ? atom.closed : atom.enotconn);
  if (tls_before_handshake(s)) return make_error(env, atom.notsup_before_handshake);
  if (s->rq.is_head(me) && s->rq.q.front().outrun) {
    // This recv was waiting when the socket went active: gen_tcp's data
    // goes to messages, and its recv waits on, for its timeout or the
    // connection's end (not for data, even once passive again). It stays
    // the head reader, with no select: the end wakes it.
    s->rq.q.front().woken = false;
    return enif_make_atom(env, "wait_end");
  }
  if (s->active != 0) return make_error(env, atom.einval);
  if (len > kMaxRecv) return make_error(env, atom.enomem);
  // gen_tcp serves one passive reader at a time.
  if (!s->rq.q.empty() && !s->rq.is_head(me)) return make_error(env, enif_make_atom(env, "ealready"));
  if (!take_turn(env, s, s->rq, me)) return atom.wait;

  ERL_NIF_TERM result;
  if (len == 0 ? s->rlen > 0 : s->rlen >= len) {
    result = make_ok(env, take_rbuf(env, s, len == 0 ? s->rlen : len));
    waiter_done(env, s, s->rq, me);
    return result;
  }
  if (s->peer_closed) {
    waiter_done(env, s, s->rq, me);
    return passive_end(env, s, false);
  }
  int e = 0;  // 0 after the loop means EOF
  if (len == 0) {
    static thread_local unsigned char buf[kReadChunk];
    ssize_t n = conn_read(s, buf, sizeof buf, &e);
    if (n > 0) {
      ERL_NIF_TERM bin;
      std::memcpy(enif_make_new_binary(env, n, &bin), buf, n);
      count_delivered(s, static_cast<size_t>(n));
      waiter_done(env, s, s->rq, me);
      charge(env, n);
      return make_ok(env, bin);
    }
    if (n == kWantRead || n == kWantWrite)
      return wait_for(env, s, s->rq, me, n == kWantRead ? ERL_NIF_SELECT_READ : ERL_NIF_SELECT_WRITE,
                      atom.wait);
    if (n == kTlsFailed) {
      waiter_done(env, s, s->rq, me);
      return passive_tls_failure(env, s, e);
    }
    if (n == 0) e = 0;
  } else {
    // Read straight into a binary of the exact size asked for: nothing is
    // read past it, so no large buffer is ever pinned by a small result.
    if (!s->rbuf_alloc) {
      if (!enif_alloc_binary(len, &s->rbuf)) return make_error(env, atom.enomem);
      s->rbuf_alloc = true;
    } else if (s->rbuf.size < len && !enif_realloc_binary(&s->rbuf, len)) {
      return make_error(env, atom.enomem);
    }
    size_t this_call = 0;
    for (;;) {
      ssize_t n = conn_read(s, s->rbuf.data + s->rlen, len - s->rlen, &e);
      if (n > 0) {
        s->rlen += n;
        this_call += n;
        if (s->rlen < len) {
          // A long recv(n) is read in slices so that no call runs long; the
          // caller comes straight back for more.
          if (this_call >= (1u << 20)) {
            charge(env, this_call);
            if (s->rq.q.empty()) waiter_push(env, s, s->rq, me);  // keeps the turn
            return atom.more;
          }
          continue;
        }
        if (s->rbuf.size != len) enif_realloc_binary(&s->rbuf, len);
        result = make_ok(env, take_rbuf(env, s, len));
        waiter_done(env, s, s->rq, me);
        charge(env, len);
        return result;
      }
      if (n == kWantRead || n == kWantWrite) {
        charge(env, this_call);  // what this call read (and opened) before the wait
        return wait_for(env, s, s->rq, me,
                        n == kWantRead ? ERL_NIF_SELECT_READ : ERL_NIF_SELECT_WRITE, atom.wait);
      }
      if (n == kTlsFailed) {
        waiter_done(env, s, s->rq, me);
        return passive_tls_failure(env, s, e);
      }
      if (n == 0) e = 0;
      break;
    }
  }
  waiter_done(env, s, s->rq, me);
  if (e != 0 && e != ECONNRESET) return make_errno_error(env, e);
  // EOF, or a reset (inet reports it as closed unless show_econnreset).
  return passive_end(env, s, e == ECONNRESET);
}

namespace {

}  // namespace

ssize_t conn_read(Sock* s, void* buf, size_t n, int* err) {
  if (is_tls(s)) return tls_read(s, buf, n, err);
  for (;;) {
    ssize_t r = recv(s->fd, buf, n, 0);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (would_block(errno)) return kWantRead;
    *err = errno;
    return kReadError;
  }
}

namespace {

// All of a send's iodata (a list of binaries), checked before any of it is
// written: one vector (more only past kInspectMax elements). One, not one
// per IOV_MAX elements: each enif_ioq_enqv grows the queue's array by
// copying it, so a 40,000-element send cost 6.6 ms in 40 pieces.
constexpr unsigned kInspectMax = 1u << 24;
// On a normal scheduler a send takes at most this many elements: inspecting,
// writing and queueing cost about 10-40 ns each (40,000 binaries took
// 0.4-1.7 ms in one call), so a longer list moves the call to a dirty CPU
// scheduler (Inspect::Long), where it takes them all.
constexpr unsigned kNormalElements = 8192;

enum class Inspect : uint8_t { Ok, Bad, Long };

// `*first` is the vector; `more` gets the others (none but past
// kInspectMax elements, so the common send allocates nothing here).
Inspect inspect_all(ErlNifEnv* env, ERL_NIF_TERM list, ErlNifIOVec** first,
                    std::vector<ErlNifIOVec*>* more, bool dirty) {
  ERL_NIF_TERM tail;
  *first = nullptr;  // the VM may fill a caller-supplied one: never garbage
  if (!enif_inspect_iovec(env, dirty ? kInspectMax : kNormalElements, list, &tail, first))
    return Inspect::Bad;
  if (!dirty && !enif_is_empty_list(env, tail)) {
    // Still an error for an improper list or a non-binary, as on a normal
    // scheduler: checked on the dirty one.
    return Inspect::Long;
  }
  while (!enif_is_empty_list(env, tail)) {
    ErlNifIOVec* v = nullptr;
    if (!enif_inspect_iovec(env, kInspectMax, tail, &tail, &v)) return Inspect::Bad;
    more->push_back(v);
  }
  return Inspect::Ok;
}

using NifFn = ERL_NIF_TERM (*)(ErlNifEnv*, int, const ERL_NIF_TERM[]);

// The iodata (argv[1]) of a call on a socket (send, send_timeout_keep):
// true with its vectors; else false with the answer to give, badarg, or the
// call moved to a dirty CPU scheduler (`on_dirty`) when the list is long.
bool iodata_of(ErlNifEnv* env, const ERL_NIF_TERM argv[], bool dirty, const char* name,
               NifFn on_dirty, ErlNifIOVec** first, std::vector<ErlNifIOVec*>* more,
               ERL_NIF_TERM* answer) {
  switch (inspect_all(env, argv[1], first, more, dirty)) {
    case Inspect::Ok:
      return true;
    case Inspect::Bad:
      *answer = enif_make_badarg(env);
      return false;
    case Inspect::Long:
      *answer = enif_schedule_nif(env, name, ERL_NIF_DIRTY_JOB_CPU_BOUND, on_dirty, 2, argv);
      return false;
  }
  return true;
}

bool start_bg_flush(ErlNifEnv* env, Sock* s);

// What one call on a normal scheduler writes to a plain TCP socket at most.
// The kernel copies about 4-10 GB/s and takes up to its send buffer in one
// writev (4 MiB here: 0.6-0.9 ms, for gen_tcp's port as for Islet), and a
// pump's flush went on writing for as long as the peer kept reading. Past
// the budget the rest stays queued and a pump writes it (kMoreWork).
constexpr size_t kWriteBudget = 1u << 20;

// A call that writes starts with a full budget (a dirty one, unbounded).
void budget_writes(Sock* s, bool dirty = false) {
  s->write_budget = dirty ? SIZE_MAX : kWriteBudget;
}

// writev of at most the call's budget (and IOV_MAX elements) from iov.
ssize_t budgeted_writev(Sock* s, const SysIOVec* iov, size_t iovcnt) {
  struct iovec capped[IOV_MAX];
  size_t total = 0;
  int n = 0;
  for (; static_cast<size_t>(n) < iovcnt && n < IOV_MAX && total < s->write_budget; n++) {
    size_t len = std::min<size_t>(iov[n].iov_len, s->write_budget - total);
    capped[n].iov_base = iov[n].iov_base;
    capped[n].iov_len = len;
    total += len;
  }
  ssize_t w = writev(s->fd, capped, n);
  if (w > 0 && s->write_budget != SIZE_MAX) {
    s->write_budget -= static_cast<size_t>(w);
    s->largest_write = std::max(s->largest_write, kWriteBudget - s->write_budget);
  }
  return w;
}

int plain_drain(Sock* s) {
  while (enif_ioq_size(s->wioq) > 0) {
    if (s->write_budget == 0) return kMoreWork;
    int iovcnt;
    SysIOVec* iov = enif_ioq_peek(s->wioq, &iovcnt);
    ssize_t n = budgeted_writev(s, iov, static_cast<size_t>(iovcnt));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    enif_ioq_deq(s->wioq, n, nullptr);  // counted in send_oct by its send
  }
  return 0;
}

}  // namespace

// The last writer left (gave up waiting, or died) with data still queued:
// a pump takes the queue again, so that it still goes out.
void queue_unattended(ErlNifEnv* env, Sock* s) {
  if (s->open && !s->dead && !s->bg_flush && s->wq.q.empty() && unsent(s) > 0 &&
      !s->peer_closed && !s->send_eof_reported)
    start_bg_flush(env, s);
}

int conn_drain(Sock* s) {
  // No queue: none yet (a TLS connection that never sent can still have
  // records waiting, its answers to KeyUpdates), or the connection ended
  // (which cleared shut_pending).
  int e = 0;
  if (s->wioq != nullptr) {
    e = is_tls(s) ? tls_drain(s) : plain_drain(s);
    if (s->busy && queued(s) <= s->low_watermark) s->busy = false;
  }
  if (e == 0 && s->shut_pending >= 0) {
    // The queue is out: the shutdown asked for meanwhile happens now
    // (close_notify first on TLS, and once the socket took it).
    tls_close_notify(s);
    int f = tls_flush(s);
    if (f != 0) return f;
    int how = s->shut_pending;
    s->shut_pending = -1;
    if (::shutdown(s->fd, how) != 0) return errno;
  }
  return e;
}

namespace {

// A sender takes the write direction back from a pump's background flush.
void stop_bg_flush(ErlNifEnv* env, Sock* s) {
  if (!s->bg_flush) return;
  s->bg_flush = false;
  auto mode = static_cast<ErlNifSelectFlags>(ERL_NIF_SELECT_CANCEL | ERL_NIF_SELECT_WRITE);
  enif_select(env, s->fd, mode, s, nullptr, atom.undefined);
}

// Hands the write queue to a pump (the flusher in poller mode), which writes
// it out as the socket drains, as gen_tcp's port writes its queue while the
// sender goes on. False when no flusher could take it (the Islet
// application is not running): the caller then drains it itself.
bool start_bg_flush(ErlNifEnv* env, Sock* s) {
  ErlNifPid pump;
  if (!s->wq.q.empty() || !pick_flusher(s, &pump)) return false;
  ERL_NIF_TERM msg = enif_make_tuple2(env, atom.islet_flush, enif_make_resource(env, s));
  auto mode = static_cast<ErlNifSelectFlags>(ERL_NIF_SELECT_WRITE | ERL_NIF_SELECT_CUSTOM_MSG);
  if (enif_select_x(env, s->fd, mode, s, &pump, msg, nullptr) < 0) return false;
  s->bg_flush = true;
  return true;
}

ERL_NIF_TERM write_error(ErlNifEnv* env, Sock* s, const ErlNifPid& me, int e,
                         bool reported = true) {
  waiter_done(env, s, s->wq, me);
  if (e == EPIPE || e == ECONNRESET) {
    // The peer is gone: closed now, enotconn for later sends (unless not
    // `reported`: a sendfile's, on OTP 26+); the next recv still says
    // closed once (as gen_tcp).
    s->peer_closed = true;
    if (reported) s->send_eof_reported = true;
    conn_ended(env, s);
    return make_error(env, atom.closed);
  }
  return make_errno_error(env, e);
}

// A send on a connection that ended: closed the first time, then enotconn
// (:ssl says closed every time).
ERL_NIF_TERM send_after_end(ErlNifEnv* env, Sock* s) {
  if (s->send_eof_reported && s->tag != Tag::Ssl) return make_error(env, atom.enotconn);
  s->send_eof_reported = true;
  return make_error(env, atom.closed);
}

// The caller's data is taken and it goes on: what is still queued goes out
// in the background (a pump), or, when other senders wait, the next one
// writes it first. Where no pump runs, the caller writes it out itself
// (wait_drain, then send_more).
ERL_NIF_TERM go_on(ErlNifEnv* env, Sock* s, const ErlNifPid& me) {
  waiter_done(env, s, s->wq, me);
  if (!s->wq.q.empty() || start_bg_flush(env, s)) return atom.ok;
  return wait_for(env, s, s->wq, me, ERL_NIF_SELECT_WRITE, atom.wait_drain);
}

// After data was queued (send_more): write it out, or wait for the kernel.
// A send that made the socket busy waits here until the queue is down to
// the low watermark, then goes on.
ERL_NIF_TERM flush(ErlNifEnv* env, Sock* s, const ErlNifPid& me) {
  int e = conn_drain(s);
  if (e == 0) {
    waiter_done(env, s, s->wq, me);
    return atom.ok;
  }
  if (e == kMoreWork) {
    // TLS: this call's encryption budget is spent; keep the turn and let the
    // caller come straight back (no wait), so no call runs long.
    if (s->wq.q.empty()) waiter_push(env, s, s->wq, me);
    return atom.more;
  }
  if (!would_block(e)) return write_error(env, s, me, e);
  if (!s->busy) return go_on(env, s, me);
  return wait_for(env, s, s->wq, me, ERL_NIF_SELECT_WRITE, atom.wait_drain);
}

bool ensure_ioq(Sock* s) {
  if (s->wioq == nullptr) s->wioq = enif_ioq_create(ERL_NIF_IOQ_NORMAL);
  return s->wioq != nullptr;
}

// A send's data is taken: what the kernel has not taken waits in the write
// queue, and the caller goes on while a pump writes it out, as gen_tcp's
// send returns once its port has queued the data. `before`: the bytes
// queued before this send's `size` joined them (none: some went straight
// to the kernel, or the queue takes them all at once); the queue had data,
// so try to write some of it now.
//
// gen_tcp's busy port (inet_drv's tcp_sendv): a send that finds data
// queued and brings the queue to the high watermark makes the socket busy,
// and that send itself waits (its data queued, bounded by send_timeout)
// until the queue is down to the low watermark. A send that found the queue
// empty never waits, however much of it the kernel left. No write is tried
// first, as the port waits for the socket to be writable: with a peer that
// does not read, how many sends return at once is then the same as with
// gen_tcp.
ERL_NIF_TERM taken(ErlNifEnv* env, Sock* s, const ErlNifPid& me, bool drain_first, size_t before,
                   size_t size) {
  if (before > 0 && before + size >= s->high_watermark) {
    s->busy = true;
    return wait_for(env, s, s->wq, me, ERL_NIF_SELECT_WRITE, atom.wait_drain);
  }
  int e = drain_first ? conn_drain(s) : EAGAIN;
  if (e == 0) {
    waiter_done(env, s, s->wq, me);
    return atom.ok;
  }
  if (!would_block(e) && e != kMoreWork) return write_error(env, s, me, e);
  return go_on(env, s, me);
}

}  // namespace

// send(Sock, IoData) -> ok | wait_turn | wait_busy | more | wait_drain | more_taken
//                       | {error, Reason}
// ok: the data is taken (written, or queued and written out by a pump).
// wait_turn: another sender is ahead; wait_busy: the socket is busy (the
// send that made it so gave up or died) and the caller keeps the turn;
// more: TLS, this call's encryption budget went on draining the queue. For
// all three, call send again with the same data (after the wake-up for the
// waits). wait_drain: the data is queued, and the caller waits for the
// queue (it made the socket busy, or no pump runs); call send_more once
// woken. more_taken: the data is queued and the call's write budget ran
// out with the kernel not full; call send_more at once. (send_on; a list
// of more than kNormalElements binaries is sent from a dirty scheduler.)
namespace {

ERL_NIF_TERM send_dirty(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]);

ERL_NIF_TERM send_on(ErlNifEnv* env, const ERL_NIF_TERM argv[], bool dirty) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  ErlNifIOVec* vec;
  std::vector<ErlNifIOVec*> more;
  ERL_NIF_TERM answer;
  if (!iodata_of(env, argv, dirty, "send", send_dirty, &vec, &more, &answer)) return answer;
  std::lock_guard<std::mutex> lk(s->mu);
  budget_writes(s, dirty);
  ERL_NIF_TERM err;
  if (!conn_check(env, s, &err)) return err;
  if (s->eof_reported || s->send_eof_reported || s->write_failed) return send_after_end(env, s);
  if (tls_before_handshake(s)) return make_error(env, atom.notsup_before_handshake);
  // gen_tcp: a send after a shutdown that waits for the queue ends the
  // connection (the queue goes with it).
  if (s->shut_pending >= 0) return write_error(env, s, me, EPIPE);
  if (!take_turn(env, s, s->wq, me)) return atom.wait_turn;
  stop_bg_flush(env, s);
  if (s->busy) {
    // gen_tcp's busy port, left so by a sender that died while it waited:
    // nothing more is taken until the queue is down to the low watermark.
    int e = conn_drain(s);
    if (e != 0 && !would_block(e) && e != kMoreWork) return write_error(env, s, me, e);
    if (s->busy) {
      if (e == kMoreWork) return atom.more;  // keeps the turn
      return wait_for(env, s, s->wq, me, ERL_NIF_SELECT_WRITE, atom.wait_busy);
    }
  }

  size_t total = vec->size;
  for (ErlNifIOVec* v : more) total += v->size;
  // inet_drv counts a send's bytes when it takes them, written or queued,
  // whatever becomes of the queue (a send_timeout_close, a reset): as Islet
  // takes them now. TLS counts the records that go out (getstat reads the
  // wire's count), as :ssl's port under it does.
  if (!is_tls(s)) {
    s->send_oct += total;
    s->writes.add(total);
  }
  charge(env, total);

  size_t skip = 0;
  size_t before = queued(s);
  bool queued_before = before > 0;
  if (!queued_before && more.empty() && !is_tls(s)) {
    // The common case: one writev straight from the terms, no copy (of at
    // most IOV_MAX elements and the call's budget: the queue takes the rest).
    while (skip < vec->size) {
      // Skip what is written already (partial writes continue below).
      ssize_t n = budgeted_writev(s, vec->iov, vec->iovcnt);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (!would_block(errno)) return write_error(env, s, me, errno);
        break;
      }
      skip += n;
      if (skip < vec->size) {
        // Partial: leave the rest to the queue, which tracks offsets.
        break;
      }
    }
    if (skip == vec->size) {
      waiter_done(env, s, s->wq, me);
      return atom.ok;
    }
  } else if (!queued_before && more.empty() && s->rec != nullptr) {
    // TLS through Islet's record layer: sealed straight from the terms too;
    // what is left (the socket is full, or this call's budget is spent)
    // goes to the queue.
    if (!ensure_ioq(s)) return write_error(env, s, me, ENOMEM);
    int e = records_send(s, vec->iov, static_cast<int>(vec->iovcnt), vec->size, &skip);
    if (e == 0) {  // all sealed and in the socket: nothing queued, nothing to flush
      waiter_done(env, s, s->wq, me);
      return atom.ok;
    }
    if (e != EAGAIN && e != kMoreWork) return write_error(env, s, me, e);
  }
  if (!ensure_ioq(s) || !enif_ioq_enqv(s->wioq, vec, skip)) return write_error(env, s, me, ENOMEM);
  for (ErlNifIOVec* v : more)
    if (!enif_ioq_enqv(s->wioq, v, 0)) return write_error(env, s, me, ENOMEM);
  if (!queued_before && more.empty() && !is_tls(s) && s->write_budget == 0) {
    // The budget ran out, not the kernel's room: gen_tcp's one writev would
    // have gone on, and what this send leaves queued decides whether the
    // next one waits (busy). So this send goes on writing its data, taken
    // already, in calls of its own (send_more) until the kernel is full.
    if (s->wq.q.empty()) waiter_push(env, s, s->wq, me);  // keeps the turn
    return enif_make_atom(env, "more_taken");
  }
  // Only a send that wrote nothing straight (the queue had data, the
  // iodata was long, or TLS through OpenSSL) tries the queue now.
  bool wrote_straight = !queued_before && more.empty() && (!is_tls(s) || s->rec != nullptr);
  return taken(env, s, me, !wrote_straight, before, total);
}

ERL_NIF_TERM send_dirty(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return send_on(env, argv, true);
}

}  // namespace

ERL_NIF_TERM nif_send(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return send_on(env, argv, false);
}

// send_more(Sock) -> ok | wait_drain | more | {error, Reason}: after send said
// wait_drain (or send_more said more), its data already queued.
ERL_NIF_TERM nif_send_more(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  budget_writes(s);
  ERL_NIF_TERM err;
  if (!conn_check(env, s, &err)) return err;
  if (!take_turn(env, s, s->wq, me)) return atom.wait_drain;
  // The connection ended under the queued data (whoever saw it end: a recv,
  // active delivery, a background write): the data is lost, and as
  // inet_drv answers a sender it made wait, this send says closed.
  if (s->eof_reported || s->send_eof_reported || s->peer_closed || s->write_failed) {
    waiter_done(env, s, s->wq, me);
    return send_after_end(env, s);
  }
  if (s->wioq == nullptr) {
    waiter_done(env, s, s->wq, me);
    return atom.ok;
  }
  return flush(env, s, me);
}

// sendfile_open(Path) -> {ok, File} | {error, Posix}   (dirty I/O)
ERL_NIF_TERM nif_sendfile_open(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  ErlNifBinary path;
  if (!enif_inspect_binary(env, argv[0], &path) || path.size == 0 || path.size > PATH_MAX ||
      std::memchr(path.data, 0, path.size) != nullptr)
    return enif_make_badarg(env);
  std::string p(reinterpret_cast<const char*>(path.data), path.size);
  int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_errno_error(env, errno);
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    return make_errno_error(env, EISDIR);
  }
  FileRes* f = static_cast<FileRes*>(enif_alloc_resource(file_type, sizeof(FileRes)));
  if (f == nullptr) {
    close(fd);
    return make_error(env, atom.enomem);
  }
  f->fd = fd;
  ERL_NIF_TERM t = enif_make_resource(env, f);
  enif_release_resource(f);
  return make_ok(env, t);
}

// sendfile_size(File) -> {ok, Size}
ERL_NIF_TERM nif_sendfile_size(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  FileRes* f;
  if (!enif_get_resource(env, argv[0], file_type, reinterpret_cast<void**>(&f)))
    return enif_make_badarg(env);
  struct stat st;
  if (fstat(f->fd, &st) != 0) return make_errno_error(env, errno);
  return make_ok(env, enif_make_uint64(env, st.st_size));
}

namespace {

// Corks a TCP socket for the time of a sendfile call (TCP_CORK, gen_tcp's
// `nopush`, on; then off again unless it was on before), as gen_tcp does:
// the kernel then sends the file in full segments instead of pushing one
// out per splice. On a loopback download that took a quarter off the
// server's CPU per GB. Unix sockets have no cork, and kernel TLS forms its
// own records: those are left as they are.
class Cork {
 public:
  explicit Cork(const Sock* s) {
    if (s->family == AF_UNIX || is_tls(s)) return;
    int was = 0, on = 1;
    socklen_t n = sizeof was;
    if (getsockopt(s->fd, IPPROTO_TCP, TCP_CORK, &was, &n) == 0 && was == 0 &&
        setsockopt(s->fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) == 0)
      fd_ = s->fd;
  }
  ~Cork() {
    int off = 0;
    if (fd_ >= 0) setsockopt(fd_, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
  }
  Cork(const Cork&) = delete;
  Cork& operator=(const Cork&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace

// sendfile(Sock, File, Offset, Count) -> {ok | more | wait | wait_turn, Sent}
// | {error, Reason}. Runs on a dirty I/O scheduler: sendfile(2) may read the
// disk. Count is capped per call so that the caller can check its timeout.
ERL_NIF_TERM nif_sendfile(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  FileRes* f;
  ErlNifUInt64 offset, count;
  if (!get_sock(env, argv[0], &s) ||
      !enif_get_resource(env, argv[1], file_type, reinterpret_cast<void**>(&f)) ||
      !enif_get_uint64(env, argv[2], &offset) || !enif_get_uint64(env, argv[3], &count))
    return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::unique_lock<std::mutex> lk(s->mu);
  budget_writes(s, true);  // a dirty I/O scheduler
  // file:sendfile/5 answers einval for a closed socket, enotconn for a listener.
  if (!s->open || ssl_gone(s)) return make_error(env, atom.einval);
  if (s->kind != Kind::Conn) return make_error(env, atom.enotconn);
  // gen_tcp takes a file only from the socket's owner (Thousand Island's SSL
  // transport sends it with :ssl.send, from any process).
  if (s->tag != Tag::Ssl && enif_compare_pids(&s->owner, &me) != 0)
    return make_error(env, atom.not_owner);
  // TLS goes through here only with kernel TLS (Islet.TLS reads and
  // encrypts otherwise).
  if (is_tls(s) && !tls_ktls_send(s)) return make_error(env, atom.einval);
  // gen_tcp's port is no longer connected once the end was reported: by a
  // recv, by a send that said closed, or by a write of its queue that
  // failed in the background (whose sends still say closed once).
  if (s->eof_reported ||
      (s->tag != Tag::Ssl && (s->send_eof_reported || s->write_failed)))
    return make_error(env, atom.enotconn);
  if (!take_turn(env, s, s->wq, me)) return enif_make_tuple2(env, atom.wait_turn, enif_make_uint(env, 0));
  stop_bg_flush(env, s);
  if (s->wioq != nullptr && enif_ioq_size(s->wioq) > 0) {
    int e = conn_drain(s);
    if (e == kMoreWork) e = EAGAIN;
    if (would_block(e))
      return enif_make_tuple2(env, wait_for(env, s, s->wq, me, ERL_NIF_SELECT_WRITE, atom.wait),
                              enif_make_uint(env, 0));
    if (e != 0) return write_error(env, s, me, e);
  }
  // Up to 16 MiB per NIF call, in as few sendfile(2) calls as the socket
  // takes (with 1 MiB syscalls, a 256 MiB download to curl on loopback took
  // 262 of them; gen_tcp's driver: 5; now 25-30). A non-blocking socket
  // returns once its buffer is full; the caller checks its send timeout
  // between calls.
  //
  // Plain TCP runs the syscalls without the socket's lock: they can take
  // milliseconds (a cold disk, or 16 MiB at loopback speed), and whatever
  // else takes the lock meanwhile (a pump serving the socket's readiness, a
  // call from another process) would wait on a normal scheduler. The caller
  // holds the write turn as the queue's head, so no other writer comes in
  // between; the stop callback leaves the fd to this call (file_sending),
  // which closes it below if a close came meanwhile. Kernel TLS keeps the
  // lock: its SSL object is shared with reads.
  constexpr ErlNifUInt64 kBudget = 16u << 20;
  const bool unlocked = !is_tls(s);
  enum class End { Budget, Eof, Error, Closing } end = End::Budget;
  int err = 0;
  ErlNifUInt64 sent = 0;
  {
    Cork cork(s);  // uncorked at the end of this block, while the fd is ours
    // Kernel TLS: calls on this socket meanwhile wait on a dirty scheduler.
    std::optional<LongHold> hold;
    if (!unlocked) hold.emplace(s);
    const int fd = s->fd;
    off_t off = static_cast<off_t>(offset);
    if (unlocked) {
      if (s->wq.q.empty()) waiter_push(env, s, s->wq, me);
      s->file_sending = true;
      lk.unlock();
    }
    while (sent < count && sent < kBudget) {
      if (unlocked && s->closing.load(std::memory_order_relaxed)) {
        end = End::Closing;
        break;
      }
      size_t chunk = static_cast<size_t>(std::min<ErlNifUInt64>(count - sent, kBudget - sent));
      ssize_t n =
          unlocked ? sendfile(fd, f->fd, &off, chunk) : tls_sendfile(s, f->fd, &off, chunk);
      if (n > 0) {
        sent += n;  // not in send_oct: gen_tcp's statistics do not see sendfile
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      end = n == 0 ? End::Eof : End::Error;
      err = errno;
      break;
    }
  }
  // Kernel TLS (locked throughout): what a pump passed over meanwhile.
  if (!unlocked) pump_resume(env, s);
  if (unlocked) {
    lk.lock();
    s->file_sending = false;
    if (s->close_deferred) close_fd(env, s, true);
    // Closed meanwhile (its waiters, this call among them, were let go).
    if (!s->open) {
      if (sent == count) return enif_make_tuple2(env, atom.ok, enif_make_uint64(env, sent));
      return make_error(env, atom.einval);
    }
  }
  switch (end) {
    case End::Eof:
      waiter_done(env, s, s->wq, me);
      return enif_make_tuple2(env, atom.eof, enif_make_uint64(env, sent));
    case End::Error:
      if (would_block(err)) {
        ERL_NIF_TERM w = wait_for(env, s, s->wq, me, ERL_NIF_SELECT_WRITE, atom.wait);
        return enif_make_tuple2(env, w, enif_make_uint64(env, sent));
      }
      return write_error(env, s, me, err, sendfile_cut_ends_sends);
    case End::Closing:  // not reached: closing is only set with open cleared
    case End::Budget:
      break;
  }
  // More to send: the caller keeps the turn for its next call.
  if (sent < count) return enif_make_tuple2(env, atom.more, enif_make_uint64(env, sent));
  waiter_done(env, s, s->wq, me);
  return enif_make_tuple2(env, atom.ok, enif_make_uint64(env, sent));
}

// cancel(Sock, read | write) -> ok: the caller stops waiting (timeout).
ERL_NIF_TERM nif_cancel(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  bool rd = enif_is_identical(argv[1], atom.read);
  if (!rd && !enif_is_identical(argv[1], atom.write)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (rd) {
    waiter_remove(env, s, s->rq, me, ERL_NIF_SELECT_READ);
  } else {
    waiter_remove(env, s, s->wq, me, ERL_NIF_SELECT_WRITE);
    queue_unattended(env, s);
  }
  return atom.ok;
}

// ktls(Sock) -> boolean: kernel TLS sends this connection's records.
ERL_NIF_TERM nif_ktls(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  return s->open && tls_ktls_send(s) ? atom.true_ : atom.false_;
}

// send_timeout_close(Sock) -> ok: send_timeout passed with
// send_timeout_close: gen_tcp closes the connection but keeps its port, so
// later sends find it not connected while options still answer.
ERL_NIF_TERM nif_send_timeout_close(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || s->dead || s->orphaned || s->kind != Kind::Conn) return atom.ok;
  waiter_remove(env, s, s->wq, me, ERL_NIF_SELECT_WRITE);
  s->peer_closed = s->eof_reported = s->send_eof_reported = true;
  conn_ended(env, s);
  return atom.ok;
}

// send_timeout_keep(Sock, IoData) -> ok: send_timeout passed without
// send_timeout_close while the caller waited to send IoData ([] when it was
// queued already). As with gen_tcp, whose port queues a send's data before
// the caller's time runs out, the data joins the queue, and everything queued
// is written in the background.
namespace {

ERL_NIF_TERM send_timeout_keep_on(ErlNifEnv* env, const ERL_NIF_TERM argv[], bool dirty);

ERL_NIF_TERM send_timeout_keep_dirty(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return send_timeout_keep_on(env, argv, true);
}

ERL_NIF_TERM send_timeout_keep_on(ErlNifEnv* env, const ERL_NIF_TERM argv[], bool dirty) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifIOVec* first;
  std::vector<ErlNifIOVec*> vecs;
  ERL_NIF_TERM answer;
  if (!iodata_of(env, argv, dirty, "send_timeout_keep", send_timeout_keep_dirty, &first, &vecs,
                 &answer))
    return answer;
  vecs.insert(vecs.begin(), first);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || s->dead || s->orphaned) return atom.ok;
  waiter_remove(env, s, s->wq, me, ERL_NIF_SELECT_WRITE);
  if (s->eof_reported || s->send_eof_reported || s->peer_closed) return atom.ok;
  for (ErlNifIOVec* v : vecs)
    if (!ensure_ioq(s) || !enif_ioq_enqv(s->wioq, v, 0)) return atom.ok;
  // gen_tcp's port is no longer busy once the send that made it so has
  // timed out: the next send finds the queue as it is (and waits if it
  // brings it to the high watermark).
  s->busy = false;
  if (unsent(s) > 0 && !s->bg_flush) start_bg_flush(env, s);
  return atom.ok;
}

}  // namespace

ERL_NIF_TERM nif_send_timeout_keep(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return send_timeout_keep_on(env, argv, false);
}

// drain(Sock) -> ok | more | {wait, Queued}: before close or shutdown, as
// gen_tcp's close and shutdown let the port's queue go out first (close
// waits while it makes progress). ok: nothing left (or nothing can go: the
// connection ended, linger is {true, 0}). {wait, Queued}: Queued bytes
// wait for the socket; call again once woken. more: TLS, call again.
// TLS: close_notify follows the queue (close and shutdown(:write) are the
// only callers, and both end the sending side).
ERL_NIF_TERM nif_drain(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  budget_writes(s);
  // (A socket whose owner died with data queued is drained too: by its new
  // owner, Islet.Owners' drainer, and by any close meanwhile, which waits
  // for the queue as gen_tcp's close of a closing port does; not a TLS
  // one's, where :ssl's close finds the connection process gone and
  // returns at once.)
  if (s->orphaned && s->tag == Tag::Ssl && enif_compare_pids(&s->owner, &me) != 0) return atom.ok;
  if (!s->open || s->dead || s->kind != Kind::Conn || s->peer_closed || s->send_eof_reported ||
      tls_before_handshake(s))
    return atom.ok;
  linger lg{};
  socklen_t len = sizeof lg;
  if (getsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, &len) == 0 && lg.l_onoff && lg.l_linger == 0)
    return atom.ok;  // an abortive close: the queue goes with it
  if (!take_turn(env, s, s->wq, me))
    return enif_make_tuple2(env, atom.wait, enif_make_uint64(env, queued(s)));
  stop_bg_flush(env, s);
  int e = conn_drain(s);
  // The queue is out. TLS: close_notify goes last, and is out too before
  // the socket closes, as :ssl's port writes it out before it closes
  // (sock_close's one try dropped what a full socket refused: half the
  // closes after a large send with a 4 KiB sndbuf).
  if (e == 0 && is_tls(s)) {
    tls_close_notify(s);
    e = tls_flush(s);
  }
  if (e == 0) {
    waiter_done(env, s, s->wq, me);
    return atom.ok;
  }
  if (e == kMoreWork) return atom.more;  // keeps the turn
  if (would_block(e)) {
    ERL_NIF_TERM w = wait_for(env, s, s->wq, me, ERL_NIF_SELECT_WRITE, atom.wait);
    if (!enif_is_identical(w, atom.wait)) return atom.ok;
    return enif_make_tuple2(env, atom.wait, enif_make_uint64(env, queued(s)));
  }
  // The connection is gone under the queue: nothing more can go out.
  waiter_done(env, s, s->wq, me);
  s->peer_closed = s->write_failed = true;
  conn_ended(env, s);
  return atom.ok;
}

// flush_bg(Sock) -> ok: a pump's answer to {'$islet_flush', Sock}.
ERL_NIF_TERM nif_flush_bg(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  budget_writes(s);
  if (!s->bg_flush) return atom.ok;  // a sender took over meanwhile
  s->bg_flush = false;
  if (!s->open || s->dead || s->eof_reported || !s->wq.q.empty()) return atom.ok;
  size_t before = queued(s);
  int e = conn_drain(s);
  charge(env, before - std::min(before, queued(s)));  // the pump's time slice pays for it
  if (e == kMoreWork) {
    // The budget ran out, the socket still writable: the pump's next call
    // comes by message, not through a select and the poll thread.
    ERL_NIF_TERM msg = enif_make_tuple2(env, atom.islet_flush, argv[0]);
    s->bg_flush = enif_send(env, &me, nullptr, msg) != 0 || start_bg_flush(env, s);
  } else if (would_block(e)) {
    start_bg_flush(env, s);
  } else if (e != 0) {
    // The connection is gone under the queue (the peer closed or reset it):
    // as with gen_tcp, the next recv or send says closed, then enotconn;
    // active mode gets the closed message.
    s->peer_closed = s->write_failed = true;
    conn_ended(env, s);
  }
  return atom.ok;
}

// close(Sock) -> ok | wait_close
ERL_NIF_TERM nif_close(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  {
    // Closed already for every process but the drainer of a dead owner's
    // queue (sock_orphan), which closes it once the queue is out: gen_tcp's
    // close of a closing port answers ok and leaves its queue going out.
    std::lock_guard<std::mutex> lk(s->mu);
    if (s->orphaned && enif_compare_pids(&s->owner, &me) != 0) return atom.ok;
  }
  return sock_close(env, s, &me);
}

// lock_probe(Sock) -> locked | sending_file | free: whether a thread holds
// the socket's lock at this instant, else whether a sendfile is in its
// syscalls without it. For tests: a sendfile must leave the lock free while
// it sends, and a close may come meanwhile.
ERL_NIF_TERM nif_lock_probe(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  if (!s->mu.try_lock()) return enif_make_atom(env, "locked");
  bool sending = s->file_sending;
  s->mu.unlock();
  return enif_make_atom(env, sending ? "sending_file" : "free");
}

// largest_write(Sock) -> Bytes: the most one call on a normal scheduler
// wrote to this plain TCP socket. For tests: at most kWriteBudget.
ERL_NIF_TERM nif_largest_write(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  return enif_make_uint64(env, s->largest_write);
}

// shutdown(Sock, read | write | read_write) -> ok | {error, Reason}
ERL_NIF_TERM nif_shutdown(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  int how;
  if (enif_is_identical(argv[1], atom.read))
    how = SHUT_RD;
  else if (enif_is_identical(argv[1], atom.write))
    how = SHUT_WR;
  else if (enif_is_identical(argv[1], atom.read_write))
    how = SHUT_RDWR;
  else
    return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || s->dead || s->orphaned || s->reset_reported) return make_error(env, atom.closed);
  if (s->kind != Kind::Conn || s->eof_reported) return make_error(env, atom.enotconn);
  if (tls_before_handshake(s)) return make_error(env, atom.notsup_before_handshake);
  if (how != SHUT_RD) {
    // TLS: close_notify, then the FIN; after what is still to go out.
    if (unsent(s) == 0) tls_close_notify(s);
    if (unsent(s) > 0 && !s->peer_closed && !s->send_eof_reported) {
      // Data (or the alert) waits: as gen_tcp, shut down once it is out
      // (conn_drain).
      if (s->shut_pending >= 0) return atom.ok;
      if (!s->bg_flush && s->wq.q.empty() && !start_bg_flush(env, s))
        return enif_make_atom(env, "drain_first");  // no pump: the caller drains
      s->shut_pending = how;
      return atom.ok;
    }
  }
  if (::shutdown(s->fd, how) != 0) return make_errno_error(env, errno);
  return atom.ok;
}

// controlling_process(Sock, Pid) -> ok | {paused, Active} | {error, Reason}
// With active mode on, delivery is paused and the caller calls set_owner/3
// (TLS: at once; :ssl moves no message). A TCP socket always pauses, active
// or not, and keeps its owner here: as gen_tcp does, the caller first
// forwards the data and close messages its mailbox holds, and a close among
// them leaves the socket with the caller, passive (gen_tcp then returns ok
// without connecting the port to the new owner).
ERL_NIF_TERM nif_controlling_process(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  ErlNifPid pid;
  if (!get_sock(env, argv[0], &s) || !enif_get_local_pid(env, argv[1], &pid))
    return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  bool dead = false;
  {
    std::lock_guard<std::mutex> lk(s->mu);
    if (!s->open || s->dead || s->orphaned) return make_error(env, atom.closed);
    // :ssl lets any process hand the socket over; gen_tcp only the owner.
    if (s->tag != Tag::Ssl && enif_compare_pids(&s->owner, &me) != 0)
      return make_error(env, atom.not_owner);
    if (enif_compare_pids(&pid, &me) == 0 && enif_compare_pids(&s->owner, &me) == 0)
      return atom.ok;
    if (s->active != 0 || s->tag != Tag::Ssl) {
      int saved = s->active;
      s->active = 0;
      return enif_make_tuple2(env, atom.paused, enif_make_int(env, saved));
    }
    dead = !set_owner(env, s, pid);
  }
  if (dead && s->tag == Tag::Ssl) {  // :ssl: the connection dies with its owner
    sock_close(env, s, nullptr);
    return atom.ok;
  }
  // gen_tcp: a dead new owner is badarg, and the socket stays as it was.
  return dead ? make_error(env, atom.badarg) : atom.ok;
}

// set_owner(Sock, Pid, Active) -> ok | {error, Reason}
ERL_NIF_TERM nif_set_owner(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  ErlNifPid pid;
  int active;
  if (!get_sock(env, argv[0], &s) || !enif_get_local_pid(env, argv[1], &pid) ||
      !enif_get_int(env, argv[2], &active) ||
      !(active == kActiveTrue || active == kActiveOnce || (active >= 0 && active <= kActiveMax)))
    return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  bool dead = false;
  {
    std::lock_guard<std::mutex> lk(s->mu);
    if (!s->open) return make_error(env, atom.closed);
    if (s->tag != Tag::Ssl && enif_compare_pids(&s->owner, &me) != 0)
      return make_error(env, atom.not_owner);
    dead = !set_owner(env, s, pid);
    // Delivery resumes, for the new owner or (badarg, TLS) for the caller. A
    // TCP socket refused by a dead new owner stays passive, as gen_tcp
    // leaves its port (it restores the active mode only once connected).
    s->active = (dead && s->tag != Tag::Ssl) ? 0 : active;
    // A recv made while controlling_process paused delivery is outrun by
    // its resume, as by setopts (gen_tcp's controlling_process sets active
    // false, then back).
    if (s->active != 0 && s->kind == Kind::Conn && s->tag == Tag::Tcp) reader_outrun(env, s);
    if (s->active != 0 && s->kind == Kind::Conn && !s->dead && !s->orphaned)
      active_started(env, s);
  }
  if (dead && s->tag == Tag::Ssl) {
    sock_close(env, s, nullptr);
    return atom.ok;
  }
  return dead ? make_error(env, atom.badarg) : atom.ok;
}

// adopt_orphan(Sock, Pid) -> ok | {error, Reason}. Islet.Owners hands a
// socket orphaned to it (sock_orphan, its {'$islet_orphan', S}) to the
// process that writes its queue out and closes it. Only such a socket,
// and only from the process it was orphaned to: anything else (a message
// forged with a live socket, or one closed meanwhile) is refused and the
// socket stays as it is. A dead Pid: {error, badarg}, the caller closes.
ERL_NIF_TERM nif_adopt_orphan(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  ErlNifPid pid;
  if (!get_sock(env, argv[0], &s) || !enif_get_local_pid(env, argv[1], &pid))
    return enif_make_badarg(env);
  ErlNifPid me = self_pid(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || s->dead) return make_error(env, atom.closed);
  if (!s->orphaned || enif_compare_pids(&s->owner, &me) != 0) return make_error(env, atom.not_owner);
  return set_owner(env, s, pid) ? atom.ok : make_error(env, atom.badarg);
}

}  // namespace islet
