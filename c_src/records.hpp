// Islet: TLS records after the handshake, sealed and opened by Islet
// (records.cpp). tls.cpp runs the handshake with OpenSSL and hands the
// connection over here when it completes; the Sock then has `rec` set and no
// SSL object.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include <erl_nif.h>

#include "erts_alloc.hpp"

struct ssl_st;
struct ssl_ctx_st;
struct bio_st;

namespace islet {

struct Sock;

// What tls_info reports, read from OpenSSL (tls_info_of) or kept by the
// record layer from the handshake.
struct TlsInfo {
  int version = 0;
  const char* cipher = nullptr;  // IANA name, static in libssl
  bool reused = false;
  bool has_session = false;
  uint8_t session_id_len = 0;
  unsigned char session_id[32];
  ErtsString servername, alpn, peercert;  // peercert: DER, empty when none
};
void tls_info_of(struct ssl_st* ssl, TlsInfo* out);

// Fetches the ciphers and the TLS 1.2 PRF once, at load.
void records_init();

// During a handshake whose records Islet will take over (records_start at
// SSL_new): what OpenSSL's callbacks tell (records_keylog,
// records_message), kept until records_take_over.
// key_update_at: TLS 1.3, bytes sealed under one key before a KeyUpdate of
// ours (:ssl's option of that name), 0 for none.
bool records_start(Sock* s, struct ssl_ctx_st* session_ctx, uint64_t key_update_at);
// A read BIO for such a handshake (see records.cpp), or null: then a
// socket BIO. Freed with the SSL object that it is given to.
struct bio_st* records_hs_bio(Sock* s);
void records_keylog(Sock* s, const char* line);
void records_message(Sock* s, int write_p, int content_type, const void* buf, size_t len);
// Called when the handshake of s completed, under its lock: takes the
// record layer over from OpenSSL when the connection allows it (an AEAD
// suite, nothing buffered inside OpenSSL, no kernel TLS) and frees the SSL
// object. False: the connection stays with OpenSSL.
bool records_take_over(Sock* s);
void records_free(Sock* s);  // tls_free's part
// Frees the cipher contexts of the connections that sealed and opened no
// record since the previous sweep (they are made again when needed);
// returns how many connections it freed. Takes each socket's lock.
size_t records_sweep();

// The contracts of tls_read / tls_drain / tls_pending / tls_may_have_more
// (common.hpp).
ssize_t records_read(Sock* s, void* buf, size_t n, int* err);
int records_drain(Sock* s);
// A send with nothing queued before it: seals and writes straight from the
// caller's iovec (no copy into the queue), 256 KiB at most; *taken is what
// was sealed, the rest is for the queue. Returns as records_drain; 0 means
// everything is in the socket (nothing waits sealed either).
int records_send(Sock* s, const SysIOVec* iov, int iovcnt, size_t size, size_t* taken);
bool records_pending(const Sock* s);
bool records_may_have_more(const Sock* s);
// close_notify, once, best effort (it may not fit in the socket).
void records_close_notify(Sock* s);
// Bytes sealed that the socket has not taken yet (they wait in `out`).
size_t records_unsent(const Sock* s);
// Writes out what is sealed and unsent: 0, EAGAIN or an errno.
int records_flush(Sock* s);
// Our fatal alert after the handshake (a client certificate that Islet.TLS
// rejected in Erlang): sent if the socket takes it, then the connection ends.
void records_fail(Sock* s, uint8_t desc);
// Bytes on the wire, handshake included.
void records_wire_bytes(const Sock* s, uint64_t* in, uint64_t* out);
const TlsInfo& records_info(const Sock* s);
// How many of its two cipher contexts the connection holds now.
int records_contexts(const Sock* s);
// TLS 1.3: KeyUpdates this server sent (answers and its own).
uint64_t records_key_updates(const Sock* s);

}  // namespace islet
