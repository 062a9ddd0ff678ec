// SPDX-License-Identifier: MIT
// `diffuse generate`: options -> pipeline::Generation -> PNG file(s) with the parameters text.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/memory.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/pipeline/pipeline.hpp"

namespace diffuse_cli {
namespace {

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;

/// "3", "0,1,2" or "all" (every class but the null one).
std::vector<std::int64_t> parse_classes(const std::string& text, const pl::Model& model) {
  std::vector<std::string> items;
  for (std::size_t at = 0; !text.empty() && at <= text.size();) {
    const std::size_t comma = std::min(text.find(',', at), text.size());
    items.push_back(text.substr(at, comma - at));
    at = comma + 1;
  }
  std::vector<std::int64_t> out;
  for (const auto& s : items) {
    if (s == "all") {
      for (std::size_t c = 0; c < model.info().num_classes; ++c)
        if (!model.null_class() || static_cast<std::int64_t>(c) != *model.null_class())
          out.push_back(static_cast<std::int64_t>(c));
      continue;
    }
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != s.size()) throw UsageError("--class: '" + s + "' is not a class number (or 'all')");
    out.push_back(v);
  }
  return out;
}

/// "out.png" -> "out-3.png".
fs::path numbered(const fs::path& p, std::size_t i) {
  fs::path r = p;
  r.replace_filename(p.stem().string() + "-" + std::to_string(i) + p.extension().string());
  return r;
}

void check_writable_dir(const fs::path& file) {
  const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw diffuse::io_error("[generate] cannot write " + file.string() + ": no such directory " + dir.string());
}

}  // namespace

int run_generate(const GenerateArgs& a) {
  // Checks that need no model.
  if (a.steps_set && a.steps < 1) throw UsageError("--steps must be at least 1, got " + std::to_string(a.steps));
  if (a.cfg_set && !std::isfinite(a.cfg_scale)) throw UsageError("--cfg-scale must be a finite number");
  if (a.batch < 0 || a.batch > 1024) throw UsageError("--batch must be in 1..1024, got " + std::to_string(a.batch));
  if (a.width < 0 || a.height < 0) throw UsageError("--width and --height must be positive");
  if (a.threads < 0 || a.threads > 1024) throw UsageError("--threads must be in 0..1024 (0 = all cores)");
  if (a.scale < 0 || a.scale > 64) throw UsageError("--scale must be in 1..64 (0 = automatic)");
  if (a.output.empty()) throw UsageError("-o needs a file name");

  std::uint64_t memory_limit = 0;  // 0: the library's default
  if (!a.memory_limit.empty()) {
    try {
      memory_limit = diffuse::parse_memory_size(a.memory_limit);
    } catch (const diffuse::value_error& e) {
      throw UsageError(std::string("--memory-limit: ") + e.what());
    }
  }
  diffuse::nn::LoadOptions load;
  load.memory_limit = memory_limit;
  const pl::Model model = pl::Model::load(a.model, load);

  pl::GenerateOptions o;
  o.labels = parse_classes(a.classes, model);
  o.sampler = a.sampler;
  o.schedule = a.schedule;
  if (a.steps_set) o.steps = static_cast<int>(std::min<long long>(a.steps, 1 << 30));
  if (a.cfg_set) o.cfg_scale = static_cast<float>(a.cfg_scale);
  o.seed = a.seed;
  o.memory_limit = memory_limit;
  o.batch = a.batch > 0 ? static_cast<std::size_t>(a.batch) : std::max<std::size_t>(o.labels.size(), 1);
  // A class list repeats to fill a batch that is a multiple of it ("--class all --batch 30").
  if (o.labels.size() > 1 && o.batch > o.labels.size() && o.batch % o.labels.size() == 0) {
    const std::vector<std::int64_t> one = o.labels;
    while (o.labels.size() < o.batch) o.labels.insert(o.labels.end(), one.begin(), one.end());
  }
  if (a.width > 0) o.width = static_cast<std::size_t>(a.width);
  if (a.height > 0) o.height = static_cast<std::size_t>(a.height);
  try {
    o = pl::resolve_options(model, o);
  } catch (const diffuse::value_error& e) {
    throw UsageError(e.what());
  }

  for (const auto& w : pl::option_warnings(model, o)) std::fprintf(stderr, "diffuse: warning: %s\n", w.c_str());

  const fs::path out = a.output;
  check_writable_dir(out);
  const std::size_t side = std::max(*o.width, *o.height);
  const int scale = a.scale > 0 ? static_cast<int>(a.scale) : static_cast<int>(std::max<std::size_t>(1, 128 / side));

  diffuse::kernels::Context ctx(static_cast<std::size_t>(a.threads));
  pl::Generation gen(model, o);
  Progress progress(gen.num_steps(), !a.quiet);
  while (!gen.done()) {
    gen.step(ctx);
    progress.update(gen.step_index());
  }
  const double secs = progress.finish();

  const auto images = pl::to_images(gen.result(), scale);
  std::vector<std::pair<std::string, std::string>> extra;
  if (scale > 1) extra.emplace_back("Scale", std::to_string(scale) + "x (nearest)");
  std::vector<fs::path> written;
  if (a.grid || images.size() == 1) {
    diffuse::io::write_png(out, images.size() == 1 ? images[0] : pl::grid(images),
                           {{"parameters", pl::parameters_text(model, o, std::nullopt, extra)}});
    written.push_back(out);
  } else {
    for (std::size_t i = 0; i < images.size(); ++i) {
      diffuse::io::write_png(numbered(out, i), images[i], {{"parameters", pl::parameters_text(model, o, i, extra)}});
      written.push_back(numbered(out, i));
    }
  }
  for (const auto& p : written) std::printf("%s\n", p.string().c_str());
  if (!a.quiet)
    std::fprintf(stderr, "diffuse: %zu image%s from %s (%s, %s, %d steps, cfg %g) in %.2f s: %.2f steps/s, %.2f images/s, %zu threads\n",
                 images.size(), images.size() == 1 ? "" : "s", model.name().c_str(), o.sampler.c_str(), o.schedule.c_str(),
                 *o.steps, static_cast<double>(*o.cfg_scale), secs, secs > 0 ? static_cast<double>(gen.num_steps()) / secs : 0.0,
                 secs > 0 ? static_cast<double>(images.size()) / secs : 0.0, ctx.threads());
  return kOk;
}

}  // namespace diffuse_cli
