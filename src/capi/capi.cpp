// SPDX-License-Identifier: MIT
// The C ABI (include/diffuse/diffuse.h) over the pipeline layer. Every entry point runs its body
// inside `guarded()`, which turns every C++ exception into a status code and records the message in
// the context: nothing is thrown across the C boundary.
//
// Handles: each handle struct starts with a type tag, and a registry of live handles (one mutex, one
// hash set) is consulted before any handle is dereferenced. That is what makes a freed handle an
// error instead of a use-after-free: the tag alone would have to be read from freed memory.
//
// Cancellation: the context owns an atomic flag. A job runs its model's network through
// `CancellableNetwork`, which checks the flag before every forward, so a cancel stops a step
// between two network calls; the step function checks it once more before starting a step.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "capi_internal.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/diffuse.h"
#include "diffuse/io/image.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/network.hpp"
#include "diffuse/pipeline/generate.hpp"
#include "diffuse/pipeline/model.hpp"
#include "diffuse/pipeline/output.hpp"

namespace dp = diffuse::pipeline;

namespace {

// ---- handle registry ----

enum class Kind : std::uint32_t {
  context = 0x58544344u,  // "DCTX" in memory
  model = 0x4c444d44u,    // "DMDL"
  job = 0x424f4a44u,      // "DJOB"
};
constexpr std::uint32_t kFreed = 0xdeadd1ffu;

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::context: return "diffuse_context";
    case Kind::model: return "diffuse_model";
    case Kind::job: return "diffuse_job";
  }
  return "handle";
}

/** The live handles. The registry owns every handle (a shared_ptr per entry); an entry point takes
 *  its own reference under the registry's lock (`acquire`), so a handle freed by another thread
 *  meanwhile stays alive until that call returns: nothing is ever read from freed memory. */
class Registry {
 public:
  void add(const void* p, Kind k, std::shared_ptr<void> owner) {
    std::lock_guard lock(m_);
    live_[p] = Entry{k, std::move(owner)};
  }
  /// Forgets the handle at `p` if it is a live one of kind `k`; true if it was. Its owner is
  /// released after the lock (the last reference deletes the handle there or in a running call).
  bool remove(const void* p, Kind k) {
    std::shared_ptr<void> owner;
    {
      std::lock_guard lock(m_);
      const auto it = live_.find(p);
      if (it == live_.end() || it->second.kind != k) return false;
      owner = std::move(it->second.owner);
      live_.erase(it);
    }
    return true;
  }
  /// The kind of the live handle at `p`, if any.
  std::optional<Kind> find(const void* p) {
    if (!p) return std::nullopt;
    std::lock_guard lock(m_);
    const auto it = live_.find(p);
    if (it == live_.end()) return std::nullopt;
    return it->second.kind;
  }
  /// A reference to the live handle at `p` of kind `k`, or null.
  template <class H>
  std::shared_ptr<H> acquire(const void* p, Kind k) {
    if (!p) return nullptr;
    std::lock_guard lock(m_);
    const auto it = live_.find(p);
    if (it == live_.end() || it->second.kind != k) return nullptr;
    return std::static_pointer_cast<H>(it->second.owner);
  }

 private:
  struct Entry {
    Kind kind;
    std::shared_ptr<void> owner;
  };
  std::mutex m_;
  std::unordered_map<const void*, Entry> live_;
};

// Never destroyed, so handles freed from other static destructors still find it.
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

/// Registers a new handle (the registry takes it over) and returns its address for the caller.
template <class H>
H* publish(std::unique_ptr<H> h, Kind k) {
  H* raw = h.get();
  std::shared_ptr<H> owner(h.release(), [](H* p) {
    p->magic = kFreed;
    delete p;
  });
  registry().add(raw, k, std::move(owner));
  return raw;
}

// ---- errors ----

/// An error with a status chosen by the C layer itself.
struct ApiError {
  diffuse_status status;
  std::string message;
};

[[noreturn]] void api_fail(diffuse_status status, std::string_view where, std::string_view what) {
  throw ApiError{status, diffuse::detail::message(where, what)};
}

/// Thrown through the network and the sampler when the context's cancel flag is set. Not a
/// diffuse::error, so nothing on the way reinterprets it.
struct Cancelled {};

}  // namespace

// ---- the handle types (global: the C header declares them there) ----

namespace diffuse_capi {

/// What a context owns; shared with its jobs, which keep it alive after the context is destroyed.
struct ContextState {
  explicit ContextState(std::size_t threads) : kctx(threads) {}
  diffuse::kernels::Context kctx;
  diffuse_log_fn log_fn = nullptr;
  void* log_user = nullptr;
  diffuse_log_level log_level = DIFFUSE_LOG_INFO;
  diffuse_progress_fn progress_fn = nullptr;
  void* progress_user = nullptr;
  std::atomic<bool> cancel{false};
  std::string last_error;

  void log(diffuse_log_level level, const std::string& msg) const noexcept {
    if (log_fn && level >= log_level) log_fn(log_user, level, msg.c_str());
  }
};

}  // namespace diffuse_capi

using diffuse_capi::ContextState;

struct diffuse_context {
  std::uint32_t magic = static_cast<std::uint32_t>(Kind::context);
  std::shared_ptr<ContextState> s;
};

struct diffuse_model {
  explicit diffuse_model(dp::Model m, bool low = false) : model(std::move(m)), low_memory(low) {}
  std::uint32_t magic = static_cast<std::uint32_t>(Kind::model);
  dp::Model model;
  bool low_memory = false;  // diffuse_model_options.low_memory: its jobs decode in tiles by default
};

struct diffuse_job {
  enum class State { running, done, cancelled, failed };
  diffuse_job(std::shared_ptr<ContextState> c, dp::Generation g) : ctx(std::move(c)), gen(std::move(g)) {}
  std::uint32_t magic = static_cast<std::uint32_t>(Kind::job);
  std::shared_ptr<ContextState> ctx;
  dp::Generation gen;
  State state = State::running;
  bool busy = false;  // inside step() (including the progress callback)
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::string parameters;
};

