// Islet: TLS records after the handshake, sealed and opened here instead of
// by OpenSSL's record layer.
//
// Once a handshake is over, a connection needs only its traffic keys, two
// sequence numbers and what it negotiated. OpenSSL 3.0 keeps the whole SSL
// object for that (about 13.5 KB per idle connection, which its API cannot
// free) and spends a few microseconds per record beyond the cipher itself:
// parameter lookups by name, BIO calls, record buffers allocated and freed.
// For the AEAD suites (AES-GCM and ChaCha20-Poly1305, TLS 1.2 and 1.3) the
// record layer is small and fully specified (RFC 8446 section 5, RFC 5246
// section 6.2.3.3, RFC 5288, RFC 7905), so Islet takes it over the way the
// kernel does with kTLS: OpenSSL runs the handshake and derives the secrets
// (TLS 1.3: the traffic secrets its keylog callback reports; TLS 1.2: the
// session's master secret, expanded with OpenSSL's PRF), OpenSSL's EVP
// ciphers seal and open, and the SSL object is freed. Other suites (CBC,
// CCM) and connections on kernel TLS stay with OpenSSL.
//
// Besides application data the record layer does what OpenSSL's does for a
// server: close_notify both ways; fatal alerts (received: the connection
// ends and its session leaves the cache; sent, for records that do not
// authenticate or parse: bad_record_mac, record_overflow,
// unexpected_message, decode_error, protocol_version, and for alert
// records as :ssl answers them, handshake_failure and illegal_parameter);
// TLS 1.3 KeyUpdate (the client's, answered when it asks, and one of our
// own before AES-GCM's record limit); TLS 1.2 renegotiation attempts,
// refused with a no_renegotiation warning as SSL_OP_NO_RENEGOTIATION does;
// the negotiated max_fragment_length; and no more than 32 records in a row
// that carry no data (empty records, warnings, key updates), OpenSSL's
// guard against record floods.
//
// Buffers hold bytes only while there are some, and the two cipher contexts
// (about 1.1 KB each) only while the connection is in use: a sweep every few
// seconds (records_sweep) frees those of connections that sealed and opened
// nothing since the previous one, and the next record makes them again from
// the keys kept (about 0.3 us each). An idle connection keeps this struct.
#include "records.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "common.hpp"

