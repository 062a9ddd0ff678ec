// SPDX-License-Identifier: MIT
// pipeline::Model: loading a model folder with its scheduler config, and the schedules by name.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/models/unet2d_condition.hpp"
#include "diffuse/pipeline/model.hpp"
#include "diffuse/sample/registry.hpp"
#include "diffuse/schedule/sigmas.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {
namespace {

namespace fs = std::filesystem;

bool is_flow_class(SchedulerClass c) {
  return c == SchedulerClass::flow_match_euler || c == SchedulerClass::flow_match_heun;
}

template <class V>
V json_value(const nlohmann::json& j, const char* key, V fallback) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if constexpr (std::is_floating_point_v<V>) {  // a double beyond the float range would be UB to convert
    if (it->is_number() && !(std::fabs(it->get<double>()) <= std::numeric_limits<V>::max()))
      raise<format_error>("Model", std::string("scheduler config key '") + key + "' is " + it->dump() +
                                       ", not a finite number in the range of a float");
  }
  try {
    return it->get<V>();
  } catch (const nlohmann::json::exception&) {
    raise<format_error>("Model", std::string("scheduler config key '") + key + "' has the wrong type");
  }
}

}  // namespace

namespace {

/// Components a generation does not need: not loaded, their folders not required.
bool skipped_component(std::string_view name) {
  return name == "safety_checker" || name == "feature_extractor" || name == "image_encoder";
}

/// What diffuse can run of each pipeline component; a message when it cannot.
std::string unsupported_component(const PipelineComponent& c) {
  const std::string& k = c.class_name;
  if (skipped_component(c.name)) return {};
  if (c.name == "unet" || c.name == "transformer") {
    if (k == "UNet2DModel" || k == "DiTTransformer2DModel" || k == "Transformer2DModel" || k == "UNet2DConditionModel")
      return {};
    return "diffuse runs UNet2DModel, UNet2DConditionModel and DiTTransformer2DModel networks";
  }
  if (c.name == "vae") {
    if (k == "AutoencoderKL" || k == "AutoencoderTiny") return {};
    return "diffuse decodes latents with AutoencoderKL or AutoencoderTiny";
  }
  if (c.name == "scheduler") {
    try {
      (void)scheduler_class_from_name(k);
      return {};
    } catch (const value_error&) {
      return "an unknown scheduler class";
    }
  }
  if (c.name == "text_encoder" || c.name == "text_encoder_2") {
    if (k == "CLIPTextModel" || k == "CLIPTextModelWithProjection") return {};
    return "diffuse runs CLIP text encoders (CLIPTextModel, CLIPTextModelWithProjection)";
  }
  if (c.name == "tokenizer" || c.name == "tokenizer_2") {
    if (k == "CLIPTokenizer" || k == "CLIPTokenizerFast") return {};
    return "diffuse tokenizes with the CLIP tokenizer";
  }
  return "diffuse does not know this component";
}

/// Pipelines whose network generates latents (a VAE must come with them).
bool latent_pipeline_class(std::string_view c) {
  return c == "DiTPipeline" || c == "LDMPipeline" || c.rfind("StableDiffusion", 0) == 0 || c.rfind("Flux", 0) == 0 ||
         c.rfind("PixArt", 0) == 0;
}

}  // namespace

