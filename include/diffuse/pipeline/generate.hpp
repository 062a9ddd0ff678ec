// SPDX-License-Identifier: MIT
/** @file generate.hpp
 *  One generation, step by step ("one generation, as data flows through it" in
 *  docs/architecture): the initial noise (torch-identical for the seed), the network wrapped into
 *  a denoiser by its prediction type, classifier-free guidance as one batched forward of
 *  [uncond; cond], the schedule, and a sampler from the registry.
 *
 *  `Generation` advances one sampler step per `step(ctx)` call, so a host can interleave steps with
 *  frames, show `preview()` (the current denoised estimate) and stop whenever it likes;
 *  `generate()` is the loop over it. The result depends only on the model and the options: the
 *  networks give the same bits for any thread count, and nothing else here uses threads.
 *
 *  Latent models (Model::latent()): the sampler walks latents [batch, C, H/8, W/8]; once its last
 *  step is taken, one more `step(ctx)` decodes them with the model's VAE, image by image (tiled
 *  when large, see GenerateOptions::decode), and only then is the generation `done()`. So the
 *  usual `while (!g.done()) g.step(ctx);` loop, `generate()` and `result()` always give images;
 *  `stage()` tells a progress display which part is running, `latents()` keeps the latents.
 *
 *  Noise: `torch.manual_seed(seed); torch.randn(batch, C, H, W)` is the initial noise; stochastic
 *  samplers continue the same stream (diffusers passing one generator). VP models start at
 *  x = noise * initial_noise_factor (model.hpp: sqrt(1 + sigma_0^2), the VE form of a
 *  pure-noise VP sample, or sigma_0 as diffusers' Euler-family classes and k-diffusion start), flow models at
 *  x = noise. A flow model used with a VE-only sampler (dpmpp_2m, unipc, euler_a, ...) runs
 *  through `flow_to_ve` with its first noise level capped at 1 - 1/num_train_timesteps.
 *
 *  Image-to-image (GenerateOptions::init_image, docs/img2img.md): the sampler walks the schedule
 *  from noise level t_start = n - min(floor(n strength), n) on, starting at the init image's
 *  latents plus noise at that level, x = z0 + sigma_t_start * noise (VE form: diffusers'
 *  scheduler.add_noise for VP and Euler-family classes alike; a flow model's
 *  (1 - s) z0 + s noise, diffusers' scale_noise), z0 a sample of the VAE posterior.
 *
 *  **Example**
 *  @code
 *  auto model = diffuse::pipeline::Model::load("models/digits-dit");
 *  diffuse::pipeline::GenerateOptions o;
 *  o.labels = {3};
 *  o.seed = 42;
 *  diffuse::kernels::Context ctx(2);
 *  diffuse::pipeline::Generation g(model, o);
 *  while (!g.done()) { g.step(ctx); show(g.preview()); }   // or: generate(model, o, ctx)
 *  diffuse::Tensor images = g.result();                    // [1, 1, 16, 16] in [-1, 1]
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/pipeline/model.hpp"
#include "diffuse/sample/image_noise.hpp"
#include "diffuse/sample/registry.hpp"
#include "diffuse/text/prompt.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {

/// What to generate. Unset fields take the model's defaults (`Model::defaults()`).
struct GenerateOptions {
  std::string sampler;              ///< registry name or alias; empty: model default
  std::string schedule;             ///< see `make_sigmas`; empty: model default (dpm_adaptive: karras only)
  /// Sampler steps, 1..10000. For `dpm_adaptive`, which chooses its own step sizes, the budget:
  /// at most this many trial steps (see DpmAdaptiveOptions::max_steps); it usually ends sooner.
  std::optional<int> steps;
  std::optional<float> cfg_scale;   ///< finite; 1 = no guidance (needs no null class)
  std::uint64_t seed = 0;
  /** What the seed means (sample/image_noise.hpp): `torch` (diffusers: one torch CPU generator
   *  for the batch), `a1111_cpu` / `a1111_nv` (AUTOMATIC1111's CPU and NV/GPU sources, the latter
   *  also stable-diffusion.cpp's default: image b has its own generator seeded seed + b, so each
   *  image of a batch is the image its seed gives alone). In the A1111 modes an init image's VAE
   *  posterior noise still comes from a torch CPU generator seeded `seed` (A1111 draws it from its
   *  global generator). */
  NoiseRng rng = NoiseRng::torch;
  /// A1111's "Eta noise seed delta" (ENSD; A1111 modes only): the step noise of image b comes from
  /// a generator seeded seed + b + delta. 0: off.
  std::uint64_t noise_seed_delta = 0;
  std::size_t batch = 1;            ///< images generated together (one forward per step)
  /// Class labels: one for every image, or one per image (size `batch`). Required by a
  /// class-conditional model, refused by an unconditional one. The null class is accepted.
  std::vector<std::int64_t> labels;
  /// Text-conditional models (Model::text_conditional()): the prompt, one for every image or one
  /// per image. Required by them ("" is the empty prompt), refused by other models. Read as A1111
  /// reads prompts (`prompt`: emphasis, 75-token chunks; text/prompt.hpp).
  std::vector<std::string> prompts;
  /// What guidance steers away from: none (the empty prompt), one for all or one per image.
  /// Needs cfg_scale != 1.
  std::vector<std::string> negative_prompts;
  /// A1111's "Clip skip": 1 uses the text encoder's last layer, 2 the one before it, ... (diffusers'
  /// `clip_skip` is one less). 1..12 and fewer than the encoder's layers.
  std::size_t clip_skip = 1;
  /// Whether clip_skip applies to the negative prompts too, as in A1111 and ComfyUI (true); false
  /// applies it to the prompts only and encodes the negative prompts at the last layer, as
  /// diffusers' StableDiffusion(XL)Pipeline does (so that its images can be reproduced).
  bool clip_skip_negative = true;
  /// Guidance rescale phi (Lin et al. 2023, diffusers' guidance_rescale), 0..1; 0 is off. Applied to
  /// what the network predicts (eps, or v for a v_prediction model), as diffusers applies it.
  float guidance_rescale = 0.0f;
  /// How prompts are parsed and split (text/prompt.hpp).
  text::PromptOptions prompt;
  /// Image width and height in pixels; default: Model::image_size(). A latent model's must be
  /// multiples of its latent_scale() (8) times the network's size multiple.
  std::optional<std::size_t> width;
  std::optional<std::size_t> height;
  SamplerParams<float> sampler_params;  ///< eta, s_noise, order, ... (unset: the sampler's defaults)
  /// The initial noise [batch, C, H, W] (unit-variance values, scaled like the seed's noise) in
  /// place of torch.randn for `seed`, e.g. a slerp of two seeds' noise. The per-step noise of a
  /// stochastic sampler still comes from `seed`'s stream, continued as if the seed had drawn it.
  std::optional<Tensor> initial_noise;
  /** Image-to-image (diffusers' StableDiffusionImg2ImgPipeline; docs/img2img.md): start from this
   *  image [1 or batch, 3, H, W] (values in [-1, 1], as diffusers' image processor makes them of
   *  8-bit pixels: 2 v / 255 - 1; io::to_rgb_tensor) instead of pure noise. Latent models with a
   *  VAE only. Its H and W are the generation's (width / height may be left unset; given, they
   *  must agree); one image serves every image of the batch. The generation encodes it (the
   *  Stage::encode_image step), samples the VAE posterior with the seed's generator, scales it to
   *  model latents and adds noise at the schedule's noise level number t_start (see `strength`);
   *  the sampler walks the schedule from there. The generator's draws, in diffusers' order: the
   *  posterior noise [images, C, h, w], the added noise [batch, C, h, w] (`initial_noise` replaces
   *  it, the draw is still made), then a stochastic sampler's per-step noise. */
  std::optional<Tensor> init_image;
  /** Inpainting (diffusers' StableDiffusionInpaintPipeline; docs/inpainting.md): which pixels of
   *  init_image are generated anew, [1 or batch, 1, H, W] at init_image's size, 1 (white) =
   *  repaint, 0 = keep; binarized at 0.5 as diffusers' mask processor does (io::to_mask_tensor
   *  makes it of a PNG). Needs init_image. With an inpainting model (Model::inpainting(), the
   *  9-channel U-Net) the network sees the mask and the masked image's latents at every step; with
   *  any other latent model the known region is blended back after every step ("legacy"
   *  inpainting): x = (1 - m) (z0 + sigma_next noise) + m x, the clean z0 after the last step.
   *  strength defaults to 1 here, which starts from pure noise (not z0 plus noise). The generator's
   *  draws, in diffusers' order: the init image's posterior noise (unless an inpainting model
   *  starts from pure noise), the noise [batch, C, h, w], the masked image's posterior noise (made
   *  for any model, used by an inpainting one), then the per-step noise.
   *  An inpainting model without a mask is given an all-repaint mask and a masked image of 0 (mid
   *  grey), as A1111 conditions it for text-to-image and image-to-image; without init_image that
   *  image's latents are the posterior mean (no draw). */
  std::optional<Tensor> mask;
  /** How much of the schedule img2img runs, 0 < strength <= 1; unset: 0.8 (diffusers' default;
   *  1 with a mask).
   *  With n steps, init_timestep = min(floor(n strength), n) steps are run, from the full schedule's
   *  noise level t_start = n - init_timestep on (at least one: floor(n strength) >= 1). Needs
   *  init_image. */
  std::optional<float> strength;
  /// How a latent model's VAE decodes the result (tiling: automatic above 1 GiB, on, off).
  models::VaeDecodeOptions decode;
  /// Decode the result with the model's tiny VAE (TAESD: fast, approximate) instead of its VAE.
  /// A model with only a tiny VAE always uses it.
  bool tiny_decode = false;
  /// Bytes the generation may use: the estimate of `estimate_generation_bytes` is checked against
  /// it before anything is allocated, and each step caps the context's activation arena at it.
  /// 0: the default, 3/4 of the physical memory (core/memory.hpp). Exceeding it is a memory_error.
  std::uint64_t memory_limit = 0;
};

