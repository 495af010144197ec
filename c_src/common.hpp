// Islet: shared declarations of the NIF (atoms, the socket resource, helpers).
#pragma once

#include <erl_nif.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>
#include <mutex>
#include <string>
#include <utility>

#include "erts_alloc.hpp"

namespace islet {

// Atoms are global in the VM, so caching them at load time is safe.
struct Atoms {
  ERL_NIF_TERM ok, error, true_, false_, undefined, closed, timeout, einval, enotconn, enomem,
      badarg, not_owner, wait, wait_turn, wait_drain, wait_close, paused, more, once, infinity,
      islet, islet_closed, inet, inet6, local, read, write, read_write, active, mode, binary,
      packet, raw, nodelay, reuseaddr, reuseport, reuseport_lb, keepalive, linger, buffer, recbuf,
      sndbuf, send_timeout, send_timeout_close, exit_on_close, backlog, ipv6_v6only, tcp,
      tcp_closed, tcp_error, tcp_passive, ssl, ssl_closed, ssl_error, ssl_passive, recv_oct,
      recv_cnt, recv_max, recv_avg, recv_dvi, send_oct, send_cnt, send_max, send_avg, send_pend,
      unspec, eof, tos, priority, nopush, islet_flush, idle, wait_busy, high_watermark,
      low_watermark, ttl, recvtos, recvttl, dontroute, tclass, recvtclass, bind_to_device,
      delay_send, packet_size, high_msgq_watermark, low_msgq_watermark, header, deliver, term,
      show_econnreset, debug, broadcast, netns, read_packets, notsup_before_handshake,
      accept_copies_reuseaddr, link_owner, islet_link, islet_orphan, islet_downs,
      multicast_ttl, multicast_loop, multicast_if, pktoptions;
};
extern Atoms atom;
// fds at or above this are beyond the BEAM's poll sets (enif_select fails
// there); 0 = unknown. Set at load.
extern int max_fds;
// Whether a sendfile the peer cut counts as the send side's reported end,
// so that the next send says enotconn (gen_tcp before OTP 26), or not
// (closed: OTP 26+). Set at load.
extern bool sendfile_cut_ends_sends;
// inet's user-level `buffer` of a socket that was given neither it nor a
// larger recbuf: 1460 until OTP 28's gen_tcp, 9216 since. Set at load.
extern int default_buffer;
// Whether :ssl names alert 30 decompression_failure (OTP 25) rather than
// 'unsupported/unknown_alert' (OTP 27). Set at load.
extern bool ssl_names_decompression_failure;
void init_atoms(ErlNifEnv* env);

ERL_NIF_TERM make_error(ErlNifEnv* env, ERL_NIF_TERM reason);
// {error, Posix} with the lower-case errno name inet uses (econnreset, ...).
ERL_NIF_TERM make_errno_error(ErlNifEnv* env, int err);
ERL_NIF_TERM errno_atom(ErlNifEnv* env, int err);
ERL_NIF_TERM make_ok(ErlNifEnv* env, ERL_NIF_TERM value);
// Tells the scheduler what a NIF call cost: a call counts as one reduction
// otherwise, and a process making thousands of them (a pump, an acceptor)
// would run for tens of milliseconds without being preempted. Returns true
// when the caller's time slice is used up. No-op off the schedulers.
bool charge(ErlNifEnv* env, size_t bytes);
struct Sock;
// What a closed socket answers to option and name calls: einval for inet,
// closed for :ssl.
ERL_NIF_TERM closed_answer(ErlNifEnv* env, const Sock* s);

// One process blocked in a call on a socket, monitored so that its death
// hands the turn to the next one.
struct Waiter {
  ErlNifPid pid;
  ErlNifMonitor mon;
  // A TCP recv that was waiting when the socket went active: as gen_tcp's,
  // it now waits for its timeout or the connection's end only, without a
  // select (reader_outrun). `woken`: a wake from its old select is on its
  // way, so the end does not send another.
  bool outrun = false;
  bool woken = false;
};

// FIFO of the processes waiting in one direction. Only the head does
// syscalls and holds the enif_select; the others wait for a wake message.
struct WaitQueue {
  // A vector, not a deque: empty it allocates nothing (libstdc++ deques
  // allocate ~600 bytes up front), and queues are short.
  std::vector<Waiter, ErtsAllocator<Waiter>> q;
  int selected = 0;  // the head's pending enif_select mode (READ/WRITE), or 0
  bool is_head(const ErlNifPid& p) const;
  bool contains(const ErlNifPid& p) const;
};

enum class Kind : uint8_t { Listener, Conn };
// Which message family active mode delivers ({tcp, ...} or {ssl, ...}).
enum class Tag : uint8_t { Tcp, Ssl };

// Active mode: 0 = false, -1 = true, -2 = once, n > 0 = {active, n}.
constexpr int kActiveTrue = -1;
constexpr int kActiveOnce = -2;
constexpr int kActiveMax = 32767;
constexpr size_t kMaxRecv = 64u << 20;  // gen_tcp answers enomem past this
constexpr size_t kReadChunk = 64u << 10;
// gen_tcp's default high_watermark and low_watermark (bytes queued).
constexpr size_t kDefaultHighWatermark = 8192;
constexpr size_t kDefaultLowWatermark = 4096;
// ... and of its port's message queue (high_msgq_watermark, low_msgq_watermark).
constexpr int kDefaultMsgqHigh = 8192;
constexpr int kDefaultMsgqLow = 4096;

// getstat's statistics of one direction's packets, kept as inet_drv keeps a
// port's: a count, the largest, and running means of their sizes and (for
// reads) of their deviation from the mean, which getstat gives as its
// absolute value.
struct PacketStats {
  uint64_t cnt = 0, max = 0;
  double avg = 0, dvi = 0;
  void add(uint64_t len) {
    cnt++;
    double d = static_cast<double>(len);
    avg += (d - avg) / static_cast<double>(cnt);
    dvi += ((d - avg) - dvi) / static_cast<double>(cnt);
    if (len > max) max = len;
  }
};

struct Sock {
  std::mutex mu;
  int fd = -1;
  int family = 0;
  Kind kind = Kind::Conn;
  Tag tag = Tag::Tcp;
  bool open = true;          // false once close started: no syscall after that
  // An open socket holds a reference to itself: like a port, it lives until
  // it is closed or its owner dies, not until the last term is collected.
  bool self_ref = true;
  bool fd_closed = false;    // the stop callback closed the fd
  // A plain TCP sendfile runs its syscalls without the lock (io.cpp): while
  // it does, the stop callback leaves the fd open (close_deferred) and the
  // sendfile call closes it when it returns. closing tells its loop to stop.
  bool file_sending = false;
  bool close_deferred = false;
  std::atomic<bool> closing{false};
  bool owner_mon_set = false;
  // The owner is watched by Islet.Owners' link (owners.cpp), not a monitor:
  // Islet.TCP's sockets, as gen_tcp links its port.
  bool linked = false;
  bool link_accepted = false;  // a listener whose accepted sockets get linked
  bool closer_waiting = false;
  bool in_poll = false;      // registered in an epoll set (a pump's or the poller's)
  bool armed = false;        // active and registered: readiness will be delivered
  // In a pump's set (edge-triggered, poller.cpp): which one, whether data
  // may be waiting that no new edge will announce, whether the set stopped
  // listening while the socket was passive, and whether the pump has it in
  // its backlog; and whether an event said the peer's end came (it may have
  // come with the data of the same edge, so a short read no longer proves
  // the socket empty: the end is still to be read, and no edge will say so).
  int8_t pset = -1;
  bool ready = false;
  bool parked = false;
  bool in_backlog = false;
  bool hup = false;
  // TLS: the socket BIO's last read in the current SSL_read came back short,
  // so the kernel had nothing more (tls.cpp, note_read).
  bool tls_short_read = false;
  // How the connection ended under the socket, in gen_tcp's terms
  // (exit_on_close): its port keeps answering differently in each case.
  bool peer_closed = false;      // EOF or reset seen (no close_notify owed)
  bool eof_reported = false;     // a passive recv said closed: now enotconn
  bool reset_reported = false;   // ... and it was a reset: names are einval
  bool send_eof_reported = false;// a send said closed once: now enotconn
  bool dead = false;             // the port would be closed: closed/einval
  bool buffer_set = false;       // buffer given explicitly (else follows recbuf)
  bool copy_reuseaddr = false;   // a Unix listener: accepted sockets get SO_REUSEADDR
  bool bg_flush = false;         // a pump writes out the write queue as the socket drains
  // gen_tcp's busy port: a send brought the write queue to high_watermark
  // and it has not drained to low_watermark yet. That send waits for it
  // (its data queued); a send that finds the socket busy waits before its
  // data is taken.
  bool busy = false;
  bool write_failed = false;     // a background write found the connection gone
  // The owner died with data queued (sock_orphan): as gen_tcp's closing
  // port, which ERTS keeps until its queue is out, sends, recvs, shutdown
  // and controlling_process say closed, and nothing is delivered, while
  // options and statistics still answer (TLS: statistics and addresses
  // only, as :ssl's once its connection process has ended, ssl_gone); its
  // owner, a process of Islet.Owners', writes the queue out, then closes it.
  bool orphaned = false;
  // A shutdown (SHUT_WR or SHUT_RDWR) asked for while data was queued: done
  // once the queue is out, as gen_tcp delays it; -1 for none.
  int shut_pending = -1;
  bool packet_raw_atom = false;  // TLS: packet set as :raw, which :ssl echoes
  bool send_timeout_close = false;
  bool exit_on_close = true;
  int active = 0;
  int buffer = default_buffer;
  long send_timeout = -1;  // ms, -1 = infinity
  // The write queue's watermarks (bytes), per socket as in gen_tcp; the
  // options keep low <= high (options.cpp).
  size_t high_watermark = kDefaultHighWatermark;
  size_t low_watermark = kDefaultLowWatermark;
  int priority = -1;  // SO_PRIORITY as last set by an option (-1: never)
  // Tuning of gen_tcp's port that Islet has no use for (no port message
  // queue, no packet parser, sends are never delayed): checked, kept and
  // read back by getopts as gen_tcp does, and passed to accepted sockets.
  bool delay_send = false;
  int64_t packet_size = 0;  // inet keeps 32 bits, :ssl any integer
  int msgq_high = kDefaultMsgqHigh;
  int msgq_low = kDefaultMsgqLow;
  ErlNifPid owner;
  ErlNifMonitor owner_mon;
  ErlNifPid closer;
  WaitQueue rq;  // readers, or acceptors of a listener
  WaitQueue wq;  // writers (send, sendfile)

