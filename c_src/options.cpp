// Islet: socket options (setopts/getopts/listen), addresses, statistics.
//
// Option values arrive already checked by Islet.Options; this decoder still
// rejects anything malformed (badarg/einval), since any term can reach a NIF.
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.hpp"

namespace islet {

namespace {

bool get_bool(ERL_NIF_TERM t, bool* out) {
  if (enif_is_identical(t, atom.true_)) {
    *out = true;
    return true;
  }
  if (enif_is_identical(t, atom.false_)) {
    *out = false;
    return true;
  }
  return false;
}

ERL_NIF_TERM make_bool(bool b) { return b ? atom.true_ : atom.false_; }

// Which sockets an option applies to, as gen_tcp sees it: on the others
// the kernel refuses it, so getopts leaves it out, and setopts answers
// einval if the option is checked, else ignores it.
enum class Scope : uint8_t {
  Any,   // SOL_SOCKET: every family
  Tcp,   // TCP's own (IPv4 and IPv6); ignored on Unix sockets
  Ip,    // IPPROTO_IP: IPv4 and IPv6 sockets
  Ip6,   // IPPROTO_IPV6: IPv6 sockets only
};

struct IntOpt {
  const ERL_NIF_TERM* key;
  int level;
  int name;
  bool boolean;
  Scope scope;
  // inet_drv answers einval when the kernel refuses it; for the others it
  // ignores the refusal, which shows once its fd is closed (fd_gone).
  bool checked;
};

// Options that are a plain setsockopt.
const IntOpt kIntOpts[] = {
    {&atom.nodelay, IPPROTO_TCP, TCP_NODELAY, true, Scope::Tcp, false},
    {&atom.reuseaddr, SOL_SOCKET, SO_REUSEADDR, true, Scope::Any, false},
    {&atom.reuseport, SOL_SOCKET, SO_REUSEPORT, true, Scope::Any, true},
    {&atom.reuseport_lb, SOL_SOCKET, SO_REUSEPORT, true, Scope::Any, true},
    {&atom.keepalive, SOL_SOCKET, SO_KEEPALIVE, true, Scope::Any, false},
    {&atom.recbuf, SOL_SOCKET, SO_RCVBUF, false, Scope::Any, false},
    {&atom.sndbuf, SOL_SOCKET, SO_SNDBUF, false, Scope::Any, false},
    {&atom.priority, SOL_SOCKET, SO_PRIORITY, false, Scope::Any, true},
    {&atom.dontroute, SOL_SOCKET, SO_DONTROUTE, true, Scope::Any, false},
    {&atom.broadcast, SOL_SOCKET, SO_BROADCAST, true, Scope::Any, false},
    // gen_tcp's name for TCP_CORK
    {&atom.nopush, IPPROTO_TCP, TCP_CORK, true, Scope::Tcp, false},
    {&atom.tos, IPPROTO_IP, IP_TOS, false, Scope::Ip, true},
    {&atom.ttl, IPPROTO_IP, IP_TTL, false, Scope::Ip, true},
    {&atom.recvtos, IPPROTO_IP, IP_RECVTOS, true, Scope::Ip, true},
    {&atom.recvttl, IPPROTO_IP, IP_RECVTTL, true, Scope::Ip, true},
    {&atom.ipv6_v6only, IPPROTO_IPV6, IPV6_V6ONLY, true, Scope::Ip6, true},
    {&atom.tclass, IPPROTO_IPV6, IPV6_TCLASS, false, Scope::Ip6, true},
    {&atom.recvtclass, IPPROTO_IPV6, IPV6_RECVTCLASS, true, Scope::Ip6, true},
    // UDP's, which inet_drv also sets and reads on TCP sockets, at
    // IPPROTO_IP on IPv6 ones too. The kernel refuses IP_MULTICAST_TTL on
    // a stream socket (unchecked: setopts says ok, nothing changes), and an
    // accepted IPv4 connection's is the TTL of its SYN.
    {&atom.multicast_ttl, IPPROTO_IP, IP_MULTICAST_TTL, false, Scope::Ip, false},
    {&atom.multicast_loop, IPPROTO_IP, IP_MULTICAST_LOOP, true, Scope::Ip, false},
};

const IntOpt* find_int_opt(ERL_NIF_TERM key) {
  for (const IntOpt& o : kIntOpts)
    if (enif_is_identical(*o.key, key)) return &o;
  return nullptr;
}

// Sets the high or the low one of a pair of watermarks; the other follows
// so that low <= high (a high below the low lowers the low, a low above the
// high raises the high).
template <typename T>
void set_watermark(bool high, T v, T* hi, T* lo) {
  if (high) {
    *hi = v;
    if (*lo > v) *lo = v;
  } else {
    *lo = v;
    if (*hi < v) *hi = v;
  }
}

// gen_tcp closes its fd once a passive recv has said closed (its port
// stays, exit_on_close; over TLS :ssl's connection is gone instead, dead):
// from then on the kernel's options are left out of getopts, setting them
// is einval or ignored as inet_drv treats the kernel's refusal, and
// sockname is ebadf. Islet keeps the fd until close (shut down both ways),
// so it answers as if it were gone.
bool fd_gone(const Sock* s) { return s->eof_reported && s->tag != Tag::Ssl; }

bool in_scope(const Sock* s, Scope scope) {
  switch (scope) {
    case Scope::Any:
      return true;
    case Scope::Tcp:
    case Scope::Ip:
      return s->family == AF_INET || s->family == AF_INET6;
    case Scope::Ip6:
      return s->family == AF_INET6;
  }
  return false;
}

}  // namespace

// A setsockopt the kernel refuses is einval whatever its errno (enodev for
// a missing device, eperm for a priority above 6 without CAP_NET_ADMIN), as
// inet_drv answers it.
int apply_opt(Sock* s, ErlNifEnv* env, ERL_NIF_TERM key, ERL_NIF_TERM value, bool* badopt) {
  bool b;
  int i;
  if (const IntOpt* o = find_int_opt(key)) {
    int v;
    if (o->boolean) {
      if (!get_bool(value, &b)) return EINVAL;
      v = b ? 1 : 0;
    } else if (!enif_get_int(env, value, &v)) {
      return EINVAL;
    }
    // inet's user-level buffer follows the receive buffer unless set itself.
    if (o->name == SO_RCVBUF && !s->buffer_set && v > s->buffer) s->buffer = v;
    if (!in_scope(s, o->scope)) return o->checked ? EINVAL : 0;
    if (fd_gone(s)) return o->checked ? EINVAL : 0;
    if (o->name == IP_TOS && o->level == IPPROTO_IP) {
      // Linux derives the socket's priority from the TOS; inet_drv puts
      // the priority back, so tos never changes priority with gen_tcp.
      int prio = 0;
      socklen_t plen = sizeof prio;
      bool had = getsockopt(s->fd, SOL_SOCKET, SO_PRIORITY, &prio, &plen) == 0;
      if (setsockopt(s->fd, o->level, o->name, &v, sizeof v) != 0) return EINVAL;
      if (had) setsockopt(s->fd, SOL_SOCKET, SO_PRIORITY, &prio, sizeof prio);
      return 0;
    }
    if (setsockopt(s->fd, o->level, o->name, &v, sizeof v) != 0) return o->checked ? EINVAL : 0;
    if (o->name == SO_PRIORITY && o->level == SOL_SOCKET) s->priority = v;
    return 0;
  }
  if (enif_is_identical(key, atom.raw)) {
    // {raw, {Level, Name, Binary}}: inet makes the setsockopt and ignores
    // the kernel's answer.
    int arity, level, name;
    const ERL_NIF_TERM* t;
    ErlNifBinary val;
    if (!enif_get_tuple(env, value, &arity, &t) || arity != 3 || !enif_get_int(env, t[0], &level) ||
        !enif_get_int(env, t[1], &name) || !enif_inspect_binary(env, t[2], &val))
      return EINVAL;
    if (!fd_gone(s)) setsockopt(s->fd, level, name, val.data, static_cast<socklen_t>(val.size));
    return 0;
  }
  if (enif_is_identical(key, atom.multicast_if)) {
    // Islet.Options gives the 32 bits inet encodes (an IPv4 address, or an
    // integer). inet_drv sets them in network order as IP_MULTICAST_IF, or
    // IPV6_MULTICAST_IF on an IPv6 socket, and ignores the kernel's refusal
    // (all a stream socket gets); a Unix socket is einval.
    if (!enif_get_int(env, value, &i)) return EINVAL;
    if (s->family != AF_INET && s->family != AF_INET6) return EINVAL;
    if (fd_gone(s)) return 0;
    int v = static_cast<int>(htonl(static_cast<uint32_t>(i)));
    if (s->family == AF_INET)
      setsockopt(s->fd, IPPROTO_IP, IP_MULTICAST_IF, &v, sizeof v);
    else
      setsockopt(s->fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &v, sizeof v);
    return 0;
  }
  if (enif_is_identical(key, atom.bind_to_device)) {
    ErlNifBinary dev;
    if (!enif_inspect_binary(env, value, &dev) || dev.size >= IFNAMSIZ ||
        std::memchr(dev.data, 0, dev.size) != nullptr)
      return EINVAL;
    if (fd_gone(s)) return EINVAL;
    char name[IFNAMSIZ] = {};
    std::memcpy(name, dev.data, dev.size);
    return setsockopt(s->fd, SOL_SOCKET, SO_BINDTODEVICE, name,
                      static_cast<socklen_t>(dev.size)) == 0
               ? 0
               : EINVAL;
  }
  if (enif_is_identical(key, atom.delay_send)) {
    if (!get_bool(value, &b)) return EINVAL;
    s->delay_send = b;
    return 0;
  }
  if (enif_is_identical(key, atom.packet_size)) {
    ErlNifSInt64 n;
    if (!enif_get_int64(env, value, &n)) return EINVAL;
    s->packet_size = n;
    return 0;
  }
  if (enif_is_identical(key, atom.high_msgq_watermark) ||
      enif_is_identical(key, atom.low_msgq_watermark)) {
    // As the send queue's watermarks: the other one follows. Islet.Options
    // has brought the value to what the port would hold (1..INT_MAX).
    if (!enif_get_int(env, value, &i) || i <= 0) return EINVAL;
    set_watermark(enif_is_identical(key, atom.high_msgq_watermark), i, &s->msgq_high,
                  &s->msgq_low);
    return 0;
  }
  if (enif_is_identical(key, atom.linger)) {
    int arity;
    const ERL_NIF_TERM* t;
    if (!enif_get_tuple(env, value, &arity, &t) || arity != 2 || !get_bool(t[0], &b) ||
        !enif_get_int(env, t[1], &i))
      return EINVAL;
    if (fd_gone(s)) return 0;
    linger l{b ? 1 : 0, i};
    return setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0 ? 0 : EINVAL;
  }
  if (enif_is_identical(key, atom.buffer)) {
    if (!enif_get_int(env, value, &i)) return EINVAL;
    s->buffer = i > 0 ? i : 1;
    s->buffer_set = true;
    return 0;
  }
  if (enif_is_identical(key, atom.send_timeout)) {
    if (enif_is_identical(value, atom.infinity)) {
      s->send_timeout = -1;
      return 0;
    }
    // Islet.Options cuts it to 32 bits as inet does: -1 is infinity, and
    // another negative value is kept (read back; Islet.Socket waits
    // without end for it, as gen_tcp's timer does).
    if (!enif_get_int(env, value, &i)) return EINVAL;
    s->send_timeout = i;
    return 0;
  }
  if (enif_is_identical(key, atom.high_watermark) || enif_is_identical(key, atom.low_watermark)) {
    // inet_drv's rules: a negative value is 0, and the other watermark
    // follows. Islet.Options has already cut the value to 32 bits and
    // ordered the two as the stack does.
    if (!enif_get_int(env, value, &i)) return EINVAL;
    size_t v = i < 0 ? 0 : static_cast<size_t>(i);
    set_watermark(enif_is_identical(key, atom.high_watermark), v, &s->high_watermark,
                  &s->low_watermark);
    return 0;
  }
  if (enif_is_identical(key, atom.send_timeout_close)) {
    if (!get_bool(value, &b)) return EINVAL;
    s->send_timeout_close = b;
    return 0;
  }
  if (enif_is_identical(key, atom.exit_on_close)) {
    if (!get_bool(value, &b)) return EINVAL;
    s->exit_on_close = b;
    return 0;
  }
  if (enif_is_identical(key, atom.mode)) return enif_is_identical(value, atom.binary) ? 0 : EINVAL;
  if (enif_is_identical(key, atom.packet)) {
    s->packet_raw_atom = enif_is_identical(value, atom.raw);
    if (s->packet_raw_atom) return 0;
    return enif_get_int(env, value, &i) && i == 0 ? 0 : EINVAL;
  }
  if (enif_is_identical(key, atom.active)) {
    // Only listen sets it here (setopts goes through set_active).
    if (enif_is_identical(value, atom.once))
      s->active = kActiveOnce;
    else if (get_bool(value, &b))
      s->active = b ? kActiveTrue : 0;
    else if (enif_get_int(env, value, &i) && i > 0 && i <= kActiveMax)
      s->active = i;
    else
      return EINVAL;
    return 0;
  }
  *badopt = true;
  return EINVAL;
}

namespace {

// {raw, Level, Name, Len}: getsockopt into Len bytes; {raw, Level, Name,
// Bytes} with what the kernel gave, or nothing when it refused (as inet).
bool read_raw(ErlNifEnv* env, Sock* s, ERL_NIF_TERM key, ERL_NIF_TERM* out, int* err) {
  int arity, level, name;
  unsigned len;
  const ERL_NIF_TERM* t;
  if (!enif_get_tuple(env, key, &arity, &t) || arity != 4 || !enif_is_identical(t[0], atom.raw) ||
      !enif_get_int(env, t[1], &level) || !enif_get_int(env, t[2], &name) ||
      !enif_get_uint(env, t[3], &len) || len > 65522) {
    *err = EINVAL;
    return false;
  }
  std::vector<unsigned char> buf(len);
  socklen_t got = len;
  if (getsockopt(s->fd, level, name, buf.data(), &got) != 0) return false;
  ERL_NIF_TERM bin;
  size_t n = std::min<size_t>(got, len);
  if (n > 0) std::memcpy(enif_make_new_binary(env, n, &bin), buf.data(), n);
  else enif_make_new_binary(env, 0, &bin);
  *out = enif_make_tuple4(env, atom.raw, t[1], t[2], bin);
  return true;
}

// A control message's value as inet_drv reads it: an unsigned integer of
// 1, 2, 4 or 8 bytes (cut to 32 bits); 0 for any other size.
uint32_t cmsg_value(cmsghdr* c) {
  const unsigned char* d = CMSG_DATA(c);
  size_t n = c->cmsg_len - static_cast<size_t>(d - reinterpret_cast<unsigned char*>(c));
  uint8_t v8;
  uint16_t v16;
  uint32_t v32;
  uint64_t v64;
  switch (n) {
    case 1:
      std::memcpy(&v8, d, 1);
      return v8;
    case 2:
      std::memcpy(&v16, d, 2);
      return v16;
    case 4:
      std::memcpy(&v32, d, 4);
      return v32;
    case 8:
      std::memcpy(&v64, d, 8);
      return static_cast<uint32_t>(v64);
  }
  return 0;
}

// pktoptions: what the kernel kept of the packets received (the TOS and
// TTL with recvtos and recvttl, the traffic class with recvtclass), as
// control messages from IP_PKTOPTIONS or IPV6_2292PKTOPTIONS, read into as
// much room as inet_drv gives them (two int-sized messages) and named as it
// names them, in the kernel's order. False if the kernel refuses.
bool read_pktoptions(ErlNifEnv* env, const Sock* s, ERL_NIF_TERM* out) {
  union {
    cmsghdr align;
    char buf[2 * CMSG_SPACE(sizeof(int))];
  } u{};
  socklen_t len = sizeof u.buf;
  bool v4 = s->family == AF_INET;
  if (getsockopt(s->fd, v4 ? IPPROTO_IP : IPPROTO_IPV6, v4 ? IP_PKTOPTIONS : IPV6_2292PKTOPTIONS,
                 u.buf, &len) != 0)
    return false;
  msghdr m{};
  m.msg_control = u.buf;
  m.msg_controllen = len;
  ERL_NIF_TERM list = enif_make_list(env, 0);
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    int t = c->cmsg_type;
    ERL_NIF_TERM name;
    if (c->cmsg_level == IPPROTO_IP && (t == IP_TOS || t == IP_RECVTOS))
      name = atom.tos;
    else if (c->cmsg_level == IPPROTO_IP && (t == IP_TTL || t == IP_RECVTTL))
      name = atom.ttl;
    else if (c->cmsg_level == IPPROTO_IPV6 && (t == IPV6_TCLASS || t == IPV6_RECVTCLASS))
      name = atom.tclass;
    else
      continue;
    list = enif_make_list_cell(env, enif_make_tuple2(env, name, enif_make_uint(env, cmsg_value(c))),
                               list);
  }
  enif_make_reverse_list(env, list, out);
  return true;
}

}  // namespace

