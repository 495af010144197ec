// Islet: TLS through OpenSSL on the same socket resource and engine.
//
// The SSL object sits on the non-blocking fd through a socket BIO (which
// keeps kernel TLS and SSL_sendfile possible), so WANT_READ / WANT_WRITE map
// onto the engine's enif_select waits. A listener holds one SSL_CTX, built
// once from the options; each accepted connection gets an SSL from it.
// A handshake step runs on the calling scheduler when it is cheap (no
// private-key operation, or an ECDSA P-256 / Ed25519 one with an X25519 or
// P-256 key exchange: well under a millisecond), and on a dirty CPU scheduler
// otherwise (an RSA signature takes about a millisecond): each hop to a dirty
// scheduler and back costs context switches and cross-thread frees that,
// for a cheap handshake, cost more than the handshake. Reads happen on the
// poller thread or in recv, and writes are cut into bounded slices so that
// no call runs long.
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "records.hpp"
#include "wire.hpp"

namespace islet {

namespace {

ErlNifResourceType* ctx_type = nullptr;
int ctx_data_index = -1;

struct SniHost {
  std::string name;
  SSL_CTX* ctx;  // a reference of its own
};

// What a context's callbacks need. Owned by the SSL_CTX (ex_data, freed with
// it), so it lives exactly as long as any listener or connection uses it.
struct CtxData {
  ErlNifEnv* data_env = nullptr;  // holds `data` and `deferred`
  ERL_NIF_TERM data = 0;          // what an sni_fun needs
  // Why this context's certificates or keys could not be loaded, or 0. As
  // with :ssl, the listener opens all the same, and each handshake fails
  // with this reason (see handshake_step).
  ERL_NIF_TERM deferred = 0;
  // With verify_fun or partial_chain, what Islet.TLS.Verify needs to check
  // a client's chain (OpenSSL then accepts any chain, see accept_chain).
  ERL_NIF_TERM verify = 0;
  std::vector<unsigned char> alpn;  // wire format, server preference order
  std::vector<SniHost> sni_hosts;
  bool sni_fun = false;
  bool records = false;  // Islet's record layer takes over after the handshake
  // :ssl's supported_groups (TLS 1.3) and eccs (TLS 1.2) as OpenSSL NIDs,
  // when given; OpenSSL has one list, so each connection gets its
  // version's in the ClientHello callback.
  std::vector<int> groups[2];  // [0] TLS 1.2, [1] TLS 1.3
  bool has_groups[2] = {false, false};
  // The same lists as OpenSSL's names, set instead of the NIDs when one
  // of them is an ML-KEM group (see kem_groups).
  std::string group_names[2];
  bool dh = false;                // DHE suites can be negotiated
  bool honor_ecc_order = false;   // TLS 1.2: the server's order of groups wins
  // certificate_authorities: false (TLS 1.3): no CA names in the
  // CertificateRequest (TLS 1.2 always has them, as with :ssl).
  bool no_ca_names13 = false;
  uint64_t key_update_at = 0;     // TLS 1.3, Islet's record layer: bytes per key
  // :ssl's check of the signature algorithm of each certificate of a
  // client's path (Islet.TLS.CertSigs makes the table): per version, the
  // alert for each algorithm it knows (0: accepted); internal_error for
  // the others, where :ssl's own check fails.
  struct SigRule {
    int nid;     // the signature algorithm
    int md_nid;  // RSASSA-PSS: its hash; else NID_undef
    int alert;
  };
  std::vector<SigRule> cert_sigs[2];  // [0] TLS 1.2, [1] TLS 1.3
  bool cert_sig_check = false;
  // A client chain certificate whose extended key usage does not allow
  // client authentication: ssl 10 refuses it with handshake_failure (ssl
  // 11, as OpenSSL, with unsupported_certificate), and ssl 11 takes such
  // a CA when it allows any purpose and allow_any_ca_purpose is set.
  bool eku_handshake_failure = false;
  bool allow_any_ca_purpose = false;
  // ssl 10 does not look at the key usage of a client's own certificate
  // (a certificate without digitalSignature is taken), which OpenSSL's
  // purpose check refuses; newer :ssl checks it as OpenSSL does.
  bool leaf_key_usage_ignored = false;
  // The signature algorithms the CertificateRequest names, as :ssl's
  // server names them for each version (ssl 11): OpenSSL's names, joined
  // by ':'; empty: OpenSSL's own list. (Clients choose the certificate
  // they send by this list.)
  std::string client_sigalgs[2];  // [0] TLS 1.2, [1] TLS 1.3
  // The suites as given to OpenSSL (empty: not given), for a connection
  // that switches to this context (switch_ctx).
  std::string cipher_list, ciphersuites;
  ~CtxData() {
    for (SniHost& h : sni_hosts) SSL_CTX_free(h.ctx);
    if (data_env != nullptr) enif_free_env(data_env);
  }
};

void ctx_data_free(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<CtxData*>(ptr);
}

CtxData* data_of(const SSL_CTX* ctx) {
  return static_cast<CtxData*>(SSL_CTX_get_ex_data(ctx, ctx_data_index));
}

struct SSLCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using SSLCtxPtr = std::unique_ptr<SSL_CTX, SSLCtxFree>;

// The Elixir handle of a context: one SSL_CTX reference.
struct CtxRes {
  SSL_CTX* ctx = nullptr;
};

void ctx_dtor(ErlNifEnv*, void* obj) {
  CtxRes* c = static_cast<CtxRes*>(obj);
  if (c->ctx != nullptr) SSL_CTX_free(c->ctx);
}

Sock* sock_of(const SSL* ssl) { return static_cast<Sock*>(SSL_get_app_data(ssl)); }

// The load error of the context a connection uses now (after SNI), or 0.
ERL_NIF_TERM deferred_of(const SSL* ssl) {
  const CtxData* c = data_of(SSL_get_SSL_CTX(ssl));
  return c != nullptr ? c->deferred : 0;
}

void info_cb(const SSL* ssl, int where, int ret) {
  if ((where & SSL_CB_ALERT) && (where & SSL_CB_WRITE)) {
    Sock* s = sock_of(ssl);
    if (s != nullptr && (ret >> 8) == SSL3_AL_FATAL) s->tls_alert = ret & 0xff;
  }
}

// What Islet's record layer needs from the handshake: TLS 1.3's traffic
// secrets, and the records OpenSSL seals before the handshake returns.
void keylog_cb(const SSL* ssl, const char* line) {
  if (Sock* s = sock_of(ssl)) records_keylog(s, line);
}

void message_cb(int write_p, int, int content_type, const void* buf, size_t len, SSL* ssl, void*) {
  if (Sock* s = sock_of(ssl)) records_message(s, write_p, content_type, buf, len);
}

int alpn_cb(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
            unsigned inlen, void*) {
  CtxData* c = data_of(SSL_get_SSL_CTX(ssl));
  if (c == nullptr) return SSL_TLSEXT_ERR_NOACK;
  // Server preference, as :ssl's alpn_preferred_protocols; no overlap is
  // fatal (no_application_protocol), as with :ssl.
  if (wire::alpn_select(c->alpn.data(), c->alpn.size(), in, inlen, out, outlen))
    return SSL_TLSEXT_ERR_OK;
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

// The server_name from a ClientHello, or "".
std::string client_hello_sni(SSL* ssl) {
  const unsigned char* p;
  size_t len;
  if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len)) return "";
  return wire::sni_host(p, len);
}

// An SNI host's context (sni_hosts, sni_fun) takes over a connection made
// from its listener's. SSL_set_SSL_CTX moves only the certificates, their
// settings and the session id context; what SSL_new copied from the
// listener's context into the connection is set from the host's here, as
// :ssl answers a ClientHello with the host's options: versions, suites and
// their order, options (a host's honor_cipher_order: false must clear the
// listener's), client verification, the handshake size bound, tickets.
// (Groups are set per connection in client_hello_cb, from the host's.)
void switch_ctx(SSL* ssl, SSL_CTX* ctx) {
  SSL_set_SSL_CTX(ssl, ctx);
  SSL_set_verify(ssl, SSL_CTX_get_verify_mode(ctx), SSL_CTX_get_verify_callback(ctx));
  SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(ctx));
  SSL_clear_options(ssl, SSL_get_options(ssl));
  SSL_set_options(ssl, SSL_CTX_get_options(ctx));
  SSL_set_min_proto_version(ssl, SSL_CTX_get_min_proto_version(ctx));
  SSL_set_max_proto_version(ssl, SSL_CTX_get_max_proto_version(ctx));
  SSL_set_max_cert_list(ssl, SSL_CTX_get_max_cert_list(ctx));
  SSL_set_num_tickets(ssl, SSL_CTX_get_num_tickets(ctx));
  if (const CtxData* c = data_of(ctx)) {
    // The same calls as for the context, so the same outcome (a list
    // holding no TLS 1.2 suite "fails" and is set all the same).
    if (!c->cipher_list.empty()) SSL_set_cipher_list(ssl, c->cipher_list.c_str());
    if (!c->ciphersuites.empty()) SSL_set_ciphersuites(ssl, c->ciphersuites.c_str());
  }
  ERR_clear_error();
}

// Whether the client can speak TLS 1.2 (its supported_versions, else its
// ClientHello's version).
bool offers_tls12(SSL* ssl) {
  const unsigned char* p;
  size_t len;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &p, &len))
    return wire::lists_version(p, len, TLS1_2_VERSION);
  return SSL_client_hello_get0_legacy_version(ssl) >= TLS1_2_VERSION;
}

// The kinds of key among this connection's certificates (certs_keys may
// give several): kRsaKey, kEcdsaKey (EC, Ed25519, Ed448). The current
// certificate is put back after.
constexpr unsigned kRsaKey = 1, kEcdsaKey = 2;
unsigned key_kinds(SSL* ssl) {
  unsigned kinds = 0;
  X509* current = SSL_get_certificate(ssl);
  for (long r = SSL_set_current_cert(ssl, SSL_CERT_SET_FIRST); r == 1;
       r = SSL_set_current_cert(ssl, SSL_CERT_SET_NEXT)) {
    switch (EVP_PKEY_get_base_id(SSL_get_privatekey(ssl))) {
      case EVP_PKEY_RSA:
      case EVP_PKEY_RSA_PSS:
        kinds |= kRsaKey;
        break;
      case EVP_PKEY_EC:
      case EVP_PKEY_ED25519:
      case EVP_PKEY_ED448:
        kinds |= kEcdsaKey;
        break;
      default:
        break;
    }
  }
  if (current != nullptr) SSL_select_current_cert(ssl, current);
  ERR_clear_error();
  return kinds;
}

// Whether the client offers a suite this server has enabled, of the
// version the handshake is heading for, and (TLS 1.2) that one of the
// server's keys can authenticate: OpenSSL's list holds TLS 1.3's suites
// and TLS 1.2's whatever the versions (a TLS 1.2-only listener shares
// nothing with a client offering TLS 1.3 suites and CBC-less TLS 1.2 ones),
// and it would refuse a suite its certificates cannot serve with
// handshake_failure, where :ssl says insufficient_security. Where no
// version is shared, that is left to OpenSSL (protocol_version, as :ssl
// says). `tls13`: leads_to_tls13's answer. With ecdhe false, only the TLS
// 1.2 suites whose key exchange is not ECDHE count.
bool shares_a_cipher(SSL* ssl, bool tls13, bool ecdhe = true) {
  if (!tls13 && (SSL_get_min_proto_version(ssl) > TLS1_2_VERSION || !offers_tls12(ssl))) return true;
  const unsigned char* ids;
  size_t len = SSL_client_hello_get0_ciphers(ssl, &ids);
  STACK_OF(SSL_CIPHER)* mine = SSL_get_ciphers(ssl);
  int kinds = -1;  // key_kinds, when first needed
  for (size_t i = 0; i + 1 < len; i += 2) {
    unsigned id = (static_cast<unsigned>(ids[i]) << 8) | ids[i + 1];
    for (int k = 0; k < sk_SSL_CIPHER_num(mine); k++) {
      const SSL_CIPHER* c = sk_SSL_CIPHER_value(mine, k);
      if (SSL_CIPHER_get_protocol_id(c) != id) continue;
      int kx = SSL_CIPHER_get_kx_nid(c), auth = SSL_CIPHER_get_auth_nid(c);
      if ((kx == NID_kx_any) != tls13) continue;  // (kx "any": a TLS 1.3 suite)
      if (tls13) return true;
      if (!ecdhe && kx == NID_kx_ecdhe) continue;
      if (auth == NID_auth_null) return true;
      if (auth != NID_auth_rsa && auth != NID_auth_ecdsa) continue;  // (PSK, DSS, SRP: none here)
      if (kinds < 0) kinds = static_cast<int>(key_kinds(ssl));
      if ((auth == NID_auth_rsa && (kinds & kRsaKey)) ||
          (auth == NID_auth_ecdsa && (kinds & kEcdsaKey)))
        return true;
    }
  }
  return false;
}