  // Bytes read for a recv(n) that has not completed yet (kept across
  // timeouts like gen_tcp keeps them). rbuf.size is the capacity.
  ErlNifBinary rbuf{};
  bool rbuf_alloc = false;
  size_t rlen = 0;

  // Data accepted by send/2 but not yet written to the kernel.
  ErlNifIOQueue* wioq = nullptr;

  // TLS (tls.cpp): the connection's OpenSSL object, or the listener's
  // context. Both freed by the destructor, once nothing can use them.
  struct ssl_st* ssl = nullptr;
  struct ssl_ctx_st* ctx = nullptr;
  // After the handshake, the record layer that replaced the SSL object
  // (records.cpp), and during it what the record layer needs from it.
  struct Records* rec = nullptr;
  struct Takeover* takeover = nullptr;
  bool tls_done = false;  // handshake complete
  // OpenSSL's record layer: the socket refused SSL_shutdown's close_notify,
  // which OpenSSL keeps and writes at the next SSL_shutdown.
  bool tls_shutdown_blocked = false;
  int tls_alert = -1;     // last alert sent (info callback), for error terms
  bool sni_resolved = false;  // SNI context chosen (sni_hosts / sni_fun)
  ErtsString sni;             // server_name of the ClientHello
  void* sni_ctx = nullptr;    // the context whose sni_fun paused the handshake
  // A context that leaves the client's certificate to Erlang (verify_fun,
  // partial_chain): the chain the client sent (DER, its own first), kept
  // from the end of the handshake until the handshake call returns it, and
  // that context (a reference of its own) for what Erlang needs.
  std::vector<std::string> peer_chain;
  void* verify_ctx = nullptr;
  bool peer_chain_tls13 = false;  // the version the chain is checked for
  // TLS 1.2: the server's last flight waits (its writes are held) while
  // Erlang checks the chain, so that a refusal comes before the handshake
  // ends, as with :ssl; chain_checked once Erlang accepted it.
  bool verify_hold = false;
  bool chain_checked = false;
  // A handshake step runs on the caller's scheduler unless it may be costly
  // (tls.cpp): inline is set while it does, and want_dirty when the
  // ClientHello callback found that the rest of the step is costly.
  bool tls_inline = false;
  bool tls_want_dirty = false;
  // A step run on a dirty scheduler, to be finished on a normal one.
  bool tls_step_pending = false;
  // How many threads hold the lock, or are about to, for long work on a
  // dirty scheduler (a costly handshake step, a kernel TLS sendfile): a
  // call that finds it set waits for the lock on a dirty scheduler (see
  // LongHold). Owner and waiter deaths found meanwhile wait in downs.
  std::atomic<int> long_hold{0};
  std::mutex downs_mu;
  std::vector<std::pair<ErlNifPid, ErlNifMonitor>> downs;
  // downs is not empty: the next call on the socket (nif.cpp's on_socket)
  // and the end of the long work settle them first (settle_downs).
  std::atomic<bool> downs_pending{false};
  // A pump that found the socket ready while long work held it passed it
  // over rather than wait for the lock on its normal scheduler: what it
  // left (its epoll events, kPumpMissed, and kPumpBacklog if it dropped a
  // backlog entry), set under downs_mu while the mark is on, which the
  // holder hands back once the work is over (pump_resume).
  std::atomic<uint32_t> pump_missed{0};
  uint8_t tls_step = 0;
  int tls_step_code = 0;