namespace {

// ---- guarded calls ----

void record(ContextState* s, diffuse_status status, const char* what) noexcept {
  if (!s) return;
  try {
    s->last_error = what;
  } catch (...) {
    s->last_error.clear();  // no memory for the message; the status still tells
  }
  s->log(status == DIFFUSE_CANCELLED ? DIFFUSE_LOG_INFO : DIFFUSE_LOG_ERROR, s->last_error);
}

/** Runs `body` (returning a diffuse_status) and maps every exception to a status, recording the
 *  message in `s` (may be null). `value_status` is what a diffuse::value_error means for this entry
 *  point: a bad option when creating a job, a non-finite value when stepping one. */
template <class F>
diffuse_status guarded(ContextState* s, const char* where, diffuse_status value_status, F&& body) noexcept {
  diffuse_status st = DIFFUSE_INTERNAL_ERROR;
  std::string msg;
  try {
    try {
      st = body();
      if (s && st == DIFFUSE_OK) s->last_error.clear();
      return st;
    } catch (const ApiError& e) {
      st = e.status;
      msg = e.message;
    } catch (const Cancelled&) {
      st = DIFFUSE_CANCELLED;
      msg = diffuse::detail::message(where, "cancelled");
    } catch (const std::bad_alloc&) {
      st = DIFFUSE_OUT_OF_MEMORY;
      msg = diffuse::detail::message(where, "out of memory");
    } catch (const std::length_error&) {  // a container asked for more than it can hold
      st = DIFFUSE_OUT_OF_MEMORY;
      msg = diffuse::detail::message(where, "out of memory (a size too large to allocate)");
    } catch (const diffuse::memory_error& e) {
      st = DIFFUSE_OUT_OF_MEMORY;
      msg = e.what();
    } catch (const diffuse::resource_error& e) {  // a thread the system would not start
      st = DIFFUSE_OUT_OF_MEMORY;
      msg = e.what();
    } catch (const diffuse::io_error& e) {
      st = DIFFUSE_IO_ERROR;
      msg = e.what();
    } catch (const diffuse::format_error& e) {
      st = DIFFUSE_FORMAT_ERROR;
      msg = e.what();
    } catch (const diffuse::value_error& e) {
      st = value_status;
      msg = e.what();
    } catch (const diffuse::shape_error& e) {
      st = DIFFUSE_VALUE_ERROR;
      msg = e.what();
    } catch (const std::invalid_argument& e) {
      st = DIFFUSE_INVALID_ARGUMENT;
      msg = diffuse::detail::message(where, e.what());
    } catch (const std::exception& e) {
      st = DIFFUSE_INTERNAL_ERROR;
      msg = diffuse::detail::message(where, std::string("internal error: ") + e.what());
    } catch (...) {
      st = DIFFUSE_INTERNAL_ERROR;
      msg = diffuse::detail::message(where, "internal error: unknown exception");
    }
  } catch (...) {  // building the message itself failed (no memory)
    msg.clear();
    if (st == DIFFUSE_OK || st == DIFFUSE_INTERNAL_ERROR) st = DIFFUSE_OUT_OF_MEMORY;
  }
  record(s, st, msg.c_str());
  return st;
}

std::string describe_bad_handle(const void* p, Kind want) {
  const std::string w = kind_name(want);
  if (!p) return w + " is NULL";
  const auto k = registry().find(p);
  if (!k) return w + " is not a live handle (freed, or not a " + w + ")";
  return "a " + std::string(kind_name(*k)) + " was passed where a " + w + " is expected";
}

/// The live handle at `p` of kind `k` (a reference that keeps it alive during the call), or null.
template <class H>
std::shared_ptr<H> lookup(const void* p, Kind k) noexcept {
  try {
    std::shared_ptr<H> h = registry().acquire<H>(p, k);
    if (h && h->magic != static_cast<std::uint32_t>(k)) return nullptr;
    return h;
  } catch (...) {
    return nullptr;
  }
}

std::shared_ptr<diffuse_context> context_of(const diffuse_context* c) { return lookup<diffuse_context>(c, Kind::context); }
std::shared_ptr<diffuse_model> model_of(const diffuse_model* m) { return lookup<diffuse_model>(m, Kind::model); }
std::shared_ptr<diffuse_job> job_of(const diffuse_job* j) { return lookup<diffuse_job>(j, Kind::job); }

/** A caller's options struct, read up to its struct_size on top of the defaults. `v1_size` is the
 *  size of the struct in ABI version 1: a caller built against it passes that struct_size and its
 *  later fields keep their defaults. A struct_size smaller than that means the init function was
 *  not called. */
template <class T>
T read_options(const T* in, void (*init)(T*), const char* where, const char* type, std::size_t v1_size = sizeof(T)) {
  T out;
  init(&out);
  if (!in) return out;
  if (in->struct_size < v1_size)
    api_fail(DIFFUSE_INVALID_ARGUMENT, where,
             std::string(type) + ".struct_size is " + std::to_string(in->struct_size) + ", expected " +
                 std::to_string(sizeof(T)) + ": call " + type + "_init first");
  // Fields past the caller's struct_size keep their defaults; a newer caller's extra ones are ignored.
  std::memcpy(static_cast<void*>(&out), in, std::min(in->struct_size, sizeof(T)));
  out.struct_size = sizeof(T);
  return out;
}

/// Sizes of the option structs in ABI version 1 (before memory_limit).
constexpr std::size_t kModelOptionsV1 = offsetof(diffuse_model_options, memory_limit);
constexpr std::size_t kJobOptionsV1 = offsetof(diffuse_job_options, memory_limit);

std::string null_arg(const char* name) { return std::string(name) + " is NULL"; }

/// An enum field a C caller filled, as the int it is: a C program may store any int there, which
/// is out of the C++ enum's range (undefined behaviour to load as the enum) when negative.
template <class E>
int enum_value(const E& field) {
  static_assert(sizeof(E) == sizeof(int));
  int v;
  std::memcpy(&v, &field, sizeof v);
  return v;
}

// ---- the network seen by a job: the model's, with the cancel check ----

class CancellableNetwork final : public diffuse::models::Network {
 public:
  CancellableNetwork(std::shared_ptr<const diffuse::models::Network> base, const std::atomic<bool>* cancel)
      : base_(std::move(base)), cancel_(cancel) {}
  const diffuse::models::NetworkInfo& info() const noexcept override { return base_->info(); }
  diffuse::Tensor forward(const diffuse::Tensor& x, std::span<const float> timesteps,
                          std::span<const std::int64_t> labels, diffuse::kernels::Context& ctx) const override {
    if (cancel_->load(std::memory_order_acquire)) throw Cancelled{};
    return base_->forward(x, timesteps, labels, ctx);
  }
  diffuse::Tensor forward_conditioned(const diffuse::Tensor& x, std::span<const float> timesteps,
                                      const diffuse::models::Conditioning& c,
                                      diffuse::kernels::Context& ctx) const override {
    if (cancel_->load(std::memory_order_acquire)) throw Cancelled{};
    return base_->forward_conditioned(x, timesteps, c, ctx);
  }
  std::uint64_t forward_bytes(std::size_t batch, std::size_t height, std::size_t width) const override {
    return base_->forward_bytes(batch, height, width);
  }