// Whether a signature with this key is cheap (tens of microseconds):
// ECDSA up to 256 bits, Ed25519. RSA, P-384 and larger take about a ms.
bool cheap_key(const EVP_PKEY* k) {
  if (k == nullptr) return false;
  int id = EVP_PKEY_get_base_id(k);
  if (id == EVP_PKEY_ED25519) return true;
  return id == EVP_PKEY_EC && EVP_PKEY_get_bits(k) <= 256;
}

// The ML-KEM groups (OpenSSL 3.5+; ssl 11.7's default x25519mlkem768
// among them) have no NID: Islet stands for each by OpenSSL's own
// convention for such groups (SSL_get_shared_group), its TLS id with
// TLSEXT_nid_unknown, and sets lists holding one by name
// (SSL_set1_groups refuses them).
struct KemGroup {
  const char* name;  // OpenSSL's group name
  unsigned id;       // TLS id
  bool cheap;        // the server's encapsulation: 30 to 95 us (OpenSSL 3.6)
};
constexpr KemGroup kem_groups[] = {
    {"X25519MLKEM768", 0x11EC, true}, {"SecP256r1MLKEM768", 0x11EB, true},
    {"SecP384r1MLKEM1024", 0x11ED, false}, {"MLKEM512", 0x0200, true},
    {"MLKEM768", 0x0201, true}, {"MLKEM1024", 0x0202, true}};

constexpr int kem_nid(unsigned id) { return static_cast<int>(TLSEXT_nid_unknown | id); }

bool is_kem_nid(int nid) { return (nid & TLSEXT_nid_unknown) != 0; }

// The NID of a named group (TLS id) whose cost Islet knows, or NID_undef.
int group_nid(unsigned id) {
  switch (id) {
    case 23: return NID_X9_62_prime256v1;
    case 24: return NID_secp384r1;
    case 25: return NID_secp521r1;
    case 29: return NID_X25519;
    case 30: return NID_X448;
#ifdef NID_brainpoolP256r1tls13
    // TLS 1.3's brainpool groups (OpenSSL 3.2+; in ssl 11.7's defaults).
    case 31: return NID_brainpoolP256r1tls13;
    case 32: return NID_brainpoolP384r1tls13;
    case 33: return NID_brainpoolP512r1tls13;
#endif
    case 256: return NID_ffdhe2048;
    case 257: return NID_ffdhe3072;
    case 258: return NID_ffdhe4096;
    case 259: return NID_ffdhe6144;
    case 260: return NID_ffdhe8192;
    default:
      for (const KemGroup& g : kem_groups)
        if (g.id == id) return kem_nid(id);
      return NID_undef;
  }
}

bool cheap_nid(int nid) {
  if (nid == NID_X25519 || nid == NID_X9_62_prime256v1) return true;
  for (const KemGroup& g : kem_groups)
    if (nid == kem_nid(g.id)) return g.cheap;
  return false;
}

bool known_nid(int nid) {
  static const unsigned ids[] = {23, 24, 25, 29, 30, 31, 32, 33, 256, 257, 258, 259, 260};
  for (unsigned id : ids)
    if (group_nid(id) == nid) return true;
  return is_kem_nid(nid);
}

// The cost class of a named group (TLS id) for a server that allows
// `allowed` (NIDs; nullptr: OpenSSL's default list): 1 cheap (X25519,
// P-256, the ML-KEM groups but P-384's hybrid), 0 costly (P-384 takes
// about a ms, P-521, X448 and FFDHE hundreds of us, the TLS 1.2 curves
// outside the table more), -1 one the server does not offer (skipped, as
// the server would skip it).
int group_class(unsigned id, const std::vector<int>* allowed) {
  int nid = group_nid(id);
  if (allowed == nullptr) return nid == NID_undef ? -1 : cheap_nid(nid) ? 1 : 0;
  for (int a : *allowed) {
    if (nid != NID_undef && a == nid) return cheap_nid(nid) ? 1 : 0;
    // An id outside the table may be one of the list's other curves.
    if (nid == NID_undef && !known_nid(a)) return 0;
  }
  return -1;
}

// Whether the key exchange this ClientHello leads to is cheap: the first
// group the server can use among the client's key shares (TLS 1.3), else
// among its supported groups, in the server's order when it has one and
// prefers it (TLS 1.2). No usable group: costly, to be safe.
bool cheap_exchange(SSL* ssl, const std::vector<int>* allowed, bool server_order) {
  const unsigned char* p;
  size_t len;
  int cls = -1;  // the class of the group found
  auto usable = [&](unsigned id) { return (cls = group_class(id, allowed)) >= 0; };
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_key_share, &p, &len) &&
      wire::any_key_share(p, len, usable))
    return cls == 1;
  if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_groups, &p, &len)) return false;
  if (server_order && allowed != nullptr) {
    for (int a : *allowed) {
      int nid = NID_undef;
      auto is_a = [&](unsigned id) {
        nid = group_nid(id);
        return nid == a || (nid == NID_undef && !known_nid(a));
      };
      if (wire::any_supported_group(p, len, is_a)) return cheap_nid(nid);
    }
    return false;
  }
  return wire::any_supported_group(p, len, usable) && cls == 1;
}

// Whether the client's supported groups name one of `allowed` (NIDs; a
// group outside Islet's table counts when the list has one too).
bool shares_a_group(SSL* ssl, const std::vector<int>& allowed) {
  const unsigned char* p;
  size_t len;
  return SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_groups, &p, &len) &&
         wire::any_supported_group(p, len,
                                   [&](unsigned id) { return group_class(id, &allowed) >= 0; });
}

// Sets a listener's list for a version (`v`: 0 TLS 1.2, 1 TLS 1.3) on a
// connection or a context: by NID, or by name when it holds an ML-KEM
// group. 1 on success, as OpenSSL's setters.
template <typename T, typename ByNid, typename ByName>
int set_groups_of(T* target, const CtxData* c, int v, ByNid by_nid, ByName by_name) {
  const std::vector<int>& list = c->groups[v];
  for (int nid : list)
    if (is_kem_nid(nid)) return by_name(target, c->group_names[v].c_str());
  return by_nid(target, const_cast<int*>(list.data()), list.size());
}

int set_groups(SSL* ssl, const CtxData* c, int v) {
  auto by_nid = [](SSL* s, int* l, size_t n) { return static_cast<int>(SSL_set1_groups(s, l, n)); };
  auto by_name = [](SSL* s, const char* l) { return static_cast<int>(SSL_set1_groups_list(s, l)); };
  return set_groups_of(ssl, c, v, by_nid, by_name);
}

int set_groups(SSL_CTX* ctx, const CtxData* c, int v) {
  auto by_nid = [](SSL_CTX* x, int* l, size_t n) {
    return static_cast<int>(SSL_CTX_set1_groups(x, l, n));
  };
  auto by_name = [](SSL_CTX* x, const char* l) {
    return static_cast<int>(SSL_CTX_set1_groups_list(x, l));
  };
  return set_groups_of(ctx, c, v, by_nid, by_name);
}

// OpenSSL 3.0's default groups for ECDHE (its list less FFDHE, which it
// does not use in TLS 1.2), in its order.
const std::vector<int>& default_groups() {
  static const std::vector<int> groups = {NID_X25519, NID_X9_62_prime256v1, NID_X448,
                                          NID_secp521r1, NID_secp384r1};
  return groups;
}

// TLS 1.2: the curve :ssl would pick, as a NID (NID_undef: none): the
// first of the client's supported groups the server has, or with
// honor_ecc_order the first of the server's the client has. OpenSSL ties
// that order to honor_cipher_order (SSL_OP_CIPHER_SERVER_PREFERENCE)
// instead, so the connection is given only this group. Groups outside
// Islet's table are left to OpenSSL (NID_undef).
int curve_for_tls12(SSL* ssl, const std::vector<int>& mine, bool server_order) {
  const unsigned char* p;
  size_t len;
  if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_groups, &p, &len)) return NID_undef;
  std::vector<int> client;
  wire::any_supported_group(p, len, [&](unsigned id) {
    if (int nid = group_nid(id); nid != NID_undef) client.push_back(nid);
    return false;
  });
  const std::vector<int>& first = server_order ? mine : client;
  const std::vector<int>& second = server_order ? client : mine;
  for (int a : first)
    for (int b : second)
      if (a == b) return a;
  return NID_undef;
}

// Whether this ClientHello leads to TLS 1.3: the client offers it and the
// server allows it (the server picks the highest version both have).
bool leads_to_tls13(SSL* ssl) {
  int max = SSL_get_max_proto_version(ssl);
  if (max != 0 && max < TLS1_3_VERSION) return false;
  const unsigned char* p;
  size_t len;
  return SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &p, &len) &&
         wire::lists_version(p, len, TLS1_3_VERSION);
}

// Whether the client offers a DHE suite this server has enabled: TLS 1.2's
// finite-field key exchange costs about a ms.
bool offers_dhe(SSL* ssl) {
  const unsigned char* ids;
  size_t len = SSL_client_hello_get0_ciphers(ssl, &ids);
  STACK_OF(SSL_CIPHER)* mine = SSL_get_ciphers(ssl);
  for (int k = 0; k < sk_SSL_CIPHER_num(mine); k++) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(mine, k);
    if (SSL_CIPHER_get_kx_nid(c) != NID_kx_dhe) continue;
    for (size_t i = 0; i + 1 < len; i += 2)
      if (SSL_CIPHER_get_protocol_id(c) == ((static_cast<unsigned>(ids[i]) << 8) | ids[i + 1]))
        return true;
  }
  return false;
}

// Whether a step that does not read a ClientHello may be costly: verifying
// a client certificate, or TLS 1.2's key exchange (RSA decryption, or a
// costly group) with the client's second flight.
bool costly_later_step(SSL* ssl) {
  if (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) return true;
  if (SSL_version(ssl) >= TLS1_3_VERSION) return false;
  const SSL_CIPHER* c = SSL_get_pending_cipher(ssl);
  if (c == nullptr) c = SSL_get_current_cipher(ssl);
  if (c == nullptr || SSL_CIPHER_get_kx_nid(c) != NID_kx_ecdhe) return true;
  int g = SSL_get_negotiated_group(ssl);
  return !(g == NID_X25519 || g == NID_X9_62_prime256v1);
}

// SNI: a host of sni_hosts switches context here; with an sni_fun the
// handshake pauses (retry) so that the fun runs in Elixir, which then calls
// tls_set_ctx and resumes.
int resolve_sni(SSL* ssl, Sock* st) {
  SSL_CTX* ctx = SSL_get_SSL_CTX(ssl);
  CtxData* c = data_of(ctx);
  if (c == nullptr || st == nullptr || st->sni_resolved) return SSL_CLIENT_HELLO_SUCCESS;
  st->sni = client_hello_sni(ssl);
  for (SniHost& h : c->sni_hosts) {
    if (strcasecmp(h.name.c_str(), st->sni.c_str()) == 0) {
      switch_ctx(ssl, h.ctx);
      st->sni_resolved = true;
      return SSL_CLIENT_HELLO_SUCCESS;
    }
  }
  if (c->sni_fun && !st->sni.empty()) {
    if (st->sni_ctx == nullptr) {
      SSL_CTX_up_ref(ctx);
      st->sni_ctx = ctx;
    }
    return SSL_CLIENT_HELLO_RETRY;
  }
  st->sni_resolved = true;
  return SSL_CLIENT_HELLO_SUCCESS;
}

// TLS 1.3 stateful tickets are single-use with :ssl. OpenSSL keeps a used
// one in its cache (it removes it only for early data's anti-replay), so the
// ClientHello's PSK identities short enough to be session ids are noted
// (SSL ex_data, freed with the SSL), and a handshake that resumed removes
// the first of them its listener's cache holds: the one OpenSSL resumed
// (it takes the first it finds). Stateless tickets are longer: never noted.
int psk_index = -1;

struct OfferedPsks {
  SSL_CTX* session_ctx;  // the listener's context, whose cache OpenSSL used
  std::vector<std::string> ids;
};

void free_offered_psks(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<OfferedPsks*>(ptr);
}

void note_offered_psks(SSL* ssl) {
  const unsigned char* p;
  size_t len;
  if (psk_index < 0 || SSL_get_ex_data(ssl, psk_index) != nullptr ||
      SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_psk, &p, &len) != 1 || len < 2)
    return;
  // identities<7..2^16-1>: {opaque identity<1..2^16-1>; uint32 age;}
  size_t end = 2 + (static_cast<size_t>(p[0]) << 8 | p[1]);
  if (end > len) return;
  std::vector<std::string> ids;
  // A few are enough (clients offer one or two): a hostile ClientHello's
  // thousands cost nothing here.
  constexpr size_t kMaxNoted = 16;
  for (size_t i = 2; i + 2 <= end && ids.size() < kMaxNoted;) {
    size_t n = static_cast<size_t>(p[i]) << 8 | p[i + 1];
    i += 2;
    if (n > end - i || end - i - n < 4) break;
    if (n <= SSL_MAX_SSL_SESSION_ID_LENGTH)
      ids.emplace_back(reinterpret_cast<const char*>(p + i), n);
    i += n + 4;
  }
  if (ids.empty()) return;
  auto* o = new (std::nothrow) OfferedPsks{SSL_get_SSL_CTX(ssl), std::move(ids)};
  if (o != nullptr && SSL_set_ex_data(ssl, psk_index, o) != 1) delete o;
}

