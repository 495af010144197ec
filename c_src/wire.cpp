// Islet: wire-format parsers (see wire.hpp). Every read is bounds-checked
// against the length given: the bytes come from an untrusted client.
#include "wire.hpp"

#include <cstring>

namespace islet::wire {

bool alpn_select(const unsigned char* server, size_t server_len, const unsigned char* client,
                 size_t client_len, const unsigned char** out, unsigned char* out_len) {
  for (size_t i = 0; i < server_len;) {
    size_t n = server[i];
    if (n == 0 || i + 1 + n > server_len) return false;
    const unsigned char* name = server + i + 1;
    for (size_t j = 0; j < client_len;) {
      size_t m = client[j];
      if (j + 1 + m > client_len) break;  // truncated client list: stop there
      if (m == n && std::memcmp(client + j + 1, name, n) == 0) {
        *out = client + j + 1;
        *out_len = static_cast<unsigned char>(m);
        return true;
      }
      j += 1 + m;
    }
    i += 1 + n;
  }
  return false;
}

std::string sni_host(const unsigned char* p, size_t len) {
  // ServerNameList: u16 length, then entries of u8 type, u16 length, name.
  if (len < 2) return "";
  size_t list = (static_cast<size_t>(p[0]) << 8) | p[1];
  if (list + 2 != len) return "";
  for (size_t i = 2; i + 3 <= len;) {
    unsigned type = p[i];
    size_t n = (static_cast<size_t>(p[i + 1]) << 8) | p[i + 2];
    if (i + 3 + n > len) return "";
    if (type == 0) {
      std::string name(reinterpret_cast<const char*>(p + i + 3), n);
      // A host name holds no NUL; one that does is refused, not truncated.
      if (n == 0 || name.find('\0') != std::string::npos) return "";
      return name;
    }
    i += 3 + n;
  }
  return "";
}

bool lists_version(const unsigned char* p, size_t len, unsigned version) {
  if (len < 1) return false;
  size_t end = 1 + static_cast<size_t>(p[0]);
  if (end > len) end = len;
  for (size_t i = 1; i + 2 <= end; i += 2)
    if (((static_cast<unsigned>(p[i]) << 8) | p[i + 1]) == version) return true;
  return false;
}

}  // namespace islet::wire