/** An estimate of the bytes a generation with these (resolved) options needs: the network's
 *  activations for one forward (of 2 x batch images with classifier-free guidance,
 *  Network::forward_bytes) plus the sampler's state (kGenerationStateTensors tensors of
 *  [batch, C, h, w]: the sample, the noise, denoised estimates, multistep history, the guidance
 *  batch), or, when larger, a latent model's decode of one image plus the decoded batch, or
 *  (img2img) the VAE encode of one init image plus the init images and the state. */
DIFFUSE_API std::uint64_t estimate_generation_bytes(const Model& model, const GenerateOptions& resolved);
inline constexpr std::size_t kGenerationStateTensors = 12;

/** `options` with every unset field filled from the model's defaults and every field checked.
 *  Throws value_error naming the option: unknown sampler or schedule, steps < 1 or > 10000,
 *  cfg_scale not finite (or != 1 without a null class), batch 0 or > 4096, labels missing, of the
 *  wrong count or out of range, width/height 0, > 4096 or not a multiple of the network's;
 *  init_image for a model without a VAE, of the wrong shape, batch or size, or disagreeing with
 *  width/height; strength without init_image, outside (0, 1] or running no step; a mask without
 *  init_image, of the wrong shape, batch or size, or not finite. Throws
 *  memory_error when estimate_generation_bytes exceeds the memory limit (how much, for what). */