 private:
  std::shared_ptr<const diffuse::models::Network> base_;
  const std::atomic<bool>* cancel_;
};

std::string fmt_ms(std::chrono::steady_clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f ms", std::chrono::duration<double, std::milli>(d).count());
  return buf;
}

/** A caller's planar image input (init_image, mask): `count` floats of [1 or batch, channels, h, w]
 *  at `data`, copied into a tensor; nullopt when `data` is NULL and `count` 0. Refused, naming
 *  `name` and `noun` ("an init image"): a count that is no whole image of the job's size, or a
 *  count without data. */
std::optional<diffuse::Tensor> planar_input(const float* data, std::size_t count, std::size_t channels, std::size_t h,
                                            std::size_t w, std::size_t batch, const std::string& name,
                                            const std::string& noun, const char* where) {
  if (!data) {
    if (count != 0) api_fail(DIFFUSE_INVALID_ARGUMENT, where, name + " is NULL but " + name + "_count is " + std::to_string(count));
    return std::nullopt;
  }
  const std::size_t one = channels * h * w;
  if (count != one && count != batch * one)
    api_fail(DIFFUSE_INVALID_ARGUMENT, where,
             name + "_count is " + std::to_string(count) + ", " + noun + " of " + std::to_string(w) + "x" +
                 std::to_string(h) + " (width x height) has " + std::to_string(one) + " values" +
                 (batch > 1 ? " (or " + std::to_string(batch * one) + " for one per image)" : std::string()));
  diffuse::Tensor t({count / one, channels, h, w});
  std::memcpy(t.data(), data, t.size() * sizeof(float));
  return t;
}

/// Checks a batch index and an output buffer of `need` elements against `have`.
void check_output(const diffuse_job& j, int index, const void* buffer, std::size_t have, std::size_t need,
                  const char* where, const char* unit) {
  const std::size_t batch = j.gen.options().batch;
  if (index < 0 || static_cast<std::size_t>(index) >= batch)
    api_fail(DIFFUSE_INVALID_ARGUMENT, where,
             "index " + std::to_string(index) + " is out of a batch of " + std::to_string(batch));
  if (!buffer) api_fail(DIFFUSE_INVALID_ARGUMENT, where, "the output buffer is NULL");
  if (have < need)
    api_fail(DIFFUSE_INVALID_ARGUMENT, where,
             "the buffer is too small: " + std::to_string(have) + " " + unit + ", need " + std::to_string(need));
}

std::size_t rgba_bytes(const diffuse_job& j) {
  const auto& o = j.gen.options();
  return *o.width * *o.height * 4;
}

void copy_rgba8(const diffuse::Tensor& images, int index, std::uint8_t* pixels) {
  const diffuse::io::Image img = dp::to_rgba8(images, static_cast<std::size_t>(index));
  std::memcpy(pixels, img.pixels.data(), img.pixels.size());
}

/// One step of `j` (see diffuse_job_step). Throws; the caller guards.
bool step_job(diffuse_job& j, const char* where) {
  using State = diffuse_job::State;
  ContextState& s = *j.ctx;
  if (j.busy) api_fail(DIFFUSE_WRONG_STATE, where, "called from the job's own progress callback");
  const auto step_text = [&] {
    return "step " + std::to_string(j.gen.step_index() + 1) + " of " + std::to_string(j.gen.num_steps());
  };
  switch (j.state) {
    case State::cancelled: api_fail(DIFFUSE_CANCELLED, where, "the job was cancelled; create a new one");
    case State::failed: api_fail(DIFFUSE_WRONG_STATE, where, "an earlier step of the job failed; create a new one");
    case State::done:
      api_fail(DIFFUSE_WRONG_STATE, where, "the job is done (" + std::to_string(j.gen.num_steps()) + " steps)");
    case State::running: break;
  }
  if (s.cancel.load(std::memory_order_acquire)) {
    j.state = State::cancelled;
    api_fail(DIFFUSE_CANCELLED, where, "cancelled before " + step_text());
  }
  j.busy = true;
  struct Unbusy {
    bool& b;
    ~Unbusy() { b = false; }
  } unbusy{j.busy};
  try {
    j.gen.step(s.kctx);
  } catch (const Cancelled&) {
    j.state = State::cancelled;
    api_fail(DIFFUSE_CANCELLED, where, "cancelled during " + step_text());
  } catch (...) {
    j.state = State::failed;
    throw;
  }
  const bool done = j.gen.done();
  if (done) {
    j.state = State::done;
    s.log(DIFFUSE_LOG_INFO, "job done: " + std::to_string(j.gen.num_steps()) + " steps, " +
                                std::to_string(j.gen.nfe()) + " network forwards in " +
                                fmt_ms(std::chrono::steady_clock::now() - j.started));
  }
  if (s.progress_fn)
    s.progress_fn(s.progress_user, &j, static_cast<int>(j.gen.step_index()), static_cast<int>(j.gen.num_steps()));
  return done;
}

#define DIFFUSE_STR2(x) #x
#define DIFFUSE_STR(x) DIFFUSE_STR2(x)

}  // namespace

