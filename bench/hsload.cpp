// islet_hsload: a full-TLS-handshake load generator for `mix islet.bench`.
//
//   islet_hsload HOST PORT tls1_3|tls1_2 CONCURRENCY SECONDS
//
// Keeps CONCURRENCY connections in flight from one thread (one epoll set):
// each connects, completes a full handshake (a new SSL object, no session to
// resume, no certificate verification), then closes without close_notify, as
// `openssl s_time -new` does, and the slot starts the next connection. It
// stops by itself after SECONDS (or at SIGTERM / SIGINT) and prints
// "handshakes N failures F seconds S".
//
// Why not `openssl s_time`: it runs one connection at a time per process and
// costs about a millisecond of client CPU per handshake, so a few of them on
// the client's one CPU cannot keep a fast server busy; a server then waits,
// and sleeps and wakes, between handshakes, and the benchmark measures the
// client. This client spends its CPU on the handshake's own crypto, so the
// server (on its own CPU) is the bottleneck, as in production.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

volatile sig_atomic_t stop = 0;

void on_signal(int) { stop = 1; }

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct Slot {
  int fd = -1;
  SSL* ssl = nullptr;
  bool connecting = false;
};

struct Load {
  SSL_CTX* ctx;
  sockaddr_storage addr;
  socklen_t addr_len;
  int ep;
  long handshakes = 0;
  long failures = 0;

  void finish(Slot& s) {
    if (s.ssl != nullptr) {
      // Closed without close_notify (as s_time does): the server's side of
      // the measurement is the handshake and the connection, not a shutdown.
      SSL_set_shutdown(s.ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
      SSL_free(s.ssl);
      s.ssl = nullptr;
    }
    if (s.fd >= 0) close(s.fd);  // also removes it from the epoll set
    s.fd = -1;
  }

  void fail(Slot& s) {
    failures++;
    ERR_clear_error();
    finish(s);
  }

  // Waits for `events` on the slot's fd (one-shot: re-armed at every step).
  bool wait(Slot& s, uint32_t events, bool add) {
    epoll_event ev{};
    ev.events = events | EPOLLONESHOT;
    ev.data.ptr = &s;
    return epoll_ctl(ep, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, s.fd, &ev) == 0;
  }

  void start(Slot& s) {
    s.fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s.fd < 0) {
      perror("socket");
      exit(2);
    }
    int one = 1;
    setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s.fd, reinterpret_cast<sockaddr*>(&addr), addr_len) == 0) {
      s.connecting = false;
      begin(s, true);
    } else if (errno == EINPROGRESS) {
      s.connecting = true;
      if (!wait(s, EPOLLOUT, true)) fail(s);
    } else {
      fail(s);
    }
  }

  // Connected: the handshake's first step (`add`: the fd is not yet in the
  // epoll set).
  void begin(Slot& s, bool add) {
    s.ssl = SSL_new(ctx);
    if (s.ssl == nullptr || SSL_set_fd(s.ssl, s.fd) != 1) return fail(s);
    SSL_set_connect_state(s.ssl);
    step(s, add);
  }

  void step(Slot& s, bool add) {
    int r = SSL_do_handshake(s.ssl);
    if (r == 1) {
      handshakes++;
      return finish(s);
    }
    switch (SSL_get_error(s.ssl, r)) {
      case SSL_ERROR_WANT_READ:
        if (!wait(s, EPOLLIN, add)) fail(s);
        return;
      case SSL_ERROR_WANT_WRITE:
        if (!wait(s, EPOLLOUT, add)) fail(s);
        return;
      default:
        return fail(s);
    }
  }

  void ready(Slot& s) {
    if (!s.connecting) return step(s, false);
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) return fail(s);
    s.connecting = false;
    begin(s, false);
  }
};

bool resolve(const char* host, const char* port, sockaddr_storage* out, socklen_t* len) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host, port, &hints, &res) != 0 || res == nullptr) return false;
  memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s HOST PORT tls1_3|tls1_2 CONCURRENCY SECONDS\n", argv[0]);
    return 2;
  }
  int version;
  if (strcmp(argv[3], "tls1_3") == 0) {
    version = TLS1_3_VERSION;
  } else if (strcmp(argv[3], "tls1_2") == 0) {
    version = TLS1_2_VERSION;
  } else {
    fprintf(stderr, "unknown version %s\n", argv[3]);
    return 2;
  }
  int concurrency = atoi(argv[4]);
  double seconds = atof(argv[5]);
  if (concurrency < 1 || concurrency > 10000 || !(seconds > 0)) {
    fprintf(stderr, "bad concurrency or seconds\n");
    return 2;
  }

  Load load{};
  if (!resolve(argv[1], argv[2], &load.addr, &load.addr_len)) {
    fprintf(stderr, "cannot resolve %s:%s\n", argv[1], argv[2]);
    return 2;
  }
  load.ctx = SSL_CTX_new(TLS_client_method());
  if (load.ctx == nullptr) return 2;
  SSL_CTX_set_min_proto_version(load.ctx, version);
  SSL_CTX_set_max_proto_version(load.ctx, version);
  SSL_CTX_set_verify(load.ctx, SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_session_cache_mode(load.ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(load.ctx, SSL_OP_NO_TICKET);
  load.ep = epoll_create1(EPOLL_CLOEXEC);
  if (load.ep < 0) return 2;

  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  signal(SIGPIPE, SIG_IGN);

  std::vector<Slot> slots(concurrency);

  double start = now_s();
  double deadline = start + seconds;
  std::vector<epoll_event> events(concurrency);
  while (!stop) {
    double left = deadline - now_s();
    if (left <= 0) break;
    // A server that refuses every connection must not turn this into a
    // busy loop: give up when nothing succeeds.
    if (load.handshakes == 0 && load.failures > 1000) {
      fprintf(stderr, "every handshake fails\n");
      break;
    }
    // Every slot whose connection ended (or never started) starts another.
    for (Slot& s : slots)
      if (s.fd < 0) load.start(s);
    int n = epoll_wait(load.ep, events.data(), concurrency, left < 0.1 ? int(left * 1000) + 1 : 100);
    if (n < 0 && errno != EINTR) {
      perror("epoll_wait");
      return 2;
    }
    for (int i = 0; i < n; i++) load.ready(*static_cast<Slot*>(events[i].data.ptr));
  }
  double took = now_s() - start;
  for (Slot& s : slots) load.finish(s);
  printf("handshakes %ld failures %ld seconds %.3f\n", load.handshakes, load.failures, took);
  SSL_CTX_free(load.ctx);
  return load.handshakes > 0 ? 0 : 1;
}
