/* SPDX-License-Identifier: MIT */
/** @file diffuse.h
 *  The C ABI of diffuse, for host applications and game engines (C99; usable from C++, C#, Rust,
 *  Python ctypes, ...). It sits on top of the C++ pipeline (diffuse/pipeline/): load a model,
 *  create a job, advance it one sampler step at a time (or run it whole), read a preview and the
 *  result as RGBA8 pixels or floats. docs/c_api.md has the guide and a complete example.
 *
 *  **Objects.** Three opaque handles:
 *  - `diffuse_context`: the thread pool and scratch memory jobs run on, the callbacks (log,
 *    progress), the last error message and the cancel flag. There is no global configuration:
 *    everything a caller sets lives in a context.
 *  - `diffuse_model`: a loaded network with its scheduler config. Immutable once loaded.
 *  - `diffuse_job`: one generation (a batch of images) of a model, run on a context.
 *
 *  **Status codes.** Every function that can fail returns a `diffuse_status`; `DIFFUSE_OK` (0) is
 *  success. When the function received a valid context (directly, or through a job), the failure's
 *  message is recorded in that context and `diffuse_context_last_error()` returns it. No C++
 *  exception ever crosses this interface; an allocation failure is `DIFFUSE_OUT_OF_MEMORY`.
 *
 *  **Handles.** Each handle carries a type tag and the library keeps a registry of live handles,
 *  so a NULL handle, a handle of another type or a freed handle is reported as
 *  `DIFFUSE_INVALID_ARGUMENT` instead of crashing (the freed case is detected until the address is
 *  reused by a new handle of the same type).
 *
 *  **Ownership and lifetimes.**
 *  - Every `*_create` / `*_load` has a matching `*_destroy` / `*_free`, which accepts NULL and
 *    ignores handles it does not recognise.
 *  - A job keeps what it uses alive: its model's network and its context's internals. So a model
 *    (or a context) may be freed while jobs made from it still exist; the jobs keep working. (A
 *    context that has been destroyed can no longer be passed to functions, of course; its jobs can.)
 *  - Strings returned (`diffuse_version_string`, `diffuse_status_string`, `diffuse_context_last_error`,
 *    the strings in `diffuse_model_info`, `diffuse_job_parameters`) are owned by the library. Never
 *    free them. Lifetimes: static; until the next call on that context; until the model is freed;
 *    until the next call on that job, respectively.
 *  - Strings passed in (paths, sampler names, ...) are copied; the caller keeps ownership.
 *  - Pixel and float buffers are provided by the caller; the library writes into them and never
 *    keeps a pointer to them.
 *
 *  **Threads.**
 *  - Separate contexts run concurrently on separate threads.
 *  - A context and the jobs created on it are used by one thread at a time (calls must not overlap),
 *    except `diffuse_context_cancel`, which any thread may call at any time.
 *  - A model may be shared read-only by any number of jobs, on any number of contexts and threads,
 *    at once: the network is immutable and keeps its activations in the context.
 *  - Callbacks run on the thread that called into the library, during that call.
 *  - Results do not depend on the number of threads of the context.
 *
 *  **Example**
 *  @code
 *  diffuse_context* ctx = NULL;
 *  diffuse_context_create(NULL, &ctx);                         // defaults: 1 thread, no callbacks
 *  diffuse_model* model = NULL;
 *  if (diffuse_model_load(ctx, "models/digits-dit", NULL, &model) != DIFFUSE_OK)
 *    fprintf(stderr, "%s\n", diffuse_context_last_error(ctx));
 *  diffuse_job_options o;
 *  diffuse_job_options_init(&o);
 *  o.class_label = 3;
 *  diffuse_job* job = NULL;
 *  diffuse_job_create(ctx, model, &o, &job);
 *  int done = 0;
 *  while (!done && diffuse_job_step(job, &done) == DIFFUSE_OK) { draw_preview(job); }
 *  uint8_t pixels[16 * 16 * 4];
 *  diffuse_job_result_rgba8(job, 0, pixels, sizeof pixels);
 *  diffuse_job_free(job);
 *  diffuse_model_free(model);
 *  diffuse_context_destroy(ctx);
 *  @endcode */