bool read_opt(ErlNifEnv* env, Sock* s, ERL_NIF_TERM key, ERL_NIF_TERM* out, int* err) {
  ERL_NIF_TERM v;
  int arity;
  const ERL_NIF_TERM* tuple;
  if (enif_get_tuple(env, key, &arity, &tuple)) {
    if (!read_raw(env, s, key, out, err)) return false;
    return !fd_gone(s);  // (a malformed key is einval all the same)
  }
  if (const IntOpt* o = find_int_opt(key)) {
    if (!in_scope(s, o->scope) || fd_gone(s)) return false;
    int iv = 0;
    socklen_t len = sizeof iv;
    if (getsockopt(s->fd, o->level, o->name, &iv, &len) != 0) {
      *err = errno;
      return false;
    }
    v = o->boolean ? make_bool(iv != 0) : enif_make_int(env, iv);
  } else if (enif_is_identical(key, atom.linger)) {
    if (fd_gone(s)) return false;
    linger l{};
    socklen_t len = sizeof l;
    if (getsockopt(s->fd, SOL_SOCKET, SO_LINGER, &l, &len) != 0) {
      *err = errno;
      return false;
    }
    v = enif_make_tuple2(env, make_bool(l.l_onoff != 0), enif_make_int(env, l.l_linger));
  } else if (enif_is_identical(key, atom.active)) {
    v = s->active == 0             ? atom.false_
        : s->active == kActiveTrue ? atom.true_
        : s->active == kActiveOnce ? atom.once
                                   : enif_make_int(env, s->active);
  } else if (enif_is_identical(key, atom.mode)) {
    v = atom.binary;
  } else if (enif_is_identical(key, atom.packet)) {
    v = s->tag == Tag::Ssl && s->packet_raw_atom ? atom.raw : enif_make_int(env, 0);
  } else if (enif_is_identical(key, atom.buffer)) {
    v = enif_make_int(env, s->buffer);
  } else if (enif_is_identical(key, atom.send_timeout)) {
    v = s->send_timeout == -1 ? atom.infinity : enif_make_long(env, s->send_timeout);
  } else if (enif_is_identical(key, atom.high_watermark)) {
    v = enif_make_uint64(env, s->high_watermark);
  } else if (enif_is_identical(key, atom.low_watermark)) {
    v = enif_make_uint64(env, s->low_watermark);
  } else if (enif_is_identical(key, atom.send_timeout_close)) {
    v = make_bool(s->send_timeout_close);
  } else if (enif_is_identical(key, atom.exit_on_close)) {
    v = make_bool(s->exit_on_close);
  } else if (enif_is_identical(key, atom.bind_to_device)) {
    if (fd_gone(s)) return false;
    char name[IFNAMSIZ] = {};
    socklen_t len = sizeof name;
    if (getsockopt(s->fd, SOL_SOCKET, SO_BINDTODEVICE, name, &len) != 0) {
      *err = errno;
      return false;
    }
    size_t n = strnlen(name, len);
    std::memcpy(enif_make_new_binary(env, n, &v), name, n);
  } else if (enif_is_identical(key, atom.multicast_if)) {
    // The kernel's: an IPv4 address, or an IPv6 interface index (an
    // accepted IPv6 connection's is the one its SYN came in by). gen_tcp's
    // answer is memory inet_drv never wrote (its reply skips the value, even
    // once its fd is gone); Islet asks its fd, which is still open then.
    if (s->family == AF_INET) {
      unsigned char a[4] = {};
      socklen_t len = sizeof a;
      if (getsockopt(s->fd, IPPROTO_IP, IP_MULTICAST_IF, a, &len) != 0) return false;
      v = enif_make_tuple4(env, enif_make_uint(env, a[0]), enif_make_uint(env, a[1]),
                           enif_make_uint(env, a[2]), enif_make_uint(env, a[3]));
    } else if (s->family == AF_INET6) {
      int index = 0;
      socklen_t len = sizeof index;
      if (getsockopt(s->fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &index, &len) != 0) return false;
      v = enif_make_int(env, index);
    } else {
      *err = EINVAL;  // (inet_drv's answer on a Unix socket)
      return false;
    }
  } else if (enif_is_identical(key, atom.pktoptions)) {
    if (s->family != AF_INET && s->family != AF_INET6) {
      *err = EINVAL;
      return false;
    }
    if (fd_gone(s) || !read_pktoptions(env, s, &v)) return false;
  } else if (enif_is_identical(key, atom.delay_send)) {
    v = make_bool(s->delay_send);
  } else if (enif_is_identical(key, atom.packet_size)) {
    v = enif_make_int64(env, s->packet_size);
  } else if (enif_is_identical(key, atom.high_msgq_watermark)) {
    v = enif_make_int(env, s->msgq_high);
  } else if (enif_is_identical(key, atom.low_msgq_watermark)) {
    v = enif_make_int(env, s->msgq_low);
  } else if (enif_is_identical(key, atom.header)) {
    v = enif_make_int(env, 0);  // binary mode, raw packets: no header
  } else if (enif_is_identical(key, atom.deliver)) {
    v = atom.term;
  } else if (enif_is_identical(key, atom.show_econnreset) || enif_is_identical(key, atom.debug)) {
    v = atom.false_;
  } else if (enif_is_identical(key, atom.netns) || enif_is_identical(key, atom.read_packets)) {
    return false;  // gen_tcp leaves them out (no namespace given; a UDP option)
  } else {
    *err = EINVAL;
    return false;
  }
  *out = enif_make_tuple2(env, key, v);
  return true;
}

