// libFuzzer harness: the NIF's term decoders (setopts, getopts, set_active,
// listen, tls_ctx, ownership, recv/accept/pump_poll, tls_upgrade, the send
// path: send/send_more/send_timeout_*/flush_bg) called with
// terms built from the input, through the real function table of c_src/,
// linked against the fake erl_nif of erl_nif_shim.cpp (no BEAM).
//
// The input is a small grammar (fuzz_terms.hpp): a target byte, then terms
// and steps. Every iteration ends with nothing left: its env is freed, every
// socket closed and its stop callback run; a resource, select, monitor or fd
// left over aborts at once (on top of ASan's leak check at exit).
#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "../c_src/common.hpp"
#include "erl_nif_shim.hpp"
#include "fuzz_terms.hpp"

extern "C" ErlNifEntry* nif_init(void);

namespace {

using namespace terms;
using Nif = ERL_NIF_TERM (*)(ErlNifEnv*, int, const ERL_NIF_TERM[]);

std::unordered_map<std::string, const ErlNifFunc*> nifs;
std::vector<std::vector<unsigned char>> bin_dict;
int scratch_dir = -1;
// What lives as long as the library (the pump's poll set and its select).
size_t base_resources = 0;
size_t base_selects = 0;
bool trace = false;  // FUZZ_TERMS_TRACE: print each call
SSL_CTX* client_ctx = nullptr;  // the peer's, for kPeerTls

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_terms: %s\n", what);
  std::abort();
}

struct In {
  const uint8_t* p;
  size_t n;
  uint8_t u8() {
    if (n == 0) return 0;  // past the end: zeros, which end every production
    n--;
    return *p++;
  }
  void bytes(void* out, size_t k) {
    for (size_t i = 0; i < k; i++) static_cast<uint8_t*>(out)[i] = u8();
  }
};

struct Iter {
  In in;
  ErlNifEnv* env;
  std::vector<ERL_NIF_TERM> pool;  // resource terms made so far
  int budget = 400;                // term nodes left for this input
  int peer = -1;                   // the other end of an AF_UNIX connection
  SSL* client = nullptr;           // kPeerTls: a TLS client on peer
  std::vector<int> fds;            // sockets to find closed at the end
};

ERL_NIF_TERM call(Iter& it, const char* name, std::vector<ERL_NIF_TERM> args, bool* ok = nullptr) {
  auto f = nifs.find(name);
  if (f == nifs.end() || f->second->arity != args.size()) die("no such NIF");
  ERL_NIF_TERM r = f->second->fptr(it.env, static_cast<int>(args.size()), args.data());
  r = shim::run_scheduled_nifs(it.env, r);
  bool value = shim::check_result(it.env, r);
  if (trace) {  // FUZZ_TERMS_TRACE=1: each call and its result, for reports
    std::string line = std::string(name) + "(";
    for (size_t k = 0; k < args.size(); k++) line += (k ? ", " : "") + shim::format(args[k]);
    std::fprintf(stderr, "%s) -> %s\n", line.c_str(), shim::format(r).c_str());
  }
  if (ok != nullptr) *ok = value;
  return value ? r : enif_make_atom(it.env, "$badarg");
}

// {ok, X} -> X, else 0.
ERL_NIF_TERM ok_value(Iter& it, ERL_NIF_TERM r) {
  int arity;
  const ERL_NIF_TERM* t;
  if (enif_get_tuple(it.env, r, &arity, &t) && arity == 2 &&
      enif_is_identical(t[0], islet::atom.ok))
    return t[1];
  return 0;
}

__int128 magic_int(uint8_t b) {
  const __int128 one = 1;
  static const __int128 table[] = {
      0, 1, -1, 2, 5, 255, 256, -255, 1460, 4096, 32767, 32768, -32767, -32768, -32769,
      65535, 65536, 769, 770, 771, 772, 0x0303, 0x0304, INT_MAX, one + INT_MAX, INT_MIN,
      -one + INT_MIN, UINT_MAX, one + UINT_MAX, LONG_MAX, LONG_MIN, ULONG_MAX,
      (one << 64), -(one << 64), (one << 100), (64u << 20), (64u << 20) + 1, 1u << 20,
  };
  return table[b % (sizeof table / sizeof table[0])];
}