namespace islet {

namespace {

constexpr size_t kHeader = 5;
constexpr size_t kTagLen = 16;
constexpr size_t kExplicitNonce = 8;  // TLS 1.2 AES-GCM's per-record nonce
constexpr size_t kGatherMax = 1024;  // records up to this size are sealed in one call
constexpr size_t kMaxPlain = 16384;
// The largest record bodies a peer may send (RFC 8446 5.2, RFC 5246 6.2.3).
constexpr size_t kMaxBody13 = kMaxPlain + 256;
constexpr size_t kMaxBody12 = kMaxPlain + 2048;
constexpr int kMaxIdleRecords = 32;
// Records opened per read call at most (bounded work); more than
// kMaxIdleRecords, so that a call that stops there has data to return.
constexpr int kRecordsPerCall = 64;
static_assert(kRecordsPerCall > kMaxIdleRecords + 1, "a full call must yield data");
// TLS 1.3 with AES-GCM: a new write key well before the 2^24.5 records of
// RFC 8446 5.5.
constexpr uint64_t kGcmRecordLimit = 1ull << 24;
// A socket read takes this much; records sealed per write, at most.
constexpr size_t kReadSize = 64u << 10;
constexpr int kSealBatch = 4;
constexpr size_t kMaxRecord = kHeader + kExplicitNonce + kMaxPlain + 1 + kTagLen;

enum : uint8_t { kChangeCipherSpec = 20, kAlert = 21, kHandshake = 22, kAppData = 23 };
enum : uint8_t { kClientHello = 1, kKeyUpdate = 24 };
enum : uint8_t { kWarning = 1, kFatal = 2 };
enum : uint8_t {
  kCloseNotify = 0,
  kUnexpectedMessage = 10,
  kBadRecordMac = 20,
  kRecordOverflow = 22,
  kHandshakeFailure = 40,
  kIllegalParameter = 47,
  kDecodeError = 50,
  kProtocolVersion = 70,
  kInternalError = 80,
  kNoRenegotiation = 100,
};

EVP_CIPHER* aes128gcm = nullptr;
EVP_CIPHER* aes256gcm = nullptr;
EVP_CIPHER* chacha = nullptr;
EVP_KDF* tls1_prf = nullptr;
// Fetched once: HMAC() and by-name lookups fetch their digest again at each
// call in OpenSSL 3.0 (about 2 us each, four times per TLS 1.3 take-over).
EVP_MD* sha256 = nullptr;
EVP_MD* sha384 = nullptr;

// Per scheduler thread: a socket read of kReadSize lands after what was
// left of an incomplete record, which is at most one record of the largest
// size a peer may send (its header is checked before more is read). On the
// heap, made at the thread's first read, so that AddressSanitizer sees its
// bounds (it puts no redzones around thread-local arrays). Null if the
// allocation failed.
constexpr size_t kInBufSize = kHeader + kMaxBody12 + kReadSize;
unsigned char* in_buf() {
  thread_local std::unique_ptr<unsigned char[]> buf;
  if (!buf) buf.reset(new (std::nothrow) unsigned char[kInBufSize]);
  return buf.get();
}
// Records are sealed here before they are written.
thread_local unsigned char seal_buf[(kSealBatch + 1) * kMaxRecord];

// Bytes [off, len) of a malloc'ed block, freed as soon as it is empty.
struct Buf {
  unsigned char* p = nullptr;
  size_t off = 0, len = 0, cap = 0;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { clear(); }
  size_t size() const { return len - off; }
  unsigned char* data() const { return p + off; }
  void clear() {
    std::free(p);
    p = nullptr;
    off = len = cap = 0;
  }
  // Empty, keeping the block for what is appended next.
  void reset() { off = len = 0; }
  bool append(const void* d, size_t n) {
    if (n == 0) return true;
    if (off > 0) {
      std::memmove(p, p + off, len - off);
      len -= off;
      off = 0;
    }
    if (len + n > cap) {
      size_t c = std::max(cap * 2, len + n);
      auto* q = static_cast<unsigned char*>(std::realloc(p, c));
      if (q == nullptr) return false;
      p = q;
      cap = c;
    }
    std::memcpy(p + len, d, n);
    len += n;
    return true;
  }
  void consume(size_t n) {
    off += n;
    if (off >= len) clear();
  }
};

// One direction's protection. The cipher context is made from `key` when
// a record needs it, and freed by the sweep when the connection is idle.
struct Dir {
  EVP_CIPHER_CTX* ctx = nullptr;
  unsigned char key[32] = {};
  unsigned char iv[12] = {};  // TLS 1.2 AES-GCM: the 4-byte salt, then unused
  uint64_t seq = 0;
  unsigned char secret[EVP_MAX_MD_SIZE] = {};  // TLS 1.3: the traffic secret
  void unload() {
    EVP_CIPHER_CTX_free(ctx);
    ctx = nullptr;
  }
  ~Dir() {
    unload();
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(iv, sizeof iv);
    OPENSSL_cleanse(secret, sizeof secret);
  }
};

void put_be64(unsigned char* p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = static_cast<unsigned char>(v);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

// What the handshake leaves for the record layer.
struct Takeover {
  unsigned char client[EVP_MAX_MD_SIZE];
  unsigned char server[EVP_MAX_MD_SIZE];
  size_t client_len = 0, server_len = 0;
  // TLS 1.3: records OpenSSL sealed under the server's application key
  // before the handshake returned (its NewSessionTickets).
  uint64_t server_records = 0;
  uint64_t key_update_at = 0;
  SSL_CTX* session_ctx = nullptr;  // the listener's: its cache holds the session
  ~Takeover() {
    OPENSSL_cleanse(client, sizeof client);
    OPENSSL_cleanse(server, sizeof server);
    if (session_ctx != nullptr) SSL_CTX_free(session_ctx);
  }
};

struct Records : ErtsAllocated {
  Dir rd, wr;
  const EVP_CIPHER* cipher = nullptr;
  const EVP_MD* md = nullptr;  // TLS 1.3: the suite's hash, for key updates
  bool tls13 = false;
  // TLS 1.3 and ChaCha20: the nonce is the IV xor the sequence number;
  // TLS 1.2 AES-GCM: the salt and an explicit nonce sent in the record.
  bool xor_nonce = false;
  bool ended = false;       // nothing more to read: close_notify, a fatal alert or error
  bool failed = false;      // fatal: nothing more is sent
  bool close_sent = false;  // our close_notify is sealed
  bool update_due = false;  // TLS 1.3: a KeyUpdate of ours goes before the next record
  // TLS 1.3: key_update_at (0: none), and the bytes sealed under this key.
  uint64_t key_update_at = 0, sealed_bytes = 0;
  uint64_t key_updates = 0;  // KeyUpdates sent, for tls_info
  bool last_read_short = true;  // the last socket read emptied the socket
  size_t key_len = 0, hash_len = 0;
  size_t max_plain = kMaxPlain;  // max_fragment_length, when negotiated
  int idle_records = 0;          // records in a row without data
  int failure = 0;               // kAlertSent / kAlertReceived | the alert that ended it
#ifdef ISLET_FUZZING
  uint32_t read_updates = 0;     // the peer's key updates, for fuzz_records' checks
#endif
  unsigned char hs[5];           // TLS 1.3: a KeyUpdate message arriving in pieces
  size_t hs_len = 0;
  Buf in;     // received bytes not opened yet (an incomplete record, or past the budget)
  Buf plain;  // opened bytes the caller had no room for
  Buf out;    // sealed bytes the socket did not take yet
  uint64_t wire_in = 0, wire_out = 0;
  TlsInfo info;
  SSL_SESSION* session = nullptr;  // taken out of the cache after a fatal error
  SSL_CTX* session_ctx = nullptr;
  // The sweep's list of open connections (records_sweep), and whether a
  // record was sealed or opened since its last visit.
  Sock* owner = nullptr;
  Records* prev = nullptr;
  Records* next = nullptr;
  int list = -1;  // which of the sweep's two lists holds it, or -1
  bool used = true;
  ~Records() {
    if (session != nullptr) SSL_SESSION_free(session);
    if (session_ctx != nullptr) SSL_CTX_free(session_ctx);
  }
};

namespace {

// The handshake's read BIO, for connections whose records Islet will take
// over (without kernel TLS, which needs OpenSSL's socket BIO). After the
// ClientHello, OpenSSL reads record by record (read_ahead off) so that it
// holds nothing past the handshake: 5 bytes of header, then the body, per
// record, so 4 syscalls for a TLS 1.3 client's second flight and 6 for TLS
// 1.2's. This BIO reads the socket once into a buffer and serves those small
// reads from it; what is left when the handshake ends goes to the record
// layer (take_over), or, if OpenSSL keeps the records, to OpenSSL's next
// reads (tls_pending and tls_may_have_more count it). Reads of kHsDirect or
// more with nothing buffered go straight to the socket, as a socket BIO's.
constexpr size_t kHsDirect = 4096;
struct HsBio {
  Sock* s = nullptr;
  int fd = -1;
  bool eof = false;
  Buf in;
};
BIO_METHOD* hs_method = nullptr;
int hs_type = 0;

// As a socket BIO's read (OpenSSL tells its results apart the same way):
// > 0 bytes, 0 at EOF, -1 on error (retry set for EAGAIN, errno kept).
int hs_read(BIO* b, char* out, int outl) {
  auto* h = static_cast<HsBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (outl <= 0) return 0;
  size_t want_out = static_cast<size_t>(outl);
  if (h->in.size() == 0) {
    bool direct = want_out >= kHsDirect;
    unsigned char* buf = direct ? nullptr : in_buf();
    if (!direct && buf == nullptr) {
      errno = ENOMEM;
      return -1;
    }
    unsigned char* dst = direct ? reinterpret_cast<unsigned char*>(out) : buf;
    size_t want = direct ? want_out : kReadSize;
    ssize_t n;
    do {
      n = recv(h->fd, dst, want, 0);
    } while (n < 0 && errno == EINTR);
    // As sock_bio_cb (tls.cpp) for a socket BIO: whether the kernel had no more.
    h->s->tls_short_read = n <= 0 || static_cast<size_t>(n) < want;
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(b);
      return -1;
    }
    if (n == 0) {
      h->eof = true;  // BIO_eof, as a socket BIO says it
      return 0;
    }
    h->s->reads.add(static_cast<uint64_t>(n));
    if (direct) return static_cast<int>(n);
    if (!h->in.append(buf, static_cast<size_t>(n))) {
      errno = ENOMEM;
      return -1;
    }
  }
  size_t k = std::min(want_out, h->in.size());
  std::memcpy(out, h->in.data(), k);
  h->in.consume(k);
  if (h->in.size() > 0) h->s->tls_short_read = false;  // more is here already
  return static_cast<int>(k);
}

long hs_ctrl(BIO* b, int cmd, long, void*) {
  auto* h = static_cast<HsBio*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_CTRL_PENDING:
      return h != nullptr ? static_cast<long>(h->in.size()) : 0;
    case BIO_CTRL_EOF:
      return h != nullptr && h->eof ? 1 : 0;
    case BIO_CTRL_FLUSH:
      return 1;
    default:
      return 0;
  }
}

int hs_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

int hs_destroy(BIO* b) {
  delete static_cast<HsBio*>(BIO_get_data(b));
  BIO_set_data(b, nullptr);
  return 1;
}

HsBio* hs_of(BIO* b) {
  return b != nullptr && hs_method != nullptr && BIO_method_type(b) == hs_type
             ? static_cast<HsBio*>(BIO_get_data(b))
             : nullptr;
}

}  // namespace

BIO* records_hs_bio(Sock* s) {
  if (hs_method == nullptr) return nullptr;
  auto* h = new (std::nothrow) HsBio();
  if (h == nullptr) return nullptr;
  h->s = s;
  h->fd = s->fd;
  BIO* b = BIO_new(hs_method);
  if (b == nullptr) {
    delete h;
    return nullptr;
  }
  BIO_set_data(b, h);
  return b;
}

void records_init() {
  if (aes128gcm != nullptr) return;
  // A cipher this OpenSSL lacks only leaves its suites with OpenSSL.
  aes128gcm = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
  aes256gcm = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  chacha = EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr);
  tls1_prf = EVP_KDF_fetch(nullptr, "TLS1-PRF", nullptr);
  sha256 = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
  sha384 = EVP_MD_fetch(nullptr, "SHA2-384", nullptr);
  // Without it (no BIO index left), handshakes read through a socket BIO.
  int index = BIO_get_new_index();
  if (index > 0) {
    hs_type = index | BIO_TYPE_SOURCE_SINK;
    hs_method = BIO_meth_new(hs_type, "islet handshake reads");
    if (hs_method != nullptr &&
        (BIO_meth_set_read(hs_method, hs_read) != 1 ||
         BIO_meth_set_ctrl(hs_method, hs_ctrl) != 1 ||
         BIO_meth_set_create(hs_method, hs_create) != 1 ||
         BIO_meth_set_destroy(hs_method, hs_destroy) != 1)) {
      BIO_meth_free(hs_method);
      hs_method = nullptr;
    }
  }
  ERR_clear_error();
}

