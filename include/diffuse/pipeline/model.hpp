// SPDX-License-Identifier: MIT
/** @file model.hpp
 *  A model ready to generate with: the network, what its output means (prediction type, noise
 *  space, train sigmas), its classes, its scheduler config, and the sampler settings that give a
 *  good image with it. The top of the `pipeline/` layer (see generate.hpp for the generation).
 *
 *  `Model::load(path)` accepts
 *  - a model folder with `config.json` + weights and `scheduler_config.json` next to them (the
 *    shipped `models/digits-*`), or in `../scheduler/` (a diffusers pipeline's `unet/` or
 *    `transformer/` subfolder);
 *  - a diffusers pipeline folder (`model_index.json`, pipeline_index.hpp): every component it
 *    lists is loaded: the network (`unet/` or `transformer/`), `scheduler/`, and `vae/` (an
 *    AutoencoderKL, or the tiny AutoencoderTiny a user saved in its place) for a latent pipeline
 *    such as DiTPipeline, with its class names (`id2label`).
 *    A component diffuse cannot run (a text encoder, a text-conditional U-Net, a VQ-VAE, a
 *    scheduler class it does not know) is refused by name before any weight is read, and so is a
 *    latent pipeline without its VAE, or a VAE whose latent channels are not the network's;
 *  - the `unet/` or `transformer/` subfolder of a pipeline folder: the whole pipeline is loaded
 *    (so a latent model always comes with its decoder).
 *
 *  **Latent models** (`latent()`): the network works on latents; a generation ends by decoding
 *  them with the VAE (generate.hpp), so what a generation returns is always an image. Sizes given
 *  to a generation (width, height) are image pixels; the latents are `latent_scale()` (8) times
 *  smaller. A tiny VAE (TAESD, `set_tiny_vae`) decodes the step previews, and the result too when
 *  the model has no full VAE or the generation asks for it (GenerateOptions::tiny_decode).
 *
 *  The prediction type is `flow` for the FlowMatch* scheduler classes (and for
 *  `prediction_type: "flow_prediction"`), else the config's `prediction_type` (epsilon,
 *  v_prediction, sample). VP models get their train sigmas sqrt((1 - ac) / ac) from the config's
 *  betas. A `Model` is cheap to copy (the network is shared) and immutable after loading, so
 *  several generations may use it at once from different threads.
 *
 *  **Example**
 *  @code
 *  auto model = diffuse::pipeline::Model::load("models/digits-dit");
 *  std::printf("%s: %zu parameters, default sampler %s\n", model.name().c_str(),
 *              model.info().parameters, model.defaults().sampler.c_str());
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/denoise/denoiser.hpp"
#include "diffuse/denoise/parameterization.hpp"
#include "diffuse/models/checkpoint.hpp"
#include "diffuse/models/clip_text.hpp"
#include "diffuse/models/network.hpp"
#include "diffuse/models/taesd.hpp"
#include "diffuse/models/vae.hpp"
#include "diffuse/nn/weights.hpp"
#include "diffuse/pipeline/pipeline_index.hpp"
#include "diffuse/schedule/config.hpp"
#include "diffuse/text/clip_tokenizer.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {

/// The generation settings a model uses when the caller does not choose (chosen per model family
/// by trying them on the shipped models; see `default_settings`).
struct Defaults {
  std::string sampler;   ///< registry name (sample/registry.hpp)
  std::string schedule;  ///< schedule name (see `list_schedules`)
  int steps = 20;
  float cfg_scale = 1.0f;  ///< 1 when the model has no null class
};

/// A text encoder with its tokenizer (SD 1.x / 2.x have one, SDXL two).
struct TextEncoder {
  std::shared_ptr<const models::ClipTextModel> encoder;
  std::shared_ptr<const text::ClipTokenizer> tokenizer;
};

/// How a single-file checkpoint is read (Model::load_single_file).
struct SingleFileOptions {
  /// "epsilon" or "v_prediction" instead of the family's rule (models/checkpoint.hpp: SD 2.x files
  /// are taken as v_prediction unless they say otherwise); empty: the rule.
  std::string prediction_type;
  /** The tokenizers, in place of the CLIP vocabulary compiled into the library (empty: the built-in
   *  one, with each encoder's pad token from the family, CheckpointTextEncoder::pad_token):
   *  - a pipeline folder (no vocab.json of its own, a `tokenizer/vocab.json`): each text encoder takes
   *    the tokenizer folder beside its own, as the diffusers pipeline does: `tokenizer/` for
   *    `text_encoder`, `tokenizer_2/` for SDXL's `text_encoder_2` (OpenCLIP's pad token `!`). A
   *    missing `tokenizer_2/` is an io_error naming it (the first tokenizer's pad token would change
   *    the second encoder's states);
   *  - a tokenizer folder (vocab.json, merges.txt): that one tokenizer, its own special tokens
   *    included, for every text encoder (for SDXL give the pipeline folder instead, or both encoders
   *    pad with this folder's pad token). */
  std::filesystem::path tokenizer;
  /// The family and configs, in place of models::detect_checkpoint's (a fine-tune of another
  /// size, a test model); the file's names must still be the family's layout.
  std::optional<models::CheckpointInfo> checkpoint;
};

