// Islet: allocation from the BEAM's allocators for what connections keep.
#pragma once

#include <erl_nif.h>

#include <cstddef>
#include <cstdlib>
#include <new>
#include <string>

namespace islet {

// What a connection keeps for as long as it lives goes to the BEAM's
// allocator (enif_alloc), not to malloc. OpenSSL mallocs tens of kilobytes
// during each handshake and frees them at its end; a small block kept by a
// connection among that garbage pins its page of glibc's arena (10,000 idle
// TLS connections: 19.9 MB of arena for 7 MB of live blocks; settled RSS
// 4.8 KB per connection, 3.7 KB with this). ErtsAllocated gives a class
// that allocator; ErtsAllocator is the std:: allocator for containers that
// outlive the handshake.
struct ErtsAllocated {
  static void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return enif_alloc(n); }
  static void operator delete(void* p) noexcept { enif_free(p); }
  static void operator delete(void* p, const std::nothrow_t&) noexcept { enif_free(p); }
};

template <class T>
struct ErtsAllocator {
  using value_type = T;
  ErtsAllocator() = default;
  template <class U>
  ErtsAllocator(const ErtsAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    // Out of memory aborts, as std::allocator does without exceptions
    // (the NIF builds with -fno-exceptions).
    void* p = enif_alloc(n * sizeof(T));
    if (p == nullptr) std::abort();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { enif_free(p); }
  template <class U>
  bool operator==(const ErtsAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const ErtsAllocator<U>&) const noexcept { return false; }
};
// A string a connection keeps (its SNI host name, ALPN, peer certificate).
using ErtsString = std::basic_string<char, std::char_traits<char>, ErtsAllocator<char>>;

}  // namespace islet