Model Model::load(const fs::path& path_in, const nn::LoadOptions& options) {
  constexpr std::string_view where = "Model::load";
  fs::path path = path_in.lexically_normal();
  if (path.has_parent_path() && path.filename().empty()) path = path.parent_path();
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return load_single_file(path, {}, options);
  if (!fs::is_directory(path, ec))
    raise<io_error>(where, fs::exists(path, ec) ? path.string() + " is not a model folder or checkpoint file"
                                                : "no such model folder or file: " + path.string());
  // The network folder of a pipeline: load the pipeline, so its VAE and class names come along.
  if (!fs::exists(path / "model_index.json", ec) && path.has_parent_path() &&
      fs::exists(path.parent_path() / "model_index.json", ec)) {
    const PipelineIndex index = PipelineIndex::read(path.parent_path() / "model_index.json");
    const std::string sub = path.filename().string();
    if ((sub == "unet" || sub == "transformer") && index.find(sub)) return load(path.parent_path(), options);
  }
  fs::path net_dir = path;
  fs::path sched_file;
  PipelineIndex index;
  const bool pipeline = fs::exists(path / "model_index.json", ec);
  if (pipeline) {  // a diffusers pipeline folder: check every component before reading weights
    index = PipelineIndex::read(path / "model_index.json");
    std::string refused;
    for (const auto& c : index.components) {
      const std::string why = unsupported_component(c);
      if (!why.empty())
        refused += (refused.empty() ? "" : "; ") + ("'" + c.name + "' (" + c.library + " " + c.class_name + "): " + why);
    }
    if (!refused.empty())
      raise<value_error>(where, path.string() + (index.class_name.empty() ? "" : " (" + index.class_name + ")") +
                                    ": cannot run component " + refused);
    const PipelineComponent* net = index.find("unet");
    if (net && index.find("transformer"))
      raise<format_error>(where, path.string() + ": model_index.json lists both a unet and a transformer");
    if (!net) net = index.find("transformer");
    if (!net) raise<io_error>(where, path.string() + ": a pipeline without a unet or transformer component");
    if (!index.find("scheduler")) raise<io_error>(where, path.string() + ": a pipeline without a scheduler component");
    if (!index.find("vae") && latent_pipeline_class(index.class_name))
      raise<io_error>(where, path.string() + ": a " + index.class_name +
                                 " generates latents, but its model_index.json lists no vae to decode them");
    for (const auto& c : index.components)
      if (!skipped_component(c.name) && !fs::is_directory(path / c.name, ec))
        raise<io_error>(where, path.string() + ": model_index.json lists '" + c.name + "' (" + c.class_name +
                                   ") but there is no " + c.name + "/ folder");
    net_dir = path / net->name;
    if (!fs::exists(net_dir / "config.json", ec))
      raise<io_error>(where, net_dir.string() + " has no config.json");
    sched_file = path / "scheduler" / "scheduler_config.json";
  } else if (fs::exists(path / "scheduler_config.json", ec)) {
    sched_file = path / "scheduler_config.json";
  } else {
    sched_file = path.parent_path() / "scheduler" / "scheduler_config.json";
  }
  if (!fs::exists(path / "config.json", ec) && net_dir == path)
    raise<io_error>(where, path.string() + " has no config.json (not a diffusers model folder)");
  if (!fs::exists(sched_file, ec))
    raise<io_error>(where, path.string() + ": no scheduler config (looked for " + (path / "scheduler_config.json").string() +
                               " and " + sched_file.string() + ")");
  const nlohmann::json sched = read_json_file(sched_file, where, "scheduler config");

  Model m;
  try {
    m.network_ = models::load_network(net_dir, options);
    if (pipeline && index.find("vae")) {
      const fs::path vae_dir = path / "vae";
      if (index.find("vae")->class_name == "AutoencoderTiny")
        m.tiny_ = std::make_shared<const models::AutoencoderTiny>(models::AutoencoderTiny::load(vae_dir, options));
      else
        m.vae_ = std::make_shared<const models::AutoencoderKL>(models::AutoencoderKL::load(vae_dir, options));
      for (const auto& f : io::ModelDir::open(vae_dir, options.variant).weight_files()) m.weights_bytes_ += fs::file_size(f);
    }
    if (pipeline) {  // text encoders with their tokenizers: text_encoder + tokenizer, then the _2 pair
      std::vector<TextEncoder> text;
      for (const char* suffix : {"", "_2"}) {
        const std::string enc = std::string("text_encoder") + suffix, tok = std::string("tokenizer") + suffix;
        const bool has_enc = index.find(enc) != nullptr, has_tok = index.find(tok) != nullptr;
        if (!has_enc && !has_tok) continue;
        if (has_enc != has_tok)
          raise<io_error>(where, path.string() + ": model_index.json lists '" + (has_enc ? enc : tok) + "' without '" +
                                     (has_enc ? tok : enc) + "'");
        TextEncoder t;
        t.encoder = std::make_shared<const models::ClipTextModel>(models::ClipTextModel::load(path / enc, options));
        t.tokenizer = std::make_shared<const text::ClipTokenizer>(text::ClipTokenizer::load(path / tok));
        for (const auto& f : io::ModelDir::open(path / enc, options.variant).weight_files())
          m.weights_bytes_ += fs::file_size(f);
        text.push_back(std::move(t));
      }
      if (!text.empty() || m.network_->info().text_dim > 0) {
        if (text.empty())
          raise<io_error>(where, path.string() + ": the " + m.network_->info().architecture +
                                     " is conditioned on text, but model_index.json lists no text_encoder and tokenizer");
        m.text_ = std::move(text);
      }
    }
  } catch (const std::bad_alloc& e) {
    raise<memory_error>(where, path.string() + ": an allocation failed while loading the model (out of memory: " +
                                   e.what() + ")");
  } catch (const std::length_error& e) {
    raise<memory_error>(where, path.string() + ": an allocation failed while loading the model (" +
                                   std::string(e.what()) + ")");
  }
  m.path_ = net_dir;
  m.name_ = path.filename().string();
  m.pipeline_class_ = index.class_name;
  m.settings_ = index.settings;
  for (const auto& f : io::ModelDir::open(net_dir, options.variant).weight_files()) m.weights_bytes_ += fs::file_size(f);
  if (m.vae_) m.check_latent_channels(m.vae_->config().latent_channels, "VAE", where);
  if (m.tiny_) {
    m.check_latent_channels(m.tiny_->config().latent_channels, "tiny VAE", where);
    if (!m.tiny_->has_decoder()) raise<value_error>(where, path.string() + ": the tiny VAE in vae/ has no decoder");
  }
  if (!m.text_.empty()) m.set_text_encoders(std::move(m.text_));
  if (!index.id2label.empty()) {
    if (index.id2label.size() > m.info().num_classes)
      raise<value_error>(where, path.string() + ": model_index.json names class " +
                                    std::to_string(index.id2label.size() - 1) + ", but the network has " +
                                    std::to_string(m.info().num_classes) + " classes");
    m.class_names_ = ClassNames(index.id2label);
  }
  m.init(sched);
  return m;
}