/// A loaded model (see the file comment).
class DIFFUSE_API Model {
 public:
  /// Loads the model at `path` (see the file comment). Throws io_error for a missing folder,
  /// component or scheduler config, format_error for a malformed one, value_error for an
  /// unsupported component, scheduler class or prediction type, or components that do not fit.
  static Model load(const std::filesystem::path& path, const nn::LoadOptions& options = {});

  /** A Stable Diffusion single-file checkpoint (`.safetensors` in the original layout, as A1111,
   *  ComfyUI and stable-diffusion.cpp users keep them; `load` calls this for a file): the family
   *  told from its keys with the configs of its published diffusers folders (models/checkpoint.hpp),
   *  the U-Net (`model.diffusion_model.`), the VAE (`first_stage_model.`) and the text encoder(s)
   *  (`cond_stage_model.` / `conditioner.embedders.N.`) bound in place from the one mapping, the
   *  tokenizer from `options.tokenizer` or the built-in CLIP vocabulary, the scheduler from the
   *  family's. Behaves as the diffusers folder of the same weights (pipeline_class
   *  StableDiffusionPipeline or StableDiffusionXLPipeline). Pickle checkpoints (`.ckpt`, `.pt`,
   *  `.bin`) are refused (value_error: convert them to safetensors); a file of no known family is a
   *  format_error naming the keys looked for (detect_checkpoint). */
  static Model load_single_file(const std::filesystem::path& file, const SingleFileOptions& options = {},
                                const nn::LoadOptions& load_options = {});

  /** A model from a network built elsewhere (a stand-in network in a test, a host's own network)
   *  and the parsed `scheduler_config.json`. `name` is what the parameters text records. */
  Model(std::shared_ptr<const models::Network> network, const nlohmann::json& scheduler_config,
        std::string name = "custom");

  /** This model with another network (same scheduler, VAE, class names, defaults): e.g. the
   *  model's own network behind a host's wrapper. The network must take the same inputs. */
  Model with_network(std::shared_ptr<const models::Network> network) const;

  const models::Network& network() const noexcept { return *network_; }
  const std::shared_ptr<const models::Network>& shared_network() const noexcept { return network_; }
  const models::NetworkInfo& info() const noexcept { return network_->info(); }

  /// The folder name ("digits-unet"), or the name given to the constructor.
  const std::string& name() const noexcept { return name_; }
  /// The folder the network was loaded from (empty for an in-memory model).
  const std::filesystem::path& path() const noexcept { return path_; }
  /// Bytes of the weights files (0 for an in-memory model).
  std::uint64_t weights_bytes() const noexcept { return weights_bytes_; }

