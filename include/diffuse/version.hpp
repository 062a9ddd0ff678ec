// SPDX-License-Identifier: MIT
/** @file version.hpp
 *  The library version. CMake parses the three macros below; keep them on their own lines. */
#pragma once

#define DIFFUSE_VERSION_MAJOR 0
#define DIFFUSE_VERSION_MINOR 1
#define DIFFUSE_VERSION_PATCH 0

/// The version as one integer: major * 10000 + minor * 100 + patch.
#define DIFFUSE_VERSION (DIFFUSE_VERSION_MAJOR * 10000 + DIFFUSE_VERSION_MINOR * 100 + DIFFUSE_VERSION_PATCH)