bool records_start(Sock* s, SSL_CTX* session_ctx, uint64_t key_update_at) {
  s->takeover = new (std::nothrow) Takeover();
  if (s->takeover == nullptr) return false;
  s->takeover->key_update_at = key_update_at;
  SSL_CTX_up_ref(session_ctx);
  s->takeover->session_ctx = session_ctx;
  return true;
}

// "CLIENT_TRAFFIC_SECRET_0 <client random> <secret>", in hex.
void records_keylog(Sock* s, const char* line) {
  Takeover* t = s->takeover;
  if (t == nullptr) return;
  static const char kClient[] = "CLIENT_TRAFFIC_SECRET_0 ";
  static const char kServer[] = "SERVER_TRAFFIC_SECRET_0 ";
  bool client = std::strncmp(line, kClient, sizeof kClient - 1) == 0;
  if (!client && std::strncmp(line, kServer, sizeof kServer - 1) != 0) return;
  const char* hex = std::strchr(line + sizeof kClient - 1, ' ');
  if (hex == nullptr) return;
  hex++;
  size_t n = std::strlen(hex);
  unsigned char* out = client ? t->client : t->server;
  size_t* len = client ? &t->client_len : &t->server_len;
  *len = 0;
  if (n == 0 || n % 2 != 0 || n / 2 > EVP_MAX_MD_SIZE) return;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    out[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  *len = n / 2;
}

// OpenSSL's message callback: counts the TLS 1.3 NewSessionTicket records
// it seals under the application key, which move our first sequence number.
void records_message(Sock* s, int write_p, int content_type, const void* buf, size_t len) {
  Takeover* t = s->takeover;
  if (t == nullptr || !write_p || content_type != SSL3_RT_HANDSHAKE || len == 0 ||
      s->ssl == nullptr || SSL_version(s->ssl) != TLS1_3_VERSION ||
      static_cast<const unsigned char*>(buf)[0] != SSL3_MT_NEWSESSION_TICKET)
    return;
  size_t frag = kMaxPlain;
  SSL_SESSION* sess = SSL_get_session(s->ssl);
  uint8_t mfl = sess != nullptr ? SSL_SESSION_get_max_fragment_length(sess) : 0;
  if (mfl >= TLSEXT_max_fragment_length_512 && mfl <= TLSEXT_max_fragment_length_4096)
    frag = 256u << mfl;
  t->server_records += (len + frag - 1) / frag;
}

namespace {

void takeover_free(Sock* s) {
  delete s->takeover;
  s->takeover = nullptr;
}

// A suite's hash, fetched: its IANA name ends with it. (Asking OpenSSL
// with SSL_CIPHER_get_handshake_digest costs a locked by-name lookup.)
const EVP_MD* suite_hash(const SSL_CIPHER* c) {
  const char* name = SSL_CIPHER_standard_name(c);
  size_t n = name != nullptr ? std::strlen(name) : 0;
  if (n < 7) return nullptr;
  if (std::strcmp(name + n - 7, "_SHA256") == 0) return sha256;
  if (std::strcmp(name + n - 7, "_SHA384") == 0) return sha384;
  return nullptr;
}

// HMAC (RFC 2104) with a fetched digest, for keys up to its block size (a
// traffic secret is one hash long): H(K ^ opad || H(K ^ ipad || d)).
bool hmac(const EVP_MD* md, const unsigned char* key, size_t key_len, const unsigned char* d,
          size_t n, unsigned char* out) {
  unsigned char pad[128];
  size_t block = static_cast<size_t>(EVP_MD_get_block_size(md));
  if (block > sizeof pad || key_len > block) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr) return false;
  auto padded = [&](unsigned char x) {
    std::memset(pad, x, block);
    for (size_t i = 0; i < key_len; i++) pad[i] ^= key[i];
  };
  unsigned char inner[EVP_MAX_MD_SIZE];
  unsigned int inner_len = 0, out_len = 0;
  padded(0x36);
  bool ok = EVP_DigestInit_ex2(ctx, md, nullptr) == 1 && EVP_DigestUpdate(ctx, pad, block) == 1 &&
            EVP_DigestUpdate(ctx, d, n) == 1 && EVP_DigestFinal_ex(ctx, inner, &inner_len) == 1;
  padded(0x5c);
  ok = ok && EVP_DigestInit_ex2(ctx, md, nullptr) == 1 && EVP_DigestUpdate(ctx, pad, block) == 1 &&
       EVP_DigestUpdate(ctx, inner, inner_len) == 1 && EVP_DigestFinal_ex(ctx, out, &out_len) == 1;
  EVP_MD_CTX_free(ctx);
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(inner, sizeof inner);
  return ok;
}

// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 7.1) for len up to
// the hash's size, which is one HMAC block.
bool expand_label(const EVP_MD* md, const unsigned char* secret, size_t secret_len,
                  const char* label, unsigned char* out, size_t len) {
  unsigned char info[32];
  size_t l = std::strlen(label), full = 6 + l;
  info[0] = static_cast<unsigned char>(len >> 8);
  info[1] = static_cast<unsigned char>(len);
  info[2] = static_cast<unsigned char>(full);
  std::memcpy(info + 3, "tls13 ", 6);
  std::memcpy(info + 9, label, l);
  info[3 + full] = 0;  // no context
  info[4 + full] = 1;  // HKDF-Expand's first block
  unsigned char t[EVP_MAX_MD_SIZE];
  bool ok = hmac(md, secret, secret_len, info, 5 + full, t);
  if (ok) std::memcpy(out, t, len);
  OPENSSL_cleanse(t, sizeof t);
  return ok;
}

// Keeps a direction's key, and keys its cipher context if it has one. The
// context itself is made by the first record that needs it (loaded): a
// connection idle since its handshake never holds one, which keeps the
// heap's high-water mark low while thousands of connections open (each
// context is about 1.1 KB, and the sweep would free it only seconds later).
bool set_key(Dir& d, const EVP_CIPHER* cipher, const unsigned char* key, bool enc) {
  if (key != d.key) std::memcpy(d.key, key, static_cast<size_t>(EVP_CIPHER_get_key_length(cipher)));
  return d.ctx == nullptr || EVP_CipherInit_ex2(d.ctx, cipher, key, nullptr, enc ? 1 : 0, nullptr) == 1;
}

// The direction's cipher context, made from its key when it has none (not
// used yet, or freed by the sweep); notes that the connection is in use.
bool loaded(Records* r, Dir& d, bool enc) {
  r->used = true;
  if (d.ctx != nullptr) return true;
  if ((d.ctx = EVP_CIPHER_CTX_new()) == nullptr) return false;
  if (set_key(d, r->cipher, d.key, enc)) return true;
  // Not keyed: no context, so that the next record does not take this one
  // as ready.
  d.unload();
  return false;
}

// TLS 1.3: a direction's key and IV from its traffic secret; the sequence
// starts again at 0.
bool set_secret(Records* r, Dir& d, const unsigned char* secret, bool enc) {
  unsigned char key[32];
  if (secret != d.secret) std::memcpy(d.secret, secret, r->hash_len);
  bool ok = expand_label(r->md, d.secret, r->hash_len, "key", key, r->key_len) &&
            expand_label(r->md, d.secret, r->hash_len, "iv", d.iv, sizeof d.iv) &&
            set_key(d, r->cipher, key, enc);
  OPENSSL_cleanse(key, sizeof key);
  d.seq = 0;
  return ok;
}

// TLS 1.3 KeyUpdate: the next traffic secret of a direction.
bool update_secret(Records* r, Dir& d, bool enc) {
  unsigned char next[EVP_MAX_MD_SIZE];
  bool ok = expand_label(r->md, d.secret, r->hash_len, "traffic upd", next, r->hash_len) &&
            set_secret(r, d, next, enc);
  OPENSSL_cleanse(next, sizeof next);
  return ok;
}

// TLS 1.2: the key block (RFC 5246 6.3) from the session's master secret.
bool key_block(SSL* ssl, const EVP_MD* md, unsigned char* out, size_t len) {
  SSL_SESSION* sess = SSL_get_session(ssl);
  if (tls1_prf == nullptr || sess == nullptr) return false;
  unsigned char master[SSL_MAX_MASTER_KEY_LENGTH];
  size_t master_len = SSL_SESSION_get_master_key(sess, master, sizeof master);
  static const char kLabel[] = "key expansion";
  unsigned char seed[sizeof kLabel - 1 + 2 * SSL3_RANDOM_SIZE];
  std::memcpy(seed, kLabel, sizeof kLabel - 1);
  SSL_get_server_random(ssl, seed + sizeof kLabel - 1, SSL3_RANDOM_SIZE);
  SSL_get_client_random(ssl, seed + sizeof kLabel - 1 + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                       const_cast<char*>(EVP_MD_get0_name(md)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, master_len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, sizeof seed),
      OSSL_PARAM_construct_end()};
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(tls1_prf);
  bool ok = kctx != nullptr && master_len > 0 && EVP_KDF_derive(kctx, out, len, params) == 1;
  EVP_KDF_CTX_free(kctx);
  OPENSSL_cleanse(master, sizeof master);
  return ok;
}

// A record's nonce: the IV xor the sequence number (TLS 1.3, ChaCha20), or
// the 4-byte salt then the explicit nonce that starts the record's body
// (TLS 1.2 AES-GCM).
void make_nonce(const Records* r, const Dir& d, const unsigned char* body, unsigned char nonce[12]) {
  if (!r->xor_nonce) {
    std::memcpy(nonce, d.iv, 4);
    std::memcpy(nonce + 4, body, kExplicitNonce);
    return;
  }
  std::memcpy(nonce, d.iv, 12);
  unsigned char seq[8];
  put_be64(seq, d.seq);
  for (int i = 0; i < 8; i++) nonce[4 + i] ^= seq[i];
}

// A record's additional data: its header (TLS 1.3), or the sequence
// number, type, version and plaintext length (TLS 1.2). Returns its size.
size_t make_aad(const Records* r, const Dir& d, const unsigned char* header, size_t plain_len,
                unsigned char aad[13]) {
  if (r->tls13) {
    std::memcpy(aad, header, kHeader);
    return kHeader;
  }
  put_be64(aad, d.seq);
  std::memcpy(aad + 8, header, 3);
  aad[11] = static_cast<unsigned char>(plain_len >> 8);
  aad[12] = static_cast<unsigned char>(plain_len);
  return 13;
}

// The plaintext of one record, len bytes gathered from `iov` after its
// first `skip` bytes, sealed into out (room for len + 30). Returns the
// record's size, 0 on failure.
size_t seal(Records* r, uint8_t type, const SysIOVec* iov, int iovcnt, size_t skip, size_t len,
            unsigned char* out) {
  Dir& d = r->wr;
  if (d.seq == UINT64_MAX || !loaded(r, d, true)) return 0;
  r->sealed_bytes += len;
  size_t body = len + kTagLen + (r->tls13 ? 1 : 0) + (r->xor_nonce ? 0 : kExplicitNonce);
  out[0] = r->tls13 ? static_cast<uint8_t>(kAppData) : type;
  out[1] = 3;
  out[2] = 3;
  out[3] = static_cast<unsigned char>(body >> 8);
  out[4] = static_cast<unsigned char>(body);
  unsigned char* p = out + kHeader;
  if (!r->xor_nonce) {  // TLS 1.2 AES-GCM: our sequence number is the explicit nonce
    put_be64(p, d.seq);
    p += kExplicitNonce;
  }
  unsigned char nonce[12], aad[13];
  make_nonce(r, d, out + kHeader, nonce);
  size_t aad_len = make_aad(r, d, out, len, aad);
  int n = 0;
  if (EVP_CipherInit_ex2(d.ctx, nullptr, nullptr, nonce, 1, nullptr) != 1 ||
      EVP_EncryptUpdate(d.ctx, nullptr, &n, aad, static_cast<int>(aad_len)) != 1)
    return 0;
  // A small record (a typical response) is gathered in place and sealed
  // with one EVP call: each call costs OpenSSL 3.0 about as much as
  // encrypting a hundred bytes. A large one is sealed piece by piece, where
  // copying it first would cost more than the calls.
  bool gather = len <= kGatherMax;
  unsigned char* start = p;
  size_t left = len;
  for (int i = 0; i < iovcnt && left > 0; i++) {
    size_t from = std::min(skip, iov[i].iov_len);
    skip -= from;
    size_t take = std::min(iov[i].iov_len - from, left);
    if (take == 0) continue;
    const auto* piece = reinterpret_cast<const unsigned char*>(iov[i].iov_base) + from;
    if (gather) {
      std::memcpy(p, piece, take);
      n = static_cast<int>(take);
    } else if (EVP_EncryptUpdate(d.ctx, p, &n, piece, static_cast<int>(take)) != 1) {
      return 0;
    }
    p += n;
    left -= take;
  }
  if (r->tls13) {
    if (gather) {
      *p = type;
      n = 1;
    } else if (EVP_EncryptUpdate(d.ctx, p, &n, &type, 1) != 1) {
      return 0;
    }
    p += n;
  }
  if (gather && p > start) {
    // In place: AEAD modes allow the output to be the input.
    if (EVP_EncryptUpdate(d.ctx, start, &n, start, static_cast<int>(p - start)) != 1) return 0;
    p = start + n;
  }
  if (EVP_EncryptFinal_ex(d.ctx, p, &n) != 1) return 0;
  p += n;
  if (EVP_CIPHER_CTX_ctrl(d.ctx, EVP_CTRL_AEAD_GET_TAG, kTagLen, p) != 1) return 0;
  d.seq++;
  return static_cast<size_t>(p + kTagLen - out);
}

size_t seal_bytes(Records* r, uint8_t type, const unsigned char* data, size_t len,
                  unsigned char* out) {
  SysIOVec v;
  v.iov_base = reinterpret_cast<char*>(const_cast<unsigned char*>(data));
  v.iov_len = len;
  return seal(r, type, &v, 1, 0, len, out);
}

// Writes what `out` holds: 0 once empty, EAGAIN, or an errno.
int flush_out(Sock* s, Records* r) {
  while (r->out.size() > 0) {
    ssize_t m = send(s->fd, r->out.data(), r->out.size(), MSG_NOSIGNAL);
    if (m < 0) {
      if (errno == EINTR) continue;
      return errno == EWOULDBLOCK ? EAGAIN : errno;
    }
    r->wire_out += static_cast<uint64_t>(m);
    r->out.consume(static_cast<size_t>(m));
  }
  return 0;
}

// Writes bytes after what `out` holds; what the socket does not take is
// kept there. 0, EAGAIN, or an errno.
int write_after(Sock* s, Records* r, const unsigned char* p, size_t n) {
  if (n > 0) s->writes.add(n);  // one send of the port under :ssl
  int e = flush_out(s, r);
  size_t done = 0;
  while (e == 0 && done < n) {
    ssize_t m = send(s->fd, p + done, n - done, MSG_NOSIGNAL);
    if (m < 0) {
      if (errno == EINTR) continue;
      e = errno == EWOULDBLOCK ? EAGAIN : errno;
      break;
    }
    r->wire_out += static_cast<uint64_t>(m);
    done += static_cast<size_t>(m);
  }
  if (done < n && (e == 0 || e == EAGAIN) && !r->out.append(p + done, n - done)) return ENOMEM;
  return e;
}

// An alert of ours, sealed after anything already sealed; best effort.
void send_alert(Sock* s, Records* r, uint8_t level, uint8_t desc) {
  if (r->failed || r->close_sent) return;
  unsigned char payload[2] = {level, desc};
  unsigned char rec[kHeader + kExplicitNonce + 2 + 1 + kTagLen];
  size_t n = seal_bytes(r, kAlert, payload, sizeof payload, rec);
  if (n > 0) write_after(s, r, rec, n);
  if (n == 0 || level == kFatal) r->failed = true;
}

// The connection cannot go on: reads answer the alert (once what was
// opened before is read), nothing more is sent, and its session cannot be
// resumed.
void end_with(Records* r, int failure) {
  if (r->failure == 0) r->failure = failure;
  r->failed = true;
  r->ended = true;
  r->in.clear();
  if (r->session != nullptr && r->session_ctx != nullptr)
    SSL_CTX_remove_session(r->session_ctx, r->session);
}

// What the peer sent cannot be right: our fatal alert, then the end.
void fail(Sock* s, Records* r, uint8_t desc) {
  send_alert(s, r, kFatal, desc);
  end_with(r, kAlertSent | desc);
}

// TLS 1.3: our KeyUpdate (update_not_requested), sealed into out under the
// current key, then the new key.
size_t seal_key_update(Records* r, unsigned char* out) {
  static const unsigned char msg[5] = {kKeyUpdate, 0, 0, 1, 0};
  size_t n = seal_bytes(r, kHandshake, msg, sizeof msg, out);
  if (n == 0 || !update_secret(r, r->wr, true)) return 0;
  r->update_due = false;
  r->sealed_bytes = 0;
  r->key_updates++;
  return n;
}

bool update_needed(const Records* r) {
  return r->tls13 && (r->update_due || (r->cipher != chacha && r->wr.seq >= kGcmRecordLimit) ||
                      (r->key_update_at != 0 && r->sealed_bytes >= r->key_update_at));
}

// Where a record went: data (into the caller's buffer or `plain`), or the
// record changed the connection's state.
struct Sink {
  unsigned char* dst;
  size_t room;  // n
  size_t got;
};

bool deliver(Records* r, Sink& k, const unsigned char* p, size_t n, bool in_place) {
  if (n == 0) return true;
  r->idle_records = 0;
  if (in_place) {  // opened straight into the caller's buffer
    k.got += n;
    return true;
  }
  size_t take = r->plain.size() == 0 ? std::min(n, k.room - k.got) : 0;
  std::memcpy(k.dst + k.got, p, take);
  k.got += take;
  return r->plain.append(p + take, n - take);
}

bool idle_record(Sock* s, Records* r) {
  if (++r->idle_records <= kMaxIdleRecords) return true;
  fail(s, r, kUnexpectedMessage);
  return false;
}

// An alert record, decoded first as :ssl decodes one (ssl_alert:decode/1,
// TLS 1.2 and 1.3 alike; RFC 5246 6.2.1 lets a record hold several): an
// empty one is our handshake_failure; alerts follow one another until a
// fatal one (what follows it is not looked at); a byte short of an alert,
// or a level neither warning nor fatal, is illegal_parameter, and a 12th
// warning decode_error, whatever came before. Then the alerts in order:
// close_notify ends the connection; in TLS 1.2 other warnings are passed
// over; anything else (in TLS 1.3 any alert, even a warning: user_canceled
// too, as :ssl) ends it with the alert received.
void on_alert(Sock* s, Records* r, const unsigned char* p, size_t n) {
  // ssl_alert refuses a warning once it has taken more than ?MAX_ALERTS (10).
  constexpr size_t kMaxWarnings = 11;
  if (n == 0) return fail(s, r, kHandshakeFailure);
  size_t end = 0, warnings = 0;
  while (end < n) {
    if (n - end < 2 || (p[end] != kWarning && p[end] != kFatal))
      return fail(s, r, kIllegalParameter);
    bool fatal = p[end] == kFatal;
    if (!fatal && ++warnings > kMaxWarnings) return fail(s, r, kDecodeError);
    end += 2;
    if (fatal) break;
  }
  for (size_t i = 0; i < end; i += 2) {
    uint8_t level = p[i], desc = p[i + 1];
    if (desc == kCloseNotify) {
      r->ended = true;
      return;
    }
    if (r->tls13 || level == kFatal) return end_with(r, kAlertReceived | desc);
  }
  idle_record(s, r);  // warnings only: a record without data
}

// Handshake messages after the handshake. TLS 1.3: a client may only send
// KeyUpdate. TLS 1.2: a ClientHello is a renegotiation, refused with a
// warning (SSL_OP_NO_RENEGOTIATION); anything else is unexpected.
void on_handshake(Sock* s, Records* r, const unsigned char* p, size_t n) {
  // An empty one carries no message: passed over, as :ssl does (counted
  // as a record without data, so that a flood of them still ends).
  if (n == 0) {
    idle_record(s, r);
    return;
  }
  if (!r->tls13) {
    if (p[0] != kClientHello) return fail(s, r, kUnexpectedMessage);
    // The warning is a courtesy: while the socket refuses what waits, none
    // more is sealed (a client renegotiating again and again without
    // reading would grow `out` by 31 bytes each time).
    if (idle_record(s, r) && r->out.size() == 0) send_alert(s, r, kWarning, kNoRenegotiation);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    r->hs[r->hs_len++] = p[i];
    if (r->hs_len == 1 && r->hs[0] != kKeyUpdate) return fail(s, r, kUnexpectedMessage);
    if (r->hs_len == 4 && (r->hs[1] != 0 || r->hs[2] != 0 || r->hs[3] != 1))
      return fail(s, r, kDecodeError);
    if (r->hs_len < 5) continue;
    r->hs_len = 0;
    uint8_t request = r->hs[4];
    if (request > 1) return fail(s, r, kIllegalParameter);
    // A key change ends the record: nothing may follow it under the old key.
    if (i + 1 != n) return fail(s, r, kUnexpectedMessage);
    if (!update_secret(r, r->rd, false)) return fail(s, r, kInternalError);
#ifdef ISLET_FUZZING
    r->read_updates++;
#endif
    if (request == 1) r->update_due = true;  // answered before our next record
    idle_record(s, r);
    return;
  }
  idle_record(s, r);  // a piece of a message
}

// Opens one record (header h, body of len bytes). The plaintext goes
// straight into the caller's buffer when it surely fits there.
void open_record(Sock* s, Records* r, Sink& k, const unsigned char* h, unsigned char* body,
                 size_t len) {
  Dir& d = r->rd;
  size_t overhead = kTagLen + (r->xor_nonce ? 0 : kExplicitNonce);
  if (len < overhead || d.seq == UINT64_MAX) return fail(s, r, kBadRecordMac);
  if (!loaded(r, d, false)) return fail(s, r, kInternalError);
  size_t plen = len - overhead;
  unsigned char* ct = r->xor_nonce ? body : body + kExplicitNonce;
  unsigned char nonce[12], aad[13];
  make_nonce(r, d, body, nonce);
  size_t aad_len = make_aad(r, d, h, plen, aad);
  bool in_place = h[0] == kAppData && r->plain.size() == 0 && plen <= k.room - k.got;
  unsigned char* pt = in_place ? k.dst + k.got : ct;
  int n = 0, fin = 0;
  if (EVP_CipherInit_ex2(d.ctx, nullptr, nullptr, nonce, 0, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(d.ctx, EVP_CTRL_AEAD_SET_TAG, kTagLen, ct + plen) != 1 ||
      EVP_DecryptUpdate(d.ctx, nullptr, &n, aad, static_cast<int>(aad_len)) != 1 ||
      EVP_DecryptUpdate(d.ctx, pt, &n, ct, static_cast<int>(plen)) != 1 ||
      EVP_DecryptFinal_ex(d.ctx, pt + n, &fin) != 1) {
    ERR_clear_error();
    return fail(s, r, kBadRecordMac);
  }
  d.seq++;
  uint8_t type = h[0];
  if (r->tls13) {
    // The inner type is the last non-zero byte; zeros after it are padding.
    size_t i = plen;
    while (i > 0 && pt[i - 1] == 0) i--;
    if (i == 0) return fail(s, r, kUnexpectedMessage);
    type = pt[i - 1];
    plen = i - 1;
  }
  if (plen > r->max_plain) return fail(s, r, kRecordOverflow);
  // Nothing may come between the pieces of a handshake message.
  if (r->hs_len > 0 && type != kHandshake) return fail(s, r, kUnexpectedMessage);
  switch (type) {
    case kAppData:
      if (plen == 0) {
        idle_record(s, r);
      } else if (!deliver(r, k, pt, plen, in_place)) {
        fail(s, r, kInternalError);
      }
      return;
    case kAlert:
      return on_alert(s, r, pt, plen);
    case kHandshake:
      return on_handshake(s, r, pt, plen);
    default:
      return fail(s, r, kUnexpectedMessage);
  }
}

bool complete_record(const unsigned char* p, size_t n) {
  return n >= kHeader && n - kHeader >= (static_cast<size_t>(p[3]) << 8 | p[4]);
}

// Opens the complete records of p[0, n) (at most kRecordsPerCall of them);
// returns the bytes used. A header that cannot be right fails at once,
// before its body comes.
size_t open_records(Sock* s, Records* r, Sink& k, unsigned char* p, size_t n) {
  size_t pos = 0;
  for (int count = 0; !r->ended && n - pos >= kHeader; count++) {
    unsigned char* h = p + pos;
    size_t len = static_cast<size_t>(h[3]) << 8 | h[4];
    // Every type is protected (TLS 1.3 protects all as application data): a
    // record claiming another type is opened all the same, and fails there
    // (bad_record_mac, as with :ssl). TLS 1.3 has no change_cipher_spec
    // after the handshake.
    bool type_ok = h[0] == kAppData || h[0] == kAlert || h[0] == kHandshake ||
                   (h[0] == kChangeCipherSpec && !r->tls13);
    if (!type_ok) {
      fail(s, r, kUnexpectedMessage);
      break;
    }
    if (h[1] != 3 || h[2] != 3) {
      fail(s, r, kProtocolVersion);
      break;
    }
    if (len > (r->tls13 ? kMaxBody13 : kMaxBody12)) {
      fail(s, r, kRecordOverflow);
      break;
    }
    if (n - pos - kHeader < len || count == kRecordsPerCall) break;
    open_record(s, r, k, h, h + kHeader, len);
    pos += kHeader + len;
  }
  return pos;
}

}  // namespace

namespace {

// The record layer for a connection whose handshake just completed, or
// null when it must stay with OpenSSL.
Records* take_over(Sock* s) {
  SSL* ssl = s->ssl;
  Takeover* t = s->takeover;
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl);
  int version = SSL_version(ssl);
  if (c == nullptr || (version != TLS1_2_VERSION && version != TLS1_3_VERSION)) return nullptr;
  const EVP_CIPHER* cipher = nullptr;
  size_t key_len = 32;
  switch (SSL_CIPHER_get_cipher_nid(c)) {
    case NID_aes_128_gcm:
      cipher = aes128gcm;
      key_len = 16;
      break;
    case NID_aes_256_gcm:
      cipher = aes256gcm;
      break;
    case NID_chacha20_poly1305:
      cipher = chacha;
      break;
    default:
      return nullptr;
  }
  const EVP_MD* md = suite_hash(c);
  if (cipher == nullptr || md == nullptr) return nullptr;
  // Nothing may be left inside OpenSSL: bytes read ahead, records not yet
  // written, or kernel TLS under it.
  BIO* rbio = SSL_get_rbio(ssl);
  BIO* wbio = SSL_get_wbio(ssl);
  if (SSL_has_pending(ssl) || BIO_wpending(wbio) > 0 || BIO_get_ktls_send(wbio) ||
      BIO_get_ktls_recv(rbio))
    return nullptr;
  size_t hash_len = static_cast<size_t>(EVP_MD_get_size(md));
  bool tls13 = version == TLS1_3_VERSION;
  if (tls13 && (t->client_len != hash_len || t->server_len != hash_len)) return nullptr;

  auto* r = new (std::nothrow) Records();
  if (r == nullptr) return nullptr;
  r->cipher = cipher;
  r->md = md;
  r->tls13 = tls13;
  r->xor_nonce = tls13 || cipher == chacha;
  r->key_len = key_len;
  r->hash_len = hash_len;
  bool ok;
  if (tls13) {
    ok = set_secret(r, r->rd, t->client, false) && set_secret(r, r->wr, t->server, true);
    r->wr.seq = t->server_records;
    r->key_update_at = t->key_update_at;
  } else {
    // client_write_key, server_write_key, client_write_IV, server_write_IV.
    size_t iv_len = r->xor_nonce ? 12 : 4;
    unsigned char kb[2 * 32 + 2 * 12];
    ok = key_block(ssl, md, kb, 2 * key_len + 2 * iv_len);
    if (ok) {
      std::memcpy(r->rd.iv, kb + 2 * key_len, iv_len);
      std::memcpy(r->wr.iv, kb + 2 * key_len + iv_len, iv_len);
      ok = set_key(r->rd, cipher, kb, false) && set_key(r->wr, cipher, kb + key_len, true);
    }
    OPENSSL_cleanse(kb, sizeof kb);
    // Each side's Finished was record 0 under these keys.
    r->rd.seq = r->wr.seq = 1;
  }
  if (!ok) {
    ERR_clear_error();
    delete r;
    return nullptr;
  }
  SSL_SESSION* sess = SSL_get_session(ssl);
  uint8_t mfl = sess != nullptr ? SSL_SESSION_get_max_fragment_length(sess) : 0;
  if (mfl >= TLSEXT_max_fragment_length_512 && mfl <= TLSEXT_max_fragment_length_4096)
    r->max_plain = 256u << mfl;
  r->wire_in = BIO_number_read(rbio);
  r->wire_out = BIO_number_written(wbio);
  // What the client sent after its Finished, read with it: the first
  // records, opened before the socket is read again.
  if (HsBio* h = hs_of(rbio); h != nullptr && h->in.size() > 0) {
    if (!r->in.append(h->in.data(), h->in.size())) {
      delete r;
      return nullptr;
    }
    r->wire_in += h->in.size();
    r->last_read_short = s->tls_short_read;
    h->in.clear();
  }
  tls_info_of(ssl, &r->info);
  // A session another connection may resume (TLS 1.2, or TLS 1.3 with
  // tickets) leaves the cache if this connection ends in a fatal alert, as
  // OpenSSL does it.
  if (sess != nullptr && (!tls13 || t->server_records > 0) &&
      (SSL_CTX_get_session_cache_mode(t->session_ctx) & SSL_SESS_CACHE_SERVER)) {
    SSL_SESSION_up_ref(sess);
    r->session = sess;
    r->session_ctx = t->session_ctx;
    t->session_ctx = nullptr;
  }
  return r;
}

}  // namespace