// At the end of a handshake (the SSL holds its listener's context).
void use_up_ticket(SSL* ssl) {
  auto* o = psk_index < 0 ? nullptr : static_cast<OfferedPsks*>(SSL_get_ex_data(ssl, psk_index));
  if (o == nullptr) return;
  // Not needed past the handshake: freed now, since a connection left with
  // OpenSSL's record layer keeps its SSL.
  std::unique_ptr<OfferedPsks> owned(o);
  SSL_set_ex_data(ssl, psk_index, nullptr);
  if (SSL_version(ssl) != TLS1_3_VERSION || !SSL_session_reused(ssl)) return;
  for (const std::string& id : o->ids) {
    // The cache finds a session by version and id: a stand-in will do.
    SSL_SESSION* key = SSL_SESSION_new();
    if (key == nullptr) break;
    bool removed =
        SSL_SESSION_set_protocol_version(key, TLS1_3_VERSION) == 1 &&
        SSL_SESSION_set1_id(key, reinterpret_cast<const unsigned char*>(id.data()),
                            static_cast<unsigned>(id.size())) == 1 &&
        SSL_CTX_remove_session(o->session_ctx, key) == 1;
    SSL_SESSION_free(key);
    if (removed) break;
  }
  ERR_clear_error();
}

// Before each ticket is made (the listener's context): a TLS 1.3 ticket
// gets :ssl's ticket lifetime (`arg`, seconds).
int ticket_lifetime_cb(SSL* ssl, void* arg) {
  SSL_SESSION* sess = SSL_get_session(ssl);
  if (sess != nullptr && SSL_version(ssl) == TLS1_3_VERSION)
    SSL_SESSION_set_timeout(sess, static_cast<long>(reinterpret_cast<intptr_t>(arg)));
  return 1;
}

#if OPENSSL_VERSION_NUMBER >= 0x30200000L
// A stateless ticket, decrypted. OpenSSL 3.2+ keeps a session's time to
// the nanosecond but a ticket carries it in whole seconds, so a ticket
// looked up to a second older than it is, and one of L seconds lived L - 1
// to L (a ticket of :ssl's 1-second lifetime was refused at once, now and
// then). A second more gives L to L + 1, as OpenSSL 3.0 gave, seconds on
// both sides. The answers are OpenSSL's own without a callback.
SSL_TICKET_RETURN ticket_decrypted_cb(SSL*, SSL_SESSION* sess, const unsigned char*, size_t,
                                      SSL_TICKET_STATUS status, void*) {
  switch (status) {
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW:
      if (sess != nullptr) SSL_SESSION_set_timeout(sess, SSL_SESSION_get_timeout(sess) + 1);
      return status == SSL_TICKET_SUCCESS ? SSL_TICKET_RETURN_USE : SSL_TICKET_RETURN_USE_RENEW;
    case SSL_TICKET_EMPTY:
    case SSL_TICKET_NO_DECRYPT:
      return SSL_TICKET_RETURN_IGNORE_RENEW;
    case SSL_TICKET_NONE:
      return SSL_TICKET_RETURN_IGNORE;
    default:
      return SSL_TICKET_RETURN_ABORT;
  }
}
#else
constexpr SSL_CTX_decrypt_session_ticket_fn ticket_decrypted_cb = nullptr;
#endif

int client_hello_cb(SSL* ssl, int* alert, void*) {
  Sock* st = sock_of(ssl);
  // The ClientHello is in: from now on OpenSSL reads record by record, so
  // that when the handshake ends it holds nothing the client sent after it
  // (which the record layer taking over could not get back).
  if (st != nullptr && st->takeover != nullptr) SSL_set_read_ahead(ssl, 0);
  note_offered_psks(ssl);  // before an SNI host's context replaces the listener's
  // SNI first, as :ssl: the host's options answer the rest.
  if (resolve_sni(ssl, st) == SSL_CLIENT_HELLO_RETRY) return SSL_CLIENT_HELLO_RETRY;
  // A host whose certificate could not be loaded: the step stops here, and
  // the handshake fails with the load error (no alert, as with :ssl).
  if (deferred_of(ssl) != 0) return SSL_CLIENT_HELLO_RETRY;
  // No suite in common: :ssl answers insufficient_security, where OpenSSL
  // would send handshake_failure; callers match the alert's name.
  const bool heads13 = leads_to_tls13(ssl);
  if (!shares_a_cipher(ssl, heads13)) {
    *alert = SSL_AD_INSUFFICIENT_SECURITY;
    return SSL_CLIENT_HELLO_ERROR;
  }
  // supported_groups / eccs: this version's list, for this connection.
  const CtxData* c = data_of(SSL_get_SSL_CTX(ssl));
  bool server_order = (SSL_get_options(ssl) & SSL_OP_CIPHER_SERVER_PREFERENCE) != 0;
  const bool tls13 = heads13;
  // session_tickets is TLS 1.3's (:ssl has no TLS 1.2 tickets): a TLS 1.2
  // handshake on a listener with stateless tickets gets a session id only.
  if ((SSL_get_options(ssl) & SSL_OP_NO_TICKET) == 0 && !tls13) SSL_set_options(ssl, SSL_OP_NO_TICKET);
  if (tls13 && c->no_ca_names13) SSL_set_client_CA_list(ssl, sk_X509_NAME_new_null());
  const std::vector<int>* allowed = nullptr;
  // supported_groups alone set the context's list: TLS 1.2 keeps OpenSSL's.
  if (!tls13 && c != nullptr && !c->has_groups[0] && c->has_groups[1])
    SSL_set1_groups(ssl, const_cast<int*>(default_groups().data()), default_groups().size());
  if (c != nullptr && c->has_groups[tls13]) {
    allowed = &c->groups[tls13];
    // No group in common: :ssl answers insufficient_security (TLS 1.3,
    // no_suitable_groups; TLS 1.2, no suite left), where OpenSSL would
    // send handshake_failure. TLS 1.2 may still agree on a suite without
    // ECDHE.
    // (An empty list cannot be set: those handshakes fail here too.)
    bool none = !shares_a_group(ssl, *allowed);
    if ((none && (tls13 || !shares_a_cipher(ssl, false, false))) || allowed->empty() ||
        set_groups(ssl, c, tls13) != 1) {
      *alert = SSL_AD_INSUFFICIENT_SECURITY;
      return SSL_CLIENT_HELLO_ERROR;
    }
  }
  bool cheap_kx;
  if (!tls13 && c != nullptr && c->honor_ecc_order != server_order) {
    int curve = curve_for_tls12(ssl, allowed != nullptr ? *allowed : default_groups(),
                                c->honor_ecc_order);
    // (An ML-KEM group is TLS 1.3's only: not one a TLS 1.2 list has.)
    if (curve != NID_undef && !is_kem_nid(curve)) SSL_set1_groups(ssl, &curve, 1);
    cheap_kx = cheap_nid(curve);
  } else {
    cheap_kx = cheap_exchange(ssl, allowed, server_order);
  }
  // On a normal scheduler, the rest of this step (key exchange, signature)
  // must be cheap; else the step pauses here and resumes on a dirty one.
  if (st != nullptr && st->tls_inline &&
      !(cheap_key(SSL_get_privatekey(ssl)) && cheap_kx &&
        !(c != nullptr && c->dh && !tls13 && offers_dhe(ssl)))) {
    st->tls_want_dirty = true;
    return SSL_CLIENT_HELLO_RETRY;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

bool get_bool(ERL_NIF_TERM t) { return enif_is_identical(t, atom.true_); }

// Whether a term is plain data (atoms, numbers, binaries, lists and tuples
// of them), so that a context keeping a copy of it keeps nothing alive: a
// socket in it would hold the context that holds the socket.
bool plain_term(ErlNifEnv* env, ERL_NIF_TERM t, int depth) {
  if (depth > 64) return false;
  if (enif_is_atom(env, t) || enif_is_number(env, t) || enif_is_binary(env, t)) return true;
  int arity;
  const ERL_NIF_TERM* elems;
  if (enif_get_tuple(env, t, &arity, &elems)) {
    for (int i = 0; i < arity; i++)
      if (!plain_term(env, elems[i], depth + 1)) return false;
    return true;
  }
  ERL_NIF_TERM head;
  while (enif_get_list_cell(env, t, &head, &t))
    if (!plain_term(env, head, depth + 1)) return false;
  return enif_is_empty_list(env, t) || plain_term(env, t, depth + 1);
}

bool bin_list(ErlNifEnv* env, ERL_NIF_TERM list, std::vector<ErlNifBinary>* out) {
  ERL_NIF_TERM h, t = list;
  ErlNifBinary b;
  while (enif_get_list_cell(env, t, &h, &t)) {
    if (!enif_inspect_binary(env, h, &b)) return false;
    out->push_back(b);
  }
  return enif_is_empty_list(env, t);
}

// The NID of a dotted OID ("1.2.840.113549.1.1.11"), or NID_undef.
int oid_nid(const ErlNifBinary& b) {
  std::string text(reinterpret_cast<const char*>(b.data), b.size);
  if (text.empty() || text.size() > 64 || text.find('\0') != std::string::npos) return NID_undef;
  ASN1_OBJECT* o = OBJ_txt2obj(text.c_str(), 1);  // numeric form only
  int nid = o != nullptr ? OBJ_obj2nid(o) : NID_undef;
  ASN1_OBJECT_free(o);
  ERR_clear_error();
  return nid;
}

X509* der_cert(const ErlNifBinary& b) {
  const unsigned char* p = b.data;
  return d2i_X509(nullptr, &p, static_cast<long>(b.size));
}

// {Chain, KeyDer}: the leaf first. Returns an error atom name or nullptr.
const char* use_cert_key(ErlNifEnv* env, SSL_CTX* ctx, ERL_NIF_TERM pair) {
  int arity;
  const ERL_NIF_TERM* t;
  std::vector<ErlNifBinary> chain;
  ErlNifBinary key;
  if (!enif_get_tuple(env, pair, &arity, &t) || arity != 2 || !bin_list(env, t[0], &chain) ||
      chain.empty() || !enif_inspect_binary(env, t[1], &key))
    return "bad_cert_key";
  X509* leaf = der_cert(chain[0]);
  if (leaf == nullptr) return "bad_cert";
  int ok = SSL_CTX_use_certificate(ctx, leaf);
  X509_free(leaf);
  if (ok != 1) return "bad_cert";
  for (size_t i = 1; i < chain.size(); i++) {
    X509* x = der_cert(chain[i]);
    // add1 keeps its own reference to x.
    if (x == nullptr || SSL_CTX_add1_chain_cert(ctx, x) != 1) {
      X509_free(x);
      return "bad_cert";
    }
    X509_free(x);
  }
  const unsigned char* p = key.data;
  EVP_PKEY* pkey = d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(key.size));
  if (pkey == nullptr) return "bad_key";
  ok = SSL_CTX_use_PrivateKey(ctx, pkey);
  EVP_PKEY_free(pkey);
  if (ok != 1) return "bad_key";
  if (SSL_CTX_check_private_key(ctx) != 1) return "key_mismatch";
  return nullptr;
}

// A certificate given without its chain makes OpenSSL complete one from the
// CA store for every handshake (an X509_verify_cert: with a CA chain, about
// 15% of OpenSSL's CPU for an ECDSA handshake). :ssl builds the chain once, from certfile and
// cacertfile; so does this, with the same result (root included). Should
// building fail, OpenSSL still completes the chain per handshake.
// Walking the certificates moves the context's current one, which the
// ClientHello callback reads (SSL_get_privatekey): it is put back after.
template <typename F>
void for_each_cert(SSL_CTX* ctx, F f) {
  X509* current = SSL_CTX_get0_certificate(ctx);
  for (long r = SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_FIRST); r == 1;
       r = SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_NEXT))
    f();
  if (current != nullptr) SSL_CTX_select_current_cert(ctx, current);
  ERR_clear_error();
}

void build_chains(SSL_CTX* ctx) {
  for_each_cert(ctx, [ctx] {
    STACK_OF(X509)* chain = nullptr;
    if (SSL_CTX_get0_chain_certs(ctx, &chain) == 1 && chain == nullptr)
      SSL_CTX_build_cert_chain(ctx, SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR);
  });
}

// The session id context: what a session must have been made under to be
// resumed here. OpenSSL resumes only a session whose context matches the
// connection's, and an SNI host's context replaces the listener's in the
// connection while the session cache stays the listener's: one value for
// every context let a session made with one host resume on another, past
// its verify_peer and fail_if_no_peer_cert. :ssl resumes a session only
// under the certificate it was made with, and not without a client
// certificate where one is required: so the value is a digest of this
// context's certificates and client verification. (Made from the options,
// not at random, so that an sni_fun's context made again for the same
// host still resumes its sessions.)
void set_session_context(SSL_CTX* ctx, int verify) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  bool ok = md != nullptr && EVP_DigestInit_ex(md, EVP_sha256(), nullptr) == 1;
  for_each_cert(ctx, [&] {
    X509* x = SSL_CTX_get0_certificate(ctx);
    unsigned char* der = nullptr;
    int n = x != nullptr ? i2d_X509(x, &der) : -1;
    if (n > 0) ok = ok && EVP_DigestUpdate(md, der, static_cast<size_t>(n)) == 1;
    OPENSSL_free(der);
  });
  unsigned char v = static_cast<unsigned char>(verify);
  ok = ok && EVP_DigestUpdate(md, &v, 1) == 1 && EVP_DigestFinal_ex(md, digest, &len) == 1;
  EVP_MD_CTX_free(md);
  static_assert(SSL_MAX_SID_CTX_LENGTH == 32, "a SHA-256 digest fills the session id context");
  if (ok) SSL_CTX_set_session_id_context(ctx, digest, len);
  ERR_clear_error();
}

