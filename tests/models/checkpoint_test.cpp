// SPDX-License-Identifier: MIT
// Single-file checkpoints: UNet2DConditionModel::load_original on the LDM-named fixtures of
// tests/data/models/unetc_*_single (tools/make_single_file_fixtures.py, whose naming diffusers' own
// convert_ldm_unet_checkpoint / from_single_file confirmed) against the diffusers folders with the
// same weights (bit-identical outputs) and diffusers' outputs; the refusals by tensor name; the
// mapping at the real SD 1.5 size against the reference key lists; detect_checkpoint on stand-in
// files of every family.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/checkpoint.hpp"
#include "diffuse/models/clip_text.hpp"
#include "diffuse/models/unet2d_condition.hpp"
#include "diffuse/sample/diffusers_scheduler.hpp"
#include "models/model_fixture.hpp"
#include "models/unet2d_condition_original.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using diffuse::Shape;
using diffuse::Tensor;
using diffuse::io::ModelDir;
using diffuse::models::CheckpointFamily;
using diffuse::models::UNet2DConditionAdded;
using diffuse::models::UNet2DConditionConfig;
using diffuse::models::UNet2DConditionModel;

namespace {

constexpr const char* kPrefix = "model.diffusion_model.";

fs::path case_dir(const std::string& name) { return fs::path(DIFFUSE_TEST_DATA_DIR) / "models" / name; }

bool identical(const Tensor& a, const Tensor& b) {
  return a.same_shape(b) && std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
           return std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
         });
}

UNet2DConditionConfig config_of(const std::string& folder) {
  return UNet2DConditionConfig::from_json(diffuse_test::read_json(case_dir(folder) / "config.json"), folder);
}

struct Inputs {
  Tensor sample, text, output, text_embeds, time_ids;
  std::vector<float> t;
  bool text_time = false;
  UNet2DConditionAdded added() const {
    return text_time ? UNet2DConditionAdded{&text_embeds, &time_ids} : UNet2DConditionAdded{};
  }
};

Inputs read_inputs(const std::string& folder) {
  const auto f = diffuse::io::SafetensorsFile::open(case_dir(folder) / "io.safetensors");
  Inputs in;
  in.sample = f.to_f32("sample");
  in.text = f.to_f32("encoder_hidden_states");
  in.output = f.to_f32("output");
  const Tensor t = f.to_f32("timestep");
  in.t.assign(t.begin(), t.end());
  if (f.find("text_embeds")) {
    in.text_time = true;
    in.text_embeds = f.to_f32("text_embeds");
    in.time_ids = f.to_f32("time_ids");
  }
  return in;
}

// The single file against the folder (same bits) and against diffusers' output (within `bound`).
void check_single(const std::string& single, const std::string& folder, double bound) {
  const ModelDir file = ModelDir::open(case_dir(single) / "model.safetensors");
  ASSERT_TRUE(UNet2DConditionModel::has_original_names(file, kPrefix));
  ASSERT_FALSE(UNet2DConditionModel::has_original_names(file, "model."));
  const UNet2DConditionModel a = UNet2DConditionModel::load_original(
      ModelDir::open(case_dir(single) / "model.safetensors"), kPrefix, config_of(folder));
  const UNet2DConditionModel b = UNet2DConditionModel::load(case_dir(folder));
  ASSERT_FALSE(UNet2DConditionModel::has_original_names(ModelDir::open(case_dir(folder)), ""));
  EXPECT_EQ(a.info().parameters, b.info().parameters);
  EXPECT_EQ(a.info().dtypes, b.info().dtypes) << "dtypes must count the U-Net's tensors only";
  const Inputs in = read_inputs(folder);
  diffuse::kernels::Context ctx(2);
  const Tensor out = a.forward(in.sample, in.t, in.text, ctx, in.added());
  EXPECT_TRUE(identical(out, b.forward(in.sample, in.t, in.text, ctx, in.added()))) << single;
  const double e = diffuse_test::rel_error(out, in.output);
  std::printf("%s: %.3g x max|diffusers| (bound %.3g)\n", single.c_str(), e, bound);
  EXPECT_LE(e, bound) << single;
}