ERL_NIF_TERM build(Iter& it, int depth) {
  ErlNifEnv* env = it.env;
  uint8_t op = it.in.u8() % kOpCount;
  bool compound = op == kList || op == kImproper || op == kTuple || op == kKv;
  if (--it.budget < 0 || (compound && depth >= 6)) op = kDictAtom;
  switch (op) {
    case kDictAtom:
      return enif_make_atom(env, kAtoms[it.in.u8() % kAtomCount]);
    case kRandAtom: {
      char name[12];
      size_t len = it.in.u8() % sizeof name;
      it.in.bytes(name, len);
      return enif_make_atom_len(env, name, len);
    }
    case kSmallInt:
      return enif_make_int(env, static_cast<int8_t>(it.in.u8()));
    case kInt32: {
      uint32_t v = 0;
      for (int k = 0; k < 4; k++) v |= static_cast<uint32_t>(it.in.u8()) << (8 * k);
      return enif_make_int(env, static_cast<int32_t>(v));
    }
    case kMagicInt:
      return shim::make_int128(env, magic_int(it.in.u8()));
    case kRandBin: {
      size_t len = it.in.u8() % 64;
      ERL_NIF_TERM t;
      it.in.bytes(enif_make_new_binary(env, len, &t), len);
      return t;
    }
    case kDictBin: {
      const auto& b = bin_dict[it.in.u8() % bin_dict.size()];
      ERL_NIF_TERM t;
      if (!b.empty()) std::memcpy(enif_make_new_binary(env, b.size(), &t), b.data(), b.size());
      else enif_make_new_binary(env, 0, &t);
      return t;
    }
    case kList:
    case kImproper: {
      size_t n = op == kList ? it.in.u8() % 6 : 1 + it.in.u8() % 3;
      std::vector<ERL_NIF_TERM> v;
      for (size_t k = 0; k < n; k++) v.push_back(build(it, depth + 1));
      ERL_NIF_TERM l = op == kList ? enif_make_list(env, 0) : build(it, depth + 1);
      for (size_t k = n; k-- > 0;) l = enif_make_list_cell(env, v[k], l);
      return l;
    }
    case kTuple: {
      size_t n = it.in.u8() % 9;  // up to 8: IPv6 addresses
      std::vector<ERL_NIF_TERM> v;
      for (size_t k = 0; k < n; k++) v.push_back(build(it, depth + 1));
      return enif_make_tuple_from_array(env, v.data(), static_cast<unsigned>(n));
    }
    case kKv: {
      ERL_NIF_TERM k = enif_make_atom(env, kAtoms[it.in.u8() % kAtomCount]);
      return enif_make_tuple2(env, k, build(it, depth + 1));
    }
    case kPid: {
      uint8_t b = it.in.u8();
      return shim::make_pid((b & 0x7f) % 12, (b & 0x80) != 0);
    }
    case kRef:
      return shim::make_ref(env);
    case kFloat: {
      double d;
      it.in.bytes(&d, sizeof d);
      return enif_make_double(env, std::isfinite(d) ? d : 0.5);  // the VM has no NaN/inf
    }
    case kResource:
      if (it.pool.empty()) return enif_make_list(env, 0);
      return it.pool[it.in.u8() % it.pool.size()];
    default:
      return enif_make_list(env, 0);
  }
}

ERL_NIF_TERM term(Iter& it) { return build(it, 0); }

// Remembers the fd of a socket term so the end can check it was closed.
void track(Iter& it, ERL_NIF_TERM sock) {
  islet::Sock* s;
  if (islet::get_sock(it.env, sock, &s)) it.fds.push_back(s->fd);
  it.pool.push_back(sock);
}