ERL_NIF_TERM opt_error(ErlNifEnv* env, ERL_NIF_TERM key, const char* what) {
  ERL_NIF_TERM detail = enif_make_tuple2(env, key, enif_make_atom(env, what));
  return make_error(env, enif_make_tuple2(env, enif_make_atom(env, "options"), detail));
}

// The names :ssl gives alerts (ssl_alert:description_atom/1), that of an
// alert it does not know included: a client may send any description.
// decompression_failure (30) only where :ssl still knows it (OTP 25; not
// OTP 27's, Islet.Compat.ssl_names_decompression_failure?/0).
const char* alert_name(int code) {
  switch (code) {
    case 0: return "close_notify";
    case 10: return "unexpected_message";
    case 20: return "bad_record_mac";
    case 21: return "decryption_failed_reserved";
    case 22: return "record_overflow";
    case 30: return ssl_names_decompression_failure ? "decompression_failure" : "unsupported/unknown_alert";
    case 40: return "handshake_failure";
    case 41: return "no_certificate_reserved";
    case 42: return "bad_certificate";
    case 43: return "unsupported_certificate";
    case 44: return "certificate_revoked";
    case 45: return "certificate_expired";
    case 46: return "certificate_unknown";
    case 47: return "illegal_parameter";
    case 48: return "unknown_ca";
    case 49: return "access_denied";
    case 50: return "decode_error";
    case 51: return "decrypt_error";
    case 60: return "export_restriction";
    case 70: return "protocol_version";
    case 71: return "insufficient_security";
    case 80: return "internal_error";
    case 86: return "inappropriate_fallback";
    case 90: return "user_canceled";
    case 100: return "no_renegotiation";
    case 109: return "missing_extension";
    case 110: return "unsupported_extension";
    case 111: return "certificate_unobtainable";
    case 112: return "unrecognized_name";
    case 113: return "bad_certificate_status_response";
    case 114: return "bad_certificate_hash_value";
    case 115: return "unknown_psk_identity";
    case 116: return "certificate_required";
    case 120: return "no_application_protocol";
    default: return "unsupported/unknown_alert";
  }
}

// {tls_alert, {Name, Description}} as :ssl reports a failed handshake.
ERL_NIF_TERM alert_term(ErlNifEnv* env, int code, bool received) {
  std::string desc = std::string("TLS server: ") + (received ? "received CLIENT ALERT: Fatal - "
                                                               : "sent SERVER ALERT: Fatal - ") +
                     SSL_alert_desc_string_long(code) + "\n";
  ERL_NIF_TERM chars = enif_make_string_len(env, desc.data(), desc.size(), ERL_NIF_LATIN1);
  return enif_make_tuple2(env, enif_make_atom(env, "tls_alert"),
                          enif_make_tuple2(env, enif_make_atom(env, alert_name(code)), chars));
}

// The reason for a failed TLS call, read from this thread's OpenSSL error
// queue: kAlertReceived | code (an alert received), kAlertSent | code
// (sent), or 0 (closed). tls_failure_term makes the term.
int failure_code(Sock* s) {
  unsigned long e = ERR_peek_last_error();
  ERR_clear_error();
  int reason = e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL ? ERR_GET_REASON(e) : 0;
  if (reason >= SSL_AD_REASON_OFFSET) {
    int desc = (reason - SSL_AD_REASON_OFFSET) & 0xff;
    // A close_notify sent as a fatal alert: :ssl says closed, as for any
    // close_notify (ssl_alert:reason_code/4).
    return desc == SSL_AD_CLOSE_NOTIFY ? 0 : kAlertReceived | desc;
  }
  switch (reason) {
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
      return 0;  // the client went away: :ssl says closed
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
      // Not TLS at all (a plain HTTP request, say): :ssl answers so.
      return kAlertSent | SSL_AD_UNEXPECTED_MESSAGE;
    default:
      break;
  }
  if (s->tls_alert >= 0) return kAlertSent | (s->tls_alert & 0xff);
  return 0;
}

// A fatal alert in a plaintext record (TLS 1.2 record version), best
// effort: what :ssl sends to a client whose first bytes are not TLS at all
// (a plain HTTP request, say), where OpenSSL stops without a word. The
// reason Islet reports then says an alert was sent.
void send_plain_alert(int fd, int description) {
  const unsigned char rec[] = {21, 3, 3, 0, 2, 2, static_cast<unsigned char>(description)};
  (void)::send(fd, rec, sizeof rec, MSG_NOSIGNAL | MSG_DONTWAIT);
}

ErlNifPid self_of(ErlNifEnv* env) {
  ErlNifPid p;
  enif_self(env, &p);
  return p;
}

bool ktls_available = false;  // set at load (probe_ktls)

// What to add to a session cache's bound for it to hold that many sessions.
// OpenSSL 3.0's SSL_CTX_add_session counts the new session before it makes
// room, so a cache of size n keeps n - 1; later versions may not. Probed at
// load: two sessions into a cache of size 2.
long cache_size_bias = 0;

long probe_cache_bias() {
  SSLCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return 0;
  SSL_CTX_sess_set_cache_size(ctx.get(), 2);
  for (unsigned char id = 1; id <= 2; id++) {
    SSL_SESSION* sess = SSL_SESSION_new();
    if (sess == nullptr) break;
    SSL_SESSION_set1_id(sess, &id, 1);
#if OPENSSL_VERSION_NUMBER >= 0x30400000L
    SSL_SESSION_set_time_ex(sess, time(nullptr));  // the long form is deprecated from 3.4
#else
    SSL_SESSION_set_time(sess, static_cast<long>(time(nullptr)));
#endif
    SSL_CTX_add_session(ctx.get(), sess);
    SSL_SESSION_free(sess);  // the cache holds its own reference
  }
  long kept = SSL_CTX_sess_number(ctx.get());
  ERR_clear_error();
  return kept == 1 ? 1 : 0;
}

// Called around every operation on the connection's socket BIO. After a
// read, notes whether it came back short: with read-ahead OpenSSL asks for
// all the room its buffer has, so a short read (or EAGAIN) means the kernel
// had nothing more, and in a pump's edge-triggered set a new edge will
// announce whatever comes next. That saves the read that would only find
// EAGAIN after each request (and the buffer OpenSSL allocates for it).
//
// Before a write, holds it while Erlang checks a TLS 1.2 client's chain
// (verify_hold): the write fails as a socket that is full would, OpenSSL
// keeps what it had to send and answers WANT_WRITE, and the next
// SSL_do_handshake sends it. Only the server's last flight can meet it.
long sock_bio_cb(BIO* b, int oper, const char*, size_t len, int, long, int ret, size_t* processed) {
  if (oper == (BIO_CB_READ | BIO_CB_RETURN)) {
    auto* s = reinterpret_cast<Sock*>(BIO_get_callback_arg(b));
    s->tls_short_read = ret <= 0 || (processed != nullptr && *processed < len);
    if (ret > 0 && processed != nullptr) s->reads.add(*processed);  // getstat's packets
  } else if (oper == (BIO_CB_WRITE | BIO_CB_RETURN)) {
    auto* s = reinterpret_cast<Sock*>(BIO_get_callback_arg(b));
    if (ret > 0 && processed != nullptr) s->writes.add(*processed);
  } else if (oper == BIO_CB_WRITE) {
    auto* s = reinterpret_cast<Sock*>(BIO_get_callback_arg(b));
    if (s->verify_hold) {
      BIO_clear_retry_flags(b);
      BIO_set_retry_write(b);
      return -1;
    }
  }
  return ret;
}

// The chain check of a context whose client certificates are checked in
// Erlang: OpenSSL accepts any chain (it still asks for a certificate,
// enforces fail_if_no_peer_cert and checks the CertificateVerify signature
// with the certificate's key), and the handshake call hands the chain to
// Islet.TLS.Verify once OpenSSL's part is done. OpenSSL 3.0 cannot pause a
// server's handshake here for Erlang (SSL_set_retry_verify is for clients),
// so a TLS 1.2 handshake is paused a little later instead: its server holds
// its last flight (sock_bio_cb) until Erlang has answered. A TLS 1.3 client
// sends its certificate after the server's last flight: that chain is
// checked when the handshake is over for OpenSSL.
int accept_chain(X509_STORE_CTX* xs, void*) {
  X509_STORE_CTX_set_error(xs, X509_V_OK);
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* s = ssl != nullptr ? static_cast<Sock*>(SSL_get_app_data(ssl)) : nullptr;
  if (s != nullptr && SSL_version(ssl) < TLS1_3_VERSION && !SSL_session_reused(ssl))
    s->verify_hold = true;
  return 1;
}

// Called once the version is negotiated, before the server's flight: the
// CertificateRequest's signature algorithms for that version (OpenSSL
// keeps one list for both; :ssl's two differ, e.g. RSA with SHA-1 is in
// TLS 1.3's, for certificates, and not in TLS 1.2's). With sni_hosts, the
// host's context is the SSL's by now.
int cert_cb(SSL* ssl, void*) {
  const CtxData* c = data_of(SSL_get_SSL_CTX(ssl));
  if (c == nullptr) return 1;
  const std::string& list = c->client_sigalgs[SSL_version(ssl) >= TLS1_3_VERSION];
  if (!list.empty() && SSL_set1_client_sigalgs_list(ssl, list.c_str()) != 1) ERR_clear_error();
  return 1;
}

// The alert :ssl refuses a certificate signed as `x` is with, in a
// client's path checked for TLS 1.3 (`v13`) or 1.2; 0 when it takes it.
int cert_sig_alert(const CtxData& c, bool v13, X509* x) {
  int nid = X509_get_signature_nid(x);
  int md = NID_undef;
  if (nid == NID_rsassaPss && X509_get_signature_info(x, &md, nullptr, nullptr, nullptr) != 1)
    md = NID_undef;
  for (const CtxData::SigRule& r : c.cert_sigs[v13])
    if (r.nid == nid && r.md_nid == md) return r.alert;
  return SSL_AD_INTERNAL_ERROR;
}

// OpenSSL's purpose check refused `x` (its error) for its extended key
// usage: the verdict :ssl gives instead (see CtxData).
int purpose_verdict(const CtxData& c, X509_STORE_CTX* xs, X509* x) {
  uint32_t xku = X509_get_extended_key_usage(x);  // UINT32_MAX: no such extension
  if (xku == UINT32_MAX || (xku & XKU_SSL_CLIENT) != 0) {
    // Not its extended key usage: the client's own certificate's key usage
    // (or Netscape certificate type), which ssl 10 does not check.
    if (c.leaf_key_usage_ignored && X509_STORE_CTX_get_error_depth(xs) == 0) {
      X509_STORE_CTX_set_error(xs, X509_V_OK);
      return 1;
    }
    return 0;
  }
  if (c.allow_any_ca_purpose && X509_STORE_CTX_get_error_depth(xs) > 0 && (xku & XKU_ANYEKU) != 0) {
    X509_STORE_CTX_set_error(xs, X509_V_OK);
    return 1;
  }
  // (OpenSSL answers this error with handshake_failure.)
  if (c.eku_handshake_failure) X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
  return 0;
}

// An error of OpenSSL's chain check, as an error OpenSSL answers with the
// alert :ssl sends for the same chain (ssl_handshake's
// path_validation_alert on public_key's reason); others are left as they
// are (OpenSSL's alert is :ssl's: expired, unknown issuer...).
int ssl_verify_error(int err) {
  switch (err) {
    // {bad_cert, cert_expired}, for a certificate not valid yet too:
    // certificate_expired (OpenSSL: bad_certificate).
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return X509_V_ERR_CERT_HAS_EXPIRED;
    // {bad_cert, selfsigned_peer}: bad_certificate (OpenSSL: unknown_ca).
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      return X509_V_ERR_CERT_REJECTED;
    // {bad_cert, max_path_length_reached} (depth, pathLenConstraint),
    // missing_basic_constraint and invalid_key_usage (an issuer that is no
    // CA, or may not sign certificates): handshake_failure (OpenSSL:
    // unknown_ca, and certificate_unknown for the key usage).
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
    case X509_V_ERR_INVALID_CA:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
      return X509_V_ERR_APPLICATION_VERIFICATION;
    default:
      return err;
  }
}

