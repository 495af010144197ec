// A fake erl_nif for the fuzz harnesses: see erl_nif_shim.hpp. Each function
// follows the erl_nif reference manual's contract for what c_src/ uses; the
// erl_nif functions it does not define fail to link, so that a new one is
// noticed rather than silently mis-modelled.
#include "erl_nif_shim.hpp"

#include <pthread.h>

#include <atomic>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <deque>
#include <map>
#include <new>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "erl_nif_shim: %s\n", what);
  std::abort();
}

// Term layout: a boxed term is a Node* (16-aligned, low bits 0); immediates
// carry a tag in the low 3 bits and a payload above.
constexpr ERL_NIF_TERM kTagAtom = 1, kTagPid = 2, kTagNil = 3, kTagNonValue = 5, kTagScheduled = 6;
constexpr ERL_NIF_TERM kScheduled = kTagScheduled;  // enif_schedule_nif's result
constexpr ERL_NIF_TERM kNil = kTagNil;
constexpr ERL_NIF_TERM kNonValue = kTagNonValue;  // enif_make_badarg's result
unsigned tag(ERL_NIF_TERM t) { return static_cast<unsigned>(t & 7); }
ERL_NIF_TERM imm(uint64_t payload, ERL_NIF_TERM tg) { return (payload << 3) | tg; }

constexpr uint32_t kNodeMagic = 0x7e4a11ed;
constexpr uint32_t kResMagic = 0x4e50a7ce;

enum class Kind : uint8_t { Int, Float, Bin, Cons, Tuple, Res, Ref };

struct ResHdr;

struct alignas(16) Node {
  uint32_t magic = kNodeMagic;
  Kind kind;
  ErlNifEnv* env;
  __int128 i = 0;
  double f = 0;
  unsigned char* data = nullptr;  // Bin: malloc'd, owned
  size_t size = 0;
  ERL_NIF_TERM head = 0, tail = 0;
  std::vector<ERL_NIF_TERM> elems;  // Tuple
  ResHdr* res = nullptr;            // Res: holds one reference
  uint64_t ref = 0;
};

// Atoms: one global table (atoms are shared by every env and thread).
std::mutex atom_mu;
std::vector<std::string> atom_names;
std::unordered_map<std::string, uint64_t> atom_index;

// Resource types live for the whole run, as in the VM.
struct TypeRec {
  std::string name;
  ErlNifResourceTypeInit init{};
};

// What enif_inspect_iovec allocates for an env.
struct IovecBlock {
  ErlNifIOVec vec{};
  std::vector<SysIOVec> iov;
  std::vector<void*> refs;
};
constexpr uint32_t kIoqMagic = 0x10c0ffee;

}  // namespace

struct enif_resource_type_t : TypeRec {};

struct enif_environment_t {
  std::vector<Node*> nodes;
  bool process_bound = false;
  bool exception = false;
  // A continuation from enif_schedule_nif, run after the NIF returns.
  ERL_NIF_TERM (*next)(ErlNifEnv*, int, const ERL_NIF_TERM[]) = nullptr;
  std::vector<ERL_NIF_TERM> next_argv;
  std::vector<IovecBlock*> iovecs;  // enif_inspect_iovec's, freed with the env
};

// An I/O queue (see enif_ioq_enqv).
struct erts_io_queue {
  uint32_t magic = kIoqMagic;
  std::deque<std::vector<unsigned char>> chunks;
  size_t head_off = 0;  // bytes of chunks.front() already dequeued
  size_t size = 0;
  SysIOVec* peeked = nullptr;  // enif_ioq_peek's array, until the next change
  void drop_peek() {
    std::free(peeked);
    peeked = nullptr;
  }
};

