// SPDX-License-Identifier: MIT
/** @file config.hpp
 *  Compile-time settings. Every macro here has a default that a user may override by defining it
 *  before the first diffuse header (or on the compiler command line). */
#pragma once

#include <cstdlib>

#include "diffuse/export.hpp"
#include "diffuse/version.hpp"

/// Opens the public namespace. The inline namespace carries the ABI version into every mangled
/// name, so two incompatible builds fail to link instead of silently mixing.
#define DIFFUSE_BEGIN_NAMESPACE \
  namespace diffuse {           \
  inline namespace v0 {
#define DIFFUSE_END_NAMESPACE \
  }                           \
  }

/// Byte alignment of buffers that diffuse allocates itself (one AVX-512 register / cache line).
#ifndef DIFFUSE_DEFAULT_ALIGNMENT
#define DIFFUSE_DEFAULT_ALIGNMENT 64
#endif

/// How errors are raised. Defaults to `throw`; under -fno-exceptions it aborts.
#ifndef DIFFUSE_THROW
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define DIFFUSE_THROW(exception) throw exception
#else
#define DIFFUSE_THROW(exception) std::abort()
#endif
#endif

/// Internal invariants. Compiled out unless DIFFUSE_ENABLE_ASSERT is defined (Debug builds define it).
#if defined(DIFFUSE_ENABLE_ASSERT)
#include <cstdio>
#define DIFFUSE_ASSERT(cond, msg)                                                            \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "%s:%d: diffuse assertion failed: %s\n", __FILE__, __LINE__, msg); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (false)
#else
#define DIFFUSE_ASSERT(cond, msg) static_cast<void>(0)
#endif