// A certificate of the client's path that its issuer did not sign
// (OpenSSL: decrypt_error). :ssl looks for the issuer of a certificate
// among the trusted ones by signature, unless the certificate names it by
// name and serial number (its authority key identifier): it finds none
// (unknown_ca). An issuer found by that name, or one the client sent, is
// taken, and the signature refused (invalid_signature: bad_certificate).
int bad_signature_error(X509_STORE_CTX* xs) {
  X509* x = X509_STORE_CTX_get_current_cert(xs);
  if (x != nullptr && X509_get0_authority_issuer(x) != nullptr && X509_get0_authority_serial(x) != nullptr)
    return X509_V_ERR_CERT_REJECTED;
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(xs);
  int depth = X509_STORE_CTX_get_error_depth(xs);
  X509* issuer = chain != nullptr && depth + 1 < sk_X509_num(chain) ? sk_X509_value(chain, depth + 1) : nullptr;
  STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(xs);  // the client's chain, as sent
  for (int i = 0; issuer != nullptr && sent != nullptr && i < sk_X509_num(sent); ++i)
    if (X509_cmp(sk_X509_value(sent, i), issuer) == 0) return X509_V_ERR_CERT_REJECTED;
  return X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY;
}

// The per-certificate check of a context whose client chains OpenSSL
// verifies: after OpenSSL's own checks of a certificate, :ssl's verdict on
// a refused extended key usage (purpose_verdict), and :ssl's check of its
// signature algorithm, for each certificate of the path but the trust
// anchor (as :ssl, whose path validation starts below it), and :ssl's
// refusal of a lone self-signed certificate. A refusal sends the alert
// :ssl sends (OpenSSL's own errors become :ssl's alerts).
int check_cert(int ok, X509_STORE_CTX* xs) {
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx()));
  const CtxData* c = ssl != nullptr ? data_of(SSL_get_SSL_CTX(ssl)) : nullptr;
  if (c == nullptr) return ok;
  if (ok != 1) {
    int err = X509_STORE_CTX_get_error(xs);
    if (err == X509_V_ERR_INVALID_PURPOSE) return purpose_verdict(*c, xs, X509_STORE_CTX_get_current_cert(xs));
    int as_ssl = err == X509_V_ERR_CERT_SIGNATURE_FAILURE ? bad_signature_error(xs) : ssl_verify_error(err);
    if (as_ssl != err) X509_STORE_CTX_set_error(xs, as_ssl);
    return ok;
  }
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(xs);
  // The client sent one certificate, itself trusted (self-signed): :ssl
  // refuses a lone self-signed certificate, trusted or not (selfsigned_peer,
  // bad_certificate).
  STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(xs);
  if (X509_STORE_CTX_get_error_depth(xs) == 0 && chain != nullptr && sk_X509_num(chain) == 1 && sent != nullptr &&
      sk_X509_num(sent) == 1) {
    X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  if (!c->cert_sig_check) return 1;
  if (chain == nullptr || X509_STORE_CTX_get_error_depth(xs) >= sk_X509_num(chain) - 1) return 1;
  int alert = cert_sig_alert(*c, SSL_version(ssl) >= TLS1_3_VERSION, X509_STORE_CTX_get_current_cert(xs));
  if (alert == 0) return 1;
  // (OpenSSL answers these errors with bad_certificate, unsupported_certificate
  // and internal_error.)
  X509_STORE_CTX_set_error(xs, alert == SSL_AD_BAD_CERTIFICATE           ? X509_V_ERR_CERT_REJECTED
                               : alert == SSL_AD_UNSUPPORTED_CERTIFICATE ? X509_V_ERR_INVALID_PURPOSE
                                                                         : X509_V_ERR_UNSPECIFIED);
  return 0;
}

void push_der(std::vector<std::string>& out, X509* x) {
  int n = i2d_X509(x, nullptr);
  if (n <= 0) return;
  std::string der(static_cast<size_t>(n), '\0');
  auto* p = reinterpret_cast<unsigned char*>(&der[0]);
  i2d_X509(x, &p);
  out.push_back(std::move(der));
}

// The kept chain and its context's reference go (handed to Erlang, or the
// socket closes first).
void drop_peer_chain(Sock* s) {
  s->peer_chain.clear();
  s->peer_chain.shrink_to_fit();
  if (s->verify_ctx != nullptr) SSL_CTX_free(static_cast<SSL_CTX*>(s->verify_ctx));
  s->verify_ctx = nullptr;
}

// At the end of the handshake, under the lock: the chain the client sent,
// when its context leaves it to Erlang.
void keep_peer_chain(Sock* s) {
  SSL_CTX* ctx = SSL_get_SSL_CTX(s->ssl);
  CtxData* c = data_of(ctx);
  X509* leaf = SSL_get0_peer_certificate(s->ssl);
  if (c == nullptr || c->verify == 0 || leaf == nullptr) return;
  drop_peer_chain(s);  // (a handshake ends once; this only keeps it exact)
  s->peer_chain_tls13 = SSL_version(s->ssl) >= TLS1_3_VERSION;
  push_der(s->peer_chain, leaf);
  // On a server, the chain OpenSSL keeps does not hold the peer's own.
  STACK_OF(X509)* rest = SSL_get_peer_cert_chain(s->ssl);
  for (int i = 0; rest != nullptr && i < sk_X509_num(rest); i++) {
    X509* x = sk_X509_value(rest, i);
    if (X509_cmp(x, leaf) != 0) push_der(s->peer_chain, x);
  }
  SSL_CTX_up_ref(ctx);
  s->verify_ctx = ctx;
}

bool new_ssl(Sock* s, SSL_CTX* ctx) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return false;
  CtxData* c = data_of(ctx);
  bool takeover = c != nullptr && c->records;
  if (takeover && !records_start(s, ctx, c->key_update_at)) {
    SSL_free(ssl);
    return false;
  }
  // Reads of a handshake to be taken over go through records.cpp's BIO
  // (one syscall per flight), writes through a socket BIO; otherwise one
  // socket BIO does both. Kernel TLS needs socket BIOs.
  BIO* rbio = takeover && !ktls_available ? records_hs_bio(s) : nullptr;
  BIO* wbio = rbio != nullptr ? BIO_new_socket(s->fd, BIO_NOCLOSE) : nullptr;
  if (wbio != nullptr) {
    SSL_set_bio(ssl, rbio, wbio);
  } else {
    if (rbio != nullptr) BIO_free(rbio);
    if (SSL_set_fd(ssl, s->fd) != 1) {
      SSL_free(ssl);
      return false;
    }
    wbio = SSL_get_wbio(ssl);  // the same socket BIO reads
  }
  BIO_set_callback_arg(wbio, reinterpret_cast<char*>(s));
  BIO_set_callback_ex(wbio, sock_bio_cb);
  SSL_set_accept_state(ssl);
  SSL_set_app_data(ssl, s);
  s->ssl = ssl;
  s->tag = Tag::Ssl;
  return true;
}

// Whether the kernel's TLS module (the "tls" TCP upper-layer protocol) is
// there. OpenSSL with SSL_OP_ENABLE_KTLS asks for it at every handshake;
// without it each ask fails, and where the process may load modules
// (CAP_NET_ADMIN: root) the kernel first runs modprobe, synchronously, on
// the scheduler thread doing the handshake. So the kernel is asked once,
// here (which loads the module where it exists), and kernel TLS is only
// enabled when the module is then listed.
bool ulp_listed() {
  FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_available_ulp", "re");
  if (f == nullptr) return false;
  char buf[512];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  char* save = nullptr;
  for (char* name = strtok_r(buf, " \n", &save); name != nullptr; name = strtok_r(nullptr, " \n", &save))
    if (std::strcmp(name, "tls") == 0) return true;
  return false;
}

bool probe_ktls() {
  if (ulp_listed()) return true;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // Fails on an unconnected socket either way; only the module load matters.
  static const char ulp[] = "tls";
  (void)setsockopt(fd, SOL_TCP, TCP_ULP, ulp, sizeof ulp);
  close(fd);
  return ulp_listed();
}

}  // namespace

// An alert received or sent, or closed.
ERL_NIF_TERM tls_failure_term(ErlNifEnv* env, int code) {
  if (code & kAlertReceived) return alert_term(env, code & 0xff, true);
  if (code & kAlertSent) return alert_term(env, code & 0xff, false);
  return atom.closed;
}

// kernel_tls() -> boolean(): whether handshakes try kernel TLS (see above).
ERL_NIF_TERM nif_kernel_tls(ErlNifEnv*, int, const ERL_NIF_TERM*) {
  return ktls_available ? atom.true_ : atom.false_;
}

bool open_tls_types(ErlNifEnv* env) {
  ktls_available = probe_ktls();
  cache_size_bias = probe_cache_bias();
  records_init();
  auto flags = static_cast<ErlNifResourceFlags>(ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER);
  ctx_type = enif_open_resource_type(env, nullptr, "islet_tls_ctx", ctx_dtor, flags, nullptr);
  if (ctx_data_index < 0)
    ctx_data_index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, ctx_data_free);
  if (psk_index < 0) psk_index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_offered_psks);
  return ctx_type != nullptr && ctx_data_index >= 0;
}

// OpenSSL's error queue must be empty before an SSL call for SSL_get_error
// to be right. Other NIFs on this thread (crypto's) may leave entries, so it
// is checked, but only cleared (16 slots) when something is there.
inline void clear_errors() {
  if (ERR_peek_error() != 0) ERR_clear_error();
}

ssize_t tls_read(Sock* s, void* buf, size_t n, int* err) {
  if (s->rec != nullptr) return records_read(s, buf, n, err);
  clear_errors();
  s->tls_short_read = false;  // set by sock_bio_cb if this call reads the socket
  int r = SSL_read(s->ssl, buf, static_cast<int>(n > INT32_MAX ? INT32_MAX : n));
  if (r > 0) return r;
  switch (SSL_get_error(s->ssl, r)) {
    case SSL_ERROR_WANT_READ:
      // Idle: give the read buffer back (OpenSSL keeps it after a read that
      // found nothing, ~17 KB per idle connection); no-op if data waits.
      SSL_free_buffers(s->ssl);
      return kWantRead;
    case SSL_ERROR_WANT_WRITE:
      return kWantWrite;
    case SSL_ERROR_ZERO_RETURN:
      return 0;  // close_notify
    case SSL_ERROR_SYSCALL:
      if (errno == EAGAIN || errno == EWOULDBLOCK) return kWantRead;
      if (errno == 0) return 0;  // EOF without close_notify
      *err = errno;
      return kReadError;
    default: {
      // A fatal TLS error ends the connection: with the alert sent or
      // received, as :ssl reports it, else closed.
      int code = failure_code(s);
      if (code == 0) return 0;
      *err = code;
      return kTlsFailed;
    }
  }
}

bool tls_may_have_more(Sock* s) {
  if (s->rec != nullptr) return records_may_have_more(s);
  return !s->tls_short_read || SSL_has_pending(s->ssl) == 1 ||
         BIO_pending(SSL_get_rbio(s->ssl)) > 0;
}

int tls_drain(Sock* s) {
  if (s->rec != nullptr) return records_drain(s);
  // Plaintext is gathered into one record-sized slice; a retry after
  // WANT_WRITE sees the same queue head and so passes the same bytes, as
  // OpenSSL requires (with SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
  static thread_local unsigned char rec[16384];
  size_t budget = 256u << 10;
  while (enif_ioq_size(s->wioq) > 0) {
    if (budget == 0) return kMoreWork;
    int iovcnt;
    SysIOVec* iov = enif_ioq_peek(s->wioq, &iovcnt);
    size_t len = 0;
    for (int i = 0; i < iovcnt && len < sizeof rec; i++) {
      size_t take = std::min(iov[i].iov_len, sizeof rec - len);
      std::memcpy(rec + len, iov[i].iov_base, take);
      len += take;
    }
    clear_errors();
    int r = SSL_write(s->ssl, rec, static_cast<int>(len));
    if (r > 0) {
      enif_ioq_deq(s->wioq, r, nullptr);
      s->send_oct += r;
      budget = budget > static_cast<size_t>(r) ? budget - r : 0;
      continue;
    }
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return EAGAIN;
    if (e == SSL_ERROR_SYSCALL && errno != 0) return errno == EAGAIN ? EAGAIN : errno;
    ERR_clear_error();
    return EPIPE;
  }
  return 0;
}

bool tls_wire_bytes(Sock* s, uint64_t* in, uint64_t* out) {
  if (s->rec != nullptr) {
    records_wire_bytes(s, in, out);
    return true;
  }
  if (s->ssl == nullptr) return false;
  *in = BIO_number_read(SSL_get_rbio(s->ssl));
  *out = BIO_number_written(SSL_get_wbio(s->ssl));
  return true;
}

bool tls_ktls_send(Sock* s) {
  return s->ssl != nullptr && s->tls_done && BIO_get_ktls_send(SSL_get_wbio(s->ssl)) == 1;
}

ssize_t tls_sendfile(Sock* s, int fd, off_t* offset, size_t count) {
  ERR_clear_error();
  ossl_ssize_t n = SSL_sendfile(s->ssl, fd, *offset, count, 0);
  if (n > 0) {
    *offset += n;
    return n;
  }
  int e = SSL_get_error(s->ssl, static_cast<int>(n));
  ERR_clear_error();
  if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) errno = EAGAIN;
  else if (errno == 0) errno = EPIPE;
  return -1;
}