// The data of a send: mostly what Islet.Socket.send passes (a flat list of
// binaries, as :erlang.iolist_to_iovec makes), sometimes any term. Large
// binaries fill the AF_UNIX pair's buffer, so the rest goes to the queue.
ERL_NIF_TERM send_data(Iter& it) {
  uint8_t mode = it.in.u8() % 8;
  if (mode == kSendTerm) return term(it);
  size_t n = it.in.u8();
  n = mode == kSendMany ? IOV_MAX + n % 40 : n % 17;  // past IOV_MAX: nif_send's `more`
  constexpr size_t kMaxTotal = 4u << 20;
  size_t total = 0;
  std::vector<ERL_NIF_TERM> v;
  for (size_t k = 0; k < n; k++) {
    uint8_t c = it.in.u8();
    size_t len = 0;
    switch (c % 4) {
      case kBinInput: len = c / 4; break;
      case kBinKb: len = (c / 4) * 64u; break;
      case kBinLarge: len = (c / 4 + 1) * 16384u; break;
      default: break;
    }
    if (total + len > kMaxTotal) len = 0;
    total += len;
    ERL_NIF_TERM t;
    unsigned char* p = enif_make_new_binary(it.env, len, &t);
    if (c % 4 == kBinInput) it.in.bytes(p, len);
    else std::memset(p, static_cast<int>(k), len);
    v.push_back(t);
  }
  return enif_make_list_from_array(it.env, v.data(), static_cast<unsigned>(v.size()));
}

// The peer reads (non-blocking) what the NIF wrote, up to `max` bytes, so
// that a queued send can drain.
void peer_read(Iter& it, size_t max) {
  static unsigned char buf[64 << 10];
  while (it.peer >= 0 && max > 0) {
    ssize_t r = recv(it.peer, buf, std::min(max, sizeof buf), MSG_DONTWAIT);
    if (r <= 0) break;
    max -= static_cast<size_t>(r);
  }
}

// A context for tls_upgrade: tls_ctx of the next term, else that term.
ERL_NIF_TERM some_ctx(Iter& it) {
  ERL_NIF_TERM opts = term(it);
  if (ERL_NIF_TERM c = ok_value(it, call(it, "tls_ctx", {opts}))) {
    it.pool.push_back(c);
    return c;
  }
  return opts;
}

