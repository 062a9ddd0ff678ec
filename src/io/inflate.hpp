// SPDX-License-Identifier: MIT
// Internal: a raw deflate stream (RFC 1951) inflated by stb_image's zlib decoder (compiled in
// image.cpp), for the library's embedded data.
#pragma once

#include <cstddef>
#include <string>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io::detail {

/// The inflated bytes; format_error (naming `what`) when the stream is not valid deflate.
std::string inflate_raw(const unsigned char* data, std::size_t size, const char* what);

}  // namespace io::detail
DIFFUSE_END_NAMESPACE