Model Model::load_single_file(const fs::path& file, const SingleFileOptions& so, const nn::LoadOptions& options) {
  constexpr std::string_view where = "Model::load_single_file";
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin")
    raise<value_error>(where, file.string() + " is a pickle checkpoint, which can run code when it is read; diffuse "
                                              "reads safetensors only (convert it, e.g. with diffusers or ComfyUI)");
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) raise<io_error>(where, "no such checkpoint file: " + file.string());
  const models::CheckpointInfo info =
      so.checkpoint ? *so.checkpoint : models::detect_checkpoint(io::ModelDir::open(file), {so.prediction_type});
  const std::string label = file.string();
  Model m;
  try {
    auto unet = std::make_shared<models::UNet2DConditionModel>(models::UNet2DConditionModel::load_original(
        io::ModelDir::open(file), info.unet_prefix, models::UNet2DConditionConfig::from_json(info.unet_config, label),
        options));
    m.network_ = std::move(unet);
    if (!models::AutoencoderKL::has_ldm_names(io::ModelDir::open(file), info.vae_prefix))
      raise<io_error>(where, label + " has no VAE (no " + info.vae_prefix +
                                 "decoder.* tensors): a pruned checkpoint needs its VAE from elsewhere");
    m.vae_ = std::make_shared<const models::AutoencoderKL>(
        models::AutoencoderKL::load_ldm(io::ModelDir::open(file), info.vae_prefix, info.vae_config, options));
    // A pipeline folder as SingleFileOptions::tokenizer: each encoder's tokenizer/ or tokenizer_2/.
    const bool tokenizer_pipeline = !so.tokenizer.empty() && !fs::exists(so.tokenizer / "vocab.json", ec) &&
                                    fs::exists(so.tokenizer / "tokenizer" / "vocab.json", ec);
    std::vector<TextEncoder> text;
    for (const auto& t : info.text_encoders) {
      TextEncoder e;
      e.encoder = std::make_shared<const models::ClipTextModel>(models::ClipTextModel::load_original(
          io::ModelDir::open(file), t.prefix, models::ClipTextConfig::from_json(t.config, label), options));
      if (so.tokenizer.empty()) {
        text::ClipTokenizerConfig tc;
        tc.pad_token = t.pad_token;
        e.tokenizer = std::make_shared<const text::ClipTokenizer>(text::ClipTokenizer::openai_clip(tc));
      } else if (tokenizer_pipeline) {
        constexpr std::string_view kEncoder = "text_encoder";
        std::string sub = "tokenizer";  // text_encoder -> tokenizer, text_encoder_2 -> tokenizer_2
        if (t.folder.starts_with(kEncoder)) sub += t.folder.substr(kEncoder.size());
        const fs::path dir = so.tokenizer / sub;
        if (!fs::exists(dir / "vocab.json", ec))
          raise<io_error>(where, so.tokenizer.string() + " (SingleFileOptions::tokenizer, a pipeline folder) has no " +
                                     sub + "/vocab.json for the " + t.folder + " of " + label);
        e.tokenizer = std::make_shared<const text::ClipTokenizer>(text::ClipTokenizer::load(dir));
      } else {
        e.tokenizer = std::make_shared<const text::ClipTokenizer>(text::ClipTokenizer::load(so.tokenizer));
      }
      text.push_back(std::move(e));
    }
    m.set_text_encoders(std::move(text));
  } catch (const std::bad_alloc& e) {
    raise<memory_error>(where, label + ": an allocation failed while loading the model (out of memory: " + e.what() + ")");
  } catch (const std::length_error& e) {
    raise<memory_error>(where, label + ": an allocation failed while loading the model (" + std::string(e.what()) + ")");
  }
  m.path_ = file;
  m.name_ = file.stem().string();
  m.weights_bytes_ = fs::file_size(file, ec);
  const bool xl = info.family == models::CheckpointFamily::sdxl || info.family == models::CheckpointFamily::sdxl_inpaint;
  m.pipeline_class_ = std::string(xl ? "StableDiffusionXL" : "StableDiffusion") +
                      (m.inpainting() ? "InpaintPipeline" : "Pipeline");  // from the U-Net's 9 input channels
  m.check_latent_channels(m.vae_->config().latent_channels, "VAE", where);
  m.init(info.scheduler_config);
  return m;
}