namespace {

// The sweep's two lists of open connections: those still to visit in the
// current sweep, and those visited (where newcomers go too). sweep_mu is
// taken while holding a socket's lock, never the other way round: the sweep
// only try_locks sockets, and skips a busy one. A connection leaves its
// list (under its socket's lock) when it closes or is destroyed, so the
// sweep never sees a freed socket.
std::mutex sweep_mu;
Records* sweep_heads[2] = {nullptr, nullptr};
int sweep_done = 0;  // index of the visited list

void list_push(Records* r, int which) {
  r->list = which;
  r->prev = nullptr;
  r->next = sweep_heads[which];
  if (r->next != nullptr) r->next->prev = r;
  sweep_heads[which] = r;
}

void list_remove(Records* r) {
  if (r->prev != nullptr) r->prev->next = r->next;
  else sweep_heads[r->list] = r->next;
  if (r->next != nullptr) r->next->prev = r->prev;
  r->prev = r->next = nullptr;
  r->list = -1;
}

void sweep_leave(Records* r) {
  std::lock_guard<std::mutex> lk(sweep_mu);
  if (r->list >= 0) list_remove(r);
}

}  // namespace

size_t records_sweep() {
  size_t freed = 0;
  {
    std::lock_guard<std::mutex> lk(sweep_mu);
    if (sweep_heads[1 - sweep_done] == nullptr) sweep_done = 1 - sweep_done;
  }
  // A few hundred connections per hold of sweep_mu, so that connections
  // closing meanwhile wait little for it.
  for (bool more = true; more;) {
    std::lock_guard<std::mutex> lk(sweep_mu);
    int todo = 1 - sweep_done;
    for (int i = 0; i < 256 && sweep_heads[todo] != nullptr; i++) {
      Records* r = sweep_heads[todo];
      list_remove(r);
      std::unique_lock<std::mutex> sl(r->owner->mu, std::try_to_lock);
      if (sl.owns_lock()) {
        if (!r->used && (r->rd.ctx != nullptr || r->wr.ctx != nullptr)) {
          r->rd.unload();
          r->wr.unload();
          freed++;
        }
        r->used = false;
      }
      list_push(r, sweep_done);
    }
    more = sweep_heads[todo] != nullptr;
  }
  return freed;
}