  // Plain TCP: what the current call may still write (kWriteBudget at the
  // start of each call that writes, io.cpp), and the most one call wrote
  // (for tests: write_probe).
  size_t write_budget = 0;
  size_t largest_write = 0;

  // Bytes received and sent as the user sees them (TLS: plaintext; getstat
  // gives the wire's count there, tls_wire_bytes). The packets: on TCP each
  // delivery and each send, as gen_tcp's port counts them; on TLS each read
  // and write of the wire (records, the handshake included), as the TCP
  // port under :ssl counts them.
  uint64_t recv_oct = 0, send_oct = 0;
  PacketStats reads, writes;
};

// A TLS connection, whether OpenSSL or Islet's record layer protects it.
inline bool is_tls(const Sock* s) { return s->ssl != nullptr || s->rec != nullptr; }

// `n` bytes delivered to the user (recv or active mode): a packet in
// getstat's counts on TCP (TLS counts the wire's reads where they happen).
inline void count_delivered(Sock* s, size_t n) {
  s->recv_oct += n;
  if (!is_tls(s)) s->reads.add(n);
}

// A TLS connection whose handshake has not completed: :ssl's
// transport_accept socket, on which it answers the connection's calls
// (recv, send, options, shutdown, connection information) with
// {error, notsup_on_transport_accept_socket}.
inline bool tls_before_handshake(const Sock* s) { return s->ssl != nullptr && !s->tls_done; }
// :ssl's connection process would be gone: it ended with the connection
// (`dead`), or with its owner while the queue still goes out (`orphaned`:
// :ssl's closing TCP port writes it out after the process has exited).
// Calls that go through that process then say closed; getstat and the
// addresses, which :ssl asks of its TCP port, answer while the port is
// open (orphaned) and say einval once it is closed (dead).
inline bool ssl_gone(const Sock* s) { return s->dead || (s->orphaned && s->tag == Tag::Ssl); }

// Marks long work under a socket's lock, on a dirty scheduler: taken before
// the lock and let go after it (declare it before the lock's guard), so that
// whoever finds the lock taken for long knows it. A NIF called on a socket
// so held reschedules itself on a dirty I/O scheduler and waits for the lock
// there (nif.cpp), where a normal scheduler would be held for the rest of
// the work: milliseconds for an RSA-4096 signature. (A call that looks just
// before the work takes the lock still waits on its scheduler: the window
// is the few instructions between the look and its own lock.) Owner and
// waiter deaths meanwhile are handed on (deferred_downs).
class LongHold {
 public:
  explicit LongHold(Sock* s);
  ~LongHold();
  LongHold(const LongHold&) = delete;
  LongHold& operator=(const LongHold&) = delete;