void Model::check_latent_channels(std::size_t lc, std::string_view what, std::string_view where) const {
  const auto& ni = info();
  if (lc == ni.out_channels && ni.in_channels == 2 * lc + 1) return;  // an inpainting network (Model::inpainting)
  if (lc != ni.in_channels || lc != ni.out_channels)
    raise<value_error>(where, "the " + std::string(what) + "'s latents have " + std::to_string(lc) +
                                  " channels, but the network (" + ni.architecture + ") takes " +
                                  std::to_string(ni.in_channels) + " and gives " + std::to_string(ni.out_channels) +
                                  " channels: they do not belong together");
}

void Model::set_vae(std::shared_ptr<const models::AutoencoderKL> vae) {
  constexpr std::string_view where = "Model::set_vae";
  if (vae) {
    check_latent_channels(vae->config().latent_channels, "VAE", where);
    if (tiny_ && tiny_->decoder_scale_factor() != vae->scale_factor())
      raise<value_error>(where, "the VAE scales latents by " + std::to_string(vae->scale_factor()) +
                                    ", the tiny VAE by " + std::to_string(tiny_->decoder_scale_factor()));
  }
  vae_ = std::move(vae);
}

void Model::set_tiny_vae(std::shared_ptr<const models::AutoencoderTiny> tiny) {
  constexpr std::string_view where = "Model::set_tiny_vae";
  if (tiny) {
    check_latent_channels(tiny->config().latent_channels, "tiny VAE", where);
    if (!tiny->has_decoder()) raise<value_error>(where, "the tiny VAE has no decoder (only an encoder was loaded)");
    if (vae_ && tiny->decoder_scale_factor() != vae_->scale_factor())
      raise<value_error>(where, "the tiny VAE scales latents by " + std::to_string(tiny->decoder_scale_factor()) +
                                    ", the VAE by " + std::to_string(vae_->scale_factor()));
  }
  tiny_ = std::move(tiny);
}

