// Writes real ClientHellos (TLS 1.3 and 1.2, with SNI and ALPN) into the
// directory given, as a seed corpus for fuzz_client_hello: random bytes
// alone seldom get past the record layer.
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <cstdio>
#include <string>

static void write_hello(const std::string& path, int max_version, const char* sni) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_max_proto_version(ctx, max_version);
  SSL* ssl = SSL_new(ctx);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);
  SSL_set_tlsext_host_name(ssl, sni);
  static const unsigned char alpn[] = "\x02h2\x08http/1.1";
  SSL_set_alpn_protos(ssl, alpn, sizeof alpn - 1);
  SSL_set_connect_state(ssl);
  SSL_do_handshake(ssl);
  char* data;
  long n = BIO_get_mem_data(out, &data);
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, static_cast<size_t>(n), f);
    std::fclose(f);
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::string dir = argv[1];
  write_hello(dir + "/tls13", TLS1_3_VERSION, "localhost");
  write_hello(dir + "/tls12", TLS1_2_VERSION, "example.com");
  return 0;
}
