// libFuzzer harness: Islet's TLS record layer (c_src/records.cpp), once a
// handshake is over, between a server socket and a peer on a socketpair
// whose record layers are keyed alike (records_fuzz_attach: no handshake,
// so each input runs in microseconds). The input picks the protocol and
// the suite, then steps: the peer sends records (application data, alerts,
// handshake messages, key updates), raw bytes or an altered record; the
// server reads with buffers of any size, sends, sends close_notify; either
// side's socket may stop reading for a while (small socket buffers, so that
// sealed records wait in the record layer's own buffer).
//
// Checked, beyond ASan and UBSan: every read answers within its contract;
// what the server sent reaches the peer, opened by the peer's record layer,
// intact and in order (the server never seals a record its peer cannot
// open), all of it unless the server ended the connection; what the peer
// sent reaches the server in order, all of it, as long as nothing hostile
// was sent; a connection that ended stays ended.
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../c_src/common.hpp"
#include "../c_src/records.hpp"

namespace islet {
bool records_fuzz_attach(Sock* s, bool tls13, int cipher_nid, const unsigned char* rd,
                         const unsigned char* wr);
size_t records_fuzz_seal(Sock* s, uint8_t type, const unsigned char* p, size_t n,
                         unsigned char* out);
bool records_fuzz_update_write(Sock* s);
uint32_t records_fuzz_read_updates(const Sock* s);
void records_fuzz_unload(Sock* s);
}  // namespace islet

namespace {

using islet::Sock;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_records: %s\n", what);
  std::abort();
}

struct In {
  const uint8_t* p;
  size_t n;
  uint8_t u8() {
    if (n == 0) return 0;
    n--;
    return *p++;
  }
  size_t u16() { return static_cast<size_t>(u8()) << 8 | u8(); }
  // Up to `max` bytes of the input itself.
  std::string bytes(size_t max) {
    size_t want = static_cast<size_t>(u8()) * 64 + u8() % 64;
    size_t len = std::min({want, max, n});
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }
};

// A peer or server end: a socket, its record layer, what it read.
struct End {
  Sock* s = nullptr;
  std::string got;
  bool ended = false;  // a read answered 0 or kTlsFailed
  int failure = 0;
};

void add_queue(Sock* s, const std::string& data) {
  ErlNifIOVec v{};
  SysIOVec piece;
  piece.iov_base = const_cast<char*>(data.data());
  piece.iov_len = data.size();
  v.iovcnt = 1;
  v.size = data.size();
  v.iov = &piece;
  if (!enif_ioq_enqv(s->wioq, &v, 0)) die("enqv");
}

unsigned char buf[64 << 10];

// One read of `n` bytes at most, checked against the contract.
void read_once(End& e, size_t n) {
  int err = 0;
  ssize_t r = islet::records_read(e.s, buf, n, &err);
  if (r > 0) {
    if (static_cast<size_t>(r) > n) die("read past its buffer");
    if (e.ended) die("data after the end");
    e.got.append(reinterpret_cast<char*>(buf), static_cast<size_t>(r));
    return;
  }
  if (r == islet::kWantRead) {
    if (e.ended) die("wait after the end");
    return;
  }
  if (r == 0 || r == islet::kTlsFailed) {
    if (r == islet::kTlsFailed && (err & ~0x3ff) != 0) die("bad failure code");
    if (e.ended && (r == islet::kTlsFailed ? err : 0) != e.failure) die("the end changed");
    e.ended = true;
    e.failure = r == islet::kTlsFailed ? err : 0;
    return;
  }
  if (r == islet::kReadError) return;  // the socket's error (reset), not ours
  die("read answered out of contract");
}

Sock* make_sock(int fd) {
  Sock* s = new Sock();
  s->fd = fd;
  s->wioq = enif_ioq_create(ERL_NIF_IOQ_NORMAL);
  return s;
}