// Data OpenSSL holds that no readiness event will announce: decrypted bytes,
// or records read ahead from the socket.
bool tls_pending(Sock* s) {
  if (s->rec != nullptr) return records_pending(s);
  // A handshake's read BIO may hold what the client sent after it.
  return s->ssl != nullptr && s->tls_done &&
         (SSL_has_pending(s->ssl) || BIO_pending(SSL_get_rbio(s->ssl)) > 0);
}

bool tls_attach(Sock* l, Sock* c) { return new_ssl(c, l->ctx); }

void tls_close_notify(Sock* s) {
  if (s->rec != nullptr) {
    if (!s->peer_closed) records_close_notify(s);  // the client closed first: nothing owed
    return;
  }
  if (s->ssl == nullptr || !s->tls_done) return;
  if (s->peer_closed) {
    // The client closed first: nothing to send, but mark the shutdown done,
    // or SSL_free takes the session out of the cache and a TLS 1.2 client
    // cannot resume it (as it can with :ssl). A close_notify the socket
    // refused before is not owed either: tls_flush must not wait for it.
    SSL_set_shutdown(s->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    s->tls_shutdown_blocked = false;
    return;
  }
  // Sent already (a shutdown, then close): a second SSL_shutdown would
  // read, waiting for the client's close_notify. Refused by the socket:
  // SSL_shutdown writes the alert OpenSSL kept.
  if ((SSL_get_shutdown(s->ssl) & SSL_SENT_SHUTDOWN) && !s->tls_shutdown_blocked) return;
  ERR_clear_error();
  int r = SSL_shutdown(s->ssl);
  s->tls_shutdown_blocked = r < 0 && SSL_get_error(s->ssl, r) == SSL_ERROR_WANT_WRITE;
  ERR_clear_error();
}

size_t tls_unsent(const Sock* s) {
  if (s->rec != nullptr) return records_unsent(s);
  return s->tls_shutdown_blocked ? 1 : 0;
}

int tls_flush(Sock* s) {
  if (s->rec != nullptr) return records_flush(s);
  if (s->tls_shutdown_blocked && s->ssl != nullptr) tls_close_notify(s);
  return s->tls_shutdown_blocked ? EAGAIN : 0;
}

// tls_sweep() -> Count: frees the cipher contexts of TLS connections idle
// since the previous call (Islet.TLS.Sweeper calls it every few seconds).
ERL_NIF_TERM nif_tls_sweep(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return enif_make_uint64(env, records_sweep());
}

void tls_free(Sock* s) {
  records_free(s);
  if (s->ssl != nullptr) {
    SSL_free(s->ssl);
    s->ssl = nullptr;
  }
  if (s->ctx != nullptr) {
    SSL_CTX_free(s->ctx);
    s->ctx = nullptr;
  }
  if (s->sni_ctx != nullptr) {
    SSL_CTX_free(static_cast<SSL_CTX*>(s->sni_ctx));
    s->sni_ctx = nullptr;
  }
  drop_peer_chain(s);
}

// tls_ctx([{Key, Value}]) -> {ok, Ctx} | {error, Reason}
ERL_NIF_TERM nif_tls_ctx(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  if (!enif_is_list(env, argv[0])) return enif_make_badarg(env);
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return make_error(env, atom.enomem);
  auto* handle = static_cast<CtxRes*>(enif_alloc_resource(ctx_type, sizeof(CtxRes)));
  handle->ctx = ctx;
  ERL_NIF_TERM res = enif_make_resource(env, handle);
  enif_release_resource(handle);  // the term owns it; an error below frees it with the term
  CtxData* c = new CtxData();
  SSL_CTX_set_ex_data(ctx, ctx_data_index, c);

  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // One read() for a record's header and body (and whatever follows it),
  // not two: what is read ahead is found by tls_pending.
  SSL_CTX_set_read_ahead(ctx, 1);
  // Kernel TLS where the kernel (its tls module, probed once at load) and
  // OpenSSL have it: sendfile/4 is then zero-copy through SSL_sendfile.
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  if (ktls_available) SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // :ssl has no security levels: the listener's options are its policy,
  // and it takes the certificates and keys it is given (RSA-1024, SHA-1
  // signatures), its own and its clients'. OpenSSL's level from the system
  // configuration (Debian's is 2) refused them: a listener whose RSA-1024
  // certificate :ssl serves failed every handshake. Suites and versions
  // come from :ssl's defaults or the options, groups and signature
  // algorithms from the options or OpenSSL's defaults (which :ssl's cover),
  // so level 0 adds nothing weaker than :ssl offers.
  SSL_CTX_set_security_level(ctx, 0);
  SSL_CTX_set_info_callback(ctx, info_cb);
  SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, nullptr);
  SSL_CTX_set_num_tickets(ctx, 0);  // :ssl's default: session_tickets disabled
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  // (A fixed session id context until the options are read: see
  // set_session_context.)
  static const unsigned char sid_ctx[] = "islet";
  SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);

  bool have_cert = false;
  int verify = SSL_VERIFY_NONE;
  // A context to try group and signature names on, made when needed.
  SSLCtxPtr scratch;
  ERL_NIF_TERM head, tail = argv[0];
  while (enif_get_list_cell(env, tail, &head, &tail)) {
    int arity;
    const ERL_NIF_TERM* kv;
    char key[32];
    int key_len;
    if (!enif_get_tuple(env, head, &arity, &kv) || arity != 2 ||
        (key_len = enif_get_atom(env, kv[0], key, sizeof key, ERL_NIF_LATIN1)) <= 0)
      return enif_make_badarg(env);
    std::string k(key, key_len - 1);  // the whole atom: 'cert_key\0x' is not cert_key
    ErlNifBinary b;
    int i;
    if (k == "cert_key") {
      if (const char* what = use_cert_key(env, ctx, kv[1])) return opt_error(env, kv[0], what);
      have_cert = true;
    } else if (k == "cacerts") {
      std::vector<ErlNifBinary> cas;
      if (!bin_list(env, kv[1], &cas)) return enif_make_badarg(env);
      X509_STORE* store = SSL_CTX_get_cert_store(ctx);
      // Their names go in the CertificateRequest, as :ssl's server sends
      // them (a client may pick its certificate by them).
      STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
      for (const ErlNifBinary& der : cas) {
        X509* x = der_cert(der);
        if (x == nullptr) {
          sk_X509_NAME_pop_free(names, X509_NAME_free);
          return opt_error(env, kv[0], "bad_cert");
        }
        X509_STORE_add_cert(store, x);
        X509_NAME* name = names != nullptr ? X509_NAME_dup(X509_get_subject_name(x)) : nullptr;
        if (name != nullptr && sk_X509_NAME_push(names, name) == 0) X509_NAME_free(name);
        X509_free(x);
      }
      if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);  // takes it
    } else if (k == "verify_peer") {
      if (get_bool(kv[1])) verify |= SSL_VERIFY_PEER;
    } else if (k == "fail_if_no_peer_cert") {
      if (get_bool(kv[1])) verify |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    } else if (k == "depth") {
      if (!enif_get_int(env, kv[1], &i) || i < 0) return enif_make_badarg(env);
      SSL_CTX_set_verify_depth(ctx, i);
    } else if (k == "min_version" || k == "max_version") {
      if (!enif_get_int(env, kv[1], &i)) return enif_make_badarg(env);
      if (k == "min_version")
        SSL_CTX_set_min_proto_version(ctx, i);
      else
        SSL_CTX_set_max_proto_version(ctx, i);
    } else if (k == "cipher_list" || k == "ciphersuites") {
      if (!enif_inspect_binary(env, kv[1], &b)) return enif_make_badarg(env);
      std::string v(reinterpret_cast<const char*>(b.data), b.size);
      int ok = k == "cipher_list" ? SSL_CTX_set_cipher_list(ctx, v.c_str())
                                  : SSL_CTX_set_ciphersuites(ctx, v.c_str());
      (k == "cipher_list" ? c->cipher_list : c->ciphersuites) = v;
      ERR_clear_error();
      if (ok != 1) return opt_error(env, enif_make_atom(env, "ciphers"), "no_supported_ciphers");
    } else if (k == "honor_cipher_order") {
      if (get_bool(kv[1])) SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    } else if (k == "alpn") {
      std::vector<ErlNifBinary> protos;
      if (!bin_list(env, kv[1], &protos)) return enif_make_badarg(env);
      for (const ErlNifBinary& p : protos) {
        if (p.size == 0 || p.size > 255) return opt_error(env, kv[0], "bad_protocol");
        c->alpn.push_back(static_cast<unsigned char>(p.size));
        c->alpn.insert(c->alpn.end(), p.data, p.data + p.size);
      }
      if (!c->alpn.empty()) SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, nullptr);
    } else if (k == "session_tickets") {
      char v[16];
      if (!enif_get_atom(env, kv[1], v, sizeof v, ERL_NIF_LATIN1)) return enif_make_badarg(env);
      if (std::strcmp(v, "stateless") == 0) {
        SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 1);
      } else if (std::strcmp(v, "stateful") == 0) {
        SSL_CTX_set_num_tickets(ctx, 1);  // NO_TICKET + TLS 1.3: stateful
      }
    } else if (k == "session_cache_size") {
      // As :ssl bounds its session stores (Islet.TLS.Options); OpenSSL's
      // default is 20480, and 0 would mean no bound.
      long n;
      if (!enif_get_long(env, kv[1], &n) || n <= 0) return enif_make_badarg(env);
      SSL_CTX_sess_set_cache_size(ctx, n < LONG_MAX ? n + cache_size_bias : n);
    } else if (k == "session_lifetime") {
      // Seconds a session stays resumable (TLS 1.2; TLS 1.3 tickets below).
      long n;
      if (!enif_get_long(env, kv[1], &n) || n <= 0) return enif_make_badarg(env);
      SSL_CTX_set_timeout(ctx, n);
    } else if (k == "ticket_lifetime") {
      // A TLS 1.3 ticket's lifetime (and its session's), set as each ticket
      // is made: OpenSSL has one timeout per context, :ssl two settings.
      long n;
      if (!enif_get_long(env, kv[1], &n) || n <= 0) return enif_make_badarg(env);
      SSL_CTX_set_session_ticket_cb(ctx, ticket_lifetime_cb, ticket_decrypted_cb,
                                    reinterpret_cast<void*>(static_cast<intptr_t>(n)));
    } else if (k == "tickets_amount") {
      // TLS 1.3 tickets per handshake, once session_tickets enabled them.
      unsigned long n;
      if (!enif_get_ulong(env, kv[1], &n) || n == 0) return enif_make_badarg(env);
      SSL_CTX_set_num_tickets(ctx, n);
    } else if (k == "reuse_sessions") {
      SSL_CTX_set_session_cache_mode(ctx, get_bool(kv[1]) ? SSL_SESS_CACHE_SERVER
                                                          : SSL_SESS_CACHE_OFF);
    } else if (k == "sni_hosts") {
      ERL_NIF_TERM h2, t2 = kv[1];
      while (enif_get_list_cell(env, t2, &h2, &t2)) {
        const ERL_NIF_TERM* pair;
        CtxRes* hc;
        if (!enif_get_tuple(env, h2, &arity, &pair) || arity != 2 ||
            !enif_inspect_binary(env, pair[0], &b) ||
            !enif_get_resource(env, pair[1], ctx_type, reinterpret_cast<void**>(&hc)))
          return enif_make_badarg(env);
        SSL_CTX_up_ref(hc->ctx);
        c->sni_hosts.push_back({std::string(reinterpret_cast<const char*>(b.data), b.size), hc->ctx});
      }
    } else if (k == "groups12" || k == "groups13") {
      // Names OpenSSL does not have are dropped, as :ssl drops the names
      // it does not know.
      int v = k == "groups13";
      std::vector<ErlNifBinary> names;
      if (!bin_list(env, kv[1], &names)) return enif_make_badarg(env);
      if (!scratch && !(scratch = SSLCtxPtr(SSL_CTX_new(TLS_server_method())))) return make_error(env, atom.enomem);
      c->has_groups[v] = true;
      c->groups[v].clear();
      c->group_names[v].clear();
      for (const ErlNifBinary& n : names) {
        std::string name(reinterpret_cast<const char*>(n.data), n.size);
        int nid = OBJ_sn2nid(name.c_str());
        bool ok = nid != NID_undef && SSL_CTX_set1_groups(scratch.get(), &nid, 1) == 1;
        // No NID: an ML-KEM group, when this OpenSSL has it (3.5+).
        for (const KemGroup& g : kem_groups)
          if (nid == NID_undef && name == g.name &&
              SSL_CTX_set1_groups_list(scratch.get(), g.name) == 1) {
            nid = kem_nid(g.id);
            ok = true;
          }
        if (!ok) continue;
        c->groups[v].push_back(nid);
        if (!c->group_names[v].empty()) c->group_names[v] += ':';
        c->group_names[v] += name;
      }
      ERR_clear_error();
    } else if (k == "sigalgs") {
      std::vector<ErlNifBinary> names;
      if (!bin_list(env, kv[1], &names)) return enif_make_badarg(env);
      if (!scratch && !(scratch = SSLCtxPtr(SSL_CTX_new(TLS_server_method())))) return make_error(env, atom.enomem);
      std::string list;
      for (const ErlNifBinary& n : names) {
        std::string name(reinterpret_cast<const char*>(n.data), n.size);
        if (SSL_CTX_set1_sigalgs_list(scratch.get(), name.c_str()) != 1) continue;
        list += (list.empty() ? "" : ":") + name;
      }
      ERR_clear_error();
      if (list.empty() || SSL_CTX_set1_sigalgs_list(ctx, list.c_str()) != 1)
        return opt_error(env, enif_make_atom(env, "signature_algs"), "no_supported_signature_schemes");
    } else if (k == "client_sigalgs") {
      // {Names12, Names13}: names OpenSSL does not know are dropped (and
      // with them the list, if none is left: OpenSSL's default stays).
      const ERL_NIF_TERM* per;
      if (!enif_get_tuple(env, kv[1], &arity, &per) || arity != 2) return enif_make_badarg(env);
      if (!scratch && !(scratch = SSLCtxPtr(SSL_CTX_new(TLS_server_method())))) return make_error(env, atom.enomem);
      for (int v = 0; v < 2; v++) {
        std::vector<ErlNifBinary> names;
        if (!bin_list(env, per[v], &names)) return enif_make_badarg(env);
        c->client_sigalgs[v].clear();
        for (const ErlNifBinary& n : names) {
          std::string name(reinterpret_cast<const char*>(n.data), n.size);
          if (SSL_CTX_set1_client_sigalgs_list(scratch.get(), name.c_str()) != 1) continue;
          c->client_sigalgs[v] += (c->client_sigalgs[v].empty() ? "" : ":") + name;
        }
      }
      ERR_clear_error();
      if (!c->client_sigalgs[0].empty() || !c->client_sigalgs[1].empty())
        SSL_CTX_set_cert_cb(ctx, cert_cb, nullptr);
    } else if (k == "eku_handshake_failure") {
      c->eku_handshake_failure = get_bool(kv[1]);
    } else if (k == "allow_any_ca_purpose") {
      c->allow_any_ca_purpose = get_bool(kv[1]);
    } else if (k == "leaf_key_usage_ignored") {
      c->leaf_key_usage_ignored = get_bool(kv[1]);
    } else if (k == "cert_sigs") {
      // {Rules12, Rules13}, each [{SigOid, HashOid, Alert}] (dotted OIDs;
      // the hash for RSASSA-PSS only, else ""). OIDs OpenSSL does not
      // know cannot name a certificate's algorithm here: dropped.
      const ERL_NIF_TERM* per;
      if (!enif_get_tuple(env, kv[1], &arity, &per) || arity != 2) return enif_make_badarg(env);
      for (int v = 0; v < 2; v++) {
        c->cert_sigs[v].clear();
        ERL_NIF_TERM rh, rt = per[v];
        while (enif_get_list_cell(env, rt, &rh, &rt)) {
          const ERL_NIF_TERM* r;
          ErlNifBinary oid, hash;
          int alert;
          if (!enif_get_tuple(env, rh, &arity, &r) || arity != 3 || !enif_inspect_binary(env, r[0], &oid) ||
              !enif_inspect_binary(env, r[1], &hash) || !enif_get_int(env, r[2], &alert) || alert < 0 ||
              alert > 255)
            return enif_make_badarg(env);
          int nid = oid_nid(oid);
          int md = hash.size == 0 ? NID_undef : oid_nid(hash);
          if (nid != NID_undef && (hash.size == 0 || md != NID_undef))
            c->cert_sigs[v].push_back({nid, md, alert});
        }
        if (!enif_is_empty_list(env, rt)) return enif_make_badarg(env);
      }
      c->cert_sig_check = true;
    } else if (k == "dh") {
      // PKCS #3 DH parameters (dh, or dhfile's PEM), for the DHE suites.
      if (!enif_inspect_binary(env, kv[1], &b)) return enif_make_badarg(env);
      const unsigned char* p = b.data;
      EVP_PKEY* params = d2i_KeyParams(EVP_PKEY_DH, nullptr, &p, static_cast<long>(b.size));
      if (params == nullptr || SSL_CTX_set0_tmp_dh_pkey(ctx, params) != 1) {
        EVP_PKEY_free(params);
        ERR_clear_error();
        return opt_error(env, kv[0], "bad_dh_params");
      }
      c->dh = true;
    } else if (k == "dh_auto") {
      // DHE suites asked for without parameters: :ssl has default ones;
      // OpenSSL picks an RFC 7919 group matching the certificate's strength.
      SSL_CTX_set_dh_auto(ctx, 1);
      c->dh = true;
    } else if (k == "max_handshake_size") {
      if (!enif_get_int(env, kv[1], &i) || i <= 0) return enif_make_badarg(env);
      SSL_CTX_set_max_cert_list(ctx, i);
    } else if (k == "honor_ecc_order") {
      c->honor_ecc_order = get_bool(kv[1]);
    } else if (k == "certificate_authorities") {
      c->no_ca_names13 = !get_bool(kv[1]);
    } else if (k == "key_update_at") {
      ErlNifUInt64 n;
      if (!enif_get_uint64(env, kv[1], &n)) return enif_make_badarg(env);
      c->key_update_at = n;
    } else if (k == "records") {
      c->records = get_bool(kv[1]);
    } else if (k == "sni_fun") {
      // Kept with the context and handed back when a handshake pauses.
      // Named twice, the last one wins (the first copy stays in the env
      // until the context goes).
      c->sni_fun = true;
      if (c->data_env == nullptr) c->data_env = enif_alloc_env();
      c->data = enif_make_copy(c->data_env, kv[1]);
    } else if (k == "erl_verify") {
      // Islet.TLS.Verify's data: kept with the context, handed back with a
      // client's chain.
      if (c->data_env == nullptr) c->data_env = enif_alloc_env();
      c->verify = enif_make_copy(c->data_env, kv[1]);
      SSL_CTX_set_cert_verify_callback(ctx, accept_chain, nullptr);
    } else if (k == "deferred_error") {
      if (!plain_term(env, kv[1], 0)) return enif_make_badarg(env);
      if (c->data_env == nullptr) c->data_env = enif_alloc_env();
      c->deferred = enif_make_copy(c->data_env, kv[1]);
    } else {
      return enif_make_badarg(env);
    }
  }
  // Without a default certificate, only clients whose SNI names a host of
  // sni_hosts / sni_fun can complete a handshake (as with :ssl).
  if (!have_cert && !c->sni_fun && c->sni_hosts.empty() && c->deferred == 0)
    return opt_error(env, enif_make_atom(env, "certfile"), "missing");
  // (check_cert also gives OpenSSL's verify errors :ssl's alerts: always.)
  SSL_CTX_set_verify(ctx, verify, check_cert);
  if (c->has_groups[1] && !c->groups[1].empty()) set_groups(ctx, c, 1);
  build_chains(ctx);
  set_session_context(ctx, verify);
  if (c->records) {
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    SSL_CTX_set_msg_callback(ctx, message_cb);
  }
  return make_ok(env, res);
}