bool Model::force_zeros_for_empty_prompt() const {
  const bool xl = pipeline_class_.rfind("StableDiffusionXL", 0) == 0;
  const auto it = settings_.find("force_zeros_for_empty_prompt");
  if (it != settings_.end() && it->is_boolean()) return it->get<bool>();
  return xl;
}

void Model::set_text_encoders(std::vector<TextEncoder> encoders) {
  constexpr std::string_view where = "Model::set_text_encoders";
  const auto& ni = info();
  if (ni.text_dim == 0) {
    if (!encoders.empty())
      raise<value_error>(where, ni.architecture + " is not conditioned on text: it takes no text encoder");
    text_.clear();
    return;
  }
  if (encoders.empty()) raise<value_error>(where, ni.architecture + " is conditioned on text: it needs a text encoder");
  if (encoders.size() > 2) raise<value_error>(where, "at most two text encoders, got " + std::to_string(encoders.size()));
  std::size_t width = 0;
  std::string widths;
  for (const auto& t : encoders) {
    if (!t.encoder || !t.tokenizer) raise<value_error>(where, "a text encoder without its encoder or tokenizer");
    if (t.tokenizer->max_length() > t.encoder->config().max_position_embeddings)
      raise<value_error>(where, "the tokenizer's sequences of " + std::to_string(t.tokenizer->max_length()) +
                                    " tokens are longer than the text encoder's " +
                                    std::to_string(t.encoder->config().max_position_embeddings) + " positions");
    width += t.encoder->config().hidden_size;
    widths += (widths.empty() ? "" : " + ") + std::to_string(t.encoder->config().hidden_size);
  }
  if (width != ni.text_dim)
    raise<value_error>(where, "the text encoders give states of width " + widths + ", but the " + ni.architecture +
                                  " attends to text of width " + std::to_string(ni.text_dim) + " (cross_attention_dim)");
  if (ni.pooled_dim > 0) {
    const auto& last = encoders.back().encoder->config();
    if (!last.with_projection || last.projection_dim != ni.pooled_dim)
      raise<value_error>(where, "the " + ni.architecture + " takes a pooled text embedding of width " +
                                    std::to_string(ni.pooled_dim) +
                                    ", which the last text encoder must give (CLIPTextModelWithProjection, projection_dim " +
                                    std::to_string(ni.pooled_dim) + "); the last one is " +
                                    (last.with_projection ? "a CLIPTextModelWithProjection of projection_dim " +
                                                                std::to_string(last.projection_dim)
                                                          : std::string("a CLIPTextModel without projection")));
  }
  text_ = std::move(encoders);
}

Model Model::with_network(std::shared_ptr<const models::Network> network) const {
  constexpr std::string_view where = "Model::with_network";
  if (!network) raise<value_error>(where, "the network is null");
  const auto &a = network->info(), &b = info();
  if (a.in_channels != b.in_channels || a.out_channels != b.out_channels || a.num_classes != b.num_classes ||
      a.null_class != b.null_class || a.text_dim != b.text_dim || a.pooled_dim != b.pooled_dim ||
      a.time_ids != b.time_ids)
    raise<value_error>(where, "the network does not take the same inputs as " + name_ + "'s");
  Model m = *this;
  m.network_ = std::move(network);
  return m;
}

std::int64_t Model::class_label(std::string_view text) const {
  constexpr std::string_view where = "Model::class_label";
  const bool digits = !text.empty() && text.size() <= 18 &&
                      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  std::int64_t id = 0;
  if (digits) {
    id = std::stoll(std::string(text));
  } else {
    if (class_names_.empty())
      raise<value_error>(where, name_ + " has no class names; give the class as a number (" +
                                    std::to_string(info().num_classes) + " classes)");
    id = class_names_.find(text);
  }
  if (!valid_label(id))
    raise<value_error>(where, "class " + std::string(text) + " is out of range for " + name_ + " (" +
                                  std::to_string(info().num_classes) + " classes)");
  return id;
}

Model::Model(std::shared_ptr<const models::Network> network, const nlohmann::json& scheduler_config, std::string name)
    : network_(std::move(network)), name_(std::move(name)) {
  if (!network_) raise<value_error>("Model", "the network is null");
  init(scheduler_config);
}