bool records_take_over(Sock* s) {
  if (s->ssl == nullptr || s->takeover == nullptr) return false;
  Records* r = take_over(s);
  takeover_free(s);  // the secrets are in r now, or of no use
  if (r == nullptr) {
    // OpenSSL keeps the records: let it read ahead again.
    SSL_set_read_ahead(s->ssl, 1);
    ERR_clear_error();
    return false;
  }
  // Freed as a cleanly shut down connection, or OpenSSL would take the
  // session out of the cache.
  SSL_set_shutdown(s->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  SSL_free(s->ssl);
  ERR_clear_error();
  s->ssl = nullptr;
  s->rec = r;
  r->owner = s;
  std::lock_guard<std::mutex> lk(sweep_mu);
  list_push(r, sweep_done);
  return true;
}

void records_free(Sock* s) {
  if (s->rec != nullptr) sweep_leave(s->rec);
  delete s->rec;
  s->rec = nullptr;
  takeover_free(s);
}

namespace {

// What reading made us owe the peer (a KeyUpdate) goes out now, if the
// socket takes it; what it does not take waits in `out`.
//
// While the socket refuses what waits already, the update stays owed and
// goes before our next record instead: RFC 8446 lets a silent side answer
// many requests with one, and a client that asks again and again without
// reading would otherwise grow `out` without bound (27 bytes a request).
void send_owed(Sock* s, Records* r) {
  if (!update_needed(r) || r->failed || r->close_sent || r->out.size() > 0) return;
  size_t sealed = seal_key_update(r, seal_buf);
  if (sealed == 0) fail(s, r, kInternalError);
  else write_after(s, r, seal_buf, sealed);
}

ssize_t read_records(Sock* s, void* buf, size_t n, int* err) {
  Records* r = s->rec;
  Sink k{static_cast<unsigned char*>(buf), n, 0};
  if (n == 0) return 0;
  if (r->failure != 0 && r->plain.size() == 0) {
    *err = r->failure;
    return kTlsFailed;
  }
  // What was opened before, then records received before.
  if (r->plain.size() > 0) {
    k.got = std::min(n, r->plain.size());
    std::memcpy(k.dst, r->plain.data(), k.got);
    r->plain.consume(k.got);
    if (k.got == n) return static_cast<ssize_t>(k.got);
  }
  while (k.got == 0 && !r->ended) {
    // Complete records left from before are opened where they are, and the
    // header of an incomplete one is checked before its body comes: what is
    // left then fits in_buf before a read. (Bytes the handshake read past
    // its end, taken over unchecked, are a peer's choice: a header claiming
    // 65535 bytes, and 64 KB behind it, must fail here, not be copied.)
    if (r->in.size() >= kHeader) {
      size_t used = open_records(s, r, k, r->in.data(), r->in.size());
      r->in.consume(used);
      if (used > 0 || r->ended) continue;
    }
    // What is left of an incomplete record goes first, then the socket.
    size_t have = r->in.size();
    unsigned char* ib = in_buf();
    if (ib == nullptr || have > kInBufSize - kReadSize) {
      *err = ENOMEM;  // (the second cannot happen: the header was checked)
      return kReadError;
    }
    if (have > 0) std::memcpy(ib, r->in.data(), have);
    ssize_t m = recv(s->fd, ib + have, kReadSize, 0);
    if (m < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        r->last_read_short = true;
        return kWantRead;
      }
      *err = errno;
      return kReadError;
    }
    if (m == 0) {  // EOF, without close_notify
      r->ended = true;
      r->in.clear();
      break;
    }
    r->wire_in += static_cast<uint64_t>(m);
    s->reads.add(static_cast<uint64_t>(m));
    r->last_read_short = static_cast<size_t>(m) < kReadSize;
    r->in.reset();
    size_t total = have + static_cast<size_t>(m);
    size_t used = open_records(s, r, k, ib, total);
    if (!r->ended && used < total && !r->in.append(ib + used, total - used))
      fail(s, r, kInternalError);
    if (r->in.size() == 0) r->in.clear();
    if (k.got == 0 && !r->ended && r->last_read_short &&
        !complete_record(r->in.data(), r->in.size()))
      return kWantRead;
  }
  if (k.got > 0) return static_cast<ssize_t>(k.got);
  if (r->failure != 0) {
    *err = r->failure;
    return kTlsFailed;
  }
  return 0;  // ended: close_notify or EOF
}

}  // namespace