namespace {
bool get_ctx(ErlNifEnv* env, ERL_NIF_TERM t, CtxRes** out) {
  return enif_get_resource(env, t, ctx_type, reinterpret_cast<void**>(out)) != 0;
}
}  // namespace

// tls_listener(Listener, Ctx) -> ok: accepted sockets speak TLS.
ERL_NIF_TERM nif_tls_listener(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* l;
  CtxRes* c;
  if (!get_sock(env, argv[0], &l) || !get_ctx(env, argv[1], &c)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(l->mu);
  if (l->kind != Kind::Listener || l->ctx != nullptr) return enif_make_badarg(env);
  // Closed meanwhile (by another process): it keeps no context (see
  // sock_close), and accept answers closed.
  if (!l->open) return atom.ok;
  SSL_CTX_up_ref(c->ctx);
  l->ctx = c->ctx;
  l->tag = Tag::Ssl;
  return atom.ok;
}

// tls_upgrade_pause(Sock) -> {ok, Active} | {error, Reason}: STARTTLS, step
// one. As :ssl.handshake/2 does with a gen_tcp socket before it builds
// anything (ssl sets {active, false} right after checking the options),
// the plain socket goes passive at once, whoever calls, so that the
// client's first flight is not delivered as {tcp, S, Data} while the
// context is built. Active is the mode it had (0 false, -1 true, -2 once,
// n > 0): the TLS connection takes it once the handshake is done, and a
// context that cannot be built gives it back (:ssl leaves the socket as it
// was when the options are refused).
ERL_NIF_TERM nif_tls_upgrade_pause(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open) return make_error(env, atom.closed);
  if (s->kind != Kind::Conn || is_tls(s)) return make_error(env, atom.einval);
  int active = s->active;
  if (active != 0) {
    s->active = 0;
    poller_disarm(env, s);
  }
  return make_ok(env, enif_make_int(env, active));
}

// tls_upgrade(Sock, Ctx) -> ok | {error, Reason}: STARTTLS, step two (after
// tls_upgrade_pause), on a connected plain socket; the handshake follows.
// Only the owner may (:ssl's handshake hands the port to its connection
// process, which only the owner can do); the socket then stays passive.
ERL_NIF_TERM nif_tls_upgrade(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  CtxRes* c;
  if (!get_sock(env, argv[0], &s) || !get_ctx(env, argv[1], &c)) return enif_make_badarg(env);
  ErlNifPid me = self_of(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open) return make_error(env, atom.closed);
  if (s->kind != Kind::Conn || is_tls(s)) return make_error(env, atom.einval);
  if (enif_compare_pids(&s->owner, &me) != 0) return make_error(env, atom.not_owner);
  // Set active meanwhile (another process's setopts): passive again.
  if (s->active != 0) {
    s->active = 0;
    poller_disarm(env, s);
  }
  if (!new_ssl(s, c->ctx)) return make_error(env, atom.enomem);
  // Now a TLS connection: its owner is monitored, as :ssl's connection
  // process monitors the process that owns it.
  owner_watch_by_monitor(env, s);
  return atom.ok;
}

// tls_set_ctx(Sock, Ctx) -> ok: the context an sni_fun chose.
ERL_NIF_TERM nif_tls_set_ctx(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  CtxRes* c = nullptr;
  if (!get_sock(env, argv[0], &s) ||
      (!enif_is_identical(argv[1], atom.undefined) && !get_ctx(env, argv[1], &c)))
    return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || s->ssl == nullptr) return make_error(env, atom.closed);
  if (c != nullptr) switch_ctx(s->ssl, c->ctx);
  s->sni_resolved = true;
  return atom.ok;
}

// tls_verify_failed(Sock, Alert) -> {error, {tls_alert, _}}: Islet.TLS.Verify
// rejected the client's chain: our fatal alert goes out (on Islet's record
// layer; a connection left with OpenSSL is only closed, as OpenSSL 3.0 has
// no call that sends an alert of our choosing) and no close_notify follows.
ERL_NIF_TERM nif_tls_verify_failed(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  int desc;
  if (!get_sock(env, argv[0], &s) || !enif_get_int(env, argv[1], &desc) || desc < 0 || desc > 255)
    return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open) return make_error(env, atom.closed);
  if (!is_tls(s) || s->kind != Kind::Conn) return make_error(env, atom.einval);
  if (s->verify_hold) {
    // A TLS 1.2 handshake held before the server's last flight: the
    // server's records are still plaintext, and the alert comes before the
    // client's handshake can end, as :ssl sends it.
    s->verify_hold = false;
    send_plain_alert(s->fd, desc);
  } else if (s->rec != nullptr) {
    records_fail(s, static_cast<uint8_t>(desc));
  }
  // The handshake did not succeed after all: close sends no close_notify,
  // and the session goes out of the cache (the record layer's fail, or
  // SSL_free of an SSL object not shut down), so that it cannot be resumed.
  s->tls_done = false;
  s->peer_closed = true;
  return make_error(env, tls_failure_term(env, kAlertSent | desc));
}

// tls_linger(Sock) -> closed | {wait, Bytes} | {more, Bytes}
// After a handshake that ended in our alert: the FIN follows the alert, and
// what the client still sends is read and dropped. A TLS 1.3 client sends
// its first request right after its last flight, before it can have read
// an alert about that flight; closing with such bytes unread, or having
// them arrive once closed, makes the kernel answer with a reset, which can
// reach the client before it reads the alert (curl then reports a reset or
// a failed getpeername instead of certificate_required). Islet.TLS calls
// this until the client closes, within a time and byte bound, then closes.
ERL_NIF_TERM nif_tls_linger(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  ErlNifPid me = self_of(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || s->kind != Kind::Conn) return atom.closed;
  auto answer = [env](ERL_NIF_TERM tag, uint64_t n) {
    return enif_make_tuple2(env, tag, enif_make_uint64(env, n));
  };
  if (!s->rq.q.empty() && !s->rq.is_head(me)) {
    waiter_push(env, s, s->rq, me);
    return answer(atom.wait, 0);
  }
  if (s->rq.is_head(me)) s->rq.selected = 0;
  // A client refused at its ClientHello got nothing but the alert (at most
  // an encrypted alert record, 24 bytes, went through OpenSSL): it waits
  // for the server, and has nothing on the way to wait for.
  uint64_t in = 0, out = 0;
  if (!tls_wire_bytes(s, &in, &out) || out <= 24) {
    waiter_done(env, s, s->rq, me);
    return atom.closed;
  }
  // Every call (a few per connection): a second shutdown is harmless.
  ::shutdown(s->fd, SHUT_WR);
  static thread_local unsigned char sink[16384];
  uint64_t n = 0;
  for (;;) {
    ssize_t r = ::recv(s->fd, sink, sizeof sink, 0);
    if (r > 0) {
      n += static_cast<uint64_t>(r);
      if (n >= (256u << 10)) return answer(atom.more, n);  // a slice's worth
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (s->rq.q.empty()) waiter_push(env, s, s->rq, me);
      if (select_for(env, s, s->rq, me, ERL_NIF_SELECT_READ) < 0) break;
      return answer(atom.wait, n);
    }
    break;  // the client closed (or reset): done
  }
  waiter_done(env, s, s->rq, me);
  return atom.closed;
}