void one_op(Iter& it, uint8_t op, ERL_NIF_TERM s) {
  switch (op) {
    case kSetopts: call(it, "setopts", {s, term(it)}); break;
    case kGetopts: call(it, "getopts", {s, term(it)}); break;
    case kSetActive: call(it, "set_active", {s, term(it)}); break;
    case kControllingProcess: call(it, "controlling_process", {s, term(it)}); break;
    case kSetOwner: {
      ERL_NIF_TERM pid = term(it);
      call(it, "set_owner", {s, pid, term(it)});
      break;
    }
    case kShutdown: call(it, "shutdown", {s, term(it)}); break;
    case kCancel: call(it, "cancel", {s, term(it)}); break;
    case kNames: {
      static const char* names[] = {"sockname", "peername", "getstat", "ktls", "tls_info"};
      call(it, names[it.in.u8() % 5], {s});
      break;
    }
    case kRecv: call(it, "recv", {s, term(it)}); break;
    case kAccept: {
      ERL_NIF_TERM c = ok_value(it, call(it, "accept", {s}));
      if (c != 0) track(it, c);
      break;
    }
    case kDeliver: call(it, "pump_poll", {enif_make_int(it.env, 0)}); break;
    case kTlsUpgrade: {
      ERL_NIF_TERM ctx = some_ctx(it);
      switch (it.in.u8() % 3) {
        case 0:  // as Islet.TLS.upgrade: pause, then the context
          call(it, "tls_upgrade_pause", {s});
          call(it, "tls_upgrade", {s, ctx});
          call(it, "tls_handshake", {s});
          break;
        case 1: call(it, "tls_listener", {s, ctx}); break;
        default:  // what an sni_fun's answer does, then the handshake resumes
          call(it, "tls_set_ctx", {s, ctx});
          call(it, "tls_handshake", {s});
          break;
      }
      break;
    }
    case kSend: call(it, "send", {s, send_data(it)}); break;
    case kSendMore: call(it, "send_more", {s}); break;
    case kSendTimeoutKeep: call(it, "send_timeout_keep", {s, enif_make_list(it.env, 0)}); break;
    case kSendTimeoutKeepData: call(it, "send_timeout_keep", {s, send_data(it)}); break;
    case kDrain: call(it, "drain", {s}); break;
    case kSendTimeoutClose: call(it, "send_timeout_close", {s}); break;
    case kFlushBg: call(it, "flush_bg", {s}); break;
    case kVerifyFailed: call(it, "tls_verify_failed", {s, term(it)}); break;
    case kLinger: call(it, "tls_linger", {s}); break;
    case kPeerRead: peer_read(it, (it.in.u8() + 1u) * 8192u); break;
    case kPeerTls:
      // A client on the peer, stepped in turn with the NIF's server side,
      // so that a finished handshake lets send go through tls_drain.
      if (it.peer < 0) break;
      if (it.client == nullptr) {
        it.client = SSL_new(client_ctx);
        SSL_set_fd(it.client, it.peer);
        SSL_set_connect_state(it.client);
      }
      for (int round = 0; round < 4; round++) {
        SSL_do_handshake(it.client);
        ERR_clear_error();
        ERL_NIF_TERM r = call(it, "tls_handshake", {s});
        // {verify, Chain, Data, Version}: Erlang's turn, as in Islet.TLS (a
        // kVerifyFailed refuses the chain, the next kPeerTls accepts it).
        int arity;
        const ERL_NIF_TERM* el;
        if (enif_get_tuple(it.env, r, &arity, &el) && arity == 4 &&
            enif_is_identical(el[0], enif_make_atom(it.env, "verify")))
          break;
      }
      break;
    case kSendfile: {
      constexpr size_t kPaths = sizeof kSendfilePaths / sizeof kSendfilePaths[0];
      size_t b = it.in.u8() % (kPaths + 1);
      ERL_NIF_TERM path;
      if (b < kPaths) {
        size_t len = std::strlen(kSendfilePaths[b]);
        std::memcpy(enif_make_new_binary(it.env, len, &path), kSendfilePaths[b], len);
      } else {
        path = term(it);
      }
      if (ERL_NIF_TERM f = ok_value(it, call(it, "sendfile_open", {path}))) {
        call(it, "sendfile_size", {f});
        ERL_NIF_TERM offset = term(it);
        call(it, "sendfile", {s, f, offset, term(it)});
      }
      break;
    }
    default: break;
  }
}

void sock_ops(Iter& it, ERL_NIF_TERM s) {
  for (int step = 0; step < 12; step++) {
    uint8_t op = it.in.u8() % kSockOpCount;
    switch (op) {
      case kAnyFirstArg: {
        uint8_t which = it.in.u8() % kNames;  // setopts .. cancel
        one_op(it, which, term(it));
        break;
      }
      case kKill: shim::kill_pid(it.in.u8() % shim::kFirstDead); break;
      case kClose: call(it, "close", {s}); break;
      case kPeerWrite: {
        unsigned char buf[256];
        size_t len = it.in.u8();
        it.in.bytes(buf, len);
        if (it.peer >= 0 && write(it.peer, buf, len) < 0) {
          // the NIF side is closed already: nothing to read then
        }
        break;
      }
      case kPeerClose:
        SSL_free(it.client);
        it.client = nullptr;
        if (it.peer >= 0) close(it.peer);
        it.peer = -1;
        break;
      case kEnd: return;
      default: one_op(it, op, s); break;
    }
  }
}

// The end of a socket: close/2, or its owner dying first (then close/2 finds
// it closed, or closes it if the owner had changed).
void finish(Iter& it, ERL_NIF_TERM s) {
  if (it.in.u8() & 1)
    for (unsigned id = 1; id < shim::kFirstDead; id++) shim::kill_pid(id);
  call(it, "close", {s});
}