bool parse_sockaddr(ErlNifEnv* env, ERL_NIF_TERM family, ERL_NIF_TERM addr, int port, void* out,
                    unsigned* len, int* fam) {
  int arity;
  const ERL_NIF_TERM* t;
  if (enif_is_identical(family, atom.inet)) {
    auto* sa = static_cast<sockaddr_in*>(out);
    unsigned char b[4];
    if (!enif_get_tuple(env, addr, &arity, &t) || arity != 4) return false;
    for (int k = 0; k < 4; k++) {
      unsigned v;
      if (!enif_get_uint(env, t[k], &v) || v > 255) return false;
      b[k] = static_cast<unsigned char>(v);
    }
    sa->sin_family = AF_INET;
    sa->sin_port = htons(static_cast<uint16_t>(port));
    std::memcpy(&sa->sin_addr, b, 4);
    *len = sizeof(sockaddr_in);
    *fam = AF_INET;
    return true;
  }
  if (enif_is_identical(family, atom.inet6)) {
    auto* sa = static_cast<sockaddr_in6*>(out);
    if (!enif_get_tuple(env, addr, &arity, &t) || arity != 8) return false;
    for (int k = 0; k < 8; k++) {
      unsigned v;
      if (!enif_get_uint(env, t[k], &v) || v > 65535) return false;
      sa->sin6_addr.s6_addr[2 * k] = static_cast<unsigned char>(v >> 8);
      sa->sin6_addr.s6_addr[2 * k + 1] = static_cast<unsigned char>(v & 0xff);
    }
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(static_cast<uint16_t>(port));
    *len = sizeof(sockaddr_in6);
    *fam = AF_INET6;
    return true;
  }
  if (enif_is_identical(family, atom.local)) {
    auto* sa = static_cast<sockaddr_un*>(out);
    ErlNifBinary path;
    if (port != 0 || !enif_inspect_binary(env, addr, &path)) return false;
    // As inet: an abstract address (a NUL first) may fill sun_path, a path
    // needs room for its NUL; the kernel reads a path up to its first NUL,
    // and binds an empty one to a name it picks (autobind, the family alone).
    bool abstract = path.size > 0 && path.data[0] == 0;
    if (path.size > sizeof sa->sun_path || (!abstract && path.size == sizeof sa->sun_path))
      return false;
    sa->sun_family = AF_UNIX;
    if (path.size > 0) std::memcpy(sa->sun_path, path.data, path.size);
    *len = static_cast<unsigned>(offsetof(sockaddr_un, sun_path) + path.size +
                                 (path.size > 0 && !abstract ? 1 : 0));
    *fam = AF_UNIX;
    return true;
  }
  return false;
}

