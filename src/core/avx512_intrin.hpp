// SPDX-License-Identifier: MIT
// <immintrin.h> for the AVX-512 files. GCC 12's AVX-512 intrinsics build their "undefined"
// pass-through operands as `__m512 __Y = __Y;`, which -W(maybe-)uninitialized reports at the header
// line once inlined (GCC bug 105593); the warnings are silenced for this include only.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