DIFFUSE_API GenerateOptions resolve_options(const Model& model, const GenerateOptions& options);

/** Warnings about resolved `options` that are valid but will not give a sensible image: so far,
 *  fewer steps than the sampler needs (`min_sensible_steps`: heun, dpm_2, dpm_2_a, dpm_fast leave
 *  noise below 6, 5, 8, 10 steps on the shipped models; that is their algorithm, see
 *  docs/samplers.md). Empty when there is nothing to say. The CLI prints them on stderr. */
DIFFUSE_API std::vector<std::string> option_warnings(const Model& model, const GenerateOptions& options);

/// A generation in progress (see the file comment). Move-only; keeps a copy of the Model.
class DIFFUSE_API Generation {
 public:
  /// Resolves and checks the options (see resolve_options), builds the schedule and sampler and
  /// draws the initial noise. No network call is made yet.
  Generation(const Model& model, const GenerateOptions& options);
  ~Generation();
  Generation(Generation&&) noexcept;
  Generation& operator=(Generation&&) noexcept;

  /** Takes one sampler step, running the network on `ctx` (its threads and activation memory).
   *  Throws value_error after the last step, and value_error naming the step when the network
   *  or the sampler produce a non-finite value. After an exception the generation is unusable. */
  void step(kernels::Context& ctx);