ssize_t records_read(Sock* s, void* buf, size_t n, int* err) {
  ssize_t got = read_records(s, buf, n, err);
  send_owed(s, s->rec);
  return got;
}

namespace {

// Seals `size` bytes of plaintext from `iov` (after its first `skip`) and
// writes them, up to kSealBatch records per send and `*budget` bytes in
// all; `*taken` grows by what was sealed. 0 once all is sealed (written, or
// waiting in `out`), EAGAIN when the socket is full, kMoreWork when the
// budget ran out first, or an errno.
int seal_and_write(Sock* s, Records* r, const SysIOVec* iov, int iovcnt, size_t skip,
                   size_t size, size_t* taken, size_t* budget) {
  while (*taken < size) {
    if (*budget == 0) return kMoreWork;
    size_t used = 0;
    // A batch of records sealed into this thread's buffer, written at once.
    for (int i = 0; i < kSealBatch && *budget > 0 && *taken < size; i++) {
      if (update_needed(r)) {
        size_t n = seal_key_update(r, seal_buf + used);
        if (n == 0) {
          fail(s, r, kInternalError);
          return EPIPE;
        }
        used += n;
      }
      size_t len = std::min(size - *taken, r->max_plain);
      size_t n = seal(r, kAppData, iov, iovcnt, skip + *taken, len, seal_buf + used);
      if (n == 0) {
        fail(s, r, kInternalError);
        return EPIPE;
      }
      used += n;
      *taken += len;
      s->send_oct += len;
      *budget -= std::min(*budget, len);
    }
    int e = write_after(s, r, seal_buf, used);
    if (e != 0) return e;
  }
  return 0;
}

// Before anything new is sealed: what waits in `out` goes first, and a
// connection that ended takes nothing more.
int ready_to_seal(Sock* s, Records* r, bool has_data) {
  int e = flush_out(s, r);
  if (e != 0) return e;
  if (r->failed || r->close_sent) return has_data ? EPIPE : 0;
  send_owed(s, r);
  return 0;
}

}  // namespace