void target_sock(Iter& it) {
  uint8_t b = it.in.u8();
  static const int fams[] = {AF_INET, AF_INET6, AF_UNIX};
  int fam = fams[b % 3];
  auto kind = (b >> 2) & 1 ? islet::Kind::Listener : islet::Kind::Conn;
  int fd;
  if (fam == AF_UNIX && kind == islet::Kind::Conn) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair");
    fd = sv[0];
    it.peer = sv[1];
  } else {
    fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (kind == islet::Kind::Listener) {
      // A listener as nif_listen leaves it: bound to loopback, listening.
      sockaddr_storage ss{};
      socklen_t len = 0;
      if (fam == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
      } else if (fam == AF_INET6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        len = sizeof *a;
      } else {
        ss.ss_family = AF_UNIX;  // autobind: an abstract name
        len = sizeof(sa_family_t);
      }
      if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 4) != 0) {
        // (IPv6 may be off: the listener stays unbound, still a socket)
      }
    }
  }
  islet::Sock* s = islet::sock_create(it.env, fd, kind, fam, false);
  if (s == nullptr) die("sock_create");
  if ((b >> 3) & 1) s->tag = islet::Tag::Ssl;  // as after tls_listener / accept of TLS
  ERL_NIF_TERM t = enif_make_resource(it.env, s);
  enif_release_resource(s);  // the term and the socket's self reference remain
  track(it, t);
  sock_ops(it, t);
  finish(it, t);
}

void target_listen(Iter& it) {
  ERL_NIF_TERM fam = term(it), addr = term(it), port = term(it), opts = term(it);
  bool exiting = it.in.u8() == 0xee;
  // A filesystem AF_UNIX path: no '/' (it stays in the scratch directory),
  // and it is removed after.
  ErlNifBinary path{};
  std::string file;
  if (enif_is_identical(fam, islet::atom.local) && enif_inspect_binary(it.env, addr, &path) &&
      path.size > 0 && path.data[0] != 0) {
    for (size_t k = 0; k < path.size; k++)
      if (path.data[k] == '/') path.data[k] = '_';
    file.assign(reinterpret_cast<char*>(path.data), path.size);
  }
  // A relative AF_UNIX path is bound in the scratch directory (libFuzzer
  // itself uses the working directory: it is switched only for this call).
  int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cwd < 0 || fchdir(scratch_dir) != 0) die("scratch directory");
  shim::set_self_exiting(exiting);
  ERL_NIF_TERM r = call(it, "listen", {fam, addr, port, opts});
  shim::set_self_exiting(false);
  if (!file.empty()) unlink(file.c_str());
  if (fchdir(cwd) != 0) die("fchdir");
  close(cwd);
  if (ERL_NIF_TERM l = ok_value(it, r)) {
    track(it, l);
    sock_ops(it, l);
    finish(it, l);
  }
}

void target_tls_ctx(Iter& it) {
  int n = 1 + it.in.u8() % 2;
  for (int k = 0; k < n; k++) {
    ERL_NIF_TERM c = ok_value(it, call(it, "tls_ctx", {term(it)}));
    if (c != 0) it.pool.push_back(c);
  }
}

std::vector<unsigned char> der_of(int (*i2d)(void*, unsigned char**), void* obj) {
  int n = i2d(obj, nullptr);
  std::vector<unsigned char> out(n > 0 ? n : 0);
  unsigned char* p = out.data();
  if (n > 0) i2d(obj, &p);
  return out;
}

