// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320): the checksum of zlib.crc32 and
// binascii.crc32, so files written by C++ and by Python agree byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mbpo_fast {

// Continues a running CRC: crc32(b, crc32(a)) == crc32(a + b). Start with crc = 0.
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0) noexcept;

}  // namespace mbpo_fast