ERL_NIF_TERM make_sockaddr(ErlNifEnv* env, const void* sap, unsigned len) {
  const auto* sa = static_cast<const sockaddr*>(sap);
  if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
    const auto* in = static_cast<const sockaddr_in*>(sap);
    const auto* b = reinterpret_cast<const unsigned char*>(&in->sin_addr);
    ERL_NIF_TERM ip = enif_make_tuple4(env, enif_make_uint(env, b[0]), enif_make_uint(env, b[1]),
                                       enif_make_uint(env, b[2]), enif_make_uint(env, b[3]));
    return enif_make_tuple2(env, ip, enif_make_uint(env, ntohs(in->sin_port)));
  }
  if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    const auto* in6 = static_cast<const sockaddr_in6*>(sap);
    ERL_NIF_TERM w[8];
    for (int k = 0; k < 8; k++)
      w[k] = enif_make_uint(env, (in6->sin6_addr.s6_addr[2 * k] << 8) |
                                     in6->sin6_addr.s6_addr[2 * k + 1]);
    return enif_make_tuple2(env, enif_make_tuple_from_array(env, w, 8),
                            enif_make_uint(env, ntohs(in6->sin6_port)));
  }
  if (sa->sa_family == AF_UNIX) {
    const auto* un = static_cast<const sockaddr_un*>(sap);
    size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    if (n > 0 && un->sun_path[0] != 0) n = strnlen(un->sun_path, n);
    ERL_NIF_TERM path;
    std::memcpy(enif_make_new_binary(env, n, &path), un->sun_path, n);
    return enif_make_tuple2(env, atom.local, path);
  }
  ERL_NIF_TERM empty;
  enif_make_new_binary(env, 0, &empty);
  return enif_make_tuple2(env, atom.unspec, empty);
}