void Model::init(const nlohmann::json& j) {
  constexpr std::string_view where = "Model";
  scheduler_json_ = j;
  schedule_ = ScheduleConfig::from_json(j);
  if (schedule_.class_name.empty()) raise<format_error>(where, "the scheduler config has no _class_name");
  class_ = scheduler_class_from_name(schedule_.class_name);
  if (is_flow_class(class_) || schedule_.prediction_type == "flow_prediction") {
    prediction_ = Prediction::flow;
  } else {
    prediction_ = parse_prediction(schedule_.prediction_type);
    train_sigmas_ = diffuse::train_sigmas(make_schedule(class_, schedule_, 1).alphas_cumprod);
  }
  // Read as float (json_value refuses a value beyond the float range), then range-checked.
  param_.clip_sample = json_value(j, "clip_sample", false);
  param_.thresholding = json_value(j, "thresholding", false);
  param_.clip_sample_range = json_value(j, "clip_sample_range", 1.0f);
  param_.dynamic_thresholding_ratio = json_value(j, "dynamic_thresholding_ratio", 0.995f);
  param_.sample_max_value = json_value(j, "sample_max_value", 1.0f);
  check_x0_post_keys(where, param_.clip_sample, param_.clip_sample_range, param_.thresholding,
                     param_.dynamic_thresholding_ratio, param_.sample_max_value);
  param_.flow_time_scale = static_cast<float>(schedule_.num_train_timesteps);
  const auto& ni = info();
  if (ni.in_channels == 0 || ni.sample_size == 0)
    raise<value_error>(where, "the network reports in_channels " + std::to_string(ni.in_channels) + " and sample_size " +
                                  std::to_string(ni.sample_size) + "; both must be > 0");
  defaults_ = default_settings(*this);
}

bool Model::valid_label(std::int64_t label) const noexcept {
  const auto& ni = info();
  if (null_class() && label == *null_class()) return true;
  return label >= 0 && static_cast<std::size_t>(label) < ni.num_classes;
}

Defaults default_settings(const Model& model) {
  Defaults d;
  // Measured on the shipped models (see the CLI README section): the DiT's own flow Euler schedule
  // at 25 steps, and DPM-Solver++(2M) on Karras sigmas at 25 steps for the DDPM UNet, both with
  // guidance 2 (the scale their READMEs measured as best).
  if (model.prediction() == Prediction::flow) {
    d.sampler = "flow_euler";
    d.schedule = "default";
    d.steps = 25;
  } else if (model.scheduler_class() == SchedulerClass::pndm) {
    // A PNDMScheduler folder (Stable Diffusion 1.x/2.x): its own PLMS on its own timesteps, at
    // StableDiffusionPipeline's default of 50 steps.
    d.sampler = "pndm";
    d.schedule = "default";
    d.steps = 50;
  } else {
    d.sampler = "dpmpp_2m";
    d.schedule = "karras";
    d.steps = 25;
  }
  d.cfg_scale = model.null_class() ? 2.0f : 1.0f;
  if (model.text_conditional()) {
    // A text-to-image pipeline: its own scheduler class on its own spacing, so that the default
    // image is the one diffusers gives for the folder (at 25 steps rather than diffusers' 50), and
    // the pipelines' guidance_scale: 7.5 (StableDiffusionPipeline), 5 (StableDiffusionXLPipeline).
    d.cfg_scale = model.pipeline_class().rfind("StableDiffusionXL", 0) == 0 ? 5.0f : 7.5f;
    d.steps = 25;
    SamplerParams<float> unused;
    const nlohmann::json& j = model.scheduler_json();
    DiffusersSamplerChoice choice;
    choice.class_name = model.schedule_config().class_name;
    choice.algorithm_type = json_value(j, "algorithm_type", choice.algorithm_type);
    choice.solver_order = json_value(j, "solver_order", choice.solver_order);
    choice.solver_type = json_value(j, "solver_type", choice.solver_type);
    choice.variance_type = json_value(j, "variance_type", choice.variance_type);
    try {
      d.sampler = sampler_for_diffusers<float>(choice, unused);
      d.schedule = "default";
    } catch (const value_error&) {  // a class without an equivalent: the digits-unet choice above
    }
  }
  if (model.null_class() && model.pipeline_class() == "DiTPipeline") d.cfg_scale = 4.0f;  // DiTPipeline's guidance_scale
  return d;
}

