// The byte grammar of fuzz_terms.cpp, shared with seed_terms.cpp (which
// writes inputs in it). Changing a value here invalidates the seeds: run
// seed_terms again (see its header).
#pragma once

#include <cstdint>
#include <string_view>

namespace terms {

// First byte of an input: what to exercise.
enum Target : uint8_t {
  kSockOps = 0,  // a socket made with islet::sock_create, then a list of SockOp
  kListen = 1,   // listen(Family, Address, Port, Opts), then SockOps on the listener
  kTlsCtx = 2,   // tls_ctx(Opts), once or twice (the first result can be an sni host)
  kTargetCount
};

// One step on a socket (byte % kSockOpCount); the arguments follow as terms.
enum SockOp : uint8_t {
  kSetopts, kGetopts, kSetActive, kControllingProcess, kSetOwner, kShutdown, kCancel,
  kNames,        // then a byte: sockname / peername / getstat
  kAnyFirstArg,  // then a byte picking one of the above; argv[0] is a term too
  kKill,         // then a byte: that pid dies (its monitors fire)
  kClose,
  kPeerWrite,    // then a length byte and bytes: the peer (AF_UNIX pair) writes them
  kPeerClose,
  kRecv,         // recv(S, Term)
  kAccept,       // accept(S)
  kDeliver,      // pump_poll(0): the pump reads what its poll set has ready
  kTlsUpgrade,   // a context (tls_ctx of a term), then a byte: tls_upgrade +
                 // tls_handshake, tls_listener, or tls_set_ctx + tls_handshake
  kEnd,
  // The send path (after kEnd, so that older inputs keep their meaning).
  kSend,              // send(S, Data): see send_data in fuzz_terms.cpp
  kSendMore,          // send_more(S)
  kSendTimeoutKeep,   // send_timeout_keep(S, [])
  kSendTimeoutClose,  // send_timeout_close(S)
  kFlushBg,           // flush_bg(S): the pump's answer to {'$islet_flush', S}
  kPeerRead,          // then a byte b: the peer reads up to (b + 1) * 8 KiB
  kPeerTls,           // the peer is a TLS client: handshake rounds with tls_handshake(S)
  kSendfile,          // then a byte: a path (kSendfilePaths) or, past them, any term:
                      // sendfile_open, then sendfile_size and sendfile(S, File, Term, Term)
  // The send queue (after kSendfile, so that older inputs keep their meaning).
  kDrain,                // drain(S): what close and shutdown do first
  kSendTimeoutKeepData,  // send_timeout_keep(S, Data): a timed-out send's data joins the queue
  kVerifyFailed,         // tls_verify_failed(S, Term): Erlang refused the client's chain
  kLinger,               // tls_linger(S): read and drop what comes after a refusal
  kSockOpCount
};

// Paths for kSendfile: files, a missing one, a directory, an empty path.
constexpr const char* kSendfilePaths[] = {"/etc/hostname", "/etc/services", "/nonexistent/islet",
                                          "/tmp", ""};

// Send data (kSend), first byte % 8: 0..5 a list of n % 17 binaries, 6 a
// list of IOV_MAX + n % 40 binaries, 7 any term. Each binary is a byte c:
//   c % 4 == 0: c / 4 bytes from the input;  1: (c / 4) * 64 bytes;
//   2: (c / 4 + 1) * 16 KiB (up to 1 MiB);   3: empty.
enum SendMode : uint8_t { kSendList = 0, kSendMany = 6, kSendTerm = 7 };
enum BinClass : uint8_t { kBinInput = 0, kBinKb = 1, kBinLarge = 2, kBinEmpty = 3 };

// Term grammar: a byte (% kOpCount) picks the production.
enum Op : uint8_t {
  kDictAtom,   // byte: index into kAtoms
  kRandAtom,   // byte: length % 12, then the name's bytes
  kSmallInt,   // byte, as int8
  kInt32,      // 4 bytes, little endian
  kMagicInt,   // byte: index into the harness's table of edge values
  kRandBin,    // byte: length % 64, then the bytes
  kDictBin,    // byte: index into the binary dictionary (cert, key, strings)
  kList,       // byte: length % 6, then the elements
  kImproper,   // byte: 1 + n % 3 elements, then the tail term
  kTuple,      // byte: arity % 9, then the elements
  kKv,         // {atom from kAtoms (byte), term}: the option shape
  kPid,        // byte: id % 12 (8+ are dead), bit 7: external
  kRef,
  kFloat,      // 8 bytes
  kResource,   // byte: one of the resources made so far in this input
  kNil,
  kOpCount
};

// Every atom the NIF knows (init_atoms, the option keys of options.cpp and
// tls.cpp), and a few it must reject.
constexpr const char* kAtoms[] = {
    "ok", "error", "true", "false", "undefined", "closed", "timeout", "einval", "enotconn",
    "enomem", "badarg", "not_owner", "wait", "wait_turn", "wait_drain", "wait_close", "paused",
    "more", "once", "infinity", "$islet", "$islet_closed", "inet", "inet6", "local", "read",
    "write", "read_write", "active", "mode", "binary", "packet", "raw", "nodelay", "reuseaddr",
    "reuseport", "reuseport_lb", "keepalive", "linger", "buffer", "recbuf", "sndbuf",
    "send_timeout", "send_timeout_close", "exit_on_close", "backlog", "ipv6_v6only", "tcp",
    "tcp_closed", "tcp_error", "tcp_passive", "ssl", "ssl_closed", "ssl_error", "ssl_passive",
    "recv_oct", "recv_cnt", "recv_max", "recv_avg", "recv_dvi", "send_oct", "send_cnt",
    "send_max", "send_avg", "send_pend", "unspec", "eof", "$islet_ready", "tos", "priority",
    "$islet_flush",
    // tls_ctx
    "cert_key", "cacerts", "verify_peer", "fail_if_no_peer_cert", "depth", "min_version",
    "max_version", "cipher_list", "ciphersuites", "honor_cipher_order", "alpn",
    "session_tickets", "stateless", "stateful", "reuse_sessions", "session_cache_size", "tickets_amount",
    "session_lifetime", "ticket_lifetime", "sni_hosts", "sni_fun",
    // near misses and Elixir's
    "nil", "list", "ip", "ifaddr", "cert_key_", "certfile", "active_n", "stateless\xe9",
    "a_very_long_atom_name_of_more_than_31_bytes",
    // tls_ctx again, added last so that earlier inputs keep their atoms
    "deferred_error", "groups12", "groups13", "sigalgs", "dh", "dh_auto", "honor_ecc_order",
    "max_handshake_size", "key_update_at",
    // client chains checked in Erlang (verify_fun, partial_chain)
    "erl_verify", "verify",
    // the signature algorithms of client chains (Islet.TLS.CertSigs)
    "cert_sigs",
    // IP options, and gen_tcp's port settings kept for getopts
    "high_watermark", "low_watermark", "ttl", "recvtos", "recvttl", "dontroute", "tclass",
    "recvtclass", "bind_to_device", "delay_send", "packet_size", "high_msgq_watermark",
    "low_msgq_watermark", "header", "deliver", "term", "show_econnreset", "debug", "broadcast",
    "netns", "read_packets",
    // UDP's multicast options and pktoptions, which gen_tcp also takes
    "multicast_ttl", "multicast_loop", "multicast_if", "pktoptions",
};
constexpr unsigned kAtomCount = sizeof kAtoms / sizeof kAtoms[0];

// Binary dictionary: the first three are made at start-up (a certificate,
// its key, an unrelated key: all DER); then these strings.
constexpr unsigned kGeneratedBins = 3;
constexpr std::string_view kBinStrings[] = {
    "h2", "http/1.1", "", "ALL", "HIGH:!aNULL", "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256", "NULL", "localhost",
    "example.com", std::string_view("\0islet-fuzz", 11), "islet-fuzz.sock",
    // added last: group and signature names (and near misses)
    "X25519", "prime256v1", "secp384r1", "ffdhe2048", "no_such_group", "ECDSA+SHA256",
    "rsa_pss_rsae_sha256", "ed25519",
    // added last: OIDs (cert_sigs) and near misses
    "1.2.840.10045.4.3.2", "1.2.840.113549.1.1.10", "2.16.840.1.101.3.4.2.1", "1.2.3.x",
    "sha256WithRSAEncryption",
};
constexpr unsigned kBinCount = kGeneratedBins + sizeof kBinStrings / sizeof kBinStrings[0];

}  // namespace terms
