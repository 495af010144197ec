// libFuzzer harness: Islet's wire parsers (ALPN selection, SNI extension,
// ClientHello group and version lists)
// on arbitrary bytes. The first byte splits the input between the server's
// ALPN list and the client's.
#include <cstddef>
#include <cstdint>

#include "../c_src/wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  islet::wire::sni_host(data, size);
  // ClientHello group and version lists: every id read lies inside the input.
  unsigned seen = 0;
  auto count = [&](unsigned id) { return (seen += id & 1) > 1000000; };
  islet::wire::any_supported_group(data, size, count);
  islet::wire::any_key_share(data, size, count);
  islet::wire::lists_version(data, size, 0x0304);
  if (size == 0) return 0;
  size_t split = data[0] % size;
  const unsigned char* out = nullptr;
  unsigned char out_len = 0;
  if (islet::wire::alpn_select(data + 1, split, data + 1 + split, size - 1 - split, &out,
                               &out_len)) {
    // The selection must lie inside the client's list.
    if (out < data + 1 + split || out + out_len > data + size) __builtin_trap();
  }
  return 0;
}