namespace {

// Sends the passive message ({tcp_passive, S} or {ssl_passive, S}).
void send_passive(ErlNifEnv* env, Sock* s) {
  ErlNifEnv* menv = enif_alloc_env();
  ERL_NIF_TERM msg = enif_make_tuple2(menv, active_tag(s, 3), enif_make_resource(menv, s));
  enif_send(env, &s->owner, menv, msg);
  enif_free_env(menv);
}

// Goes passive, with the passive message unless told not to.
void go_passive(ErlNifEnv* env, Sock* s, bool notify = true) {
  s->active = 0;
  poller_disarm(env, s);
  if (notify) send_passive(env, s);
}

// {active, N} of a TLS socket, with :ssl's rules (ssl_gen_statem's
// set_socket_opts and its set_opts call): N outside -32768..32767 is refused;
// N <= 0 goes passive whatever the count was; a positive N adds to a running
// count (refused past 32767) or starts one. With `notify`, a socket passive
// afterwards, the call refused or not, gets {ssl_passive, S} (setopts with
// several active options sends it itself, once: ssl_active_list).
ERL_NIF_TERM set_active_ssl_n(ErlNifEnv* env, Sock* s, ERL_NIF_TERM value, bool notify) {
  ErlNifSInt64 n;
  int before = s->active;
  if (!enif_get_int64(env, value, &n) || n < -kActiveMax - 1 || n > kActiveMax) {
    if (before == 0 && notify) send_passive(env, s);
    return make_error(env, atom.einval);
  }
  if (n <= 0) {
    go_passive(env, s, notify);
    return atom.ok;
  }
  if (before > 0 && before + n > kActiveMax) return make_error(env, atom.einval);
  s->active = static_cast<int>(before > 0 ? before + n : n);
  return atom.ok;
}

// Sets active mode with gen_tcp's rules: {active, N} (N within 16 bits) adds
// to the counter, and going to 0 or below sends the passive message. A TCP
// listener counts as a connection does (it passes its mode on to what it
// accepts). TLS connections follow :ssl's rules (set_active_ssl_n).
ERL_NIF_TERM set_active(ErlNifEnv* env, Sock* s, ERL_NIF_TERM value, bool notify = true) {
  bool b;
  int n;
  int before = s->active;
  if (enif_is_identical(value, atom.once)) {
    s->active = kActiveOnce;
  } else if (get_bool(value, &b)) {
    s->active = b ? kActiveTrue : 0;
  } else if (s->tag == Tag::Ssl && s->kind == Kind::Conn &&
             enif_term_type(env, value) == ERL_NIF_TERM_TYPE_INTEGER) {
    // (A TLS listener counts as gen_tcp's: the count is its TCP listener's.)
    ERL_NIF_TERM r = set_active_ssl_n(env, s, value, notify);
    if (s->active == 0 || !enif_is_identical(r, atom.ok)) return r;
  } else if (enif_get_int(env, value, &n) && n >= -kActiveMax - 1 && n <= kActiveMax) {
    long sum = (before > 0 ? before : 0) + static_cast<long>(n);
    if (sum > kActiveMax) return make_error(env, atom.einval);
    if (sum <= 0) {
      go_passive(env, s);
      return atom.ok;
    }
    s->active = static_cast<int>(sum);
  } else {
    return make_error(env, atom.einval);
  }
  // gen_tcp's recv waiting meanwhile no longer takes data (Waiter::outrun).
  // (:ssl's connection process fails on it; Islet.TLS's recv answers einval
  // when it wakes.)
  if (before == 0 && s->active != 0 && s->kind == Kind::Conn && s->tag == Tag::Tcp)
    reader_outrun(env, s);
  // (A dead owner's socket draining its queue delivers nothing: sock_orphan.)
  if (s->active != 0 && s->kind == Kind::Conn && !s->orphaned && (before == 0 || !s->armed))
    active_started(env, s);
  if (s->active == 0) poller_disarm(env, s);
  return atom.ok;
}

// The active options of a TLS listener's setopts list, as :ssl's listener
// takes them (tls_socket:setopts and its option tracker): from the last to
// the first, each as gen_tcp's listener would (once, true and false set the
// mode; a count adds to a running one, and 0 or below is passive), but with
// no bound on the way; then the list's last value and the count reached
// must be within -32768..32767, else einval. :ssl's tracker keeps the count
// it refused (its getopts reads it back; it is not in force); here nothing
// changes. {ssl_passive, L} once, when the list's last active is a count
// and the listener ends passive. Values that are no mode (Islet.TLS refuses
// them first) and counts of 2^40 or more either way are einval.
ERL_NIF_TERM set_active_listener(ErlNifEnv* env, Sock* s, const std::vector<ERL_NIF_TERM>& actives) {
  if (actives.empty()) return atom.ok;
  long long a = s->active;  // kActiveTrue, kActiveOnce, 0 (false) or a count
  bool b;
  ErlNifSInt64 n = 0;
  for (auto it = actives.rbegin(); it != actives.rend(); ++it) {
    if (enif_is_identical(*it, atom.once)) {
      a = kActiveOnce;
    } else if (get_bool(*it, &b)) {
      a = b ? kActiveTrue : 0;
    } else if (enif_get_int64(env, *it, &n) && n > -(1LL << 40) && n < (1LL << 40)) {
      // (Bounded so that no sum of a list's counts overflows.)
      long long sum = (a > 0 ? a : 0) + n;
      a = sum > 0 ? sum : 0;
    } else {
      return make_error(env, atom.einval);
    }
  }
  bool last_count = enif_get_int64(env, actives.back(), &n);
  if ((last_count && (n < -kActiveMax - 1 || n > kActiveMax)) || a > kActiveMax)
    return make_error(env, atom.einval);
  s->active = static_cast<int>(a);
  if (s->active == 0) poller_disarm(env, s);
  if (last_count && s->active == 0) send_passive(env, s);
  return atom.ok;
}

// The active options of one setopts list, applied one after the other in
// the list's order (Islet.Options put it in the order the stack applies
// it: gen_tcp's from the last option to the first, :ssl's first to last),
// up to the first refused. gen_tcp's driver handles each as a call of its
// own (each count reaching 0 sends the passive message); :ssl sends one at
// most, when the list's first active option is an integer and the socket
// ends passive, refused or not (ssl_gen_statem's set_opts); its refusal
// names the option, {error, {active, V}} (Islet.TLS makes it :ssl's
// {options, {socket_options, {active, V}}}).
ERL_NIF_TERM set_active_list(ErlNifEnv* env, Sock* s, const std::vector<ERL_NIF_TERM>& actives) {
  if (s->tag == Tag::Ssl && s->kind != Kind::Conn) return set_active_listener(env, s, actives);
  bool ssl = s->tag == Tag::Ssl && s->kind == Kind::Conn;
  ERL_NIF_TERM r = atom.ok;
  for (ERL_NIF_TERM v : actives) {
    r = set_active(env, s, v, !ssl);
    if (!enif_is_identical(r, atom.ok)) {
      if (ssl) r = make_error(env, enif_make_tuple2(env, atom.active, v));
      break;
    }
  }
  if (ssl && !actives.empty() &&
      enif_term_type(env, actives.front()) == ERL_NIF_TERM_TYPE_INTEGER && s->active == 0)
    send_passive(env, s);
  return r;
}

}  // namespace