void free_sock(Sock* s) {
  islet::records_free(s);
  enif_ioq_destroy(s->wioq);
  close(s->fd);
  delete s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  islet::records_init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  In in{data, size};
  uint8_t pick = in.u8();
  bool tls13 = pick & 1;
  static const int nids[] = {NID_aes_128_gcm, NID_aes_256_gcm, NID_chacha20_poly1305};
  int nid = nids[(pick >> 1) % 3];
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0) die("socketpair");
  // Mostly small socket buffers (partial writes, queues); sometimes large
  // ones, so that one server read can take 64 KB behind what is left of an
  // incomplete record (its read buffer must hold both).
  int sndbuf = (pick & 0x80) ? (512 << 10) : 4096;
  for (int fd : fds) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  // Key material: each side's write keys are the other's read keys.
  unsigned char a[64], b[64];
  for (int i = 0; i < 64; i++) a[i] = static_cast<unsigned char>(i * 7 + 1), b[i] = static_cast<unsigned char>(i * 13 + 5);
  End server, peer;
  server.s = make_sock(fds[0]);
  peer.s = make_sock(fds[1]);
  if (!islet::records_fuzz_attach(server.s, tls13, nid, a, b) ||
      !islet::records_fuzz_attach(peer.s, tls13, nid, b, a))
    die("attach");

  std::string server_sent, peer_sent;
  bool clean = true;      // the peer sent only well-formed data so far
  bool tamper = false;    // alter the next record the peer seals
  bool closed = false;    // the server sent close_notify
  bool update_requested = false;  // the peer asked for the server's key update
  // Records without data the peer asked the server for: a warning alert
  // for each TLS 1.2 handshake message (no renegotiation), a key update
  // for each TLS 1.3 request. 32 in a row end the connection at the peer
  // (its flood limit) without anything wrong with how they were sealed.
  int provoked = 0;
  unsigned char rec[16384 + 64];
  auto peer_write = [&](const unsigned char* p, size_t n) {
    // What the socket does not take is dropped, and the stream is no
    // longer one the server can follow.
    ssize_t m = send(fds[1], p, n, MSG_NOSIGNAL);
    if (m != static_cast<ssize_t>(n)) clean = false;
  };
  auto peer_seal = [&](uint8_t type, const std::string& body) {
    size_t n = islet::records_fuzz_seal(peer.s, type, reinterpret_cast<const unsigned char*>(body.data()),
                                        body.size(), rec);
    if (n == 0) die("peer seal");
    if (tamper) {
      rec[n / 2] ^= 0x10;
      tamper = false;
      clean = false;
    }
    peer_write(rec, n);
  };

  for (int step = 0; step < 64 && in.n > 0; step++) {
    switch (in.u8() % 12) {
      case 0: {  // the peer: application data
        std::string d = in.bytes(16384);
        if (d.empty()) clean = false;  // empty records count against a flood
        peer_seal(23, d);
        if (clean) peer_sent += d;
        break;
      }
      case 1: {  // the peer: an alert
        std::string d(1, static_cast<char>(in.u8() % 3));
        d.push_back(static_cast<char>(in.u8()));
        peer_seal(21, d);
        clean = false;
        break;
      }
      case 2:  // the peer: handshake bytes
        peer_seal(22, in.bytes(64));
        clean = false;
        provoked++;
        break;
      case 3: {  // the peer: a key update, then its new write key
        if (!tls13) break;
        bool request = in.u8() & 1;
        std::string ku = {24, 0, 0, 1, static_cast<char>(request)};
        peer_seal(22, ku);
        if (request && clean) update_requested = true;
        if (request) provoked++;
        if (!islet::records_fuzz_update_write(peer.s)) die("peer key update");
        break;
      }
      case 4: {  // the peer: raw bytes
        std::string d = in.bytes(4096);
        peer_write(reinterpret_cast<const unsigned char*>(d.data()), d.size());
        clean = false;
        break;
      }
      case 5:
        // Either the next record is altered, or both sides go idle long
        // enough for the sweep to free their cipher contexts.
        if (in.u8() & 1) {
          tamper = true;
        } else {
          islet::records_fuzz_unload(server.s);
          islet::records_fuzz_unload(peer.s);
        }
        break;
      case 6:  // the server reads
        read_once(server, 1 + in.u16() % sizeof buf);
        break;
      case 7: {  // the server sends: sealed straight from the data (when
                 // nothing is queued, as nif_send does), the rest queued
        bool direct = in.u8() & 1;
        std::string d = in.bytes(40000);
        if (d.empty()) break;
        server_sent += d;
        size_t taken = 0;
        if (direct && enif_ioq_size(server.s->wioq) == 0) {
          SysIOVec piece;
          piece.iov_base = const_cast<char*>(d.data());
          piece.iov_len = d.size();
          int e = islet::records_send(server.s, &piece, 1, d.size(), &taken);
          if (e == 0 && taken != d.size()) die("records_send left data without saying so");
        }
        if (taken < d.size()) add_queue(server.s, d.substr(taken));
        while (islet::records_drain(server.s) == islet::kMoreWork) {
        }
        break;
      }
      case 8:  // the server: whatever it still has to send
        islet::records_drain(server.s);
        break;
      case 9:  // the peer reads what the server sent
        read_once(peer, 1 + in.u16() % sizeof buf);
        break;
      case 10:
        islet::records_close_notify(server.s);
        closed = true;
        break;
      case 11:
        shutdown(fds[1], SHUT_WR);
        clean = false;
        break;
    }
    // In order and intact, both ways (the server's bytes always; the
    // peer's while it sent only well-formed records).
    if (server_sent.compare(0, peer.got.size(), peer.got) != 0) die("the peer got other bytes than sent");
    bool peer_flooded = peer.failure == (islet::kAlertSent | 10) && provoked >= 32;
    if ((peer.failure & islet::kAlertSent) && !peer_flooded)
      die("the peer could not open what the server sealed");
    if (clean && peer_sent.compare(0, server.got.size(), server.got) != 0)
      die("the server got other bytes than sent");
  }
  // Then everything must get through, as far as nothing stopped it: the
  // server reads all the peer sent (while the peer was clean), the peer
  // all the server sent (unless the server ended the connection).
  for (int round = 0; round < 200; round++) {
    size_t before = server.got.size() + peer.got.size();
    read_once(server, sizeof buf);
    islet::records_drain(server.s);
    read_once(peer, sizeof buf);
    if (server.got.size() + peer.got.size() == before && round > 2) break;
  }
  // 32 records in a row without data (key updates, here) end it lawfully.
  bool flood = server.failure == (islet::kAlertSent | 10);
  if (clean && server.failure != 0 && !flood) die("a clean peer was failed");
  if (clean && !flood && server.got != peer_sent) die("the server did not get all the peer sent");
  // (Unless the peer ended it, on the records it asked for.)
  bool peer_flooded = peer.failure == (islet::kAlertSent | 10) && provoked >= 32;
  if (!closed && server.failure == 0 && !peer_flooded && peer.got != server_sent)
    die("the peer did not get all the server sent");
  // Asked for, a key update of the server's comes (here, by the last read).
  if (update_requested && !closed && server.failure == 0 && !peer_flooded &&
      islet::records_fuzz_read_updates(peer.s) == 0)
    die("the server did not answer a key update request");
  free_sock(server.s);
  free_sock(peer.s);
  return 0;
}