int records_send(Sock* s, const SysIOVec* iov, int iovcnt, size_t size, size_t* taken) {
  Records* r = s->rec;
  *taken = 0;
  int e = ready_to_seal(s, r, size > 0);
  if (e != 0) return e;
  size_t budget = 256u << 10;
  e = seal_and_write(s, r, iov, iovcnt, 0, size, taken, &budget);
  // A key update owed may wait sealed while nothing else did (an empty send).
  return e == 0 && r->out.size() > 0 ? EAGAIN : e;
}

int records_drain(Sock* s) {
  Records* r = s->rec;
  size_t waiting = queued(s);
  int e = ready_to_seal(s, r, waiting > 0);
  if (e != 0 || waiting == 0) return e;
  size_t budget = 256u << 10;
  while (enif_ioq_size(s->wioq) > 0) {
    // The queue's head, sealed from where it stands: what is sealed leaves
    // the queue at once (it is in the socket or in `out` now).
    int iovcnt;
    SysIOVec* iov = enif_ioq_peek(s->wioq, &iovcnt);
    size_t size = std::min(enif_ioq_size(s->wioq), budget);
    size_t taken = 0;
    e = seal_and_write(s, r, iov, iovcnt, 0, size, &taken, &budget);
    enif_ioq_deq(s->wioq, taken, nullptr);
    if (e == 0 && budget == 0 && enif_ioq_size(s->wioq) > 0) return kMoreWork;
    if (e != 0) return e;
  }
  return 0;
}

