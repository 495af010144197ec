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

}  // namespace islet::wire