// A copy of `src` with tensors dropped / replaced / added (name -> (dtype, shape, bytes)).
struct Edit {
  std::set<std::string> drop;
  std::map<std::string, std::pair<Shape, std::vector<float>>> put;  // f32 tensors added or replaced
};

fs::path edited(const fs::path& src, const fs::path& dst, const Edit& e) {
  const auto f = diffuse::io::SafetensorsFile::open(src);
  std::vector<diffuse::io::TensorData> t;
  for (const auto& v : f.tensors())
    if (!e.drop.count(v.name) && !e.put.count(v.name)) t.push_back({v.name, v.dtype, v.shape, v.bytes()});
  for (const auto& [name, sv] : e.put)
    t.push_back({name, diffuse::DType::F32, sv.first, std::as_bytes(std::span<const float>(sv.second))});
  diffuse::io::save_safetensors(dst, t);
  return dst;
}

template <class E>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong type: ") + e.what();
  }
  return "no error";
}

}  // namespace

TEST(SingleFile, Sd15UNetMatchesTheFolder) { check_single("unetc_sd15_single", "unetc_sd15_small", 1e-5); }

TEST(SingleFile, SdxlUNetMatchesTheFolder) {
  // Linear proj_in/out, label_emb, layers_per_block 2 over three levels (upsamplers at .2 and .1).
  // Bound: model_fixture.hpp's parity rule, 8 x torch's own f32-vs-f64 error on the case (a tiny
  // network's conditioning varies with its seed: 0.7e-6 .. 9e-6 over seeds 3004-3008), at least 1e-6.
  const nlohmann::json cases = diffuse_test::read_json(case_dir("unetc_cases.json"));
  const double torch_err = cases.at("unetc_sdxl_single").at("torch_f32_vs_f64").get<double>();
  check_single("unetc_sdxl_single", "unetc_sdxl_single",
               std::max(diffuse_test::kParityMultiple * torch_err, diffuse_test::kParityFloor));
}