// A self-signed P-256 certificate, its key and another key, in DER: what
// Islet.TLS.Options hands to tls_ctx in {cert_key, {[Cert], Key}}.
void make_cert_key() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  EVP_PKEY* other = EVP_EC_gen("P-256");
  X509* x = X509_new();
  if (key == nullptr || other == nullptr || x == nullptr) die("openssl");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  if (X509_sign(x, key, EVP_sha256()) == 0) die("X509_sign");
  bin_dict.push_back(der_of(reinterpret_cast<int (*)(void*, unsigned char**)>(i2d_X509), x));
  bin_dict.push_back(der_of(reinterpret_cast<int (*)(void*, unsigned char**)>(i2d_PrivateKey), key));
  bin_dict.push_back(der_of(reinterpret_cast<int (*)(void*, unsigned char**)>(i2d_PrivateKey), other));
  X509_free(x);
  EVP_PKEY_free(key);
  EVP_PKEY_free(other);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  trace = std::getenv("FUZZ_TERMS_TRACE") != nullptr;
  signal(SIGPIPE, SIG_IGN);  // as the VM runs: EPIPE comes back as an error
  static char dir[] = "/tmp/islet-fuzz-terms-XXXXXX";
  if (mkdtemp(dir) == nullptr) die("mkdtemp");
  scratch_dir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  atexit([] { rmdir(dir); });  // empty unless a run died between bind and unlink
  make_cert_key();
  client_ctx = SSL_CTX_new(TLS_client_method());  // no verification: any server will do
  if (client_ctx == nullptr) die("SSL_CTX_new");
  // It presents the certificate, so that a context asking for one (and
  // leaving its check to Erlang: erl_verify) gets a chain to hand back.
  const auto& cert = bin_dict[0];
  const auto& key = bin_dict[1];
  if (SSL_CTX_use_certificate_ASN1(client_ctx, static_cast<int>(cert.size()), cert.data()) != 1 ||
      SSL_CTX_use_PrivateKey_ASN1(EVP_PKEY_EC, client_ctx, key.data(), static_cast<long>(key.size())) != 1)
    die("client certificate");
  for (std::string_view s : kBinStrings) bin_dict.emplace_back(s.begin(), s.end());
  // Load as the VM does: the entry's load with max_fds as load info.
  ErlNifEntry* e = nif_init();
  for (int k = 0; k < e->num_of_funcs; k++) nifs[e->funcs[k].name] = &e->funcs[k];
  ErlNifEnv* env = shim::process_env();
  void* priv = nullptr;
  if (e->load(env, &priv, enif_make_int(env, 1 << 16)) != 0) die("load failed");
  // One pump, as Islet.Pump registers, so that active sockets go to its
  // poll set rather than to the poller thread, whose deliveries would race
  // with the harness. The harness's process is the pump, so that it may
  // call pump_poll. The set's resource and, after a first poll, its select
  // live as long as the library: they are the baseline of the leak checks.
  ERL_NIF_TERM pump = shim::make_pid(shim::kSelf, false);
  ERL_NIF_TERM args[] = {enif_make_int(env, 0), pump};
  if (!enif_is_identical(nifs["register_pump"]->fptr(env, 2, args), islet::atom.ok))
    die("register_pump");
  nifs["pump_poll"]->fptr(env, 1, args);
  enif_free_env(env);
  base_resources = shim::live_resources();
  base_selects = shim::live_selects();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Iter it{In{data, size}, shim::process_env()};
  switch (it.in.u8() % kTargetCount) {
    case kSockOps: target_sock(it); break;
    case kListen: target_listen(it); break;
    case kTlsCtx: target_tls_ctx(it); break;
  }
  // Nothing may outlive the iteration: the process's terms go, scheduled
  // stop callbacks run (closing fds), and then every count is back to zero.
  enif_free_env(it.env);
  shim::run_scheduled_stops();
  // The pump, woken by the closes, drops its set's references to them.
  ErlNifEnv* env = shim::process_env();
  ERL_NIF_TERM zero = enif_make_int(env, 0);
  nifs["pump_poll"]->fptr(env, 1, &zero);
  enif_free_env(env);
  SSL_free(it.client);
  if (it.peer >= 0) close(it.peer);
  if (shim::live_resources() != base_resources) die("a resource outlived the iteration (leak)");
  if (shim::live_selects() != base_selects) die("an fd is still selected after close");
  if (shim::live_monitors() != 0) die("a monitor outlived its resource");
  if (shim::live_ioqs() != 0) die("an I/O queue outlived its socket");
  for (int fd : it.fds)
    if (fcntl(fd, F_GETFD) != -1) die("a socket's fd is still open after close");
  return 0;
}