  /// Which part runs at the next step(): (text models) the prompts' encoding, (img2img and
  /// inpainting) the VAE encode of the init image and the masked image and the added noise, the
  /// sampler, then (latent models) the VAE decode.
  enum class Stage { encode, encode_image, denoise, decode, done };
  Stage stage() const;
  /// True once the images are ready (after the decode of a latent model).
  bool done() const;
  /// Steps taken so far.
  std::size_t step_index() const;
  /// Steps in all: the schedule's. For dpm_adaptive, its budget (`options().steps`) until it is
  /// done, then the trials it took (so that step_index() == num_steps() at the end).
  std::size_t num_steps() const;
  /// Network forwards so far (a CFG step is one batched forward).
  std::size_t nfe() const;

  /// The current denoised estimate [batch, C, h, w] (x0, in [-1, 1] for image models; latents
  /// for a latent model): a preview of the result. Empty before the first step.
  const Tensor& preview() const;
  /** The preview as an image [batch, image channels, H, W] about [-1, 1]: preview() itself for a
   *  pixel model; for a latent model its tiny VAE's decode when it has one, else the latent-to-RGB
   *  projection of its VAE family (preview.hpp), each latent pixel shown as latent_scale() x
   *  latent_scale() pixels, else the VAE decode, on `ctx`. value_error before the first step. */
  Tensor preview_image(kernels::Context& ctx) const;
  /// The images [batch, image channels, H, W] (decoded for a latent model; about [-1, 1], not
  /// clamped). Throws value_error before `done()`.
  const Tensor& result() const;
  /// The final latents of a latent model (the sampler's result; result() for a pixel model).
  /// Throws value_error before the sampler's last step.
  const Tensor& latents() const;
  /// The current sample (noisy, in the sampler's space; img2img: the added noise until the init
  /// image is encoded).
  const Tensor& sample() const;

  /// The noise levels the sampler walks (in the sampler's space, ending in 0; see make_sigmas for
  /// PNDM; img2img: the schedule's from t_start on).
  const std::vector<float>& sigmas() const;
  /// The options with the model's defaults filled in: what the parameters text records.
  const GenerateOptions& options() const;
  const Model& model() const;

 private:
  void init();
  struct State;
  std::unique_ptr<State> s_;
};

/// The text states of a batch of prompts (`encode_text`).
struct TextConditioning {
  Tensor hidden;  ///< [prompts, tokens, text_dim]: what the U-Net attends to
  Tensor pooled;  ///< [prompts, pooled_dim] for a network that takes one (SDXL), else empty
};

/** Encodes `prompts` with the model's text encoders as its pipeline does: one encoder (SD 1.x /
 *  2.x): its hidden states at `clip_skip` through the final layer norm, as diffusers'
 *  StableDiffusionPipeline (and A1111) do; two encoders (SDXL): each one's hidden_states[-(clip_skip
 *  + 1)] without the final norm, concatenated along the width, and the second encoder's projected
 *  pooled embedding (StableDiffusionXLPipeline). Prompts longer than 75 tokens are chunked and
 *  emphasis applied per `options` (text/prompt.hpp); all prompts are padded to the same number of
 *  chunks and encoded in one batch. value_error for a model without text, clip_skip out of range,
 *  or encoders whose chunkings of a prompt differ. */
DIFFUSE_API TextConditioning encode_text(const Model& model, std::span<const std::string> prompts, kernels::Context& ctx,
                                         std::size_t clip_skip = 1, const text::PromptOptions& options = {});

/** A latent model's latents [B, C, h, w] (model space, as a generation's latents()) decoded to
 *  images [B, image channels, 8h, 8w], one image at a time on `ctx`, by the model's VAE, or by its
 *  tiny VAE when `tiny` (or when it has no other). value_error for a pixel model, a missing tiny
 *  VAE or a non-finite value, shape_error for the wrong channels. */
DIFFUSE_API Tensor decode_latents(const Model& model, const Tensor& latents, kernels::Context& ctx,
                                  const models::VaeDecodeOptions& options = {}, bool tiny = false);

/// Called after each step, with the generation (step_index(), preview(), ...).
using StepCallback = std::function<void(const Generation&)>;

/// Runs a whole generation (a latent model's decode included) and returns the images
/// [batch, C, H, W] (values about [-1, 1]). The callback is called after each step, the decode too.
DIFFUSE_API Tensor generate(const Model& model, const GenerateOptions& options, kernels::Context& ctx,
                            const StepCallback& callback = {});

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