  /// The scheduler config: raw JSON, parsed schedule keys and class.
  const nlohmann::json& scheduler_json() const noexcept { return scheduler_json_; }
  const ScheduleConfig& schedule_config() const noexcept { return schedule_; }
  SchedulerClass scheduler_class() const noexcept { return class_; }

  /// What the network outputs, and the noise space it lives in (flow for rectified flow, else VE).
  Prediction prediction() const noexcept { return prediction_; }
  NoiseSpace space() const noexcept { return prediction_ == Prediction::flow ? NoiseSpace::flow : NoiseSpace::ve; }
  /// The ascending VE train sigmas sqrt((1 - ac) / ac) of a VP model; empty for a flow model.
  const std::vector<float>& train_sigmas() const noexcept { return train_sigmas_; }
  /// x0 post-processing and the flow time scale, from the scheduler config (clip_sample, thresholding).
  const ParameterizationOptions<float>& parameterization() const noexcept { return param_; }

  /// True when the network takes a class label.
  bool class_conditional() const noexcept { return info().num_classes > 0; }
  /// The "no class" label used for classifier-free guidance, if the network has one.
  std::optional<std::int64_t> null_class() const noexcept { return info().null_class; }
  /// True when classifier-free guidance can be used: a null class, or text (the negative prompt).
  bool guidable() const noexcept { return null_class().has_value() || text_conditional(); }
  /// True when `label` is accepted: 0 .. num_classes-1, or the null class.
  bool valid_label(std::int64_t label) const noexcept;

  /// True when the network is conditioned on text (a prompt): info().text_dim > 0.
  bool text_conditional() const noexcept { return info().text_dim > 0; }
  /// The text encoders, in the pipeline's order (text_encoder, text_encoder_2); empty for a model
  /// without text.
  const std::vector<TextEncoder>& text_encoders() const noexcept { return text_; }
  /** Sets the text encoders of a text-conditional model. value_error when one lacks its encoder or
   *  tokenizer, when their hidden widths do not add up to the network's text_dim, or when the
   *  network needs a pooled embedding (SDXL) and the last encoder has no projection of that width. */
  void set_text_encoders(std::vector<TextEncoder> encoders);

  /// The class names (a DiTPipeline's id2label; empty when the folder has none).
  const ClassNames& class_names() const noexcept { return class_names_; }
  /** The class label for `text`: a number ("207"), or a name or synonym ("golden retriever"),
   *  see ClassNames::find. value_error for an unknown name (with the nearest ones), a number out
   *  of range, or a name given to a model without class names. */
  std::int64_t class_label(std::string_view text) const;