namespace {

struct ResHdr {
  uint32_t magic;
  ErlNifResourceType* type;
  std::atomic<long> refc;
  size_t size;
};
constexpr size_t kHdrSize = (sizeof(ResHdr) + 15) & ~size_t{15};

std::atomic<long> n_resources{0};
std::atomic<long> n_ioqs{0};
std::atomic<uint64_t> next_ref{1};
std::atomic<bool> self_exiting{false};

std::mutex types_mu;
std::map<std::string, enif_resource_type_t*> types;

struct Mon {
  ResHdr* res;
  ERL_NIF_TERM pid;
  uint64_t id;
};
std::mutex mon_mu;
std::vector<Mon> monitors;
uint64_t next_mon = 1;

struct Sel {
  ResHdr* res;
  int events;  // READ | WRITE still armed
};
std::mutex sel_mu;
std::map<int, Sel> selects;
std::vector<std::pair<ResHdr*, int>> scheduled_stops;

ResHdr* hdr_of(void* obj) {
  auto* h = reinterpret_cast<ResHdr*>(static_cast<char*>(obj) - kHdrSize);
  if (h->magic != kResMagic) fail("not a live resource object");
  return h;
}
void* obj_of(ResHdr* h) { return reinterpret_cast<char*>(h) + kHdrSize; }

Node* box(ERL_NIF_TERM t) {
  if (t == 0 || tag(t) != 0) return nullptr;
  Node* n = reinterpret_cast<Node*>(t);
  if (n->magic != kNodeMagic) fail("boxed term is not a live node");
  return n;
}

Node* new_node(ErlNifEnv* env, Kind k) {
  if (env == nullptr) fail("term made in a null env");
  Node* n = new Node();
  n->kind = k;
  n->env = env;
  env->nodes.push_back(n);
  return n;
}
ERL_NIF_TERM term_of(Node* n) { return reinterpret_cast<ERL_NIF_TERM>(n); }

// A term stored into a term of env must live in env (or be an immediate);
// the BEAM would otherwise keep a pointer into another heap.
void own(ErlNifEnv* env, ERL_NIF_TERM t) {
  if (t == kNonValue) fail("enif_make_badarg's result used inside a term");
  if (t == kScheduled) fail("enif_schedule_nif's result used inside a term");
  if (t == 0) fail("term 0 (uninitialised) used inside a term");
  if (tag(t) == kTagAtom) {
    std::lock_guard<std::mutex> lk(atom_mu);
    if ((t >> 3) >= atom_names.size()) fail("bad atom");
    return;
  }
  if (tag(t) != 0) return;
  if (box(t)->env != env) fail("term from another env used in a term of this env");
}

void walk(ErlNifEnv* env, ERL_NIF_TERM t, int depth) {
  if (depth > 10000) fail("term nested too deep (cycle?)");
  own(env, t);
  Node* n = box(t);
  if (n == nullptr) return;
  if (n->kind == Kind::Cons) {
    walk(env, n->head, depth + 1);
    walk(env, n->tail, depth + 1);
  } else if (n->kind == Kind::Tuple) {
    for (ERL_NIF_TERM e : n->elems) walk(env, e, depth + 1);
  } else if (n->kind == Kind::Res) {
    hdr_of(obj_of(n->res));
  }
}

void release_hdr(ResHdr* h);

void free_iovecs(ErlNifEnv* env) {
  for (IovecBlock* b : env->iovecs) delete b;
  env->iovecs.clear();
}

void clear_nodes(ErlNifEnv* env) {
  std::vector<Node*> nodes;
  nodes.swap(env->nodes);
  for (Node* n : nodes) {
    if (n->kind == Kind::Bin) std::free(n->data);
    ResHdr* r = n->res;
    n->magic = 0;
    delete n;
    if (r != nullptr) release_hdr(r);  // may run a destructor
  }
  env->exception = false;
  free_iovecs(env);
}

ErlNifEnv* callback_env() { return enif_alloc_env(); }

void release_hdr(ResHdr* h) {
  long left = --h->refc;
  if (left < 0) fail("resource released more often than kept");
  if (left > 0) return;
  {
    std::lock_guard<std::mutex> lk(mon_mu);  // monitors go with the resource
    for (size_t i = 0; i < monitors.size();)
      if (monitors[i].res == h) monitors.erase(monitors.begin() + i);
      else i++;
  }
  {
    std::lock_guard<std::mutex> lk(sel_mu);
    for (auto& kv : selects)
      if (kv.second.res == h) fail("resource destroyed while its fd is selected");
  }
  if (h->type->init.dtor != nullptr) {
    ErlNifEnv* e = callback_env();
    h->type->init.dtor(e, obj_of(h));
    enif_free_env(e);
  }
  h->magic = 0;
  n_resources--;
  std::free(h);
}

bool pid_alive(ERL_NIF_TERM pid) {
  if (tag(pid) != kTagPid || (pid >> 3) & 1) return false;  // external: not ours
  unsigned id = static_cast<unsigned>(pid >> 4);
  if (id == shim::kSelf && self_exiting) return false;
  return id != 0 && id < shim::kFirstDead;
}

// Erlang term order: number < atom < reference < fun < port < pid < tuple <
// map < [] < list < bitstring.
int order_class(ERL_NIF_TERM t) {
  switch (tag(t)) {
    case kTagAtom: return 1;
    case kTagPid: return 5;
    case kTagNil: return 8;
    default: break;
  }
  Node* n = box(t);
  if (n == nullptr) fail("compare of a non-term");
  switch (n->kind) {
    case Kind::Int:
    case Kind::Float: return 0;
    case Kind::Res:
    case Kind::Ref: return 2;
    case Kind::Tuple: return 6;
    case Kind::Cons: return 9;
    case Kind::Bin: return 10;
  }
  return 11;
}

int cmp3(long double a, long double b) { return a < b ? -1 : a > b ? 1 : 0; }

int compare(ERL_NIF_TERM a, ERL_NIF_TERM b) {
  if (a == b) return 0;
  int ca = order_class(a), cb = order_class(b);
  if (ca != cb) return ca < cb ? -1 : 1;
  Node *na = box(a), *nb = box(b);
  switch (ca) {
    case 0: {
      if (na->kind == Kind::Int && nb->kind == Kind::Int) return na->i < nb->i ? -1 : na->i > nb->i;
      long double x = na->kind == Kind::Int ? static_cast<long double>(na->i) : na->f;
      long double y = nb->kind == Kind::Int ? static_cast<long double>(nb->i) : nb->f;
      return cmp3(x, y);
    }
    case 1: {
      std::lock_guard<std::mutex> lk(atom_mu);
      int c = atom_names[a >> 3].compare(atom_names[b >> 3]);
      return c < 0 ? -1 : c > 0;
    }
    case 2: {
      auto key = [](Node* n) { return n->kind == Kind::Ref ? n->ref : reinterpret_cast<uintptr_t>(n->res); };
      return key(na) < key(nb) ? -1 : key(na) > key(nb);
    }
    case 5: return a < b ? -1 : 1;  // distinct pids: any fixed order
    case 6: {
      if (na->elems.size() != nb->elems.size()) return na->elems.size() < nb->elems.size() ? -1 : 1;
      for (size_t k = 0; k < na->elems.size(); k++)
        if (int c = compare(na->elems[k], nb->elems[k])) return c;
      return 0;
    }
    case 9: {
      if (int c = compare(na->head, nb->head)) return c;
      return compare(na->tail, nb->tail);
    }
    case 10: {
      int c = std::memcmp(na->data, nb->data, std::min(na->size, nb->size));
      if (c != 0) return c < 0 ? -1 : 1;
      return na->size < nb->size ? -1 : na->size > nb->size;
    }
  }
  return 0;
}

// Exact equality (=:=): an integer is never identical to a float.
bool identical(ERL_NIF_TERM a, ERL_NIF_TERM b) {
  if (a == b) return true;
  Node *na = box(a), *nb = box(b);
  if (na == nullptr || nb == nullptr || na->kind != nb->kind) return false;
  switch (na->kind) {
    case Kind::Int: return na->i == nb->i;
    case Kind::Float: return std::memcmp(&na->f, &nb->f, sizeof na->f) == 0;
    case Kind::Bin: return na->size == nb->size && std::memcmp(na->data, nb->data, na->size) == 0;
    case Kind::Cons: return identical(na->head, nb->head) && identical(na->tail, nb->tail);
    case Kind::Tuple:
      if (na->elems.size() != nb->elems.size()) return false;
      for (size_t k = 0; k < na->elems.size(); k++)
        if (!identical(na->elems[k], nb->elems[k])) return false;
      return true;
    case Kind::Res: return na->res == nb->res;
    case Kind::Ref: return na->ref == nb->ref;
  }
  return false;
}

bool get_integer(ERL_NIF_TERM t, __int128 lo, __int128 hi, __int128* out) {
  Node* n = box(t);
  if (n == nullptr || n->kind != Kind::Int || n->i < lo || n->i > hi) return false;
  *out = n->i;
  return true;
}

ERL_NIF_TERM make_integer(ErlNifEnv* env, __int128 v) {
  Node* n = new_node(env, Kind::Int);
  n->i = v;
  return term_of(n);
}

ERL_NIF_TERM copy_term(ErlNifEnv* dst, ERL_NIF_TERM t) {
  Node* n = box(t);
  if (n == nullptr) {
    if (t == kNonValue) fail("enif_make_copy of enif_make_badarg's result");
    return t;
  }
  Node* c = new_node(dst, n->kind);
  c->i = n->i;
  c->f = n->f;
  c->ref = n->ref;
  if (n->kind == Kind::Bin) {
    c->size = n->size;
    c->data = static_cast<unsigned char*>(std::malloc(n->size ? n->size : 1));
    std::memcpy(c->data, n->data, n->size);
  } else if (n->kind == Kind::Cons) {
    c->head = copy_term(dst, n->head);
    c->tail = copy_term(dst, n->tail);
  } else if (n->kind == Kind::Tuple) {
    for (ERL_NIF_TERM e : n->elems) c->elems.push_back(copy_term(dst, e));
  } else if (n->kind == Kind::Res) {
    c->res = n->res;
    c->res->refc++;
  }
  return term_of(c);
}

ERL_NIF_TERM make_tuple_v(ErlNifEnv* env, unsigned cnt, const ERL_NIF_TERM* arr) {
  Node* n = new_node(env, Kind::Tuple);
  for (unsigned k = 0; k < cnt; k++) {
    own(env, arr[k]);
    n->elems.push_back(arr[k]);
  }
  return term_of(n);
}

ERL_NIF_TERM make_list_v(ErlNifEnv* env, unsigned cnt, const ERL_NIF_TERM* arr) {
  ERL_NIF_TERM l = kNil;
  for (unsigned k = cnt; k-- > 0;) l = enif_make_list_cell(env, arr[k], l);
  return l;
}

}  // namespace