#ifndef DIFFUSE_DIFFUSE_H
#define DIFFUSE_DIFFUSE_H

#include <stddef.h>
#include <stdint.h>

#include "diffuse/export.hpp"
#include "diffuse/version.hpp"

#ifdef __cplusplus
extern "C" {
#endif

/** The version of this C interface. It grows by one when a function or an enum value is added;
 *  structs grow at their end only (see `struct_size`), so older callers keep working. Compare with
 *  `diffuse_abi_version()` at run time to check the library loaded is at least this new. */
#define DIFFUSE_ABI_VERSION 5

/* ---- status codes ---- */

/** What a call returned. New codes may be added; treat unknown non-zero values as errors. */
typedef enum diffuse_status {
  DIFFUSE_OK = 0,
  /** A NULL pointer, a handle of the wrong type or a freed one, a bad option value (unknown
   *  sampler or schedule, steps 0, class out of range, ...), a buffer too small. */
  DIFFUSE_INVALID_ARGUMENT = 1,
  /** A file that cannot be opened, read or written (a missing model folder). */
  DIFFUSE_IO_ERROR = 2,
  /** A malformed or unsupported file: bad safetensors, config.json, scheduler config. */
  DIFFUSE_FORMAT_ERROR = 3,
  /** A shape or value the library cannot work with that is not an argument of the call. */
  DIFFUSE_VALUE_ERROR = 4,
  /** The job was cancelled by `diffuse_context_cancel`. */
  DIFFUSE_CANCELLED = 5,
  /** The network or the sampler produced a non-finite value (NaN or infinity). */
  DIFFUSE_NUMERIC_ERROR = 6,
  /** An allocation failed, a load or job would need more memory than its `memory_limit`, or the
   *  system refused to start a thread (its limit on threads or on memory was reached:
   *  `diffuse_context_create` with fewer threads may succeed). */
  DIFFUSE_OUT_OF_MEMORY = 7,
  /** The call does not fit the object's state: a step after the last one, a result before it, a
   *  step on a job that failed. */
  DIFFUSE_WRONG_STATE = 8,
  /** A bug in diffuse: please report it with the message. */
  DIFFUSE_INTERNAL_ERROR = 9,
  /** Not a status: makes the enum 32 bits wide and every int value in range, so the ABI is fixed. */
  DIFFUSE_STATUS_MAX_ENUM = 0x7fffffff
} diffuse_status;

/** A short static description of `status` ("invalid argument"); "unknown status" for other values. */
DIFFUSE_API const char* diffuse_status_string(diffuse_status status);

/* ---- version ---- */

/** The library version as major * 10000 + minor * 100 + patch (DIFFUSE_VERSION of the build). */
DIFFUSE_API int diffuse_version(void);
/** The library version as "major.minor.patch"; static storage. */
DIFFUSE_API const char* diffuse_version_string(void);
/** DIFFUSE_ABI_VERSION of the library that is loaded. */
DIFFUSE_API int diffuse_abi_version(void);

/* ---- handles ---- */

typedef struct diffuse_context diffuse_context;
typedef struct diffuse_model diffuse_model;
typedef struct diffuse_job diffuse_job;

/* ---- context ---- */

typedef enum diffuse_log_level {
  DIFFUSE_LOG_DEBUG = 0,
  DIFFUSE_LOG_INFO = 1,
  DIFFUSE_LOG_WARNING = 2,
  DIFFUSE_LOG_ERROR = 3,
  DIFFUSE_LOG_MAX_ENUM = 0x7fffffff /**< not a level (see DIFFUSE_STATUS_MAX_ENUM) */
} diffuse_log_level;

/** Receives the context's log lines (no trailing newline). `message` is valid during the call. */
typedef void (*diffuse_log_fn)(void* user_data, diffuse_log_level level, const char* message);

/** Called after each step of a job on the context: `step` steps of `num_steps` are done. The
 *  callback may read the job (`diffuse_job_progress`, `diffuse_job_preview_rgba8`, ...) and call
 *  `diffuse_context_cancel`; it must not step, run or free the job. */
typedef void (*diffuse_progress_fn)(void* user_data, diffuse_job* job, int step, int num_steps);

/** Options of `diffuse_context_create`. Call `diffuse_context_options_init` first. */
typedef struct diffuse_context_options {
  /** sizeof(diffuse_context_options), set by the init function. */
  size_t struct_size;
  /** Threads a step runs on, the calling thread included: 1 (default) runs everything on the
   *  caller's thread; 0 takes one per hardware thread (at most 256). At most 256: more is
   *  DIFFUSE_INVALID_ARGUMENT. When the system cannot start them all, `diffuse_context_create`
   *  returns DIFFUSE_OUT_OF_MEMORY (the threads started are stopped again; no context). */
  int threads;
  /** Log callback and its user pointer (NULL: no logging). */
  diffuse_log_fn log_callback;
  void* log_user_data;
  /** Least severe level passed to the log callback (default DIFFUSE_LOG_INFO). */
  diffuse_log_level log_level;
  /** Progress callback and its user pointer (NULL: none). */
  diffuse_progress_fn progress_callback;
  void* progress_user_data;
} diffuse_context_options;

/** Fills `options` with the defaults (and struct_size). NULL is ignored. */
DIFFUSE_API void diffuse_context_options_init(diffuse_context_options* options);

/** Creates a context. `options` may be NULL (the defaults). On success `*out` is the new context,
 *  to be destroyed with `diffuse_context_destroy`; on failure `*out` is NULL. */
DIFFUSE_API diffuse_status diffuse_context_create(const diffuse_context_options* options, diffuse_context** out);

/** Destroys a context (NULL is ignored). Jobs still alive keep its internals and stay usable. */
DIFFUSE_API void diffuse_context_destroy(diffuse_context* ctx);

/** The message of the last failed call on `ctx` (or on a job of it): "[function] what went
 *  wrong". "" when the last call succeeded. Owned by the context, valid until the next call on it.
 *  For an invalid `ctx` a static message is returned. */
DIFFUSE_API const char* diffuse_context_last_error(const diffuse_context* ctx);

/** Asks the job running on `ctx` to stop. Safe from any thread at any time (a signal handler
 *  excepted). The running step stops before its next network forward and returns
 *  DIFFUSE_CANCELLED, as does the next `diffuse_job_step` / `diffuse_job_run` of any job of the
 *  context. The request stays in force until it is cleared: `diffuse_job_create` and
 *  `diffuse_job_run` clear it when they start (a cancel that arrives before then is dropped),
 *  `diffuse_job_step` does not (so a host can cancel between frames). */
DIFFUSE_API diffuse_status diffuse_context_cancel(diffuse_context* ctx);

/* ---- model ---- */

/** How the weights are kept in memory. */
typedef enum diffuse_weight_dtype {
  DIFFUSE_WEIGHTS_AS_STORED = 0, /**< f32/f16/bf16 used in place from the file (default) */
  DIFFUSE_WEIGHTS_F32 = 1,       /**< converted to f32 at load */
  DIFFUSE_WEIGHTS_F16 = 2,       /**< converted to f16 at load */
  DIFFUSE_WEIGHTS_BF16 = 3,      /**< converted to bf16 at load */
  DIFFUSE_WEIGHTS_MAX_ENUM = 0x7fffffff /**< not a dtype (see DIFFUSE_STATUS_MAX_ENUM) */
} diffuse_weight_dtype;

/** Options of `diffuse_model_load`. Call `diffuse_model_options_init` first. */
typedef struct diffuse_model_options {
  size_t struct_size;
  /** Storage of the GEMM weights (default DIFFUSE_WEIGHTS_AS_STORED). */
  diffuse_weight_dtype weight_dtype;
  /** Weights variant: "fp16" loads `*.fp16.safetensors`. NULL or "" (default): the plain file. */
  const char* variant;
  /** (ABI 2) Bytes the load may allocate (converted weights, tables built from the config; the
   *  weights file's mapping is not counted). 0 (default): 3/4 of the physical memory. A load
   *  that would need more returns DIFFUSE_OUT_OF_MEMORY, with the amount in the error message. */
  uint64_t memory_limit;
  /** (ABI 5) 1: the smallest memory (the CLI's --low-memory): no Winograd weight copies, the
   *  weights' pages dropped after each block and read again from the page cache, and the model's
   *  jobs decode in tiles unless diffuse_job_options.tiling says otherwise. Slower. 0 (default). */
  int low_memory;
} diffuse_model_options;

DIFFUSE_API void diffuse_model_options_init(diffuse_model_options* options);

/** Loads a model: a diffusers model folder (config.json, weights, scheduler_config.json beside it
 *  or in ../scheduler/), a diffusers pipeline folder (model_index.json: every component is loaded,
 *  the VAE of a latent pipeline such as DiTPipeline included, or refused by name), or a file inside
 *  a model folder (its weights `*.safetensors` or config.json; a `name.VARIANT.safetensors` file
 *  selects that variant). A latent model's jobs end by decoding (see `diffuse_job_step`), so every
 *  image a job returns is a decoded image. Errors go to `ctx`, which is not otherwise tied to the model: the model may be
 *  used with any context. `options` may be NULL. Free with `diffuse_model_free`. */
DIFFUSE_API diffuse_status diffuse_model_load(diffuse_context* ctx, const char* path, const diffuse_model_options* options,
                                              diffuse_model** out);

/** Frees a model (NULL is ignored). Jobs made from it stay valid. */
DIFFUSE_API void diffuse_model_free(diffuse_model* model);

/** What a loaded model is. The strings are owned by the model. */
typedef struct diffuse_model_info {
  /** Set by the caller to sizeof(diffuse_model_info) (or use diffuse_model_info_init); the
   *  library fills the fields that fit. */
  size_t struct_size;
  const char* name;           /**< folder name, e.g. "digits-dit" */
  const char* architecture;   /**< config _class_name, e.g. "DiTTransformer2DModel" */
  int channels;               /**< channels of the sample (the network's in_channels; an inpainting model's latents') */
  int sample_size;            /**< native width = height */
  int size_multiple;          /**< width and height must be multiples of this */
  int num_classes;            /**< class labels accepted: 0 .. num_classes-1; 0 = unconditional */
  int null_class;             /**< the "no class" label used for guidance; -1 when there is none */
  uint64_t parameters;        /**< scalars in the weights */
  const char* default_sampler;  /**< what a job uses when no sampler is given */
  const char* default_schedule;
  int default_steps;
  float default_guidance_scale;
  /** (ABI 4) 1 when the model generates from a prompt (a text-to-image pipeline: give
   *  diffuse_job_options.prompt), else 0. */
  int text_conditional;
  /** (ABI 5) 1 for an inpainting model (the 9-channel U-Net of the inpainting checkpoints: it
   *  takes an init image and a mask), else 0. `channels` is then its latents' (4). */
  int inpainting;
} diffuse_model_info;

DIFFUSE_API void diffuse_model_info_init(diffuse_model_info* info);

/** Fills `info` (its struct_size must be set). */
DIFFUSE_API diffuse_status diffuse_model_get_info(const diffuse_model* model, diffuse_model_info* info);

/* ---- job ---- */

/** Options of `diffuse_job_create`. Call `diffuse_job_options_init` first; every field left at
 *  its initial value takes the model's default. */
typedef struct diffuse_job_options {
  size_t struct_size;
  /** Sampler name ("euler", "dpmpp_2m", "flow_euler", ...; docs/samplers.md). NULL: the model's. */
  const char* sampler;
  /** Schedule name ("default", "karras", "exponential", ...). NULL: the model's. */
  const char* schedule;
  /** Sampler steps, >= 1. -1 (initial value): the model's default. For "dpm_adaptive", which
   *  chooses its own step sizes, a budget: at most this many trial steps; the job usually ends
   *  sooner, and `diffuse_job_progress` then reports the trials taken as the total. */
  int steps;
  /** Seed of the noise (torch.manual_seed). Default 0. */
  uint64_t seed;
  /** Classifier-free guidance scale; 1 is no guidance. NaN (initial value): the model's default
   *  (2 for the shipped models). Needs a model with a null class unless 1. */
  float guidance_scale;
  /** Class of every image of the batch: 0 .. num_classes-1, or -1 (initial value) for "no
   *  class": the null class of a class-conditional model (an unconditional sample), nothing for
   *  an unconditional model. */
  int64_t class_label;
  /** Image size in pixels; 0 (initial value): the model's sample_size. */
  int width;
  int height;
  /** Images generated together, >= 1 (default 1). */
  int batch;
  /** (ABI 2) Bytes the job may use (its estimated activations and sampler state, checked when it
   *  is created; each step caps the context's activation memory at it). 0 (default): 3/4 of the
   *  physical memory. Too much is DIFFUSE_OUT_OF_MEMORY, with the amount in the error message. */
  uint64_t memory_limit;
  /** (ABI 3) One class per image: `class_label_count` labels (1, or `batch`), each as
   *  `class_label` (-1: the null class). NULL (default): `class_label` for every image. */
  const int64_t* class_labels;
  size_t class_label_count;
  /** (ABI 3) Sampler parameters; the initial values (NaN, -1) keep the sampler's defaults.
   *  `eta`: the noise of ancestral / SDE / DDIM steps (>= 0); `s_noise`: its scale (> 0);
   *  `order`: the multistep order of lms (1-4), unipc (1-3), deis (1-3), dpm_adaptive (2-3). */
  float eta;
  float s_noise;
  int order;
  /** (ABI 3) The initial noise, `initial_noise_count` floats of shape [batch, channels, h, w]
   *  (the sampler's space: a latent model's latents, h = height / 8), unit variance (e.g. a
   *  slerp of two seeds' noise), used in place of the seed's draw (the per-step noise of a
   *  stochastic sampler still comes from `seed`). NULL (default): drawn from `seed`. Copied. */
  const float* initial_noise;
  size_t initial_noise_count;
  /** (ABI 3) A latent model's decode: -1 (default) tiled when it would need more than 1 GiB, 0
   *  never tiled, 1 always tiled (diffusers' enable_tiling). */
  int tiling;
  /** (ABI 4) A text-to-image model's prompt (UTF-8, read as A1111 reads prompts: `(word:1.3)`
   *  emphasis, 75-token chunks, BREAK; docs/prompts.md), for every image. Required by such a model
   *  (NULL is then DIFFUSE_INVALID_ARGUMENT; "" is the empty prompt), refused by others. Copied. */
  const char* prompt;
  /** (ABI 4) What guidance steers away from, for every image; NULL (default): none. Copied. */
  const char* negative_prompt;
  /** (ABI 4) One prompt per image: `prompt_count` strings (1 or batch) in place of `prompt`; the
   *  same for negative prompts. NULL (default): `prompt` / `negative_prompt`. Copied. */
  const char* const* prompts;
  size_t prompt_count;
  const char* const* negative_prompts;
  size_t negative_prompt_count;
  /** (ABI 4) A1111's "Clip skip": 1 the text encoder's last layer, 2 the one before, ...; 0
   *  (default): 1. */
  int clip_skip;
  /** (ABI 4) Guidance rescale phi (Lin et al. 2023) in 0..1; 0 (default): off. */
  float guidance_rescale;
  /** (ABI 4) Image-to-image (a latent model with a VAE; docs/img2img.md): start from this image,
   *  `init_image_count` floats [1 or batch, 3, height, width] in [-1, 1] (8-bit pixels v as
   *  2 v / 255 - 1, planar RGB), with height and width the job's (0: the model's size). One image
   *  serves every image of the batch. NULL (default): text-to-image / pure noise. Copied. */
  const float* init_image;
  size_t init_image_count;
  /** (ABI 4) With init_image, how much of the schedule runs: 0 < strength <= 1 (of `steps`
   *  steps, floor(steps x strength) are run, from that noise level on). NaN (initial value): 0.8,
   *  with a mask 1. */
  float strength;
  /** (ABI 5) Inpainting, with init_image (docs/inpainting.md): `mask_count` floats [1 or batch,
   *  1, height, width] in [0, 1], 1 (white) = repaint, 0 = keep, binarized at 0.5. An inpainting
   *  model (diffuse_model_info.inpainting) sees it; any other latent model has the kept part
   *  blended back after every step. NULL (default): no mask. Copied. */
  const float* mask;
  size_t mask_count;
  /** (ABI 5) What the seed means: DIFFUSE_RNG_TORCH (0, default: diffusers, one torch CPU
   *  generator for the batch), DIFFUSE_RNG_A1111_NV (A1111's NV / GPU source and
   *  stable-diffusion.cpp's default: image i has its own Philox generator seeded seed + i),
   *  DIFFUSE_RNG_A1111_CPU (A1111's CPU source: image i's torch CPU generator, seed + i). */
  int rng;
  /** (ABI 5) A1111's Eta noise seed delta (ENSD), with an A1111 rng; 0 (default): off. */
  uint64_t noise_seed_delta;
} diffuse_job_options;

/** Values of diffuse_job_options.rng (ABI 5). */
enum { DIFFUSE_RNG_TORCH = 0, DIFFUSE_RNG_A1111_NV = 1, DIFFUSE_RNG_A1111_CPU = 2 };

DIFFUSE_API void diffuse_job_options_init(diffuse_job_options* options);

/** Creates a job on `ctx` from `model` and `options` (NULL: all defaults; note that a
 *  class-conditional model then samples the null class). Checks every option: an unknown sampler
 *  or schedule, steps 0, a class out of range, a size that is not a multiple of the model's are
 *  DIFFUSE_INVALID_ARGUMENT. Draws the initial noise; no network runs yet. Clears the context's
 *  cancel request. Free with `diffuse_job_free`. */
DIFFUSE_API diffuse_status diffuse_job_create(diffuse_context* ctx, const diffuse_model* model,
                                              const diffuse_job_options* options, diffuse_job** out);

/** Frees a job (NULL is ignored). Not from inside a progress callback of that job. */
DIFFUSE_API void diffuse_job_free(diffuse_job* job);

/** Takes one sampler step on the job's context, then calls the progress callback. `*done`
 *  (optional, may be NULL) becomes 1 when this was the last step, else 0. For a latent model the
 *  call after the last sampler step decodes the latents with the VAE (`diffuse_job_stage` is then
 *  DIFFUSE_STAGE_DECODE; the progress callback sees step == num_steps) and only that call sets
 *  `*done`.
 *  Returns DIFFUSE_CANCELLED when a cancel is pending on the context (checked before the step and
 *  before each network forward within it); the job is then finished: later steps return
 *  DIFFUSE_CANCELLED again, the preview stays readable. DIFFUSE_WRONG_STATE after the last step
 *  or after a failed step; DIFFUSE_NUMERIC_ERROR when the step produced a NaN or infinity. */
DIFFUSE_API diffuse_status diffuse_job_step(diffuse_job* job, int* done);

/** Clears the context's cancel request, then steps until the job is done (the same steps as
 *  calling `diffuse_job_step` repeatedly, so the result is bit-identical). Returns as
 *  `diffuse_job_step` does; DIFFUSE_OK when the job is done (also when it already was). */
DIFFUSE_API diffuse_status diffuse_job_run(diffuse_job* job);

/** What the next `diffuse_job_step` does: sample, decode a latent model's result, or nothing. */
typedef enum diffuse_stage {
  DIFFUSE_STAGE_DENOISE = 0,
  DIFFUSE_STAGE_DECODE = 1,
  DIFFUSE_STAGE_DONE = 2,
  DIFFUSE_STAGE_ENCODE = 3, /**< (ABI 4) a text model's first step: the prompts' text encoding */
  DIFFUSE_STAGE_ENCODE_IMAGE = 4, /**< (ABI 4) img2img and inpainting: the VAE encode of the init (and masked) image (after ENCODE) */
  DIFFUSE_STAGE_MAX_ENUM = 0x7fffffff /**< not a stage (see DIFFUSE_STATUS_MAX_ENUM) */
} diffuse_stage;

/** The job's stage (see diffuse_stage), for a progress display of the denoise and decode parts. */
DIFFUSE_API diffuse_status diffuse_job_stage(const diffuse_job* job, diffuse_stage* stage);

/** Steps taken and steps in all (either pointer may be NULL). */
DIFFUSE_API diffuse_status diffuse_job_progress(const diffuse_job* job, int* step, int* num_steps);

/** Width, height, channels and batch of the job's images (pointers may be NULL): the decoded
 *  image's for a latent model (3 channels), the network's sample's otherwise.
 *  An RGBA8 image takes width * height * 4 bytes; a float image channels * width * height floats. */
DIFFUSE_API diffuse_status diffuse_job_image_size(const diffuse_job* job, int* width, int* height, int* channels,
                                                  int* batch);

/** Image `index` of the current denoised estimate (the preview of the result) as RGBA8, rows top
 *  to bottom, grey replicated to RGB, alpha 255, into `pixels` of `size` bytes (at least
 *  width * height * 4). DIFFUSE_WRONG_STATE before the first step. */
DIFFUSE_API diffuse_status diffuse_job_preview_rgba8(const diffuse_job* job, int index, uint8_t* pixels, size_t size);

/** Image `index` of the result as RGBA8 (as the preview). DIFFUSE_WRONG_STATE before the job is done. */
DIFFUSE_API diffuse_status diffuse_job_result_rgba8(const diffuse_job* job, int index, uint8_t* pixels, size_t size);

/** Image `index` of the result as floats in [-1, 1] (nominally; not clamped), channel-major
 *  [channels, height, width], into `values` of `count` floats (at least channels * width * height). */
DIFFUSE_API diffuse_status diffuse_job_result_f32(const diffuse_job* job, int index, float* values, size_t count);

/** The generation parameters of image `index` as one line ("class: 3, Steps: 25, Sampler: ...,
 *  Seed: 42, ..."), the text PNG tools read. Owned by the job, valid until the next call on the
 *  job. NULL for an invalid job or index. */
DIFFUSE_API const char* diffuse_job_parameters(diffuse_job* job, int index);

/* ---- output ---- */

/** Writes an 8-bit image (`channels` 1 grey, 3 RGB or 4 RGBA; rows top to bottom) as a PNG file
 *  at `path`, each pixel enlarged to `scale` x `scale` (nearest; 1 = as is), with `parameters`
 *  (may be NULL) stored as the PNG "parameters" text. `ctx` (may be NULL) receives the error
 *  message. */
DIFFUSE_API diffuse_status diffuse_write_png(diffuse_context* ctx, const char* path, const uint8_t* pixels, int width,
                                             int height, int channels, int scale, const char* parameters);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DIFFUSE_DIFFUSE_H */