std::vector<ScheduleInfo> list_schedules() {
  return {
      {"default", "the spacing of the model's own scheduler config (diffusers set_timesteps)"},
      {"karras", "Karras et al. 2022, rho 7, between the model's smallest and largest noise level"},
      {"exponential", "evenly spaced in log sigma"},
      {"beta", "beta(0.6, 0.6) quantiles (Lee et al. 2024)"},
      {"simple", "ComfyUI simple: train sigmas at an even stride (VP models)"},
      {"normal", "ComfyUI normal: evenly spaced train timesteps (VP models)"},
      {"sgm_uniform", "ComfyUI sgm_uniform (VP models)"},
  };
}

SamplerRule sampler_rule(std::string_view name_in) {
  using C = SchedulerClass;
  const std::string_view name = detail::canonical_sampler_name(name_in);  // aliases: euler_ancestral, ...
  SamplerRule r;
  auto set = [&](C c, bool integer, bool clip, bool threshold) {
    r.diffusers_class = c;
    r.integer_timesteps = integer;
    r.clip_sample = clip;
    r.thresholding = threshold;
  };
  if (name == "ddim") set(C::ddim, true, true, true);
  else if (name == "ddpm") set(C::ddpm, true, true, true);
  else if (name == "lcm") set(C::lcm, true, true, true);
  else if (name == "dpmpp_2m" || name == "dpmpp_3m" || name == "dpmpp_2m_sde" || name == "dpmpp_3m_sde")
    set(C::dpm_multistep, true, false, true);
  else if (name == "unipc") set(C::unipc, true, false, true);
  else if (name == "deis") set(C::deis, true, false, true);
  else if (name == "euler") set(C::euler, false, false, false);
  else if (name == "euler_a") set(C::euler_ancestral, false, false, false);
  else if (name == "heun") set(C::heun, false, false, false);
  else if (name == "lms") set(C::lms, false, false, false);
  else if (name == "pndm" || name == "plms") set(C::pndm, true, false, false);
  return r;
}

