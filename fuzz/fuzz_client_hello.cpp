// libFuzzer harness: TLS records from a hostile client through a server
// configured the way Islet's engine configures one (same context options and
// modes, ClientHello and ALPN callbacks over Islet's wire parsers), over
// memory BIOs. Catches memory errors in the callbacks' handling of whatever
// a ClientHello carries.
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "../c_src/wire.hpp"

namespace {

const unsigned char kAlpn[] = "\x02h2\x08http/1.1";

int client_hello_cb(SSL* ssl, int*, void*) {
  const unsigned char* p;
  size_t len;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len)) {
    std::string host = islet::wire::sni_host(p, len);
    (void)host;
  }
  // What Islet's callback reads to pick groups and judge the handshake's cost.
  auto x25519 = [](unsigned id) { return id == 29; };
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_key_share, &p, &len))
    islet::wire::any_key_share(p, len, x25519);
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_groups, &p, &len))
    islet::wire::any_supported_group(p, len, x25519);
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &p, &len))
    islet::wire::lists_version(p, len, TLS1_3_VERSION);
  return SSL_CLIENT_HELLO_SUCCESS;
}

int alpn_cb(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
            unsigned inlen, void*) {
  return islet::wire::alpn_select(kAlpn, sizeof kAlpn - 1, in, inlen, out, outlen)
             ? SSL_TLSEXT_ERR_OK
             : SSL_TLSEXT_ERR_ALERT_FATAL;
}

SSL_CTX* make_ctx() {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("fuzz"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509_set_pubkey(cert, key);
  X509_sign(cert, key, EVP_sha256());
  SSL_CTX_use_certificate(ctx, cert);
  SSL_CTX_use_PrivateKey(ctx, key);
  X509_free(cert);
  EVP_PKEY_free(key);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, nullptr);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, nullptr);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  return ctx;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static SSL_CTX* ctx = make_ctx();
  SSL* ssl = SSL_new(ctx);
  BIO* in = BIO_new_mem_buf(data, static_cast<int>(size));
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);  // ssl owns both BIOs now
  SSL_set_accept_state(ssl);
  for (int i = 0; i < 4; i++) {
    if (SSL_do_handshake(ssl) == 1) {
      unsigned char buf[256];
      SSL_read(ssl, buf, sizeof buf);
      break;
    }
  }
  SSL_free(ssl);
  ERR_clear_error();
  return 0;
}
