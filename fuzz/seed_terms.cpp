// Writes the seed inputs of fuzz_terms (in the grammar of fuzz_terms.hpp)
// into a directory: the calls Islet's Elixir side makes, so that fuzzing
// starts on the success paths. The checked-in fuzz/seeds/fuzz_terms/ came
// from here; after a grammar change:
//   clang++ -std=c++17 fuzz/seed_terms.cpp -o /tmp/seed_terms &&
//   rm -f fuzz/seeds/fuzz_terms/* && /tmp/seed_terms fuzz/seeds/fuzz_terms
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_terms.hpp"

using namespace terms;

namespace {

struct W {
  std::vector<uint8_t> b;
  W& u8(unsigned v) {
    b.push_back(static_cast<uint8_t>(v));
    return *this;
  }
  W& atom(const char* name) {
    for (unsigned k = 0; k < kAtomCount; k++)
      if (std::strcmp(kAtoms[k], name) == 0) return u8(kDictAtom).u8(k);
    std::fprintf(stderr, "seed_terms: %s is not in kAtoms\n", name);
    std::exit(1);
  }
  W& integer(int32_t v) {
    if (v >= -128 && v <= 127) return u8(kSmallInt).u8(static_cast<uint8_t>(v));
    u8(kInt32);
    for (int k = 0; k < 4; k++) u8((static_cast<uint32_t>(v) >> (8 * k)) & 0xff);
    return *this;
  }
  W& bin(unsigned dict_index) { return u8(kDictBin).u8(dict_index); }
  W& str(const std::string& s) {  // a binary from the dictionary strings
    for (unsigned k = 0; k < kBinCount - kGeneratedBins; k++)
      if (kBinStrings[k] == s) return bin(kGeneratedBins + k);
    std::fprintf(stderr, "seed_terms: \"%s\" is not in kBinStrings\n", s.c_str());
    std::exit(1);
  }
  W& list(unsigned n) { return u8(kList).u8(n); }
  W& tuple(unsigned n) { return u8(kTuple).u8(n); }
  W& kv(const char* key) {  // then the value
    for (unsigned k = 0; k < kAtomCount; k++)
      if (std::strcmp(kAtoms[k], key) == 0) return u8(kKv).u8(k);
    std::fprintf(stderr, "seed_terms: %s is not in kAtoms\n", key);
    std::exit(1);
  }
  W& nil() { return u8(kNil); }
  W& ip4(int a, int b, int c, int d) { return tuple(4).integer(a).integer(b).integer(c).integer(d); }
};

const unsigned kCert = 0, kKey = 1;

// The option list Islet.TLS.Options builds for a certificate and key.
W& tls_opts(W& w) {
  w.list(5);
  w.kv("cert_key").tuple(2).list(1).bin(kCert).bin(kKey);
  w.kv("verify_peer").atom("false");
  w.kv("fail_if_no_peer_cert").atom("false");
  w.kv("min_version").integer(0x0303);
  w.kv("alpn").list(2).str("h2").str("http/1.1");
  return w;
}

// A TLS upgrade whose context (`n` options) asks for client certificates
// and trusts kCert, which the peer's client presents: its first three
// options; the caller adds the rest.
W& client_cert_upgrade(W& w, unsigned n) {
  w.u8(kSockOps).u8(2);
  w.u8(kTlsUpgrade);
  w.list(n);
  w.kv("cert_key").tuple(2).list(1).bin(kCert).bin(kKey);
  w.kv("cacerts").list(1).bin(kCert);
  w.kv("verify_peer").atom("true");
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: seed_terms DIR\n");
    return 2;
  }
  std::vector<std::pair<const char*, W>> seeds;
  auto add = [&](const char* name) -> W& {
    seeds.push_back({name, W{}});
    return seeds.back().second;
  };
  // setopts / getopts / set_active on a TCP connection, as Islet.TCP does.
  {
    W& w = add("tcp_setopts");
    w.u8(kSockOps).u8(0);  // AF_INET, connection
    w.u8(kSetopts).list(5);
    w.kv("nodelay").atom("true");
    w.kv("linger").tuple(2).atom("true").integer(5);
    w.kv("send_timeout").atom("infinity");
    w.kv("recbuf").integer(65536);
    w.kv("packet").atom("raw");
    w.u8(kGetopts).list(5).atom("nodelay").atom("linger").atom("buffer").atom("send_timeout").atom("active");
    w.u8(kSetActive).atom("once");
    w.u8(kSetActive).integer(-1);
    w.u8(kSetActive).integer(3);
    w.u8(kEnd).u8(0);
  }
  // IP options per family and the port settings Islet keeps, on IPv6.
  {
    W& w = add("tcp6_ip_opts");
    w.u8(kSockOps).u8(1);  // AF_INET6, connection
    w.u8(kSetopts).list(6);
    w.kv("ttl").integer(7);
    w.kv("tclass").integer(8);
    w.kv("bind_to_device").integer(1);  // wrong type: einval
    w.kv("packet_size").integer(-1);
    w.kv("high_msgq_watermark").integer(100);
    w.kv("low_msgq_watermark").integer(200);
    w.u8(kGetopts).list(6).atom("ttl").atom("tclass").atom("packet_size").atom("header")
        .atom("high_msgq_watermark").atom("bind_to_device");
    w.u8(kEnd).u8(0);
  }
  // A connected AF_UNIX pair: data, active delivery through the pump, recv.
  {
    W& w = add("unix_recv_deliver");
    w.u8(kSockOps).u8(2);
    w.u8(kPeerWrite).u8(5);
    for (char c : std::string("hello")) w.u8(c);
    w.u8(kRecv).integer(3);
    w.u8(kSetActive).atom("true");
    w.u8(kDeliver);
    w.u8(kPeerClose);
    w.u8(kRecv).integer(0);
    w.u8(kNames).u8(2);
    w.u8(kEnd).u8(0);
  }
  // Ownership handover and the owner's death; a TLS-tagged socket.
  {
    W& w = add("ssl_owner");
    w.u8(kSockOps).u8(1 | 8);  // AF_INET6, connection, Tag::Ssl
    w.u8(kSetActive).integer(-3);
    w.u8(kControllingProcess).u8(kPid).u8(3);
    w.u8(kSetOwner).u8(kPid).u8(3).integer(0);
    w.u8(kGetopts).list(3).atom("ipv6_v6only").atom("tos").atom("packet");
    w.u8(kKill).u8(3);
    w.u8(kEnd).u8(1);
  }
  // listen/4 as Islet.Options.listen_spec returns it, then accept (waits).
  {
    W& w = add("listen_inet");
    w.u8(kListen).atom("inet").ip4(127, 0, 0, 1).integer(0);
    w.list(4);
    w.kv("backlog").integer(16);
    w.kv("reuseaddr").atom("true");
    w.kv("buffer").integer(4096);
    w.kv("active").atom("false");
    w.u8(0);
    w.u8(kAccept).u8(kGetopts).list(2).atom("active").atom("buffer");
    w.u8(kNames).u8(0);
    w.u8(kClose).u8(kEnd).u8(0);
  }
  {
    W& w = add("listen_inet6");
    w.u8(kListen).atom("inet6").tuple(8);
    for (int k = 0; k < 7; k++) w.integer(0);
    w.integer(1);
    w.integer(0).list(1).kv("ipv6_v6only").atom("true").u8(0);
    w.u8(kNames).u8(0).u8(kEnd).u8(0);
  }
  {
    W& w = add("listen_local");
    w.u8(kListen).atom("local").str(std::string("\0islet-fuzz", 11)).integer(0).nil().u8(0);
    w.u8(kEnd).u8(0);
    W& f = add("listen_local_file");
    f.u8(kListen).atom("local").str("islet-fuzz.sock").integer(0).nil().u8(0);
    f.u8(kNames).u8(0).u8(kEnd).u8(0);
  }
  // tls_ctx/1 with what Islet.TLS.Options builds.
  {
    W& w = add("tls_ctx_full");
    w.u8(kTlsCtx).u8(0).list(5);
    w.kv("cert_key").tuple(2).list(1).bin(kCert).bin(kKey);
    w.kv("cacerts").list(1).bin(kCert);
    w.kv("cipher_list").str("HIGH:!aNULL");
    w.kv("ciphersuites").str("TLS_AES_128_GCM_SHA256");
    w.kv("session_tickets").atom("stateless");
    W& v = add("tls_ctx_versions");
    v.u8(kTlsCtx).u8(0).list(6);
    v.kv("cert_key").tuple(2).list(1).bin(kCert).bin(kKey);
    v.kv("max_version").integer(0x0304);
    v.kv("depth").integer(2);
    v.kv("honor_cipher_order").atom("true");
    v.kv("reuse_sessions").atom("false");
    v.kv("session_cache_size").integer(3);
  }
  // Groups by version, signature algorithms, DH, key updates.
  {
    W& w = add("tls_ctx_groups");
    w.u8(kTlsCtx).u8(0).list(8);
    w.kv("cert_key").tuple(2).list(1).bin(kCert).bin(kKey);
    w.kv("groups13").list(2).str("X25519").str("secp384r1");
    w.kv("groups12").list(2).str("prime256v1").str("no_such_group");
    w.kv("sigalgs").list(2).str("ECDSA+SHA256").str("rsa_pss_rsae_sha256");
    w.kv("dh_auto").atom("true");
    w.kv("honor_ecc_order").atom("true");
    w.kv("max_handshake_size").integer(100000);
    w.kv("key_update_at").integer(4096);
  }
  // The signature algorithms a client chain may use (cert_sigs): the client
  // presents a certificate its context checks natively.
  {
    W& w = client_cert_upgrade(add("tls_cert_sigs"), 4);
    w.kv("cert_sigs").tuple(2);
    w.list(2).tuple(3).str("1.2.840.10045.4.3.2").str("").integer(42);
    w.tuple(3).str("1.2.840.113549.1.1.10").str("2.16.840.1.101.3.4.2.1").integer(0);
    w.list(1).tuple(3).str("1.2.3.x").str("sha256WithRSAEncryption").integer(80);
    w.u8(0);
    w.u8(kPeerTls);
    w.u8(kNames).u8(4);
    w.u8(kEnd).u8(0);
  }
  // A second context naming the first as an SNI host, with an sni_fun.
  {
    W& w = add("tls_ctx_sni");
    w.u8(kTlsCtx).u8(1);
    tls_opts(w);
    w.list(2);
    w.kv("sni_hosts").list(1).tuple(2).str("localhost").u8(kResource).u8(0);
    w.kv("sni_fun").u8(kRef);
  }
  // STARTTLS on a connected pair: the handshake waits for the ClientHello.
  {
    W& w = add("tls_upgrade");
    w.u8(kSockOps).u8(2);
    w.u8(kTlsUpgrade);
    tls_opts(w);
    w.u8(0);  // tls_upgrade + tls_handshake
    w.u8(kPeerWrite).u8(5).u8(0x16).u8(3).u8(1).u8(0).u8(0);
    w.u8(kTlsUpgrade);  // again: einval
    tls_opts(w);
    w.u8(0);
    w.u8(kNames).u8(4);
    w.u8(kEnd).u8(0);
  }
  // A context whose certificates could not be loaded: the handshake on it
  // fails with the carried reason before OpenSSL reads anything.
  {
    W& w = add("tls_upgrade_deferred");
    w.u8(kSockOps).u8(2);
    w.u8(kTlsUpgrade);
    w.list(1).kv("deferred_error").tuple(2).atom("certfile").atom("einval");
    w.u8(0);  // tls_upgrade + tls_handshake
    w.u8(kPeerWrite).u8(5).u8(0x16).u8(3).u8(1).u8(0).u8(0);
    w.u8(kEnd).u8(0);
  }
  // send on a connected pair: a small list written at once, then 256 KiB
  // that fill the pair's buffer and queue; the peer drains it, send_more
  // finishes; another one times out and a pump flushes it in the background.
  {
    W& w = add("unix_send");
    w.u8(kSockOps).u8(2);
    w.u8(kSend).u8(kSendList).u8(3);
    w.u8(5 * 4 + kBinInput);
    for (char c : std::string("hello")) w.u8(c);
    w.u8(16 * 4 + kBinKb).u8(kBinEmpty);
    w.u8(kSend).u8(kSendList).u8(1).u8(15 * 4 + kBinLarge);  // 256 KiB
    w.u8(kSendMore);
    w.u8(kPeerRead).u8(255).u8(kSendMore);
    w.u8(kPeerRead).u8(255).u8(kSendMore);
    w.u8(kSend).u8(kSendList).u8(1).u8(15 * 4 + kBinLarge);
    w.u8(kSendTimeoutKeep);
    w.u8(kPeerRead).u8(255).u8(kFlushBg);
    w.u8(kEnd).u8(0);
  }
  // The send queue: 256 KiB taken at once (a pump writes it out), a second
  // send finds it busy, a timed-out send's data joins it, then drain (what
  // close does first) waits for the peer, which reads.
  {
    W& w = add("unix_send_queue");
    w.u8(kSockOps).u8(2);
    w.u8(kSend).u8(kSendList).u8(1).u8(15 * 4 + kBinLarge);  // 256 KiB
    w.u8(kSend).u8(kSendList).u8(1).u8(15 * 4 + kBinLarge);
    w.u8(kSendTimeoutKeepData).u8(kSendList).u8(1).u8(16 * 4 + kBinKb);
    w.u8(kDrain);
    w.u8(kPeerRead).u8(255).u8(kFlushBg);
    w.u8(kPeerRead).u8(255).u8(kDrain);
    w.u8(kEnd).u8(0);
  }
  // sendfile of a small file over an AF_UNIX pair, as Islet.Socket does it:
  // open, size, then up to 64 bytes from offset 0 (Islet.Socket passes the
  // size it read; the NIF sends what is there).
  {
    W& w = add("unix_sendfile");
    w.u8(kSockOps).u8(2);
    w.u8(kSendfile).u8(0).integer(0).integer(64);
    w.u8(kPeerRead).u8(0);
    w.u8(kSendfile).u8(3);  // a directory: eisdir
    w.u8(kEnd).u8(0);
  }
  // More than IOV_MAX binaries (nif_send inspects the list in slices), and
  // a send that times out with send_timeout_close.
  {
    W& w = add("unix_send_many");
    w.u8(kSockOps).u8(2);
    w.u8(kSend).u8(kSendMany).u8(5);
    for (int k = 0; k < 1029; k++) w.u8(1 * 4 + kBinKb);  // 64 bytes each
    w.u8(kSend).u8(kSendList).u8(2).u8(63 * 4 + kBinLarge).u8(kBinEmpty);  // 1 MiB
    w.u8(kSendTimeoutClose);
    w.u8(kSend).u8(kSendList).u8(0);  // closed, then enotconn
    w.u8(kSend).u8(kSendTerm).u8(kSmallInt).u8(1);
    w.u8(kEnd).u8(0);
  }
  // STARTTLS, a client on the peer finishes the handshake, then sends go
  // through tls_drain (256 KiB: queued, drained by the peer, send_more).
  {
    W& w = add("tls_send");
    w.u8(kSockOps).u8(2);
    w.u8(kTlsUpgrade);
    tls_opts(w);
    w.u8(0);
    w.u8(kPeerTls);
    w.u8(kSend).u8(kSendList).u8(2).u8(16 * 4 + kBinKb).u8(3 * 4 + kBinInput).u8('a').u8('b').u8('c');
    w.u8(kSend).u8(kSendList).u8(1).u8(15 * 4 + kBinLarge);
    w.u8(kPeerRead).u8(255).u8(kSendMore);
    w.u8(kPeerRead).u8(255).u8(kSendMore);
    w.u8(kPeerRead).u8(255).u8(kSendMore);
    w.u8(kNames).u8(4);
    w.u8(kEnd).u8(0);
  }
  // Client certificates left to Erlang (erl_verify): the client on the
  // peer presents one, the handshake answers {verify, Chain, Data}, and
  // Erlang refuses it (tls_verify_failed, bad_certificate).
  {
    W& w = client_cert_upgrade(add("tls_erl_verify"), 5);
    w.kv("fail_if_no_peer_cert").atom("true");
    w.kv("erl_verify").u8(kRef);
    w.u8(0);
    w.u8(kPeerTls);
    w.u8(kVerifyFailed).integer(42);
    w.u8(kLinger);
    w.u8(kNames).u8(4);
    w.u8(kEnd).u8(0);
  }
  // The same in TLS 1.2, where the server's last flight waits for Erlang
  // (verify_hold): refused (a plaintext alert), or accepted (the handshake
  // goes on at the next tls_handshake) and then used.
  for (bool accept : {false, true}) {
    // (at most 5 options: kList)
    const char* name = accept ? "tls_erl_verify12_accepted" : "tls_erl_verify12_refused";
    W& w = client_cert_upgrade(add(name), 5);
    w.kv("max_version").integer(0x0303);
    w.kv("erl_verify").u8(kRef);
    w.u8(0);
    w.u8(kPeerTls);
    if (accept) {
      w.u8(kPeerTls);
      w.u8(kSend).u8(kSendList).u8(1).u8(1 * 4 + kBinKb);  // 64 bytes
      w.u8(kPeerRead).u8(0);
    } else {
      w.u8(kVerifyFailed).integer(42);
      w.u8(kLinger);
    }
    w.u8(kNames).u8(4);
    w.u8(kEnd).u8(0);
  }
  for (auto& s : seeds) {
    std::string path = std::string(argv[1]) + "/" + s.first;
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(s.second.b.data(), 1, s.second.b.size(), f) != s.second.b.size()) {
      std::perror(path.c_str());
      return 1;
    }
    std::fclose(f);
  }
  return 0;
}