std::vector<float> make_sigmas(const Model& model, std::string_view schedule, int steps, std::string_view sampler) {
  constexpr std::string_view where = "make_sigmas";
  if (steps < 1) raise<value_error>(where, "steps must be >= 1, got " + std::to_string(steps));
  bool known = false;
  std::string names;
  for (const auto& s : list_schedules()) {
    known = known || s.name == schedule;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  if (!known) raise<value_error>(where, "unknown schedule '" + std::string(schedule) + "' (known: " + names + ")");
  const ScheduleConfig& cfg = model.schedule_config();
  const std::int64_t n = steps;

  if (model.prediction() == Prediction::flow) {
    if (schedule == "simple" || schedule == "normal" || schedule == "sgm_uniform")
      raise<value_error>(where, "schedule '" + std::string(schedule) + "' needs a VP model; " + model.name() +
                                    " is a flow-matching model (use default, karras, exponential or beta)");
    FlowMatchOptions o;
    o.num_train_timesteps = cfg.num_train_timesteps;
    const bool flow_class = model.scheduler_class() == SchedulerClass::flow_match_euler ||
                            model.scheduler_class() == SchedulerClass::flow_match_heun;
    o.shift = flow_class ? cfg.shift : cfg.flow_shift;
    o.use_dynamic_shifting = flow_class && cfg.use_dynamic_shifting;
    o.time_shift_type = cfg.time_shift_type;
    o.shift_terminal = cfg.shift_terminal;
    o.invert_sigmas = false;
    if (schedule == "default" && flow_class) {
      o.use_karras_sigmas = cfg.use_karras_sigmas;
      o.use_exponential_sigmas = cfg.use_exponential_sigmas;
      o.use_beta_sigmas = cfg.use_beta_sigmas;
    }
    o.use_karras_sigmas = o.use_karras_sigmas || schedule == "karras";
    o.use_exponential_sigmas = o.use_exponential_sigmas || schedule == "exponential";
    o.use_beta_sigmas = o.use_beta_sigmas || schedule == "beta";
    std::optional<double> mu;
    if (o.use_dynamic_shifting) {
      // The Flux/SD3 pipelines' mu for the image's token count (patches of the native size).
      const double tokens = static_cast<double>(model.info().sample_size * model.info().sample_size) / 4.0;
      mu = cfg.mu_for(tokens);
    }
    return flow_match_sigmas(o, n, mu).sigmas;
  }

  const std::vector<float>& train = model.train_sigmas();
  const double lo = train.front(), hi = train.back();
  if (schedule == "karras") return get_sigmas_karras<float>(n, lo, hi);
  if (schedule == "exponential") return get_sigmas_exponential<float>(n, lo, hi);
  if (schedule == "beta") return get_sigmas_beta<float>(n, lo, hi);
  if (schedule == "simple") return get_sigmas_simple<float>(train, n);
  if (schedule == "normal") return get_sigmas_normal<float>(train, n);
  if (schedule == "sgm_uniform") return get_sigmas_sgm_uniform<float>(train, n);
  // "default": the scheduler's own timesteps; the Heun class's doubled entries are the sampler's
  // business here, so its single-stage (Euler) schedule is used.
  SchedulerClass cls = model.scheduler_class();
  if (!sampler.empty())
    if (const auto c = sampler_rule(sampler).diffusers_class) cls = *c;
  if (cls == SchedulerClass::heun) cls = SchedulerClass::euler;
  // PNDM: its distinct timesteps, ending where diffusers' last step goes (final_alpha_cumprod) for
  // the pndm sampler, at 0 for the others.
  if (cls == SchedulerClass::pndm)
    return pndm_sigmas(cfg, n, !(sampler.empty() || sampler_rule(sampler).diffusers_class == SchedulerClass::pndm));
  Schedule s = make_schedule(cls, cfg, n);
  if (!s.sigmas.empty()) return s.sigmas;
  std::vector<float> out;
  for (double v : interp_sigmas<double>(s.timesteps, train)) out.push_back(static_cast<float>(v));
  // DDIM's last step goes to alphas_cumprod[0] unless set_alpha_to_one (its final_alpha_cumprod):
  // the smallest train sigma, not 0 (Generation then returns that sample in VP form).
  const bool to_first_alpha = cls == SchedulerClass::ddim && !json_value(model.scheduler_json(), "set_alpha_to_one", true);
  out.push_back(to_first_alpha ? train.front() : 0.0f);
  return out;
}

float initial_noise_factor(const Model& model, std::string_view sampler, float sigma0) {
  if (model.prediction() == Prediction::flow) return 1.0f;
  const float vp = std::sqrt(1.0f + sigma0 * sigma0);
  const SamplerRule rule = sampler_rule(sampler);
  if (!rule.diffusers_class) return sigma0;  // k-diffusion: x = randn * sigmas[0]
  using C = SchedulerClass;
  const C c = *rule.diffusers_class;
  if (c != C::euler && c != C::euler_ancestral && c != C::heun && c != C::lms) return vp;
  // Euler-family init_noise_sigma: by the class's spacing (linspace when the config has none).
  const TimestepSpacing spacing = model.schedule_config().timestep_spacing.value_or(TimestepSpacing::linspace);
  return spacing == TimestepSpacing::leading ? vp : sigma0;
}

std::vector<float> schedule_timesteps(const Model& model, std::string_view schedule, int steps, std::string_view sampler) {
  if (schedule != "default" || steps < 1 || model.prediction() == Prediction::flow) return {};
  SchedulerClass cls = model.scheduler_class();
  if (!sampler.empty())
    if (const auto c = sampler_rule(sampler).diffusers_class) cls = *c;
  using C = SchedulerClass;
  if (cls != C::euler && cls != C::euler_ancestral && cls != C::heun && cls != C::lms) return {};
  // With karras / exponential / beta sigmas in the config, the class's timesteps are the sigmas'
  // _sigma_to_t, the same values the fallback computes.
  const Schedule s = make_schedule(cls == C::heun ? C::euler : cls, model.schedule_config(), steps);
  std::vector<float> out;
  for (double t : s.timesteps) out.push_back(static_cast<float>(t));
  return out;
}

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