bool records_pending(const Sock* s) {
  const Records* r = s->rec;
  return r->plain.size() > 0 || complete_record(r->in.data(), r->in.size()) || r->ended;
}

bool records_may_have_more(const Sock* s) {
  return !s->rec->last_read_short || records_pending(s);
}

void records_close_notify(Sock* s) {
  Records* r = s->rec;
  if (r->close_sent || r->failed) return;
  send_alert(s, r, kWarning, kCloseNotify);
  r->close_sent = true;
}

size_t records_unsent(const Sock* s) { return s->rec->out.size(); }

int records_flush(Sock* s) { return flush_out(s, s->rec); }

void records_fail(Sock* s, uint8_t desc) {
  if (s->rec != nullptr) fail(s, s->rec, desc);
}

void records_wire_bytes(const Sock* s, uint64_t* in, uint64_t* out) {
  *in = s->rec->wire_in;
  *out = s->rec->wire_out;
}

const TlsInfo& records_info(const Sock* s) { return s->rec->info; }

int records_contexts(const Sock* s) {
  return (s->rec->rd.ctx != nullptr) + (s->rec->wr.ctx != nullptr);
}

uint64_t records_key_updates(const Sock* s) { return s->rec->key_updates; }

void tls_info_of(SSL* ssl, TlsInfo* out) {
  out->version = SSL_version(ssl);
  if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl)) out->cipher = SSL_CIPHER_standard_name(c);
  if (const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) out->servername = sni;
  const unsigned char* alpn;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  if (alpn_len > 0) out->alpn.assign(reinterpret_cast<const char*>(alpn), alpn_len);
  if (SSL_SESSION* sess = SSL_get_session(ssl)) {
    out->has_session = true;
    unsigned id_len = 0;
    const unsigned char* id = SSL_SESSION_get_id(sess, &id_len);
    out->session_id_len = static_cast<uint8_t>(std::min<unsigned>(id_len, sizeof out->session_id));
    std::memcpy(out->session_id, id, out->session_id_len);
  }
  out->reused = SSL_session_reused(ssl) == 1;
  if (X509* peer = SSL_get1_peer_certificate(ssl)) {
    int n = i2d_X509(peer, nullptr);
    if (n > 0) {
      out->peercert.resize(static_cast<size_t>(n));
      auto* p = reinterpret_cast<unsigned char*>(&out->peercert[0]);
      i2d_X509(peer, &p);
    }
    X509_free(peer);
  }
}

}  // namespace islet

#ifdef ISLET_FUZZING
namespace islet {

// fuzz/fuzz_records.cpp: a record layer on s as if a handshake had agreed on
// its keys (TLS 1.3: the traffic secrets; TLS 1.2: each direction's key then
// IV), sequence numbers at 0.
bool records_fuzz_attach(Sock* s, bool tls13, int cipher_nid, const unsigned char* rd,
                         const unsigned char* wr) {
  auto* r = new (std::nothrow) Records();
  if (r == nullptr) return false;
  r->tls13 = tls13;
  r->cipher = cipher_nid == NID_aes_128_gcm   ? aes128gcm
              : cipher_nid == NID_aes_256_gcm ? aes256gcm
                                              : chacha;
  r->key_len = cipher_nid == NID_aes_128_gcm ? 16 : 32;
  r->md = cipher_nid == NID_aes_256_gcm ? sha384 : sha256;
  r->hash_len = static_cast<size_t>(EVP_MD_get_size(r->md));
  r->xor_nonce = tls13 || r->cipher == chacha;
  size_t iv_len = r->xor_nonce ? 12 : 4;
  bool ok;
  if (tls13) {
    ok = set_secret(r, r->rd, rd, false) && set_secret(r, r->wr, wr, true);
  } else {
    std::memcpy(r->rd.iv, rd + r->key_len, iv_len);
    std::memcpy(r->wr.iv, wr + r->key_len, iv_len);
    ok = set_key(r->rd, r->cipher, rd, false) && set_key(r->wr, r->cipher, wr, true);
  }
  if (!ok) {
    delete r;
    return false;
  }
  s->rec = r;
  return true;
}

// One record of any type and content, sealed under s's write key.
size_t records_fuzz_seal(Sock* s, uint8_t type, const unsigned char* p, size_t n,
                         unsigned char* out) {
  return seal_bytes(s->rec, type, p, n, out);
}

// TLS 1.3: s's next write key, after it sealed a KeyUpdate of its own.
bool records_fuzz_update_write(Sock* s) { return update_secret(s->rec, s->rec->wr, true); }

// What the sweep does to an idle connection: its cipher contexts go.
void records_fuzz_unload(Sock* s) {
  s->rec->rd.unload();
  s->rec->wr.unload();
}

// How many key updates of its peer s has read.
uint32_t records_fuzz_read_updates(const Sock* s) { return s->rec->read_updates; }

}  // namespace islet
#endif
