// Islet: parsers of bytes that come off the wire, kept free of erl_nif so
// that the fuzz harnesses in fuzz/ can drive them directly.
#pragma once

#include <cstddef>
#include <string>

namespace islet::wire {

// ALPN, server preference: the first protocol of `server` (wire format:
// length-prefixed names) that the client's list also holds. On a match,
// *out points into `client`.
bool alpn_select(const unsigned char* server, size_t server_len, const unsigned char* client,
                 size_t client_len, const unsigned char** out, unsigned char* out_len);

// The host_name of a server_name extension's body (RFC 6066), or "" when it
// is malformed or holds none.
std::string sni_host(const unsigned char* p, size_t len);

// A ClientHello's lists of named groups (RFC 8446 4.2.7, 4.2.8), read in
// the client's order: f(id) is called for each group id until it returns
// true, and the result says whether it did. A list longer than its
// extension is read up to the extension's end.
//   supported_groups: a 2-byte length, then 2-byte ids;
//   key_share: a 2-byte length, then entries (2-byte id, 2-byte key length,
//   key).
template <class F>
bool any_supported_group(const unsigned char* p, size_t len, F f) {
  if (len < 2) return false;
  size_t end = 2 + ((static_cast<size_t>(p[0]) << 8) | p[1]);
  if (end > len) end = len;
  for (size_t i = 2; i + 2 <= end; i += 2)
    if (f((static_cast<unsigned>(p[i]) << 8) | p[i + 1])) return true;
  return false;
}

template <class F>
bool any_key_share(const unsigned char* p, size_t len, F f) {
  if (len < 2) return false;
  size_t end = 2 + ((static_cast<size_t>(p[0]) << 8) | p[1]);
  if (end > len) end = len;
  for (size_t i = 2; i + 4 <= end;) {
    if (f((static_cast<unsigned>(p[i]) << 8) | p[i + 1])) return true;
    i += 4 + ((static_cast<size_t>(p[i + 2]) << 8) | p[i + 3]);
  }
  return false;
}

// Whether a ClientHello's supported_versions body (a 1-byte length, then
// 2-byte versions) lists `version`.
bool lists_version(const unsigned char* p, size_t len, unsigned version);

}  // namespace islet::wire