  /// True when the network generates latents that a VAE decodes (see the file comment).
  bool latent() const noexcept { return vae_ != nullptr || tiny_ != nullptr; }
  /// The full VAE of a latent model (nullptr for a pixel model, or when only a tiny VAE is set).
  const std::shared_ptr<const models::AutoencoderKL>& vae() const noexcept { return vae_; }
  /// The tiny VAE (TAESD) for previews and fast decodes, or nullptr.
  const std::shared_ptr<const models::AutoencoderTiny>& tiny_vae() const noexcept { return tiny_; }
  /** Uses `vae` to decode this model's latents (a pipeline's own, or another one: `--vae`);
   *  nullptr removes it. value_error when the VAE's latent channels are not the network's, or its
   *  scale factor differs from the tiny VAE's. */
  void set_vae(std::shared_ptr<const models::AutoencoderKL> vae);
  /// The same for the tiny VAE (needs a decoder half).
  void set_tiny_vae(std::shared_ptr<const models::AutoencoderTiny> tiny);
  /// Image pixels per latent pixel: the VAE's scale factor (8), 1 for a pixel model.
  std::size_t latent_scale() const noexcept {
    return vae_ ? vae_->scale_factor() : tiny_ ? tiny_->decoder_scale_factor() : 1;
  }
  /** True for an inpainting model: a latent model whose network takes 2 C + 1 input channels for
   *  C latent channels (the 9-channel U-Net of stable-diffusion-inpainting: the noisy latents, the
   *  mask at latent size and the masked image's latents, concatenated along the channels). */
  bool inpainting() const noexcept {
    const auto& ni = info();
    return latent() && ni.in_channels == 2 * ni.out_channels + 1;
  }
  /// Channels of the sample the sampler walks: the network's input channels, or an inpainting
  /// model's latent channels (its output channels).
  std::size_t sample_channels() const noexcept { return inpainting() ? info().out_channels : info().in_channels; }
  /// Channels of the generated image (the VAE's out_channels, else the network's).
  std::size_t image_channels() const noexcept {
    return vae_ ? vae_->config().out_channels : tiny_ ? tiny_->config().out_channels : info().in_channels;
  }
  /// The native image side in pixels: sample_size x latent_scale().
  std::size_t image_size() const noexcept { return info().sample_size * latent_scale(); }
  /// `_class_name` of the pipeline folder ("DiTPipeline"); empty when not loaded from one.
  const std::string& pipeline_class() const noexcept { return pipeline_class_; }
  /// The pipeline's settings in model_index.json (`requires_safety_checker`,
  /// `force_zeros_for_empty_prompt`, ...); an empty object when there are none.
  const nlohmann::json& pipeline_settings() const noexcept { return settings_; }
  /** SDXL's rule for the unconditional branch when no negative prompt is given: zero text states
   *  and pooled embedding instead of the empty prompt's (model_index.json
   *  `force_zeros_for_empty_prompt`, true by default for StableDiffusionXL pipelines). */
  bool force_zeros_for_empty_prompt() const;

  const Defaults& defaults() const noexcept { return defaults_; }
  void set_defaults(Defaults d) { defaults_ = std::move(d); }

 private:
  Model() = default;
  void init(const nlohmann::json& scheduler_config);
  void check_latent_channels(std::size_t channels, std::string_view what, std::string_view where) const;

  std::shared_ptr<const models::Network> network_;
  std::string name_;
  std::filesystem::path path_;
  std::uint64_t weights_bytes_ = 0;
  nlohmann::json scheduler_json_;
  ScheduleConfig schedule_;
  SchedulerClass class_ = SchedulerClass::euler;
  Prediction prediction_ = Prediction::epsilon;
  std::vector<float> train_sigmas_;
  ParameterizationOptions<float> param_;
  Defaults defaults_;
  std::shared_ptr<const models::AutoencoderKL> vae_;
  std::shared_ptr<const models::AutoencoderTiny> tiny_;
  ClassNames class_names_;
  std::string pipeline_class_;
  nlohmann::json settings_ = nlohmann::json::object();
  std::vector<TextEncoder> text_;
};

/** The defaults for a model of this kind: flow models flow_euler on the scheduler's own sigmas,
 *  VP models the sampler and schedule that worked best on digits-unet; cfg 2 when the network has
 *  a null class, else 1; a DiTPipeline's cfg is diffusers' default for it, 4. */
DIFFUSE_API Defaults default_settings(const Model& model);

/// A schedule name with a one-line description, for `diffuse list`.
struct ScheduleInfo {
  std::string name;
  std::string description;
};

/// The schedule names `make_sigmas` accepts.
DIFFUSE_API std::vector<ScheduleInfo> list_schedules();

