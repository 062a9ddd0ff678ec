// SPDX-License-Identifier: MIT
// The smallest complete generation: load a model folder, pick a class (or give a prompt to a
// text-to-image model), generate with the model's default sampler, schedule, steps and guidance,
// and write a PNG that records those settings. Start here; the `diffuse` program (cli/) is the same
// thing with every option exposed.
//
//   diffuse_generate <model folder or file> [class or prompt] [seed] [out.png] [steps]
//   diffuse_generate models/digits-dit 3 42 three.png
//   diffuse_generate stable-diffusion-v1-5 "a lighthouse at dusk" 1 lighthouse.png
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>

#include <diffuse/io/image.hpp>
#include <diffuse/pipeline/pipeline.hpp>

namespace pl = diffuse::pipeline;

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <model folder or file> [class or prompt] [seed] [out.png] [steps]\n", argv[0]);
    return 2;
  }
  const std::string out = argc > 4 ? argv[4] : "generate.png";

  // 1. The model: network weights (config.json + safetensors) and scheduler_config.json. The
  //    scheduler config says what the network predicts (noise or velocity) and its noise levels.
  const pl::Model model = pl::Model::load(argv[1]);

  // 2. What to generate. Fields left unset take the model's defaults (model.defaults()).
  pl::GenerateOptions options;
  if (model.class_conditional()) options.labels = {argc > 2 ? std::stoll(argv[2]) : 0};
  if (model.text_conditional()) options.prompts = {argc > 2 ? argv[2] : ""};  // A1111's prompt syntax
  options.seed = argc > 3 ? std::stoull(argv[3]) : 0;  // same seed, same image (torch-identical noise)
  if (argc > 5) options.steps = std::stoi(argv[5]);

  // 3. Generate. The Context owns the worker threads and the activation memory the network uses.
  //    The result is [batch, channels, height, width] with values in [-1, 1].
  diffuse::kernels::Context ctx(2);
  pl::Generation generation(model, options);
  while (!generation.done()) {
    generation.step(ctx);  // one sampler step; a host could draw generation.preview() here
    std::fprintf(stderr, "\rstep %zu/%zu", generation.step_index(), generation.num_steps());
  }
  std::fprintf(stderr, "\n");

  // 4. Write the image, small ones enlarged to 128 pixels (the shipped models are 16x16: 8x), with the
  //    settings actually used (defaults filled in) in the PNG's "parameters" text chunk, as image tools
  //    expect.
  const pl::GenerateOptions& used = generation.options();
  const int scale = static_cast<int>(std::max<std::size_t>(1, 128 / std::max(*used.width, *used.height)));
  const auto images = pl::to_images(generation.result(), scale);
  const std::string params = pl::parameters_text(
      model, used, std::nullopt, {{"Scale", std::to_string(scale) + "x (nearest)"}});
  diffuse::io::write_png(out, images.front(), {{"parameters", params}});
  std::printf("wrote %s (%s)\n", out.c_str(), params.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "diffuse_generate: %s\n", e.what());
  return 1;
}