 private:
  Sock* s_;
};
// Whether a call on t must go to a dirty scheduler first: t is a socket
// held for long work (LongHold), or with deaths left to settle.
bool held_long(ErlNifEnv* env, ERL_NIF_TERM t);
// Handles the owner and waiter deaths the down callback left while the
// socket was held for long (sock_down), in the order they came. Takes the
// lock: not under it, and only on a dirty scheduler or once the long work
// is over. Every call that may see the socket after such a death settles
// them first (on_socket), so that none sees the dead owner still there;
// and the long work settles them once it ends, so that none is left
// behind when nothing else calls (Islet.Owners, told of them too, may not
// be running, or stop before it reads its message).
void settle_downs(ErlNifEnv* env, Sock* s);
void settle_downs(ErlNifEnv* env, ERL_NIF_TERM t);

extern ErlNifResourceType* sock_type;
extern ErlNifResourceType* file_type;

struct FileRes {
  int fd = -1;
};

// Lifecycle (socket.cpp). The caller owns the new socket, watched by a link
// when link_owner (and Islet.Owners runs), else by a monitor.
Sock* sock_create(ErlNifEnv* env, int fd, Kind kind, int family, bool link_owner);
// Whether the socket's owner is watched (a link or a monitor): a new socket
// whose owner could not be watched (the caller is exiting) is closed.
inline bool owner_watched(const Sock* s) { return s->linked || s->owner_mon_set; }
// Watches the owner with a monitor instead of a link (a TCP socket turning
// TLS: :ssl's connection process monitors its owner). Under lock.
void owner_watch_by_monitor(ErlNifEnv* env, Sock* s);
bool get_sock(ErlNifEnv* env, ERL_NIF_TERM t, Sock** out);
// Starts closing; returns ok or wait_close (the caller then waits for the
// {'$islet_closed', Sock} message from the stop callback). Takes the lock.
ERL_NIF_TERM sock_close(ErlNifEnv* env, Sock* s, const ErlNifPid* closer);
// The owner of a TCP connection died (owners_down): when data is still
// queued (and linger is not {true, 0}), the socket is kept for its queue to
// go out (`orphaned`), owned (monitored) by the caller, and true is
// returned: the caller hands it to a process that drains the queue and
// closes it. Else it is closed now (false). Takes the lock. (A socket
// whose owner is watched by a monitor, TLS ones, goes the same way from
// its down callback, to Islet.Owners: see sock_down.)
bool sock_orphan(ErlNifEnv* env, Sock* s);
bool set_owner(ErlNifEnv* env, Sock* s, const ErlNifPid& pid);  // under lock

// Owners watched by a link (owners.cpp), under the socket's lock: register s
// under pid (false when Islet.Owners is not running), and take it out of
// owner's entry (s->owner's, unless it is being handed over).
bool owner_link(ErlNifEnv* env, Sock* s, const ErlNifPid& pid);
void owner_unlink(Sock* s, const ErlNifPid& owner);
// Islet.Owners' pid, when it runs (false otherwise). Under the socket's
// lock or none.
bool owners_linker_pid(ErlNifPid* out);
// Closes the fd once, and answers a closer waiting for it when tell_closer
// (else it was answered ok already). Under lock: the stop callback, or a
// sendfile call the stop callback left the fd to.
void close_fd(ErlNifEnv* env, Sock* s, bool tell_closer);

// Waiter queues (socket.cpp). All under the socket's lock.
void waiter_push(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid);
// Removes pid; when it was the head, cancels its select and wakes the next.
bool waiter_remove(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid, int dir);
// The head finished its call: pop it and wake the next one.
void waiter_done(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid);
void wake(ErlNifEnv* env, Sock* s, const ErlNifPid& pid);
// The socket went active while a recv waited (TCP): see Waiter::outrun.
void reader_outrun(ErlNifEnv* env, Sock* s);
// The connection ended (EOF, reset, send timeout): the peer sees it closed
// (shutdown of both directions, as gen_tcp closes its fd) and every waiter
// retries. env may be null (poller thread). Under lock.
void conn_ended(ErlNifEnv* env, Sock* s);
void queue_unattended(ErlNifEnv* env, Sock* s);  // under lock (io.cpp)
// Selects for the head (pid) on the given direction with the wake message.
int select_for(ErlNifEnv* env, Sock* s, WaitQueue& wq, const ErlNifPid& pid, int dir);

// Active delivery (poller.cpp).
bool poller_start();
void poller_stop();
// Arms active delivery (under lock): registration in a pump's set when pumps
// run and an env is at hand (and, if data may be waiting, a read right
// away), else the poller thread's one-shot epoll registration.
void poller_arm(ErlNifEnv* env, Sock* s);
// One of the pump processes, chosen by socket; false when none runs.
bool pick_pump(Sock* s, ErlNifPid* out);
// A pump, or in poller mode the flusher: who writes out a timed-out send.
bool pick_flusher(Sock* s, ErlNifPid* out);

// Active mode ended (under lock): a pump's set keeps the socket, whose
// readiness is then only remembered.
void poller_disarm(ErlNifEnv* env, Sock* s);
void poller_remove(ErlNifEnv* env, Sock* s);  // under lock
// Long work (LongHold) on s is over: what a pump passed over meanwhile goes
// back to it (under lock; nothing if it passed nothing over).
void pump_resume(ErlNifEnv* env, Sock* s);
// Sends what rbuf holds, or the closed message, when active mode starts.
void active_started(ErlNifEnv* env, Sock* s);  // under lock
ERL_NIF_TERM active_tag(Sock* s, int which);   // 0 data, 1 closed, 2 error, 3 passive

// Reading a connection, plain or TLS (tls.cpp for TLS): > 0 bytes, 0 EOF,
// or one of these.
constexpr ssize_t kWantRead = -1;
constexpr ssize_t kWantWrite = -2;
constexpr ssize_t kReadError = -3;  // *err holds an errno
// TLS: an alert ended the connection (one we sent for what the peer sent,
// or the peer's); *err holds kAlertSent or kAlertReceived | the alert.
constexpr ssize_t kTlsFailed = -4;
constexpr int kAlertReceived = 0x100;
constexpr int kAlertSent = 0x200;
// {tls_alert, {Name, Description}} as :ssl reports it, for such a code.
ERL_NIF_TERM tls_failure_term(ErlNifEnv* env, int code);
ssize_t conn_read(Sock* s, void* buf, size_t n, int* err);
// Writes from the head of s->wioq; returns 0 when empty, EAGAIN when the
// kernel is full, kMoreWork (TLS: budget used, call again) or an errno.
constexpr int kMoreWork = -100;
int conn_drain(Sock* s);
ssize_t tls_read(Sock* s, void* buf, size_t n, int* err);
// After a tls_read that returned data: whether more may be readable without
// a new readiness edge (buffered in OpenSSL, or not known to be drained).
bool tls_may_have_more(Sock* s);
int tls_drain(Sock* s);
bool tls_pending(Sock* s);  // decrypted bytes wait inside OpenSSL
// Kernel TLS for sending is on for this connection (SSL_OP_ENABLE_KTLS took).
bool tls_ktls_send(Sock* s);
// SSL_sendfile: like sendfile(2) through kernel TLS; -1 with errno EAGAIN
// when the socket is full.
ssize_t tls_sendfile(Sock* s, int fd, off_t* offset, size_t count);
// Bytes on the wire (records, handshake included), which :ssl's getstat
// counts; false for a plain socket.
bool tls_wire_bytes(Sock* s, uint64_t* in, uint64_t* out);
void tls_free(Sock* s);           // under lock at close, and the destructor
// Sends close_notify once (none owed when the client closed first); what
// the socket refuses is kept, and tls_flush writes it. Under lock.
void tls_close_notify(Sock* s);
// Records sealed and not yet taken by the kernel (Islet's record layer keeps
// them apart from the write queue); for OpenSSL's, whose unwritten data
// stays in the queue until SSL_write takes it, 1 while it keeps a refused
// close_notify. Under lock.
size_t tls_unsent(const Sock* s);
// Writes what tls_unsent counts: 0 once nothing is left, EAGAIN while the
// socket takes no more, or an errno. Under lock.
int tls_flush(Sock* s);
// The write queue's bytes (plaintext on TLS); none without a queue.
inline size_t queued(const Sock* s) { return s->wioq != nullptr ? enif_ioq_size(s->wioq) : 0; }
// What is still to go out: the queue, and on Islet's record layer the
// records sealed that the socket has not taken yet (a send seals up to a
// batch at once and keeps what the socket refuses). Under lock.
inline size_t unsent(const Sock* s) { return queued(s) + tls_unsent(s); }
bool tls_attach(Sock* listener, Sock* conn);  // accept: new SSL from the listener's ctx

// Options (options.cpp).
// Applies {Key, Value}: returns 0, or an errno / EINVAL for a bad option.
int apply_opt(Sock* s, ErlNifEnv* env, ERL_NIF_TERM key, ERL_NIF_TERM value, bool* badopt);
// Reads one option as {Key, Value}; false if it does not apply.
bool read_opt(ErlNifEnv* env, Sock* s, ERL_NIF_TERM key, ERL_NIF_TERM* out, int* err);
ERL_NIF_TERM make_sockaddr(ErlNifEnv* env, const void* sa, unsigned len);
bool parse_sockaddr(ErlNifEnv* env, ERL_NIF_TERM family, ERL_NIF_TERM addr, int port,
                    void* out, unsigned* len, int* fam);

}  // namespace islet