TEST(SingleFile, UnknownMissingAndMisshapenTensorsAreRefusedByName) {
  const diffuse_test::TempDir tmp("single_file");
  const fs::path src = case_dir("unetc_sd15_single") / "model.safetensors";
  const UNet2DConditionConfig cfg = config_of("unetc_sd15_small");
  const auto load = [&](const fs::path& p) {
    (void)UNet2DConditionModel::load_original(ModelDir::open(p), kPrefix, cfg);
  };

  const std::string extra = std::string(kPrefix) + "input_blocks.9.0.in_layers.0.weight";
  std::string msg = error_of<diffuse::format_error>([&] {
    load(edited(src, tmp.path() / "extra.safetensors", {{}, {{extra, {{8}, std::vector<float>(8)}}}}));
  });
  EXPECT_NE(msg.find(extra), std::string::npos) << msg;

  // Outside the prefix: left alone.
  EXPECT_NO_THROW(
      load(edited(src, tmp.path() / "outside.safetensors", {{}, {{"model_ema.decay", {{}, std::vector<float>(1)}}}})));

  const std::string up = std::string(kPrefix) + "output_blocks.1.1.conv.weight";  // up block 0's upsampler
  ASSERT_TRUE(ModelDir::open(src).contains(up));
  msg = error_of<diffuse::format_error>([&] { load(edited(src, tmp.path() / "missing.safetensors", {{up}, {}})); });
  EXPECT_NE(msg.find(up), std::string::npos) << msg;
  EXPECT_NE(msg.find("up_blocks.0.upsamplers.0.conv.weight"), std::string::npos) << msg;

  const std::string skip = std::string(kPrefix) + "output_blocks.0.0.skip_connection.weight";
  const Shape have = ModelDir::open(src).find(skip)->shape;
  Shape wrong = have;
  wrong[1] += 1;
  msg = error_of<diffuse::format_error>([&] {
    load(edited(src, tmp.path() / "shape.safetensors",
                {{}, {{skip, {wrong, std::vector<float>(diffuse::shape_numel(wrong))}}}}));
  });
  EXPECT_NE(msg.find(skip), std::string::npos) << msg;

  // A wrong dtype (I32 where a float weight belongs) and a truncated file are typed errors.
  {
    const auto f = diffuse::io::SafetensorsFile::open(src);
    std::vector<diffuse::io::TensorData> t;
    const std::string w = std::string(kPrefix) + "out.2.weight";
    for (const auto& v : f.tensors())
      t.push_back({v.name, v.name == w ? diffuse::DType::I32 : v.dtype, v.shape, v.bytes()});
    diffuse::io::save_safetensors(tmp.path() / "dtype.safetensors", t);
    msg = error_of<diffuse::format_error>([&] { load(tmp.path() / "dtype.safetensors"); });
    EXPECT_NE(msg.find(w), std::string::npos) << msg;
  }
  {
    std::ifstream in(src, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(tmp.path() / "cut.safetensors", std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
    msg = error_of<diffuse::format_error>([&] { load(tmp.path() / "cut.safetensors"); });
    EXPECT_EQ(msg.find("wrong type"), std::string::npos) << msg;
    EXPECT_NE(msg, "no error");
  }

  // A config that does not describe the file (another width), and one that is inconsistent.
  UNet2DConditionConfig other = cfg;
  other.block_out_channels = {8, 32};
  msg = error_of<diffuse::format_error>([&] {
    load(src);
    (void)UNet2DConditionModel::load_original(ModelDir::open(src), kPrefix, other);
  });
  EXPECT_NE(msg.find(kPrefix), std::string::npos) << msg;
  UNet2DConditionConfig broken = cfg;
  broken.layers_per_block = {1};
  msg = error_of<diffuse::format_error>(
      [&] { (void)UNet2DConditionModel::load_original(ModelDir::open(src), kPrefix, broken); });
  EXPECT_NE(msg.find("layers_per_block"), std::string::npos) << msg;
  broken = cfg;
  broken.block_out_channels.clear();
  msg = error_of<diffuse::format_error>(
      [&] { (void)UNet2DConditionModel::load_original(ModelDir::open(src), kPrefix, broken); });
  EXPECT_NE(msg.find("block_out_channels"), std::string::npos) << msg;
}

namespace {

// The reference key lists beside the repository (../shared/reference/keys from its root, or
// DIFFUSE_REFERENCE_KEYS), as tools/make_network_fixtures.py finds them.
fs::path reference_keys() {
  if (const char* e = std::getenv("DIFFUSE_REFERENCE_KEYS")) return e;
  return fs::path(DIFFUSE_SOURCE_DIR) / ".." / "shared" / "reference" / "keys";
}

// "name<TAB or space>[a, b, ...]" lines; '#' comments.
std::map<std::string, Shape> read_keys(const fs::path& p) {
  std::ifstream in(p);
  std::map<std::string, Shape> keys;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::size_t sep = line.find_first_of(" \t");
    if (sep == std::string::npos) continue;
    const std::string shape = line.substr(line.find('[', sep));
    keys[line.substr(0, sep)] = nlohmann::json::parse(shape).get<Shape>();
  }
  return keys;
}

}  // namespace

TEST(SingleFile, Sd15NamesAtTheRealSizeMapOneToOne) {
  const fs::path dir = reference_keys();
  if (!fs::exists(dir / "sd15_single_file.txt") || !fs::exists(dir / "sd15_unet.txt"))
    GTEST_SKIP() << "the reference key lists are not in " << dir.string() << " (set DIFFUSE_REFERENCE_KEYS)";
  const auto single = read_keys(dir / "sd15_single_file.txt");
  const auto unet = read_keys(dir / "sd15_unet.txt");
  std::map<std::string, Shape> ldm;
  for (const auto& [k, s] : single)
    if (k.starts_with(kPrefix)) ldm[k] = s;
  ASSERT_EQ(ldm.size(), 686u);
  ASSERT_EQ(unet.size(), 686u);
  const UNet2DConditionConfig cfg =
      UNet2DConditionConfig::from_json(diffuse::models::checkpoint_configs(CheckpointFamily::sd1).unet_config, "sd1");
  std::set<std::string> images;
  for (const auto& [name, shape] : unet) {
    const std::string mapped = kPrefix + diffuse::models::detail::unet_original_name(name, cfg);
    const auto it = ldm.find(mapped);
    ASSERT_NE(it, ldm.end()) << name << " -> " << mapped << " is not in the single file";
    EXPECT_EQ(it->second, shape) << name << " -> " << mapped;
    EXPECT_TRUE(images.insert(mapped).second) << mapped << " is the image of two names";
  }
  EXPECT_EQ(images.size(), ldm.size());  // every LDM U-Net tensor is some diffusers parameter
  // Spot checks of the layout (input_blocks 3 / 6 / 9 are downsamplers, upsamplers after a transformer at .2).
  const auto m = [&](const char* n) { return diffuse::models::detail::unet_original_name(n, cfg); };
  EXPECT_EQ(m("down_blocks.1.downsamplers.0.conv.weight"), "input_blocks.6.0.op.weight");
  EXPECT_EQ(m("down_blocks.3.resnets.1.time_emb_proj.bias"), "input_blocks.11.0.emb_layers.1.bias");
  EXPECT_EQ(m("up_blocks.0.upsamplers.0.conv.bias"), "output_blocks.2.1.conv.bias");
  EXPECT_EQ(m("up_blocks.2.upsamplers.0.conv.bias"), "output_blocks.8.2.conv.bias");
  EXPECT_EQ(m("mid_block.resnets.1.conv2.weight"), "middle_block.2.out_layers.3.weight");
  // Names outside the layout stay as they are (and are then missing from the file, by name).
  EXPECT_EQ(m("down_blocks.4.resnets.0.norm1.weight"), "down_blocks.4.resnets.0.norm1.weight");
  EXPECT_EQ(m("up_blocks.3.upsamplers.0.conv.weight"), "up_blocks.3.upsamplers.0.conv.weight");
  EXPECT_EQ(m("mid_block.resnets.2.norm1.weight"), "mid_block.resnets.2.norm1.weight");
}

// ---------------------------------------------------------------------------------------------
// detect_checkpoint

namespace {

// A stand-in single file: the named tensors with these shapes (F16 zeros).
fs::path stand_in(const fs::path& path, const std::vector<std::pair<std::string, Shape>>& tensors) {
  std::vector<std::vector<std::byte>> data;
  std::vector<diffuse::io::TensorData> t;
  data.reserve(tensors.size());
  for (const auto& [name, shape] : tensors) {
    data.emplace_back(diffuse::shape_numel(shape) * 2);
    t.push_back({name, diffuse::DType::F16, shape, data.back()});
  }
  diffuse::io::save_safetensors(path, t);
  return path;
}

std::vector<std::pair<std::string, Shape>> unet_keys(std::size_t in, std::size_t block, std::size_t width) {
  return {{"model.diffusion_model.input_blocks.0.0.weight", {320, in, 3, 3}},
          {"model.diffusion_model.input_blocks." + std::to_string(block) + ".1.transformer_blocks.0.attn2.to_k.weight",
           {block == 4 ? 640u : 320u, width}}};
}

using Keys = std::vector<std::pair<std::string, Shape>>;
Keys operator+(Keys a, const Keys& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const Keys kSd1Text{{"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight", {77, 768}}};
const Keys kSd2Text{{"cond_stage_model.model.token_embedding.weight", {49408, 1024}}};
const Keys kSdxlText{{"conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight", {77, 768}},
                     {"conditioner.embedders.1.model.positional_embedding", {77, 1280}}};

// Every config of `info` parses with diffuse's own readers.
void check_configs_parse(const diffuse::models::CheckpointInfo& info) {
  const std::string name(diffuse::models::family_name(info.family));
  const UNet2DConditionConfig u = UNet2DConditionConfig::from_json(info.unet_config, name);
  EXPECT_EQ(u.in_channels, info.family == CheckpointFamily::sd1_inpaint ||
                                   info.family == CheckpointFamily::sd2_inpaint ||
                                   info.family == CheckpointFamily::sdxl_inpaint
                               ? 9u
                               : 4u);
  for (const auto& te : info.text_encoders) (void)diffuse::models::ClipTextConfig::from_json(te.config, name);
  const std::string cls = info.scheduler_config.at("_class_name").get<std::string>();
  if (cls != "PNDMScheduler") {  // not a DiffusersScheduler class (yet)
    EXPECT_NO_THROW(diffuse::DiffusersScheduler<double>(info.scheduler_config)) << name;
  }
  EXPECT_EQ(info.scheduler_config.value("prediction_type", std::string("epsilon")), info.prediction_type) << name;
}

}  // namespace

TEST(DetectCheckpoint, EveryFamilyFromItsKeys) {
  const diffuse_test::TempDir tmp("detect");
  using diffuse::models::detect_checkpoint;
  const auto detect = [&](const char* file, const Keys& keys, diffuse::models::CheckpointOptions o = {}) {
    return detect_checkpoint(ModelDir::open(stand_in(tmp.path() / file, keys)), o);
  };

  auto i = detect("sd1.safetensors", unet_keys(4, 1, 768) + kSd1Text);
  EXPECT_EQ(i.family, CheckpointFamily::sd1);
  EXPECT_EQ(i.prediction_type, "epsilon");
  EXPECT_EQ(i.scheduler_config.at("_class_name"), "PNDMScheduler");
  EXPECT_FALSE(i.scheduler_config.contains("prediction_type"));  // as stable-diffusion-v1-5 ships it
  EXPECT_EQ(i.scheduler_config.at("steps_offset"), 1);
  ASSERT_EQ(i.text_encoders.size(), 1u);
  EXPECT_EQ(i.text_encoders[0].prefix, "cond_stage_model.transformer.");
  EXPECT_EQ(i.text_encoders[0].pad_id, 49407);
  EXPECT_EQ(diffuse::models::ClipTextConfig::from_json(i.text_encoders[0].config, "sd1").hidden_size, 768u);
  EXPECT_EQ(i.vae_family, "sd");
  EXPECT_DOUBLE_EQ(i.vae_config.scaling_factor, 0.18215);
  EXPECT_EQ(i.unet_prefix, kPrefix);
  EXPECT_EQ(i.vae_prefix, "first_stage_model.");
  check_configs_parse(i);

  i = detect("sd1i.safetensors", unet_keys(9, 1, 768) + kSd1Text);
  EXPECT_EQ(i.family, CheckpointFamily::sd1_inpaint);
  check_configs_parse(i);

  i = detect("sd1v.safetensors", unet_keys(4, 1, 768) + kSd1Text + Keys{{"v_pred", {}}});
  EXPECT_EQ(i.family, CheckpointFamily::sd1);
  EXPECT_EQ(i.prediction_type, "v_prediction");
  check_configs_parse(i);

  i = detect("sd2.safetensors", unet_keys(4, 1, 1024) + kSd2Text);
  EXPECT_EQ(i.family, CheckpointFamily::sd2);
  EXPECT_EQ(i.prediction_type, "v_prediction");
  EXPECT_EQ(i.source, "stabilityai/stable-diffusion-2-1");
  EXPECT_EQ(i.scheduler_config.at("_class_name"), "DDIMScheduler");
  const UNet2DConditionConfig u2 = UNet2DConditionConfig::from_json(i.unet_config, "sd2");
  EXPECT_EQ(u2.sample_height, 96u);
  EXPECT_TRUE(u2.upcast_attention);
  EXPECT_TRUE(u2.use_linear_projection);
  EXPECT_EQ(u2.attention_heads, (std::vector<std::size_t>{5, 10, 20, 20}));
  ASSERT_EQ(i.text_encoders.size(), 1u);
  EXPECT_EQ(i.text_encoders[0].prefix, "cond_stage_model.model.");
  EXPECT_EQ(i.text_encoders[0].pad_token, "!");
  EXPECT_EQ(i.text_encoders[0].pad_id, 0);
  EXPECT_EQ(diffuse::models::ClipTextConfig::from_json(i.text_encoders[0].config, "sd2").num_hidden_layers, 23u);
  check_configs_parse(i);

  i = detect("sd2e.safetensors", unet_keys(4, 1, 1024) + kSd2Text, {"epsilon"});
  EXPECT_EQ(i.prediction_type, "epsilon");
  EXPECT_EQ(i.source, "stabilityai/stable-diffusion-2-1-base");
  EXPECT_EQ(UNet2DConditionConfig::from_json(i.unet_config, "sd2").sample_height, 64u);
  check_configs_parse(i);

  i = detect("sd2i.safetensors", unet_keys(9, 1, 1024) + kSd2Text);
  EXPECT_EQ(i.family, CheckpointFamily::sd2_inpaint);
  EXPECT_EQ(i.prediction_type, "epsilon");
  check_configs_parse(i);

  i = detect("sdxl.safetensors", unet_keys(4, 4, 2048) + kSdxlText);
  EXPECT_EQ(i.family, CheckpointFamily::sdxl);
  EXPECT_EQ(i.scheduler_config.at("_class_name"), "EulerDiscreteScheduler");
  EXPECT_EQ(i.vae_family, "sdxl");
  EXPECT_DOUBLE_EQ(i.vae_config.scaling_factor, 0.13025);
  ASSERT_EQ(i.text_encoders.size(), 2u);
  EXPECT_EQ(i.text_encoders[0].prefix, "conditioner.embedders.0.transformer.");
  EXPECT_EQ(i.text_encoders[0].pad_id, 49407);
  EXPECT_EQ(i.text_encoders[1].prefix, "conditioner.embedders.1.model.");
  EXPECT_EQ(i.text_encoders[1].folder, "text_encoder_2");
  EXPECT_EQ(i.text_encoders[1].pad_id, 0);
  const auto bigg = diffuse::models::ClipTextConfig::from_json(i.text_encoders[1].config, "sdxl");
  EXPECT_TRUE(bigg.with_projection);
  EXPECT_EQ(bigg.num_hidden_layers, 32u);
  EXPECT_EQ(bigg.projection_dim, 1280u);
  const UNet2DConditionConfig ux = UNet2DConditionConfig::from_json(i.unet_config, "sdxl");
  EXPECT_EQ(ux.transformer_layers_per_block, (std::vector<std::size_t>{1, 2, 10}));
  EXPECT_EQ(ux.projection_class_embeddings_input_dim, 2816u);
  check_configs_parse(i);

  i = detect("sdxli.safetensors", unet_keys(9, 4, 2048) + kSdxlText);
  EXPECT_EQ(i.family, CheckpointFamily::sdxl_inpaint);
  check_configs_parse(i);

  EXPECT_THROW((void)diffuse::models::checkpoint_configs(CheckpointFamily::unknown), diffuse::value_error);
  EXPECT_THROW((void)diffuse::models::checkpoint_configs(CheckpointFamily::sd1, "sample"), diffuse::value_error);
}

TEST(DetectCheckpoint, UnknownFilesAreFormatErrorsNamingTheKeys) {
  const diffuse_test::TempDir tmp("detect_bad");
  const auto msg = [&](const char* file, const Keys& keys) {
    const fs::path p = stand_in(tmp.path() / file, keys);
    const std::string m =
        error_of<diffuse::format_error>([&] { (void)diffuse::models::detect_checkpoint(ModelDir::open(p)); });
    EXPECT_NE(m.find(p.string()), std::string::npos) << m;
    return m;
  };
  EXPECT_NE(msg("vae.safetensors", {{"first_stage_model.decoder.conv_in.weight", {512, 4, 3, 3}}})
                .find("model.diffusion_model.input_blocks.0.0.weight"),
            std::string::npos);
  EXPECT_NE(msg("notext.safetensors", unet_keys(4, 1, 768)).find("cond_stage_model.model."), std::string::npos);
  EXPECT_NE(msg("refiner.safetensors",
                unet_keys(4, 4, 1280) + Keys{{"conditioner.embedders.0.model.positional_embedding", {77, 1280}}})
                .find("refiner"),
            std::string::npos);
  EXPECT_NE(msg("mixed.safetensors", unet_keys(4, 1, 1024) + kSd1Text).find("attn2.to_k.weight"), std::string::npos);
  EXPECT_NE(msg("p2p.safetensors", unet_keys(8, 1, 768) + kSd1Text).find("8 input channels"), std::string::npos);
  EXPECT_NE(
      msg("edm.safetensors", unet_keys(4, 4, 2048) + kSdxlText + Keys{{"edm_mean", {1, 4, 1, 1}}}).find("edm_mean"),
      std::string::npos);
  EXPECT_NE(
      msg("flat.safetensors", Keys{{"model.diffusion_model.input_blocks.0.0.weight", {320}}} + kSd1Text).find("[320]"),
      std::string::npos);
  // The tiny fixtures have SD 1.x / SDXL text keys but 8-wide cross-attention: refused, not misconfigured.
  EXPECT_THROW(
      (void)diffuse::models::detect_checkpoint(ModelDir::open(case_dir("unetc_sd15_single") / "model.safetensors")),
      diffuse::format_error);
}
