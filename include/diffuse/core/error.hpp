// SPDX-License-Identifier: MIT
/** @file error.hpp
 *  The error types of diffuse. Callers catch by category:
 *
 *  | type             | raised for                                                            |
 *  |------------------|-----------------------------------------------------------------------|
 *  | `io_error`       | a file that cannot be opened, mapped, read or written                 |
 *  | `format_error`   | a malformed file or config: bad safetensors header, unknown dtype, key|
 *  | `shape_error`    | a tensor whose shape is not the one required                          |
 *  | `value_error`    | an argument out of its domain: unknown sampler name, steps < 1, NaN   |
 *  | `resource_error` | the system refused a resource: a thread that could not be started     |
 *  | `memory_error`   | a load or generation that needs more memory than its limit, or an     |
 *  |                  | allocation that failed (std::bad_alloc turned into a typed error)     |
 *
 *  All derive from `diffuse::error`, itself a `std::runtime_error`. Messages start with the
 *  function that raised them in brackets and name the file, tensor or key involved:
 *  `[safetensors::open] model.safetensors: tensor 'conv.weight' ends past the end of the data`.
 */
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Base of every error diffuse raises.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A file could not be opened, mapped, read or written.
class io_error : public error {
 public:
  using error::error;
};

/// A file or config is malformed: bad header, unknown dtype, missing or duplicate key.
class format_error : public error {
 public:
  using error::error;
};

/// A tensor does not have the shape that is required.
class shape_error : public error {
 public:
  using error::error;
};

/// An argument is outside its domain (unknown name, non-positive count, NaN in an output).
class value_error : public error {
 public:
  using error::error;
};

/// A load or a generation needs more memory than its memory limit allows (the message says how
/// much and what for), or an allocation failed.
class memory_error : public error {
 public:
  using error::error;
};

/// The system refused a resource the operation needs (a thread could not be started: the limit on
/// threads or on memory was reached). Retrying with fewer threads may succeed.
class resource_error : public error {
 public:
  using error::error;
};

namespace detail {
/// Builds "[where] what": the house format of every message.
inline std::string message(std::string_view where, std::string_view what) {
  std::string m;
  m.reserve(where.size() + what.size() + 3);
  m += '[';
  m += where;
  m += "] ";
  m += what;
  return m;
}
}  // namespace detail

/// Throws `E` with the message "[where] what".
template <class E>
[[noreturn]] inline void raise(std::string_view where, std::string_view what) {
  DIFFUSE_THROW(E(detail::message(where, what)));
}

DIFFUSE_END_NAMESPACE