diffuse_model* diffuse_capi::wrap_model(const dp::Model& model) {
  return publish(std::make_unique<diffuse_model>(model), Kind::model);
}

extern "C" {

// ---- status and version ----

const char* diffuse_status_string(diffuse_status status) {
  switch (status) {
    case DIFFUSE_OK: return "ok";
    case DIFFUSE_INVALID_ARGUMENT: return "invalid argument";
    case DIFFUSE_IO_ERROR: return "I/O error";
    case DIFFUSE_FORMAT_ERROR: return "format error";
    case DIFFUSE_VALUE_ERROR: return "value error";
    case DIFFUSE_CANCELLED: return "cancelled";
    case DIFFUSE_NUMERIC_ERROR: return "numeric error (NaN or infinity)";
    case DIFFUSE_OUT_OF_MEMORY: return "out of memory";
    case DIFFUSE_WRONG_STATE: return "wrong state";
    case DIFFUSE_INTERNAL_ERROR: return "internal error";
    case DIFFUSE_STATUS_MAX_ENUM: break;
  }
  return "unknown status";
}

int diffuse_version(void) { return DIFFUSE_VERSION; }

const char* diffuse_version_string(void) {
  return DIFFUSE_STR(DIFFUSE_VERSION_MAJOR) "." DIFFUSE_STR(DIFFUSE_VERSION_MINOR) "." DIFFUSE_STR(DIFFUSE_VERSION_PATCH);
}

int diffuse_abi_version(void) { return DIFFUSE_ABI_VERSION; }

// ---- context ----

void diffuse_context_options_init(diffuse_context_options* o) {
  if (!o) return;
  *o = diffuse_context_options{};
  o->struct_size = sizeof *o;
  o->threads = 1;
  o->log_level = DIFFUSE_LOG_INFO;
}

diffuse_status diffuse_context_create(const diffuse_context_options* options, diffuse_context** out) {
  constexpr const char* where = "diffuse_context_create";
  if (out) *out = nullptr;
  // No context yet: a failure is reported to the log callback given in the options, if any.
  ContextState sink(1);
  if (options && options->struct_size >= sizeof(diffuse_context_options)) {
    sink.log_fn = options->log_callback;
    sink.log_user = options->log_user_data;
    sink.log_level = DIFFUSE_LOG_DEBUG;
  }
  return guarded(&sink, where, DIFFUSE_INVALID_ARGUMENT, [&] {
    if (!out) api_fail(DIFFUSE_INVALID_ARGUMENT, where, null_arg("out"));
    const auto o = read_options(options, diffuse_context_options_init, where, "diffuse_context_options");
    constexpr int kMaxThreads = static_cast<int>(diffuse::kernels::ThreadPool::kMaxThreads);
    if (o.threads < 0 || o.threads > kMaxThreads)
      api_fail(DIFFUSE_INVALID_ARGUMENT, where,
               "threads must be in 0.." + std::to_string(kMaxThreads) + " (0 = one per hardware thread), got " +
                   std::to_string(o.threads));
    const int level = enum_value(o.log_level);
    if (level < DIFFUSE_LOG_DEBUG || level > DIFFUSE_LOG_ERROR)
      api_fail(DIFFUSE_INVALID_ARGUMENT, where, "log_level " + std::to_string(level) + " is not a diffuse_log_level");
    auto c = std::make_unique<diffuse_context>();
    c->s = std::make_shared<ContextState>(static_cast<std::size_t>(o.threads));
    ContextState& s = *c->s;
    s.log_fn = o.log_callback;
    s.log_user = o.log_user_data;
    s.log_level = o.log_level;
    s.progress_fn = o.progress_callback;
    s.progress_user = o.progress_user_data;
    *out = publish(std::move(c), Kind::context);
    s.log(DIFFUSE_LOG_DEBUG, "context created: " + std::to_string(s.kctx.threads()) + " thread(s), diffuse " +
                                 diffuse_version_string());
    return DIFFUSE_OK;
  });
}

void diffuse_context_destroy(diffuse_context* ctx) {
  // The context goes when its last reference does: at once, or when a call that holds it returns.
  if (ctx) registry().remove(ctx, Kind::context);
}

const char* diffuse_context_last_error(const diffuse_context* ctx) {
  const auto c = context_of(ctx);
  if (!c) return "[diffuse_context_last_error] ctx is not a live diffuse_context";
  return c->s->last_error.c_str();
}

diffuse_status diffuse_context_cancel(diffuse_context* ctx) {
  // The registry lock and the atomic only: any thread may call it while another runs a job or
  // destroys the context (the reference taken under the lock keeps the context alive meanwhile).
  const auto c = context_of(ctx);
  if (!c) return DIFFUSE_INVALID_ARGUMENT;
  c->s->cancel.store(true, std::memory_order_release);
  return DIFFUSE_OK;
}

// ---- model ----

void diffuse_model_options_init(diffuse_model_options* o) {
  if (!o) return;
  *o = diffuse_model_options{};
  o->struct_size = sizeof *o;
  o->weight_dtype = DIFFUSE_WEIGHTS_AS_STORED;
}

diffuse_status diffuse_model_load(diffuse_context* ctx, const char* path, const diffuse_model_options* options,
                                  diffuse_model** out) {
  constexpr const char* where = "diffuse_model_load";
  if (out) *out = nullptr;
  const auto c = context_of(ctx);
  if (!c) return DIFFUSE_INVALID_ARGUMENT;
  ContextState* s = c->s.get();
  return guarded(s, where, DIFFUSE_FORMAT_ERROR, [&] {
    if (!out) api_fail(DIFFUSE_INVALID_ARGUMENT, where, null_arg("out"));
    if (!path || !*path) api_fail(DIFFUSE_INVALID_ARGUMENT, where, "path is NULL or empty");
    const auto o = read_options(options, diffuse_model_options_init, where, "diffuse_model_options", kModelOptionsV1);
    diffuse::nn::LoadOptions lo;
    switch (const int dtype = enum_value(o.weight_dtype)) {
      case DIFFUSE_WEIGHTS_AS_STORED: break;
      case DIFFUSE_WEIGHTS_F32: lo.matrix_dtype = diffuse::DType::F32; break;
      case DIFFUSE_WEIGHTS_F16: lo.matrix_dtype = diffuse::DType::F16; break;
      case DIFFUSE_WEIGHTS_BF16: lo.matrix_dtype = diffuse::DType::BF16; break;
      default:
        api_fail(DIFFUSE_INVALID_ARGUMENT, where, "weight_dtype " + std::to_string(dtype) + " is not a diffuse_weight_dtype");
    }
    if (o.variant) lo.variant = o.variant;
    lo.memory_limit = o.memory_limit;
    if (o.low_memory != 0 && o.low_memory != 1)
      api_fail(DIFFUSE_INVALID_ARGUMENT, where, "low_memory must be 0 or 1, got " + std::to_string(o.low_memory));
    if (o.low_memory) {
      lo.winograd = false;
      lo.stream_weights = true;
    }

    // A file inside a model folder stands for the folder; name.VARIANT.safetensors picks the variant.
    namespace fs = std::filesystem;
    fs::path p(path);
    std::error_code ec;
    // A single-file checkpoint (no config.json / model_index.json beside it) is loaded as the file.
    const fs::path parent = p.parent_path().empty() ? fs::path(".") : p.parent_path();
    const bool in_folder = fs::exists(parent / "config.json", ec) || fs::exists(parent / "model_index.json", ec);
    if (fs::is_regular_file(p, ec) && in_folder) {
      const std::string file = p.filename().string();
      const std::string ext = ".safetensors";
      if (lo.variant.empty() && file.size() > ext.size() && file.ends_with(ext)) {
        const fs::path stem = fs::path(file.substr(0, file.size() - ext.size()));
        if (stem.has_extension()) lo.variant = stem.extension().string().substr(1);
      }
      p = p.parent_path().empty() ? fs::path(".") : p.parent_path();
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto m = std::make_unique<diffuse_model>(dp::Model::load(p, lo), o.low_memory == 1);
    const auto& ni = m->model.info();
    std::string dtypes;
    for (const auto& [name, n] : ni.dtypes) dtypes += (dtypes.empty() ? "" : ", ") + name + " x" + std::to_string(n);
    s->log(DIFFUSE_LOG_INFO, "loaded " + m->model.name() + " (" + ni.architecture + ", " + std::to_string(ni.parameters) +
                                 " parameters, " + dtypes + ") in " + fmt_ms(std::chrono::steady_clock::now() - t0));
    *out = publish(std::move(m), Kind::model);
    return DIFFUSE_OK;
  });
}

void diffuse_model_free(diffuse_model* model) {
  if (model) registry().remove(model, Kind::model);
}

void diffuse_model_info_init(diffuse_model_info* info) {
  if (!info) return;
  *info = diffuse_model_info{};
  info->struct_size = sizeof *info;
  info->null_class = -1;
}

diffuse_status diffuse_model_get_info(const diffuse_model* model, diffuse_model_info* info) {
  const auto m = model_of(model);
  if (!m || !info || info->struct_size < sizeof(std::size_t)) return DIFFUSE_INVALID_ARGUMENT;
  const auto& ni = m->model.info();
  const auto& d = m->model.defaults();
  diffuse_model_info full;
  diffuse_model_info_init(&full);
  full.name = m->model.name().c_str();
  full.architecture = ni.architecture.c_str();
  full.channels = static_cast<int>(m->model.sample_channels());
  full.sample_size = static_cast<int>(ni.sample_size);
  full.size_multiple = static_cast<int>(std::max<std::size_t>(ni.size_multiple, 1));
  // num_classes counts the classes a caller picks from: the network's embedding rows minus a
  // trailing null row (digits: 11 rows, classes 0..9, null 10).
  std::size_t classes = ni.num_classes;
  if (ni.null_class && static_cast<std::size_t>(*ni.null_class) + 1 == classes) --classes;
  full.num_classes = static_cast<int>(classes);
  full.null_class = ni.null_class ? static_cast<int>(*ni.null_class) : -1;
  full.parameters = ni.parameters;
  full.default_sampler = d.sampler.c_str();
  full.default_schedule = d.schedule.c_str();
  full.default_steps = d.steps;
  full.default_guidance_scale = m->model.guidable() ? d.cfg_scale : 1.0f;
  full.text_conditional = m->model.text_conditional() ? 1 : 0;
  full.inpainting = m->model.inpainting() ? 1 : 0;
  const std::size_t n = std::min(info->struct_size, sizeof full) - sizeof(std::size_t);
  std::memcpy(reinterpret_cast<char*>(info) + sizeof(std::size_t), reinterpret_cast<const char*>(&full) + sizeof(std::size_t), n);
  return DIFFUSE_OK;
}

// ---- job ----

void diffuse_job_options_init(diffuse_job_options* o) {
  if (!o) return;
  *o = diffuse_job_options{};
  o->struct_size = sizeof *o;
  o->steps = -1;
  o->seed = 0;
  o->guidance_scale = std::numeric_limits<float>::quiet_NaN();
  o->class_label = -1;
  o->width = 0;
  o->height = 0;
  o->batch = 1;
  o->memory_limit = 0;
  o->class_labels = nullptr;
  o->class_label_count = 0;
  o->eta = std::numeric_limits<float>::quiet_NaN();
  o->s_noise = std::numeric_limits<float>::quiet_NaN();
  o->order = -1;
  o->initial_noise = nullptr;
  o->initial_noise_count = 0;
  o->tiling = -1;
  o->prompt = nullptr;
  o->negative_prompt = nullptr;
  o->prompts = nullptr;
  o->prompt_count = 0;
  o->negative_prompts = nullptr;
  o->negative_prompt_count = 0;
  o->clip_skip = 0;
  o->guidance_rescale = 0.0f;
  o->init_image = nullptr;
  o->init_image_count = 0;
  o->strength = std::numeric_limits<float>::quiet_NaN();
  o->mask = nullptr;
  o->mask_count = 0;
}

diffuse_status diffuse_job_create(diffuse_context* ctx, const diffuse_model* model, const diffuse_job_options* options,
                                  diffuse_job** out) {
  constexpr const char* where = "diffuse_job_create";
  if (out) *out = nullptr;
  const auto c = context_of(ctx);
  if (!c) return DIFFUSE_INVALID_ARGUMENT;
  ContextState* s = c->s.get();
  s->cancel.store(false, std::memory_order_release);
  return guarded(s, where, DIFFUSE_INVALID_ARGUMENT, [&] {
    if (!out) api_fail(DIFFUSE_INVALID_ARGUMENT, where, null_arg("out"));
    const auto m = model_of(model);
    if (!m) api_fail(DIFFUSE_INVALID_ARGUMENT, where, describe_bad_handle(model, Kind::model));
    const auto o = read_options(options, diffuse_job_options_init, where, "diffuse_job_options", kJobOptionsV1);
    const dp::Model& base = m->model;

    dp::GenerateOptions g;
    if (o.sampler) g.sampler = o.sampler;
    if (o.schedule) g.schedule = o.schedule;
    if (o.steps != -1) {
      if (o.steps < 1) api_fail(DIFFUSE_INVALID_ARGUMENT, where, "steps must be >= 1 (or -1 for the model's default), got " + std::to_string(o.steps));
      g.steps = o.steps;
    }
    g.seed = o.seed;
    g.memory_limit = o.memory_limit;
    if (!std::isnan(o.guidance_scale)) g.cfg_scale = o.guidance_scale;
    if (o.batch < 1) api_fail(DIFFUSE_INVALID_ARGUMENT, where, "batch must be >= 1, got " + std::to_string(o.batch));
    g.batch = static_cast<std::size_t>(o.batch);
    if (o.width < 0 || o.height < 0)
      api_fail(DIFFUSE_INVALID_ARGUMENT, where,
               "width and height must be >= 1 (or 0 for the model's size), got " + std::to_string(o.width) + "x" +
                   std::to_string(o.height));
    if (o.width > 0) g.width = static_cast<std::size_t>(o.width);
    if (o.height > 0) g.height = static_cast<std::size_t>(o.height);
    if (o.class_label == -1) {
      if (base.class_conditional()) {
        if (!base.null_class())
          api_fail(DIFFUSE_INVALID_ARGUMENT, where,
                   base.name() + " is class-conditional without a null class: give a class_label (0.." +
                       std::to_string(base.info().num_classes - 1) + ")");
        g.labels = {*base.null_class()};
      }
    } else {
      g.labels = {o.class_label};
    }
    if (o.class_labels) {
      if (o.class_label_count != 1 && o.class_label_count != g.batch)
        api_fail(DIFFUSE_INVALID_ARGUMENT, where,
                 "class_label_count must be 1 or batch (" + std::to_string(g.batch) + "), got " +
                     std::to_string(o.class_label_count));
      g.labels.clear();
      for (std::size_t i = 0; i < o.class_label_count; ++i) {
        const std::int64_t l = o.class_labels[i];
        if (l == -1 && !base.null_class())
          api_fail(DIFFUSE_INVALID_ARGUMENT, where, "class_labels[" + std::to_string(i) + "] is -1, but " + base.name() +
                                                        " has no null class");
        g.labels.push_back(l == -1 ? *base.null_class() : l);
      }
    } else if (o.class_label_count != 0) {
      api_fail(DIFFUSE_INVALID_ARGUMENT, where, "class_labels is NULL but class_label_count is " +
                                                    std::to_string(o.class_label_count));
    }
    if (!std::isnan(o.eta)) {
      if (!(o.eta >= 0.0f) || !std::isfinite(o.eta))
        api_fail(DIFFUSE_INVALID_ARGUMENT, where, "eta must be a finite number >= 0 (or NaN for the default)");
      g.sampler_params.eta = o.eta;
    }
    if (!std::isnan(o.s_noise)) {
      if (!(o.s_noise > 0.0f) || !std::isfinite(o.s_noise))
        api_fail(DIFFUSE_INVALID_ARGUMENT, where, "s_noise must be a finite number > 0 (or NaN for the default)");
      g.sampler_params.s_noise = o.s_noise;
    }
    if (o.order != -1) {
      if (o.order < 1 || o.order > 4)
        api_fail(DIFFUSE_INVALID_ARGUMENT, where, "order must be in 1..4 (or -1 for the default), got " +
                                                      std::to_string(o.order));
      g.sampler_params.order = static_cast<std::size_t>(o.order);
    }
    if (o.tiling < -1 || o.tiling > 1)
      api_fail(DIFFUSE_INVALID_ARGUMENT, where, "tiling must be -1, 0 or 1, got " + std::to_string(o.tiling));
    if (o.tiling >= 0)
      g.decode.tiling = o.tiling ? diffuse::models::VaeDecodeOptions::Tiling::on : diffuse::models::VaeDecodeOptions::Tiling::off;
    else if (m->low_memory && base.latent())
      g.decode.tiling = diffuse::models::VaeDecodeOptions::Tiling::on;
    const std::size_t in_w = g.width.value_or(base.image_size()), in_h = g.height.value_or(base.image_size());
    // img2img: [1 or batch, 3, height, width]; inpainting: the mask [1 or batch, 1, height, width].
    g.init_image = planar_input(o.init_image, o.init_image_count, 3, in_h, in_w, g.batch, "init_image",
                                "an init image", where);
    g.mask = planar_input(o.mask, o.mask_count, 1, in_h, in_w, g.batch, "mask", "a mask", where);
    if (!std::isnan(o.strength)) g.strength = o.strength;
    switch (o.rng) {
      case DIFFUSE_RNG_TORCH: g.rng = diffuse::NoiseRng::torch; break;
      case DIFFUSE_RNG_A1111_NV: g.rng = diffuse::NoiseRng::a1111_nv; break;
      case DIFFUSE_RNG_A1111_CPU: g.rng = diffuse::NoiseRng::a1111_cpu; break;
      default:
        api_fail(DIFFUSE_INVALID_ARGUMENT, where,
                 "rng must be DIFFUSE_RNG_TORCH (0), DIFFUSE_RNG_A1111_NV (1) or DIFFUSE_RNG_A1111_CPU (2), got " +
                     std::to_string(o.rng));
    }
    g.noise_seed_delta = o.noise_seed_delta;
    if (o.initial_noise) {
      const std::size_t ls = base.latent_scale();
      const std::size_t w = g.width.value_or(base.image_size()) / ls, h = g.height.value_or(base.image_size()) / ls;
      const diffuse::Shape shape{g.batch, base.sample_channels(), h, w};
      if (o.initial_noise_count != diffuse::shape_numel(shape))
        api_fail(DIFFUSE_INVALID_ARGUMENT, where,
                 "initial_noise_count is " + std::to_string(o.initial_noise_count) + ", the noise " +
                     diffuse::shape_string(shape) + " has " + std::to_string(diffuse::shape_numel(shape)) + " values");
      diffuse::Tensor noise(shape);
      std::memcpy(noise.data(), o.initial_noise, noise.size() * sizeof(float));
      g.initial_noise = std::move(noise);
    } else if (o.initial_noise_count != 0) {
      api_fail(DIFFUSE_INVALID_ARGUMENT, where, "initial_noise is NULL but initial_noise_count is " +
                                                    std::to_string(o.initial_noise_count));
    }

    // Prompts: one string for all images, or a list of 1 or batch strings.
    const auto strings = [&](const char* one, const char* const* list, std::size_t count, const char* name,
                             std::vector<std::string>& to) {
      if (list) {
        if (count != 1 && count != g.batch)
          api_fail(DIFFUSE_INVALID_ARGUMENT, where, std::string(name) + "_count must be 1 or batch (" +
                                                        std::to_string(g.batch) + "), got " + std::to_string(count));
        for (std::size_t i = 0; i < count; ++i) {
          if (!list[i])
            api_fail(DIFFUSE_INVALID_ARGUMENT, where, std::string(name) + "[" + std::to_string(i) + "] is NULL");
          to.emplace_back(list[i]);
        }
      } else if (count != 0) {
        api_fail(DIFFUSE_INVALID_ARGUMENT, where, std::string(name) + " is NULL but " + name + "_count is " +
                                                      std::to_string(count));
      } else if (one) {
        to.emplace_back(one);
      }
    };
    strings(o.prompt, o.prompts, o.prompt_count, "prompts", g.prompts);
    strings(o.negative_prompt, o.negative_prompts, o.negative_prompt_count, "negative_prompts", g.negative_prompts);
    if (o.clip_skip < 0)
      api_fail(DIFFUSE_INVALID_ARGUMENT, where, "clip_skip must be >= 1 (or 0 for 1), got " + std::to_string(o.clip_skip));
    if (o.clip_skip > 0) g.clip_skip = static_cast<std::size_t>(o.clip_skip);
    g.guidance_rescale = o.guidance_rescale;

    // The job's own view of the model: the same network (shared, immutable) behind the cancel check.
    const dp::Model jm = base.with_network(std::make_shared<CancellableNetwork>(base.shared_network(), &s->cancel));
    auto j = std::make_unique<diffuse_job>(c->s, dp::Generation(jm, g));
    s->log(DIFFUSE_LOG_DEBUG, "job created: " + dp::parameters_text(jm, j->gen.options()));
    *out = publish(std::move(j), Kind::job);
    return DIFFUSE_OK;
  });
}

void diffuse_job_free(diffuse_job* job) {
  const auto j = job_of(job);
  if (!j) return;
  if (j->busy) {
    j->ctx->log(DIFFUSE_LOG_ERROR, "[diffuse_job_free] called from the job's own progress callback; the job is not freed");
    return;
  }
  registry().remove(job, Kind::job);
}

diffuse_status diffuse_job_step(diffuse_job* job, int* done) {
  constexpr const char* where = "diffuse_job_step";
  if (done) *done = 0;
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  return guarded(j->ctx.get(), where, DIFFUSE_NUMERIC_ERROR, [&] {
    const bool d = step_job(*j, where);
    if (done) *done = d ? 1 : 0;
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_job_run(diffuse_job* job) {
  constexpr const char* where = "diffuse_job_run";
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  if (j->busy) return guarded(j->ctx.get(), where, DIFFUSE_NUMERIC_ERROR, [&]() -> diffuse_status {
      api_fail(DIFFUSE_WRONG_STATE, where, "called from the job's own progress callback");
    });
  j->ctx->cancel.store(false, std::memory_order_release);
  return guarded(j->ctx.get(), where, DIFFUSE_NUMERIC_ERROR, [&] {
    if (j->state == diffuse_job::State::done) return DIFFUSE_OK;
    while (!step_job(*j, where)) {
    }
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_job_progress(const diffuse_job* job, int* step, int* num_steps) {
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  if (step) *step = static_cast<int>(j->gen.step_index());
  if (num_steps) *num_steps = static_cast<int>(j->gen.num_steps());
  return DIFFUSE_OK;
}

diffuse_status diffuse_job_stage(const diffuse_job* job, diffuse_stage* stage) {
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  if (!stage) return DIFFUSE_INVALID_ARGUMENT;
  switch (j->gen.stage()) {
    case dp::Generation::Stage::encode: *stage = DIFFUSE_STAGE_ENCODE; break;
    case dp::Generation::Stage::encode_image: *stage = DIFFUSE_STAGE_ENCODE_IMAGE; break;
    case dp::Generation::Stage::denoise: *stage = DIFFUSE_STAGE_DENOISE; break;
    case dp::Generation::Stage::decode: *stage = DIFFUSE_STAGE_DECODE; break;
    case dp::Generation::Stage::done: *stage = DIFFUSE_STAGE_DONE; break;
  }
  if (j->state == diffuse_job::State::cancelled || j->state == diffuse_job::State::failed) *stage = DIFFUSE_STAGE_DONE;
  return DIFFUSE_OK;
}

diffuse_status diffuse_job_image_size(const diffuse_job* job, int* width, int* height, int* channels, int* batch) {
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  const auto& o = j->gen.options();
  if (width) *width = static_cast<int>(*o.width);
  if (height) *height = static_cast<int>(*o.height);
  if (channels) *channels = static_cast<int>(j->gen.model().image_channels());
  if (batch) *batch = static_cast<int>(o.batch);
  return DIFFUSE_OK;
}

diffuse_status diffuse_job_preview_rgba8(const diffuse_job* job, int index, std::uint8_t* pixels, std::size_t size) {
  constexpr const char* where = "diffuse_job_preview_rgba8";
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  return guarded(j->ctx.get(), where, DIFFUSE_NUMERIC_ERROR, [&] {
    check_output(*j, index, pixels, size, rgba_bytes(*j), where, "bytes");
    if (j->gen.preview().size() == 0) api_fail(DIFFUSE_WRONG_STATE, where, "no preview before the first step");
    copy_rgba8(j->gen.preview_image(j->ctx->kctx), index, pixels);
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_job_result_rgba8(const diffuse_job* job, int index, std::uint8_t* pixels, std::size_t size) {
  constexpr const char* where = "diffuse_job_result_rgba8";
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  return guarded(j->ctx.get(), where, DIFFUSE_NUMERIC_ERROR, [&] {
    check_output(*j, index, pixels, size, rgba_bytes(*j), where, "bytes");
    if (j->state != diffuse_job::State::done)
      api_fail(DIFFUSE_WRONG_STATE, where,
               "the job is not done: " + std::to_string(j->gen.step_index()) + " of " + std::to_string(j->gen.num_steps()) +
                   " steps taken");
    copy_rgba8(j->gen.result(), index, pixels);
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_job_result_f32(const diffuse_job* job, int index, float* values, std::size_t count) {
  constexpr const char* where = "diffuse_job_result_f32";
  const auto j = job_of(job);
  if (!j) return DIFFUSE_INVALID_ARGUMENT;
  return guarded(j->ctx.get(), where, DIFFUSE_NUMERIC_ERROR, [&] {
    if (j->state != diffuse_job::State::done) {
      check_output(*j, index, values, count, 0, where, "floats");
      api_fail(DIFFUSE_WRONG_STATE, where,
               "the job is not done: " + std::to_string(j->gen.step_index()) + " of " + std::to_string(j->gen.num_steps()) +
                   " steps taken");
    }
    const diffuse::Tensor& r = j->gen.result();
    const std::size_t per = r.size() / r.dim(0);
    check_output(*j, index, values, count, per, where, "floats");
    std::memcpy(values, r.data() + static_cast<std::size_t>(index) * per, per * sizeof(float));
    return DIFFUSE_OK;
  });
}

const char* diffuse_job_parameters(diffuse_job* job, int index) {
  const auto j = job_of(job);
  if (!j) return nullptr;
  const char* result = nullptr;
  guarded(j->ctx.get(), "diffuse_job_parameters", DIFFUSE_VALUE_ERROR, [&] {
    const std::size_t batch = j->gen.options().batch;
    if (index < 0 || static_cast<std::size_t>(index) >= batch)
      api_fail(DIFFUSE_INVALID_ARGUMENT, "diffuse_job_parameters",
               "index " + std::to_string(index) + " is out of a batch of " + std::to_string(batch));
    j->parameters = dp::parameters_text(j->gen.model(), j->gen.options(),
                                        batch > 1 ? std::optional<std::size_t>(static_cast<std::size_t>(index)) : std::nullopt);
    result = j->parameters.c_str();
    return DIFFUSE_OK;
  });
  return result;
}

// ---- output ----

diffuse_status diffuse_write_png(diffuse_context* ctx, const char* path, const std::uint8_t* pixels, int width, int height,
                                 int channels, int scale, const char* parameters) {
  constexpr const char* where = "diffuse_write_png";
  const auto c = ctx ? context_of(ctx) : nullptr;
  if (ctx && !c) return DIFFUSE_INVALID_ARGUMENT;
  return guarded(c ? c->s.get() : nullptr, where, DIFFUSE_INVALID_ARGUMENT, [&] {
    if (!path || !*path) api_fail(DIFFUSE_INVALID_ARGUMENT, where, "path is NULL or empty");
    if (!pixels) api_fail(DIFFUSE_INVALID_ARGUMENT, where, null_arg("pixels"));
    if (channels < 1 || channels > 4)
      api_fail(DIFFUSE_INVALID_ARGUMENT, where, "channels must be 1..4, got " + std::to_string(channels));
    if (scale < 1 || scale > 256) api_fail(DIFFUSE_INVALID_ARGUMENT, where, "scale must be 1..256, got " + std::to_string(scale));
    const double bytes = static_cast<double>(width) * height * channels * scale * scale;
    if (width < 1 || height < 1 || bytes > static_cast<double>(std::numeric_limits<int>::max()))
      api_fail(DIFFUSE_INVALID_ARGUMENT, where,
               "bad image size " + std::to_string(width) + "x" + std::to_string(height) + " (x" + std::to_string(scale) + ")");
    diffuse::io::Image img;
    img.width = width;
    img.height = height;
    img.channels = channels;
    img.pixels.assign(pixels, pixels + static_cast<std::size_t>(width) * static_cast<std::size_t>(height) *
                                           static_cast<std::size_t>(channels));
    diffuse::io::PngText text;
    if (parameters) text.emplace_back("parameters", parameters);
    diffuse::io::write_png(path, dp::upscale_nearest(img, scale), text);
    return DIFFUSE_OK;
  });
}

}  // extern "C"