// set_active(Sock, Value) -> ok | {error, Reason}: the hot path of
// setopts(active: :once), one call per packet.
ERL_NIF_TERM nif_set_active(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || ssl_gone(s)) return closed_answer(env, s);
  if (tls_before_handshake(s)) return make_error(env, atom.notsup_before_handshake);
  ERL_NIF_TERM r = set_active(env, s, argv[1]);
  if (s->kind != Kind::Conn && s->tag == Tag::Ssl && !enif_is_identical(r, atom.ok)) {
    // :ssl passes a listener's active on to its TCP listener, and answers
    // inet's refusal as {options, {socket_options, [{active, V}], einval}}.
    ERL_NIF_TERM opt = enif_make_list1(env, enif_make_tuple2(env, atom.active, argv[1]));
    ERL_NIF_TERM why = enif_make_tuple3(env, enif_make_atom(env, "socket_options"), opt, atom.einval);
    return make_error(env, enif_make_tuple2(env, enif_make_atom(env, "options"), why));
  }
  return r;
}

// setopts(Sock, [{Key, Value}]) -> ok | {error, Reason}
ERL_NIF_TERM nif_setopts(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s) || !enif_is_list(env, argv[1])) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || ssl_gone(s)) return closed_answer(env, s);
  if (tls_before_handshake(s)) return make_error(env, atom.notsup_before_handshake);
  ERL_NIF_TERM head, tail = argv[1];
  std::vector<ERL_NIF_TERM> actives;  // applied last, once the other options are in place
  while (enif_get_list_cell(env, tail, &head, &tail)) {
    int arity;
    const ERL_NIF_TERM* kv;
    if (!enif_get_tuple(env, head, &arity, &kv) || arity != 2) return make_error(env, atom.einval);
    if (enif_is_identical(kv[0], atom.active)) {
      actives.push_back(kv[1]);
      continue;
    }
    bool bad = false;
    int e = apply_opt(s, env, kv[0], kv[1], &bad);
    if (e != 0) {
      // The options before the refused one stay in place, active too.
      ERL_NIF_TERM r = set_active_list(env, s, actives);
      if (!enif_is_identical(r, atom.ok)) return r;
      return make_errno_error(env, e);
    }
  }
  return set_active_list(env, s, actives);
}