/** How the pipeline runs a sampler so that a generation gives the image the sampler's diffusers
 *  scheduler class gives (docs/samplers.md, "The pipeline's rule per sampler"):
 *  - `diffusers_class`: the class whose `set_timesteps` the "default" schedule is, on the model's
 *    scheduler config read as `Class.from_config` reads it (keys the file has are kept, absent keys
 *    take that class's defaults: DPMSolverMultistepScheduler.from_config of a DDIM config without
 *    timestep_spacing spaces by linspace, not DDIM's leading). None for k-diffusion samplers that
 *    diffusers lacks (dpm_fast, dpm_adaptive, dpmpp_2s_a, ...): the model's own class.
 *  - `integer_timesteps`: the network gets the timestep rounded to an integer (half to even, as
 *    torch's round), as DDPM, DDIM, DPM-Solver, UniPC, DEIS and LCM pass their `timesteps` (for
 *    Karras sigmas too, while their update uses the unrounded sigma); Euler, Heun, LMS and the
 *    k-diffusion samplers pass the fractional timestep. VP models only.
 *  - `clip_sample` / `thresholding`: whether the config's x0 clipping / dynamic thresholding
 *    applies: clipping in DDPM, DDIM and LCM only (DPM-Solver, UniPC, DEIS ignore clip_sample),
 *    thresholding in those and in DPM-Solver, UniPC, DEIS; never for Euler-family and k-diffusion
 *    samplers (as in diffusers, k-diffusion, A1111 and ComfyUI). */
struct SamplerRule {
  std::optional<SchedulerClass> diffusers_class;
  bool integer_timesteps = false;
  bool clip_sample = false;
  bool thresholding = false;
};
/// The rule of a registry sampler name (see SamplerRule).
DIFFUSE_API SamplerRule sampler_rule(std::string_view sampler);

/** The factor of the initial noise of a VP model's generation (its first sample is
 *  `randn * factor`, in VE form), as the sampler's diffusers class or k-diffusion starts:
 *  - the VP classes (DDPM, DDIM, DPM-Solver, UniPC, DEIS, LCM, PNDM) draw a unit-variance VP
 *    sample, x_ve = x_vp sqrt(1 + sigma_0^2): the factor is sqrt(1 + sigma_0^2);
 *  - the Euler-family classes (Euler, Euler ancestral, Heun, LMS) use their `init_noise_sigma`:
 *    sigma_0 when the class's timestep_spacing (the config's, else the class default linspace) is
 *    linspace or trailing, sqrt(1 + sigma_0^2) when it is leading;
 *  - the k-diffusion samplers without a diffusers class (dpm_2, dpmpp_2s_a, dpmpp_sde, dpm_fast,
 *    dpm_adaptive, ...) start at `randn * sigmas[0]`, as k-diffusion, A1111 and ComfyUI do.
 *  1 for a flow model (its first sample is the noise). */
DIFFUSE_API float initial_noise_factor(const Model& model, std::string_view sampler, float sigma0);

/** The noise levels for `steps` steps of the named schedule, in the model's space (flow sigmas in
 *  [0, 1] for a flow model, VE sigmas otherwise), ending in 0 (but see "default" for PNDM):
 *  - "default": the spacing of the model's own scheduler config (diffusers' `set_timesteps`), or,
 *    when `sampler` is given, of the sampler's diffusers class on that config (SamplerRule); for
 *    PNDMScheduler (the model's class with no or the pndm sampler) `pndm_sigmas`: the n distinct
 *    timesteps, then sigma(alphas_cumprod[0]) where diffusers' last step goes (0 with
 *    set_alpha_to_one); other samplers get those timesteps ending in 0;
 *  - "karras", "exponential", "beta": between the model's smallest and largest noise level;
 *  - "simple", "normal", "sgm_uniform" (ComfyUI's, VP models only): from the train sigma table.
 *  Throws value_error for an unknown name (listing the known ones) or steps < 1. */
DIFFUSE_API std::vector<float> make_sigmas(const Model& model, std::string_view schedule, int steps,
                                           std::string_view sampler = {});

/** The timesteps behind make_sigmas' noise levels when the schedule is timesteps first and sigmas
 *  interpolated from them (the "default" schedule of the Euler, Euler ancestral, Heun and LMS
 *  classes): one per sigma but the final 0, what diffusers passes to the network. Empty otherwise
 *  (the network's timestep is then found from the sigma: ParameterizationOptions::timestep_table). */
DIFFUSE_API std::vector<float> schedule_timesteps(const Model& model, std::string_view schedule, int steps,
                                                  std::string_view sampler = {});

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