// ---- harness helpers -------------------------------------------------------

namespace shim {

ERL_NIF_TERM make_pid(unsigned id, bool external) {
  return imm((static_cast<uint64_t>(id) << 1) | (external ? 1 : 0), kTagPid);
}

ErlNifEnv* process_env() {
  ErlNifEnv* e = enif_alloc_env();
  e->process_bound = true;
  return e;
}

ERL_NIF_TERM make_int128(ErlNifEnv* env, __int128 v) { return make_integer(env, v); }

ERL_NIF_TERM make_ref(ErlNifEnv* env) {
  Node* n = new_node(env, Kind::Ref);
  n->ref = next_ref++;
  return term_of(n);
}

ERL_NIF_TERM run_scheduled_nifs(ErlNifEnv* env, ERL_NIF_TERM r) {
  while (env->next != nullptr) {
    if (r != kScheduled) fail("NIF scheduled a continuation but did not return its term");
    auto fp = env->next;
    std::vector<ERL_NIF_TERM> argv;
    argv.swap(env->next_argv);
    env->next = nullptr;
    r = fp(env, static_cast<int>(argv.size()), argv.data());
  }
  if (r == kScheduled) fail("enif_schedule_nif's term returned twice");
  return r;
}

bool check_result(ErlNifEnv* env, ERL_NIF_TERM t) {
  if (env->next != nullptr) fail("a scheduled NIF was never run (use run_scheduled_nifs)");
  bool exc = env->exception;
  env->exception = false;
  free_iovecs(env);  // the VM frees them when the NIF returns
  if (t == kNonValue) {
    if (!exc) fail("NIF returned the badarg term without raising");
    return false;
  }
  if (exc) fail("NIF called enif_make_badarg but returned another term");
  walk(env, t, 0);
  return true;
}

void set_self_exiting(bool exiting) { self_exiting = exiting; }

void kill_pid(unsigned id) {
  ERL_NIF_TERM pid = make_pid(id, false);
  std::vector<Mon> fired;
  {
    std::lock_guard<std::mutex> lk(mon_mu);
    for (size_t i = 0; i < monitors.size();) {
      if (monitors[i].pid == pid) {
        fired.push_back(monitors[i]);
        monitors[i].res->refc++;  // alive while its down callback runs
        monitors.erase(monitors.begin() + i);
      } else {
        i++;
      }
    }
  }
  for (const Mon& m : fired) {
    ErlNifMonitor mon{};
    std::memcpy(mon.data, &m.id, sizeof m.id);
    ErlNifPid p{pid};
    ErlNifEnv* e = callback_env();
    m.res->type->init.down(e, obj_of(m.res), &p, &mon);
    enif_free_env(e);
    release_hdr(m.res);
  }
}

void run_scheduled_stops() {
  std::vector<std::pair<ResHdr*, int>> todo;
  {
    std::lock_guard<std::mutex> lk(sel_mu);
    todo.swap(scheduled_stops);
  }
  for (auto& s : todo) {
    ErlNifEnv* e = callback_env();
    s.first->type->init.stop(e, obj_of(s.first), s.second, 0);
    enif_free_env(e);
    release_hdr(s.first);
  }
}

std::string format(ERL_NIF_TERM t) {
  char buf[64];
  switch (tag(t)) {
    case kTagAtom: {
      std::lock_guard<std::mutex> lk(atom_mu);
      std::string out = "'";
      for (unsigned char c : atom_names[t >> 3]) {
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
          out += static_cast<char>(c);
        } else {
          std::snprintf(buf, sizeof buf, "\\x{%x}", c);
          out += buf;
        }
      }
      return out + "'";
    }
    case kTagPid:
      std::snprintf(buf, sizeof buf, "<%d.%u.0>", (t >> 3) & 1 ? 9 : 0, static_cast<unsigned>(t >> 4));
      return buf;
    case kTagNil: return "[]";
    case kTagNonValue: return "<badarg>";
  }
  Node* n = box(t);
  if (n == nullptr) return "<bad term>";
  std::string out;
  switch (n->kind) {
    case Kind::Int: {
      __int128 v = n->i;
      bool neg = v < 0;
      unsigned __int128 u = neg ? -static_cast<unsigned __int128>(v) : static_cast<unsigned __int128>(v);
      do {
        out.insert(out.begin(), static_cast<char>('0' + static_cast<int>(u % 10)));
        u /= 10;
      } while (u != 0);
      return neg ? "-" + out : out;
    }
    case Kind::Float: std::snprintf(buf, sizeof buf, "%.17g", n->f); return buf;
    case Kind::Bin:
      out = "<<";
      for (size_t k = 0; k < n->size; k++) out += (k ? "," : "") + std::to_string(n->data[k]);
      return out + ">>";
    case Kind::Cons: {
      out = "[" + format(n->head);
      ERL_NIF_TERM rest = n->tail;
      Node* c;
      while ((c = box(rest)) != nullptr && c->kind == Kind::Cons) {
        out += "," + format(c->head);
        rest = c->tail;
      }
      if (rest != kNil) out += "|" + format(rest);
      return out + "]";
    }
    case Kind::Tuple:
      out = "{";
      for (size_t k = 0; k < n->elems.size(); k++) out += (k ? "," : "") + format(n->elems[k]);
      return out + "}";
    case Kind::Res: return "#Ref<res:" + n->res->type->name + ">";
    case Kind::Ref: return "#Ref<" + std::to_string(n->ref) + ">";
  }
  return "?";
}