namespace {

// What a handshake step came to. A step on a dirty scheduler only runs
// OpenSSL and leaves this in the socket; the waiting, selecting and terms
// are done back on a normal scheduler (finish_step), so that nothing the
// BEAM allocates (monitors, select state, terms) is made on a dirty
// scheduler and freed on a normal one, which costs wake-ups of other threads.
enum class Step : uint8_t { Done, Read, Write, HelloCb, Dirty, Fail, Deferred, Verify };

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// SSL_do_handshake and what must run on the same thread (the error queue is
// per thread). Under the lock.
Step run_step(Sock* s, bool inline_step, int* code) {
  ERR_clear_error();
  s->tls_inline = inline_step;
  s->tls_want_dirty = false;
  int r = SSL_do_handshake(s->ssl);
  s->tls_inline = false;
  if (r == 1) {
    s->tls_done = true;
    if (!s->chain_checked) keep_peer_chain(s);
    use_up_ticket(s->ssl);
    // Islet's record layer takes over where it can (and frees the SSL
    // object); else the handshake's record buffers go, idle until data comes.
    if (!records_take_over(s)) SSL_free_buffers(s->ssl);
    return Step::Done;
  }
  int e = SSL_get_error(s->ssl, r);
  if (e == SSL_ERROR_WANT_READ || (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)))
    return Step::Read;
  if (e == SSL_ERROR_WANT_WRITE) return s->verify_hold ? Step::Verify : Step::Write;
  if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB) {
    if (deferred_of(s->ssl) != 0) return Step::Deferred;
    return s->tls_want_dirty ? Step::Dirty : Step::HelloCb;
  }
  *code = failure_code(s);
  if ((*code & kAlertSent) && s->tls_alert < 0) send_plain_alert(s->fd, *code & 0xff);
  return Step::Fail;
}

// {verify, [Der], Data, Version}: the client's chain for Islet.TLS.Verify,
// once.
ERL_NIF_TERM verify_answer(ErlNifEnv* env, Sock* s) {
  std::vector<ERL_NIF_TERM> ders;
  for (const std::string& d : s->peer_chain) {
    ERL_NIF_TERM t;
    std::memcpy(enif_make_new_binary(env, d.size(), &t), d.data(), d.size());
    ders.push_back(t);
  }
  CtxData* c = data_of(static_cast<SSL_CTX*>(s->verify_ctx));
  ERL_NIF_TERM data = c != nullptr && c->verify != 0 ? enif_make_copy(env, c->verify) : atom.undefined;
  drop_peer_chain(s);
  ERL_NIF_TERM version = enif_make_atom(env, s->peer_chain_tls13 ? "tlsv1.3" : "tlsv1.2");
  return enif_make_tuple4(env, enif_make_atom(env, "verify"),
                          enif_make_list_from_array(env, ders.data(), static_cast<unsigned>(ders.size())),
                          data, version);
}

ERL_NIF_TERM finish_step(ErlNifEnv* env, Sock* s, const ErlNifPid& me, Step step, int code) {
  switch (step) {
    case Step::Done:
      waiter_done(env, s, s->rq, me);
      if (!s->peer_chain.empty()) return verify_answer(env, s);
      return atom.ok;
    case Step::Read:
    case Step::Write: {
      if (s->rq.q.empty()) waiter_push(env, s, s->rq, me);
      int dir = step == Step::Read ? ERL_NIF_SELECT_READ : ERL_NIF_SELECT_WRITE;
      if (select_for(env, s, s->rq, me, dir) < 0) return make_error(env, atom.closed);
      return atom.wait;
    }
    case Step::Verify:
      // A TLS 1.2 server's last flight waits for Erlang's answer.
      waiter_done(env, s, s->rq, me);
      keep_peer_chain(s);
      if (!s->peer_chain.empty()) return verify_answer(env, s);
      s->verify_hold = false;  // (no chain after all: nothing to ask)
      if (s->rq.q.empty()) waiter_push(env, s, s->rq, me);
      if (select_for(env, s, s->rq, me, ERL_NIF_SELECT_WRITE) < 0) return make_error(env, atom.closed);
      return atom.wait;
    case Step::HelloCb: {
      ERL_NIF_TERM name;
      std::memcpy(enif_make_new_binary(env, s->sni.size(), &name), s->sni.data(), s->sni.size());
      CtxData* c = s->sni_ctx != nullptr ? data_of(static_cast<SSL_CTX*>(s->sni_ctx)) : nullptr;
      ERL_NIF_TERM data = c != nullptr && c->data_env != nullptr ? enif_make_copy(env, c->data)
                                                                 : atom.undefined;
      return enif_make_tuple3(env, enif_make_atom(env, "sni"), name, data);
    }
    case Step::Dirty:
    case Step::Fail:
    case Step::Deferred:
      break;
  }
  waiter_done(env, s, s->rq, me);
  s->peer_closed = true;
  if (step == Step::Deferred) return make_error(env, enif_make_copy(env, deferred_of(s->ssl)));
  return make_error(env, tls_failure_term(env, code));
}

ERL_NIF_TERM tls_handshake_dirty(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]);

// The socket of argv[0], open and handshaking; or the answer to give.
bool handshake_sock(ErlNifEnv* env, const ERL_NIF_TERM argv[], Sock** out, ERL_NIF_TERM* answer) {
  if (!get_sock(env, argv[0], out)) {
    *answer = enif_make_badarg(env);
    return false;
  }
  Sock* s = *out;
  if (!s->open) *answer = make_error(env, atom.closed);
  else if (!is_tls(s) || s->kind != Kind::Conn) *answer = make_error(env, atom.einval);
  else if (s->tls_done) *answer = atom.ok;
  else return true;
  return false;
}

ERL_NIF_TERM go_dirty(ErlNifEnv* env, const ERL_NIF_TERM argv[]) {
  return enif_schedule_nif(env, "tls_handshake", ERL_NIF_DIRTY_JOB_CPU_BOUND, tls_handshake_dirty,
                           1, argv);
}

// Back on a normal scheduler after a dirty step.
ERL_NIF_TERM tls_handshake_finish(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  ErlNifPid me = self_of(env);
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  bool pending = s->tls_step_pending;
  s->tls_step_pending = false;
  if (!s->open) return make_error(env, atom.closed);
  if (!pending) return s->tls_done ? atom.ok : make_error(env, atom.closed);
  return finish_step(env, s, me, static_cast<Step>(s->tls_step), s->tls_step_code);
}

ERL_NIF_TERM tls_handshake_dirty(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  ERL_NIF_TERM answer;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  bool stepped = false;
  {
    LongHold hold(s);  // calls from other processes wait on a dirty scheduler
    std::lock_guard<std::mutex> lk(s->mu);
    if (handshake_sock(env, argv, &s, &answer)) {
      int code = 0;
      s->tls_step = static_cast<uint8_t>(run_step(s, false, &code));
      s->tls_step_code = code;
      s->tls_step_pending = true;
      stepped = true;
    }
  }
  settle_downs(env, s);  // deaths during the step (the owner killed in it)
  if (s->pump_missed.load(std::memory_order_acquire) != 0) {
    std::lock_guard<std::mutex> lk(s->mu);
    pump_resume(env, s);  // what a pump passed over during the step
  }
  if (!stepped) return answer;
  return enif_schedule_nif(env, "tls_handshake", 0, tls_handshake_finish, 1, argv);
}

// A normal-scheduler step: inline unless it may be costly.
ERL_NIF_TERM handshake_step(ErlNifEnv* env, const ERL_NIF_TERM argv[]) {
  Sock* s;
  ERL_NIF_TERM answer;
  ErlNifPid me = self_of(env);
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::unique_lock<std::mutex> lk(s->mu);
  if (!handshake_sock(env, argv, &s, &answer)) return answer;
  if (!s->rq.q.empty() && !s->rq.is_head(me)) {
    waiter_push(env, s, s->rq, me);
    return atom.wait;
  }
  if (s->rq.is_head(me)) s->rq.selected = 0;
  if (s->verify_hold) {
    // Called again after {verify, ...}: Erlang accepted the chain (a
    // refusal calls tls_verify_failed instead), the last flight goes.
    s->verify_hold = false;
    s->chain_checked = true;
  }
  // The context's certificates or keys could not be loaded: fail before
  // OpenSSL reads anything, as :ssl does.
  if (deferred_of(s->ssl) != 0) return finish_step(env, s, me, Step::Deferred, 0);
  // A step that reads a ClientHello starts here and moves to a dirty
  // scheduler from the ClientHello callback if it must; a later step that
  // may be costly goes there at once.
  if (!SSL_in_before(s->ssl) && costly_later_step(s->ssl)) {
    lk.unlock();
    return go_dirty(env, argv);
  }
  int code = 0;
  int64_t t0 = now_ns();
  Step step = run_step(s, true, &code);
  // Tell the scheduler what the step cost: 1% of a slice per 10 us.
  int64_t pct = (now_ns() - t0) / 10000 + 1;
  enif_consume_timeslice(env, static_cast<int>(pct > 100 ? 100 : pct));
  if (step == Step::Dirty) {
    lk.unlock();
    return go_dirty(env, argv);  // the rest of the step is costly
  }
  return finish_step(env, s, me, step, code);
}

}  // namespace

// tls_handshake(Sock) -> ok | wait | {sni, Name, Data} | {error, Reason}
// Runs on the calling scheduler; a costly step (a private-key operation
// that takes long, see cheap_key) continues on a dirty CPU scheduler.
ERL_NIF_TERM nif_tls_handshake(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return handshake_step(env, argv);
}

// tls_info(Sock) -> {ok, [{Key, Value}]} | {error, Reason}
// protocol (0x0303 | 0x0304), cipher (IANA name), sni_hostname, alpn,
// session_id, peercert (DER) -- as far as each is known.
ERL_NIF_TERM nif_tls_info(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || ssl_gone(s)) return make_error(env, atom.closed);
  if (s->kind != Kind::Conn) return make_error(env, atom.enotconn);  // a listener, as :ssl's
  if (!is_tls(s)) return make_error(env, enif_make_atom(env, "not_secure"));
  if (!s->tls_done) return make_error(env, atom.notsup_before_handshake);
  TlsInfo from_ssl;
  if (s->rec == nullptr) tls_info_of(s->ssl, &from_ssl);
  const TlsInfo& info = s->rec != nullptr ? records_info(s) : from_ssl;
  std::vector<ERL_NIF_TERM> items;
  auto bin = [env](const void* p, size_t n) {
    ERL_NIF_TERM t;
    std::memcpy(enif_make_new_binary(env, n, &t), p, n);
    return t;
  };
  auto put = [&](const char* k, ERL_NIF_TERM v) {
    items.push_back(enif_make_tuple2(env, enif_make_atom(env, k), v));
  };
  put("protocol", enif_make_int(env, info.version));
  if (info.cipher != nullptr) put("cipher", bin(info.cipher, std::strlen(info.cipher)));
  if (!info.servername.empty())
    put("sni_hostname", bin(info.servername.data(), info.servername.size()));
  else if (!s->sni.empty())  // a resumed TLS 1.2 session: from the ClientHello
    put("sni_hostname", bin(s->sni.data(), s->sni.size()));
  if (!info.alpn.empty()) put("alpn", bin(info.alpn.data(), info.alpn.size()));
  if (info.has_session) put("session_id", bin(info.session_id, info.session_id_len));
  put("session_reused", info.reused ? atom.true_ : atom.false_);
  if (!info.peercert.empty()) put("peercert", bin(info.peercert.data(), info.peercert.size()));
  put("records", enif_make_atom(env, s->rec != nullptr ? "islet" : "openssl"));
  if (s->rec != nullptr) {
    put("cipher_contexts", enif_make_int(env, records_contexts(s)));
    // Only when there were any: the item is garbage in the process that
    // asks (connection_information runs in each connection's process, often
    // right after its handshake), and those few words moved the first GC of
    // the bench's idle handlers, which then kept their last message's
    // 200-word heap fragment: +1.6 KB of RSS per idle connection.
    if (uint64_t n = records_key_updates(s); n != 0) put("key_updates", enif_make_uint64(env, n));
  }
  return make_ok(env, enif_make_list_from_array(env, items.data(), items.size()));
}

}  // namespace islet
