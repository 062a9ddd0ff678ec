// SPDX-License-Identifier: MIT
/** @file export.hpp
 *  Symbol visibility. The compiled library hides its symbols by default and exports the public
 *  ones with DIFFUSE_API, so that applications only see the API and not kernel internals. */
#pragma once

#if defined(DIFFUSE_STATIC_DEFINE) || defined(DIFFUSE_HEADER_ONLY)
#define DIFFUSE_API
#elif defined(_WIN32)
#ifdef DIFFUSE_BUILDING_LIBRARY
#define DIFFUSE_API __declspec(dllexport)
#else
#define DIFFUSE_API __declspec(dllimport)
#endif
#else
#define DIFFUSE_API __attribute__((visibility("default")))
#endif