// getopts(Sock, [Key]) -> {ok, [{Key, Value}]} | {error, Reason}
ERL_NIF_TERM nif_getopts(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  unsigned n;
  if (!get_sock(env, argv[0], &s) || !enif_get_list_length(env, argv[1], &n))
    return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  if (!s->open || ssl_gone(s)) return closed_answer(env, s);
  if (tls_before_handshake(s)) return make_error(env, atom.notsup_before_handshake);
  ERL_NIF_TERM out = enif_make_list(env, 0);
  ERL_NIF_TERM head, tail = argv[1];
  // Build in reverse, then flip, to keep the caller's order.
  while (enif_get_list_cell(env, tail, &head, &tail)) {
    ERL_NIF_TERM kv;
    int err = 0;
    if (read_opt(env, s, head, &kv, &err))
      out = enif_make_list_cell(env, kv, out);
    else if (err != 0)
      return make_errno_error(env, err);
  }
  ERL_NIF_TERM rev;
  enif_make_reverse_list(env, out, &rev);
  return make_ok(env, rev);
}

// getstat(Sock) -> {ok, [{Stat, Value}]}, in inet:getstat/1's order.
ERL_NIF_TERM nif_getstat(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  // (A TLS socket orphaned, sock_orphan, still answers: :ssl asks its
  // closing TCP port, not its connection process.)
  if (!s->open || s->dead || s->reset_reported) return make_error(env, atom.einval);
  auto kv = [env](ERL_NIF_TERM k, uint64_t v) {
    return enif_make_tuple2(env, k, enif_make_uint64(env, v));
  };
  // TLS: :ssl reads its TCP port's queue, records; Islet's queue holds
  // plaintext, and its sealed records the socket refused wait apart.
  uint64_t pend = unsent(s);
  uint64_t recv_oct = s->recv_oct, send_oct = s->send_oct;
  tls_wire_bytes(s, &recv_oct, &send_oct);
  ERL_NIF_TERM items[] = {
      kv(atom.recv_oct, recv_oct),
      kv(atom.recv_cnt, s->reads.cnt),
      kv(atom.recv_max, s->reads.max),
      kv(atom.recv_avg, static_cast<uint64_t>(s->reads.avg)),
      kv(atom.recv_dvi, static_cast<uint64_t>(std::fabs(s->reads.dvi))),
      kv(atom.send_oct, send_oct),
      kv(atom.send_cnt, s->writes.cnt),
      kv(atom.send_max, s->writes.max),
      kv(atom.send_avg, static_cast<uint64_t>(s->writes.avg)),
      kv(atom.send_pend, pend),
  };
  return make_ok(env, enif_make_list_from_array(env, items, sizeof items / sizeof items[0]));
}

static ERL_NIF_TERM name_of(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[], bool peer) {
  Sock* s;
  if (!get_sock(env, argv[0], &s)) return enif_make_badarg(env);
  std::lock_guard<std::mutex> lk(s->mu);
  // (A TLS socket orphaned, sock_orphan, still answers: :ssl asks its
  // closing TCP port, not its connection process.)
  if (!s->open || s->dead || s->reset_reported) return make_error(env, atom.einval);
  if (peer && s->eof_reported) return make_error(env, atom.enotconn);
  if (fd_gone(s)) return make_errno_error(env, EBADF);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int r = peer ? getpeername(s->fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(s->fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r != 0) return make_errno_error(env, errno);
  return make_ok(env, make_sockaddr(env, &ss, len));
}

ERL_NIF_TERM nif_sockname(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return name_of(env, argc, argv, false);
}

ERL_NIF_TERM nif_peername(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return name_of(env, argc, argv, true);
}

}  // namespace islet