size_t live_resources() { return static_cast<size_t>(n_resources.load()); }
size_t live_selects() {
  std::lock_guard<std::mutex> lk(sel_mu);
  return selects.size() + scheduled_stops.size();
}
size_t live_ioqs() { return static_cast<size_t>(n_ioqs.load()); }
size_t live_monitors() {
  std::lock_guard<std::mutex> lk(mon_mu);
  return monitors.size();
}

}  // namespace shim

// ---- erl_nif ---------------------------------------------------------------

extern "C" {

void* enif_alloc(size_t size) { return std::malloc(size); }
void enif_free(void* ptr) { std::free(ptr); }
ErlNifEnv* enif_alloc_env(void) { return new ErlNifEnv(); }
void enif_free_env(ErlNifEnv* env) {
  clear_nodes(env);
  delete env;
}
void enif_clear_env(ErlNifEnv* env) {
  if (env->process_bound) fail("enif_clear_env of a process-bound env");
  clear_nodes(env);
}

ERL_NIF_TERM enif_make_badarg(ErlNifEnv* env) {
  env->exception = true;
  return kNonValue;
}

int enif_consume_timeslice(ErlNifEnv*, int percent) {
  if (percent < 1 || percent > 100) fail("enif_consume_timeslice: percent outside 1..100");
  return 0;  // the slice is never used up here
}

// Atoms.
ERL_NIF_TERM enif_make_atom_len(ErlNifEnv* env, const char* name, size_t len) {
  if (len > 255) return enif_make_badarg(env);  // the atom length limit
  std::string s(name, len);
  std::lock_guard<std::mutex> lk(atom_mu);
  auto it = atom_index.find(s);
  if (it != atom_index.end()) return imm(it->second, kTagAtom);
  uint64_t i = atom_names.size();
  atom_names.push_back(s);
  atom_index.emplace(s, i);
  return imm(i, kTagAtom);
}
ERL_NIF_TERM enif_make_atom(ErlNifEnv* env, const char* name) {
  return enif_make_atom_len(env, name, std::strlen(name));
}
int enif_get_atom(ErlNifEnv*, ERL_NIF_TERM t, char* buf, unsigned len, ErlNifCharEncoding enc) {
  if (enc != ERL_NIF_LATIN1) fail("enif_get_atom: encoding");
  if (tag(t) != kTagAtom) return 0;
  std::lock_guard<std::mutex> lk(atom_mu);
  const std::string& s = atom_names[t >> 3];
  if (s.size() + 1 > len) return 0;  // the name and its NUL must fit
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  return static_cast<int>(s.size() + 1);
}

// Type tests.
int enif_is_atom(ErlNifEnv*, ERL_NIF_TERM t) { return tag(t) == kTagAtom; }
int enif_is_number(ErlNifEnv*, ERL_NIF_TERM t) {
  Node* n = box(t);
  return n != nullptr && (n->kind == Kind::Int || n->kind == Kind::Float);
}
int enif_is_binary(ErlNifEnv*, ERL_NIF_TERM t) {
  Node* n = box(t);
  return n != nullptr && n->kind == Kind::Bin;
}
// The type of a term, as the VM names it (a resource term is a reference).
ErlNifTermType enif_term_type(ErlNifEnv*, ERL_NIF_TERM t) {
  switch (tag(t)) {
    case kTagAtom: return ERL_NIF_TERM_TYPE_ATOM;
    case kTagPid: return ERL_NIF_TERM_TYPE_PID;
    case kTagNil: return ERL_NIF_TERM_TYPE_LIST;
    default: break;
  }
  Node* n = box(t);
  if (n == nullptr) fail("enif_term_type: not a term");
  switch (n->kind) {
    case Kind::Int: return ERL_NIF_TERM_TYPE_INTEGER;
    case Kind::Float: return ERL_NIF_TERM_TYPE_FLOAT;
    case Kind::Bin: return ERL_NIF_TERM_TYPE_BITSTRING;
    case Kind::Cons: return ERL_NIF_TERM_TYPE_LIST;
    case Kind::Tuple: return ERL_NIF_TERM_TYPE_TUPLE;
    case Kind::Res:
    case Kind::Ref: return ERL_NIF_TERM_TYPE_REFERENCE;
  }
  fail("enif_term_type: unknown kind");
}

// Comparison.
int enif_is_identical(ERL_NIF_TERM a, ERL_NIF_TERM b) { return identical(a, b); }
int enif_compare(ERL_NIF_TERM a, ERL_NIF_TERM b) { return compare(a, b); }

// Numbers: each getter fails on anything that does not fit its C type, and
// on floats, as in the VM.
int enif_get_int(ErlNifEnv*, ERL_NIF_TERM t, int* ip) {
  __int128 v;
  if (!get_integer(t, INT_MIN, INT_MAX, &v)) return 0;
  *ip = static_cast<int>(v);
  return 1;
}
int enif_get_uint(ErlNifEnv*, ERL_NIF_TERM t, unsigned* ip) {
  __int128 v;
  if (!get_integer(t, 0, UINT_MAX, &v)) return 0;
  *ip = static_cast<unsigned>(v);
  return 1;
}
int enif_get_long(ErlNifEnv*, ERL_NIF_TERM t, long* ip) {
  __int128 v;
  if (!get_integer(t, LONG_MIN, LONG_MAX, &v)) return 0;
  *ip = static_cast<long>(v);
  return 1;
}
int enif_get_ulong(ErlNifEnv*, ERL_NIF_TERM t, unsigned long* ip) {
  __int128 v;
  if (!get_integer(t, 0, ULONG_MAX, &v)) return 0;
  *ip = static_cast<unsigned long>(v);
  return 1;
}
ERL_NIF_TERM enif_make_int(ErlNifEnv* env, int i) { return make_integer(env, i); }
ERL_NIF_TERM enif_make_uint(ErlNifEnv* env, unsigned i) { return make_integer(env, i); }
ERL_NIF_TERM enif_make_long(ErlNifEnv* env, long i) { return make_integer(env, i); }
ERL_NIF_TERM enif_make_ulong(ErlNifEnv* env, unsigned long i) { return make_integer(env, i); }
ERL_NIF_TERM enif_make_double(ErlNifEnv* env, double d) {
  Node* n = new_node(env, Kind::Float);
  n->f = d;
  return term_of(n);
}

// Binaries. enif_alloc_binary's memory belongs to the ErlNifBinary until
// enif_release_binary, or until enif_make_binary hands it to a term.
int enif_alloc_binary(size_t size, ErlNifBinary* bin) {
  bin->data = static_cast<unsigned char*>(std::malloc(size ? size : 1));
  bin->size = size;
  bin->ref_bin = bin->data;
  return 1;
}
int enif_realloc_binary(ErlNifBinary* bin, size_t size) {
  if (bin->ref_bin == nullptr) fail("enif_realloc_binary of a binary not from enif_alloc_binary");
  bin->data = static_cast<unsigned char*>(std::realloc(bin->data, size ? size : 1));
  bin->size = size;
  bin->ref_bin = bin->data;
  return 1;
}
void enif_release_binary(ErlNifBinary* bin) {
  if (bin->ref_bin == nullptr) fail("enif_release_binary of a binary not from enif_alloc_binary");
  std::free(bin->data);
  bin->ref_bin = nullptr;
}
ERL_NIF_TERM enif_make_binary(ErlNifEnv* env, ErlNifBinary* bin) {
  if (bin->ref_bin == nullptr) fail("enif_make_binary of a binary not from enif_alloc_binary");
  Node* n = new_node(env, Kind::Bin);
  n->data = bin->data;
  n->size = bin->size;
  bin->ref_bin = nullptr;  // owned by the term now; a later release is a bug
  return term_of(n);
}
unsigned char* enif_make_new_binary(ErlNifEnv* env, size_t size, ERL_NIF_TERM* termp) {
  Node* n = new_node(env, Kind::Bin);
  n->data = static_cast<unsigned char*>(std::malloc(size ? size : 1));
  n->size = size;
  *termp = term_of(n);
  return n->data;
}
int enif_inspect_binary(ErlNifEnv*, ERL_NIF_TERM t, ErlNifBinary* bin) {
  Node* n = box(t);
  if (n == nullptr || n->kind != Kind::Bin) return 0;
  bin->data = n->data;
  bin->size = n->size;
  bin->ref_bin = nullptr;
  return 1;
}
ERL_NIF_TERM enif_make_string_len(ErlNifEnv* env, const char* s, size_t len, ErlNifCharEncoding) {
  ERL_NIF_TERM l = kNil;
  for (size_t k = len; k-- > 0;)
    l = enif_make_list_cell(env, make_integer(env, static_cast<unsigned char>(s[k])), l);
  return l;
}

// Tuples and lists.
static std::vector<ERL_NIF_TERM> va_terms(unsigned cnt, va_list ap) {
  std::vector<ERL_NIF_TERM> v(cnt);
  for (unsigned k = 0; k < cnt; k++) v[k] = va_arg(ap, ERL_NIF_TERM);
  return v;
}
ERL_NIF_TERM enif_make_tuple(ErlNifEnv* env, unsigned cnt, ...) {
  va_list ap;
  va_start(ap, cnt);
  std::vector<ERL_NIF_TERM> v = va_terms(cnt, ap);
  va_end(ap);
  return make_tuple_v(env, cnt, v.data());
}
ERL_NIF_TERM enif_make_tuple_from_array(ErlNifEnv* env, const ERL_NIF_TERM arr[], unsigned cnt) {
  return make_tuple_v(env, cnt, arr);
}
int enif_get_tuple(ErlNifEnv*, ERL_NIF_TERM t, int* arity, const ERL_NIF_TERM** array) {
  static const ERL_NIF_TERM kEmpty[1] = {kNil};
  Node* n = box(t);
  if (n == nullptr || n->kind != Kind::Tuple) return 0;
  *arity = static_cast<int>(n->elems.size());
  *array = n->elems.empty() ? kEmpty : n->elems.data();
  return 1;
}
ERL_NIF_TERM enif_make_list_cell(ErlNifEnv* env, ERL_NIF_TERM car, ERL_NIF_TERM cdr) {
  own(env, car);
  own(env, cdr);
  Node* n = new_node(env, Kind::Cons);
  n->head = car;
  n->tail = cdr;
  return term_of(n);
}
ERL_NIF_TERM enif_make_list(ErlNifEnv* env, unsigned cnt, ...) {
  va_list ap;
  va_start(ap, cnt);
  std::vector<ERL_NIF_TERM> v = va_terms(cnt, ap);
  va_end(ap);
  return make_list_v(env, cnt, v.data());
}
ERL_NIF_TERM enif_make_list_from_array(ErlNifEnv* env, const ERL_NIF_TERM arr[], unsigned cnt) {
  return make_list_v(env, cnt, arr);
}
int enif_get_list_cell(ErlNifEnv*, ERL_NIF_TERM t, ERL_NIF_TERM* head, ERL_NIF_TERM* tail) {
  Node* n = box(t);
  if (n == nullptr || n->kind != Kind::Cons) return 0;
  *head = n->head;
  *tail = n->tail;
  return 1;
}
int enif_get_list_length(ErlNifEnv*, ERL_NIF_TERM t, unsigned* len) {
  unsigned k = 0;
  for (Node* n; (n = box(t)) != nullptr && n->kind == Kind::Cons; t = n->tail) k++;
  if (t != kNil) return 0;  // improper, or not a list
  *len = k;
  return 1;
}
int enif_is_list(ErlNifEnv*, ERL_NIF_TERM t) {
  Node* n = box(t);
  return t == kNil || (n != nullptr && n->kind == Kind::Cons);
}
int enif_is_empty_list(ErlNifEnv*, ERL_NIF_TERM t) { return t == kNil; }
int enif_make_reverse_list(ErlNifEnv* env, ERL_NIF_TERM t, ERL_NIF_TERM* list) {
  ERL_NIF_TERM out = kNil;
  for (Node* n; (n = box(t)) != nullptr && n->kind == Kind::Cons; t = n->tail)
    out = enif_make_list_cell(env, n->head, out);
  if (t != kNil) return 0;
  *list = out;
  return 1;
}
ERL_NIF_TERM enif_make_copy(ErlNifEnv* dst, ERL_NIF_TERM t) { return copy_term(dst, t); }

// Processes.
ErlNifPid* enif_self(ErlNifEnv* env, ErlNifPid* pid) {
  if (env == nullptr || !env->process_bound) return nullptr;
  pid->pid = shim::make_pid(shim::kSelf, false);
  return pid;
}
int enif_is_process_alive(ErlNifEnv*, ErlNifPid* pid) { return pid_alive(pid->pid) ? 1 : 0; }
// No process is registered here (so Islet.Owners never runs: TCP
// connections are watched by monitors, as before the application starts).
int enif_whereis_pid(ErlNifEnv*, ERL_NIF_TERM, ErlNifPid*) { return 0; }
int enif_get_local_pid(ErlNifEnv*, ERL_NIF_TERM t, ErlNifPid* pid) {
  if (tag(t) != kTagPid || (t >> 3) & 1) return 0;
  pid->pid = t;
  return 1;
}
int enif_send(ErlNifEnv* env, const ErlNifPid* to, ErlNifEnv* msg_env, ERL_NIF_TERM msg) {
  if (msg_env != nullptr && msg_env->process_bound) fail("enif_send: msg_env is process-bound");
  walk(msg_env != nullptr ? msg_env : env, msg, 0);
  if (tag(to->pid) != kTagPid) fail("enif_send to a non-pid");
  if (!pid_alive(to->pid)) return 0;
  // A successful send invalidates msg_env's terms (it must then be cleared
  // or freed): clear it now so that a later use shows up.
  if (msg_env != nullptr) clear_nodes(msg_env);
  return 1;
}

// Resources.
ErlNifResourceType* enif_open_resource_type(ErlNifEnv*, const char* module_str,
                                            const char* name, void (*dtor)(ErlNifEnv*, void*),
                                            ErlNifResourceFlags flags,
                                            ErlNifResourceFlags* tried) {
  if (module_str != nullptr) fail("enif_open_resource_type: module_str must be NULL");
  ErlNifResourceTypeInit init{};
  init.dtor = dtor;
  return enif_open_resource_type_x(nullptr, name, &init, flags, tried);
}
ErlNifResourceType* enif_open_resource_type_x(ErlNifEnv*, const char* name,
                                              const ErlNifResourceTypeInit* init,
                                              ErlNifResourceFlags flags,
                                              ErlNifResourceFlags* tried) {
  std::lock_guard<std::mutex> lk(types_mu);
  auto it = types.find(name);
  enif_resource_type_t* t;
  if (it == types.end()) {
    if (!(flags & ERL_NIF_RT_CREATE)) return nullptr;
    t = new enif_resource_type_t();
    t->name = name;
    types.emplace(name, t);
    if (tried != nullptr) *tried = ERL_NIF_RT_CREATE;
  } else {
    if (!(flags & ERL_NIF_RT_TAKEOVER)) return nullptr;
    t = it->second;
    if (tried != nullptr) *tried = ERL_NIF_RT_TAKEOVER;
  }
  t->init.dtor = init->dtor;
  t->init.stop = init->stop;
  t->init.down = init->down;
  return t;
}
void* enif_alloc_resource(ErlNifResourceType* type, size_t size) {
  auto* h = static_cast<ResHdr*>(std::malloc(kHdrSize + (size ? size : 1)));
  h->magic = kResMagic;
  h->type = type;
  new (&h->refc) std::atomic<long>(1);
  h->size = size;
  std::memset(obj_of(h), 0xbe, size);  // not zeroed in the VM either
  n_resources++;
  return obj_of(h);
}
void enif_keep_resource(void* obj) {
  if (hdr_of(obj)->refc++ <= 0) fail("enif_keep_resource of a dead resource");
}
void enif_release_resource(void* obj) { release_hdr(hdr_of(obj)); }
ERL_NIF_TERM enif_make_resource(ErlNifEnv* env, void* obj) {
  ResHdr* h = hdr_of(obj);
  h->refc++;  // the term keeps the resource alive until its env goes
  Node* n = new_node(env, Kind::Res);
  n->res = h;
  return term_of(n);
}
int enif_get_resource(ErlNifEnv*, ERL_NIF_TERM t, ErlNifResourceType* type, void** objp) {
  Node* n = box(t);
  if (n == nullptr || n->kind != Kind::Res || n->res->type != type) return 0;
  *objp = obj_of(n->res);
  return 1;
}

// Monitors: recorded; they fire only through shim::kill_pid.
int enif_monitor_process(ErlNifEnv*, void* obj, const ErlNifPid* pid, ErlNifMonitor* mon) {
  ResHdr* h = hdr_of(obj);
  if (h->type->init.down == nullptr) return -1;
  if (!pid_alive(pid->pid)) return 1;
  std::lock_guard<std::mutex> lk(mon_mu);
  uint64_t id = next_mon++;
  monitors.push_back({h, pid->pid, id});
  if (mon != nullptr) {
    std::memset(mon, 0, sizeof *mon);
    std::memcpy(mon->data, &id, sizeof id);
  }
  return 0;
}
int enif_demonitor_process(ErlNifEnv*, void* obj, const ErlNifMonitor* mon) {
  ResHdr* h = hdr_of(obj);
  uint64_t id;
  std::memcpy(&id, mon->data, sizeof id);
  std::lock_guard<std::mutex> lk(mon_mu);
  for (size_t i = 0; i < monitors.size(); i++) {
    if (monitors[i].res == h && monitors[i].id == id) {
      monitors.erase(monitors.begin() + i);
      return 0;
    }
  }
  return 1;  // unknown, already removed or already fired
}
int enif_compare_monitors(const ErlNifMonitor* a, const ErlNifMonitor* b) {
  int c = std::memcmp(a->data, b->data, sizeof a->data);
  return c < 0 ? -1 : c > 0;
}

// enif_select: only the state the BEAM keeps per fd. A selected fd holds a
// reference to its resource until its stop callback has run. STOP calls the
// callback at once when nothing is armed, else schedules it (it runs in
// shim::run_scheduled_stops, as the BEAM runs it later).
int enif_select_x(ErlNifEnv* env, ErlNifEvent fd, enum ErlNifSelectFlags mode, void* obj,
                  const ErlNifPid* pid, ERL_NIF_TERM msg, ErlNifEnv* msg_env) {
  if (fd < 0) return INT_MIN | ERL_NIF_SELECT_INVALID_EVENT;
  ResHdr* h = hdr_of(obj);
  if (h->type->init.stop == nullptr) fail("enif_select on a resource type without stop");
  const int rw = ERL_NIF_SELECT_READ | ERL_NIF_SELECT_WRITE;
  if (mode & ERL_NIF_SELECT_STOP) {
    bool known, armed;
    int ev = 0;
    {
      std::lock_guard<std::mutex> lk(sel_mu);
      auto it = selects.find(fd);
      known = it != selects.end();
      if (known && it->second.res != h) fail("enif_select STOP with another resource on the fd");
      ev = known ? it->second.events : 0;
      armed = ev != 0;
      if (known) selects.erase(it);
      if (armed) scheduled_stops.emplace_back(h, fd);
    }
    int cancelled = (ev & ERL_NIF_SELECT_READ ? ERL_NIF_SELECT_READ_CANCELLED : 0) |
                    (ev & ERL_NIF_SELECT_WRITE ? ERL_NIF_SELECT_WRITE_CANCELLED : 0);
    if (armed) return ERL_NIF_SELECT_STOP_SCHEDULED | cancelled;
    h->type->init.stop(env, obj, fd, 1);
    if (known) release_hdr(h);
    return ERL_NIF_SELECT_STOP_CALLED;
  }
  if (mode & ERL_NIF_SELECT_CANCEL) {
    std::lock_guard<std::mutex> lk(sel_mu);
    auto it = selects.find(fd);
    if (it == selects.end()) return 0;
    if (it->second.res != h) fail("enif_select CANCEL with another resource on the fd");
    int was = it->second.events & mode & rw;
    it->second.events &= ~was;
    return (was & ERL_NIF_SELECT_READ ? ERL_NIF_SELECT_READ_CANCELLED : 0) |
           (was & ERL_NIF_SELECT_WRITE ? ERL_NIF_SELECT_WRITE_CANCELLED : 0);
  }
  if (!(mode & rw)) fail("enif_select: no mode");
  if (msg_env != nullptr && msg_env->process_bound) fail("enif_select_x: process-bound msg_env");
  walk(msg_env != nullptr ? msg_env : env, msg, 0);
  if (pid != nullptr && tag(pid->pid) != kTagPid) fail("enif_select: bad pid");
  {
    std::lock_guard<std::mutex> lk(sel_mu);
    auto it = selects.find(fd);
    if (it == selects.end()) {
      h->refc++;
      selects.emplace(fd, Sel{h, mode & rw});
    } else {
      if (it->second.res != h) fail("enif_select: fd already selected by another resource");
      it->second.events |= mode & rw;
    }
  }
  if (msg_env != nullptr) clear_nodes(msg_env);  // consumed, as by enif_send
  return 0;
}
int enif_select(ErlNifEnv* env, ErlNifEvent fd, enum ErlNifSelectFlags mode, void* obj,
                const ErlNifPid* pid, ERL_NIF_TERM ref) {
  if (mode & ERL_NIF_SELECT_CUSTOM_MSG) fail("enif_select with CUSTOM_MSG (use enif_select_x)");
  return enif_select_x(env, fd, mode, obj, pid, ref, nullptr);
}

// enif_schedule_nif: the continuation runs when the calling NIF has returned
// this function's result (shim::run_scheduled_nifs), on the same process.
ERL_NIF_TERM enif_schedule_nif(ErlNifEnv* env, const char* name, int flags,
                               ERL_NIF_TERM (*fp)(ErlNifEnv*, int, const ERL_NIF_TERM[]),
                               int argc, const ERL_NIF_TERM argv[]) {
  if (!env->process_bound) fail("enif_schedule_nif outside a NIF call");
  if (env->next != nullptr) fail("enif_schedule_nif twice in one NIF call");
  if (name == nullptr || fp == nullptr || argc < 0) fail("enif_schedule_nif: bad arguments");
  if (flags != 0 && flags != ERL_NIF_DIRTY_JOB_CPU_BOUND && flags != ERL_NIF_DIRTY_JOB_IO_BOUND)
    return enif_make_badarg(env);
  for (int k = 0; k < argc; k++) own(env, argv[k]);
  env->next = fp;
  env->next_argv.assign(argv, argv + argc);
  return kScheduled;
}

// Threads (the poller thread that load starts).
int enif_thread_create(char*, ErlNifTid* tid, void* (*func)(void*), void* args,
                       ErlNifThreadOpts*) {
  pthread_t t;
  int r = pthread_create(&t, nullptr, func, args);
  if (r == 0) *tid = reinterpret_cast<ErlNifTid>(t);
  return r;
}
int enif_thread_join(ErlNifTid tid, void** respp) {
  return pthread_join(reinterpret_cast<pthread_t>(tid), respp);
}

// enif_inspect_iovec: a proper list of binaries (what erlang:iolist_to_iovec
// makes), up to max_elements of them; the rest of the list goes to *tail.
// Anything else (a non-binary element, an improper tail, a non-list) is
// false, as in the VM. The ErlNifIOVec points into the binaries' data and
// lives until the NIF call returns (the VM allocates it as a temporary of
// the env): shim::check_result and the env's end free it, so a later use
// shows up under ASan. Per the manual, *iovec is NULL or a caller's struct
// "that should be used if possible" (erl_nif.h: small_iov is "used when
// stack allocating the io vec"): the shim fills it when the slice fits in
// ERL_NIF_IOVEC_SIZE entries, so a caller's garbage *iovec is written
// through (the exact threshold of the VM is not checked here).
int enif_inspect_iovec(ErlNifEnv* env, size_t max_elements, ERL_NIF_TERM list,
                       ERL_NIF_TERM* tail, ErlNifIOVec** iovec) {
  if (env == nullptr) fail("enif_inspect_iovec without an env (enif_free_iovec is not modelled)");
  std::vector<Node*> bins;
  size_t elements = 0;
  ERL_NIF_TERM rest = list;
  for (Node* n; elements < max_elements && (n = box(rest)) != nullptr && n->kind == Kind::Cons;
       rest = n->tail) {
    Node* b = box(n->head);
    if (b == nullptr || b->kind != Kind::Bin) return 0;
    if (b->size > 0) bins.push_back(b);  // empty binaries take no iov slot
    elements++;
  }
  Node* r = box(rest);
  if (rest != kNil && (r == nullptr || r->kind != Kind::Cons)) return 0;
  ErlNifIOVec* v = *iovec;
  // run.sh builds with -ftrivial-auto-var-init=pattern: 0xAA.. is a pointer
  // the caller never set.
  if (reinterpret_cast<uintptr_t>(v) == ~uintptr_t{0} / 0xff * 0xaa)
    fail("enif_inspect_iovec: *iovec is uninitialised (must be NULL or a struct to fill)");
  if (v == nullptr || bins.size() > ERL_NIF_IOVEC_SIZE) {
    auto* own = new IovecBlock();
    own->iov.resize(bins.size());
    own->refs.assign(bins.size(), nullptr);
    env->iovecs.push_back(own);
    v = &own->vec;
    v->iov = own->iov.data();
    v->ref_bins = own->refs.data();
  } else {
    v->iov = v->small_iov;
    v->ref_bins = v->small_ref_bin;
  }
  v->flags = 0;
  v->iovcnt = static_cast<int>(bins.size());
  v->size = 0;
  for (size_t k = 0; k < bins.size(); k++) {
    v->iov[k].iov_base = reinterpret_cast<char*>(bins[k]->data);
    v->iov[k].iov_len = bins[k]->size;
    v->ref_bins[k] = nullptr;  // nothing to reference: the queue copies
    v->size += bins[k]->size;
  }
  *iovec = v;
  *tail = rest;
  return 1;
}

// I/O queues: owned copies of the enqueued bytes, one chunk per iov
// element (the VM keeps references instead; the bytes seen are the same).
// peek's array is freed at the next change of the queue, and dequeued
// chunks at once, so a stale SysIOVec shows up under ASan.
ErlNifIOQueue* enif_ioq_create(ErlNifIOQueueOpts opts) {
  if (opts != ERL_NIF_IOQ_NORMAL) fail("enif_ioq_create: unknown options");
  n_ioqs++;
  return new erts_io_queue();
}
void enif_ioq_destroy(ErlNifIOQueue* q) {
  if (q == nullptr || q->magic != kIoqMagic) fail("enif_ioq_destroy of a dead queue");
  q->magic = 0;
  q->drop_peek();
  delete q;
  n_ioqs--;
}
int enif_ioq_enqv(ErlNifIOQueue* q, ErlNifIOVec* iov, size_t skip) {
  if (q == nullptr || q->magic != kIoqMagic) fail("enif_ioq_enqv on a dead queue");
  if (skip > iov->size) return 0;
  q->drop_peek();
  for (int k = 0; k < iov->iovcnt; k++) {
    const auto* p = reinterpret_cast<const unsigned char*>(iov->iov[k].iov_base);
    size_t len = iov->iov[k].iov_len;
    size_t drop = std::min(skip, len);
    skip -= drop;
    if (len > drop) {
      q->chunks.emplace_back(p + drop, p + len);
      q->size += len - drop;
    }
  }
  return 1;
}
size_t enif_ioq_size(ErlNifIOQueue* q) {
  if (q == nullptr || q->magic != kIoqMagic) fail("enif_ioq_size of a dead queue");
  return q->size;
}
int enif_ioq_deq(ErlNifIOQueue* q, size_t count, size_t* size) {
  if (q == nullptr || q->magic != kIoqMagic) fail("enif_ioq_deq on a dead queue");
  if (count > q->size) return 0;  // the queue is left as it was
  q->drop_peek();
  q->size -= count;
  while (count > 0) {
    auto& c = q->chunks.front();
    size_t left = c.size() - q->head_off;
    if (count < left) {
      q->head_off += count;
      break;
    }
    count -= left;
    q->chunks.pop_front();
    q->head_off = 0;
  }
  if (size != nullptr) *size = q->size;
  return 1;
}
SysIOVec* enif_ioq_peek(ErlNifIOQueue* q, int* iovlen) {
  if (q == nullptr || q->magic != kIoqMagic) fail("enif_ioq_peek of a dead queue");
  q->drop_peek();
  *iovlen = static_cast<int>(q->chunks.size());
  q->peeked = static_cast<SysIOVec*>(std::malloc(sizeof(SysIOVec) * (q->chunks.size() + 1)));
  size_t k = 0;
  for (auto& c : q->chunks) {
    size_t off = k == 0 ? q->head_off : 0;
    q->peeked[k].iov_base = reinterpret_cast<char*>(c.data() + off);
    q->peeked[k].iov_len = c.size() - off;
    k++;
  }
  return q->peeked;
}

}  // extern "C"
