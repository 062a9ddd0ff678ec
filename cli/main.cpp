// SPDX-License-Identifier: MIT
// diffuse: generate images with a diffusion model on the CPU.
//
//   diffuse generate --model models/digits-dit --class 3 -o three.png
//   diffuse list
//   diffuse info models/digits-unet
//   diffuse tokenize --model sd15 "a photo of a cat"
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "cli.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/version.hpp"

namespace {

constexpr const char* kFooter = R"(Exit codes: 0 success; 1 runtime error (model or output file unreadable/unwritable,
generation failed); 2 usage error (unknown option, bad number, unknown sampler or schedule,
class out of range).)";

constexpr const char* kGenerateFooter = R"(Unset options take the model's defaults (see `diffuse info MODEL`).
Output: one image is written to -o; a batch is written to one grid image with --grid, else to
numbered files next to -o (out.png -> out-0.png, out-1.png, ...). Written paths go to stdout.
Each PNG carries the generation settings in a tEXt chunk "parameters".
Progress: on a terminal, a bar with steps/s on stderr; when stderr is not a terminal (logs, pipes),
only the final summary line. --quiet drops both.
The same options give the same bytes on every run and at every --threads count.
Exit codes: 0 success; 1 runtime error; 2 usage error (see diffuse --help).)";

}  // namespace

int main(int argc, char** argv) {
  using namespace diffuse_cli;
  const std::string version = std::to_string(DIFFUSE_VERSION_MAJOR) + "." + std::to_string(DIFFUSE_VERSION_MINOR) + "." +
                              std::to_string(DIFFUSE_VERSION_PATCH);
  CLI::App app{"diffuse " + version + ": diffusion models on the CPU"};
  app.set_version_flag("--version", "diffuse " + version);
  app.require_subcommand(1);
  app.footer(kFooter);

  GenerateArgs g;
  CLI::App* gen = app.add_subcommand("generate", "generate images with a model");
  gen->footer(kGenerateFooter);
  // A repeated option takes its last value, so wrappers can put defaults before "$@".
  gen->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  gen->add_option("-m,--model", g.model, "model folder (diffusers layout), e.g. models/digits-dit")->required();
  gen->add_option("-c,--class", g.classes,
                  "class label(s): N or a class name (all images), a list 0,1,2 (one per image, repeated to fill "
                  "--batch) or 'all'; `diffuse info` lists a model's class names");
  gen->add_option("--sampler", g.sampler, "sampler name (see `diffuse list`)");
  gen->add_option("--schedule", g.schedule, "noise schedule name (see `diffuse list`)");
  gen->add_option("--steps", g.steps, "sampling steps, 1..10000 (dpm_adaptive: the most trial steps, see `diffuse list`)");
  CLI::Option* cfg = gen->add_option("--cfg-scale", g.cfg_scale, "classifier-free guidance scale (1 = none)");
  gen->add_option("--seed", g.seed, "seed of the torch-identical noise")->capture_default_str();
  gen->add_option("--rng", g.rng,
                  "what the seed means: torch (default: diffusers, one torch CPU generator for the batch), a1111-nv "
                  "(A1111's NV / GPU source and stable-diffusion.cpp's default: image i has Philox seed + i; "
                  "aliases nv, gpu, cuda) or a1111-cpu (A1111's CPU source; alias cpu)");
  gen->add_option("--noise-seed-delta", g.noise_seed_delta,
                  "A1111's Eta noise seed delta (ENSD, e.g. 31337), with --rng a1111-*: the step noise of image i "
                  "comes from seed + i + delta");
  gen->add_option("--batch", g.batch, "images generated together, 1..1024 (default: one per class given, else 1)");
  gen->add_option("--width", g.width, "image width in pixels, 1..4096 (default: the model's native size)");
  gen->add_option("--height", g.height, "image height in pixels, 1..4096 (default: the model's native size)");
  gen->add_option("-t,--threads", g.threads, "threads, 0..256 (0 = one per hardware thread)")->capture_default_str();
  gen->add_option("--scale", g.scale, "upscale the saved images K times, nearest (0 = to at least 128 px)")->capture_default_str();
  gen->add_option("-o,--output", g.output, "output PNG file")->capture_default_str();
  gen->add_option("--memory-limit", g.memory_limit,
                  "memory the load and the generation may use, e.g. 4G or 512M (default: 3/4 of the physical memory)");
  gen->add_flag("--grid", g.grid, "write a batch as one grid image");
  gen->add_option("--grid-columns", g.grid_columns, "images per row of a --grid, 1..1024 (default: up to 10)");
  gen->add_option("--vae", g.vae,
                  "decode a latent model's latents with this VAE folder instead of its own (AutoencoderKL, or a "
                  "tiny AutoencoderTiny / TAESD for a fast approximate decode)");
  gen->add_option("--preview-vae", g.preview_vae, "a tiny VAE (TAESD) folder that decodes the --preview-every frames");
  gen->add_flag_function("--tiled,!--no-tiled", [&g](std::int64_t v) { g.tiled = v > 0 ? 1 : 0; },
                         "decode latents in tiles (or never); default: tiled when the decode would need more than 1 GiB");
  gen->add_option("--preview-every", g.preview_every,
                  "every N steps, write the current estimate as OUTPUT-step-K.png (a latent model's through its "
                  "latent-to-RGB preview)");
  CLI::Option* prompt = gen->add_option("-p,--prompt", g.prompts,
                                        "a text-to-image model's prompt (A1111's syntax: (word:1.3) emphasis, "
                                        "BREAK, longer than 75 tokens in chunks; docs/prompts.md); repeat it for "
                                        "one image per prompt (-p \"red apple\" -p rocket)")
                            ->expected(1)
                            ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  CLI::Option* negative = gen->add_option("-n,--negative-prompt", g.negative_prompt,
                                          "what guidance steers away from (text-to-image models)");
  gen->add_option("--clip-skip", g.clip_skip,
                  "use the text encoder's N-th layer from the end, 1..12 (A1111's Clip skip; 1 = the last layer)");
  gen->add_option("--guidance-rescale", g.guidance_rescale, "guidance rescale phi, 0..1 (Lin et al. 2023; 0 = off)");
  gen->add_option("--emphasis", g.emphasis,
                  "how (word:1.3) and [word] act: original (default, A1111), no_norm, ignore (brackets removed, no "
                  "weights) or none (the prompt is plain text)");
  gen->add_flag("--low-memory", g.low_memory,
                "the smallest memory: no Winograd copies, a tiled VAE decode, and the weights' pages dropped after "
                "each block (read again from the page cache at the next step); slower");
  gen->add_flag("--no-winograd", g.no_winograd,
                "keep no Winograd copies of the 3x3 convolution weights: 16/9 of them less memory (3.8 GB less for "
                "Stable Diffusion 1.5's U-Net), about half the speed of those convolutions");
  gen->add_option("--init-image", g.init_image,
                  "image-to-image: start from this image (PNG, JPEG, ...; read as RGB) instead of pure noise; its "
                  "size is the output's (latent models with a VAE; docs/img2img.md)");
  gen->add_option("--strength", g.strength,
                  "with --init-image: how much of the schedule runs, 0 < S <= 1 (default 0.8, with --mask 1; 1 = all "
                  "of it, from noise)");
  gen->add_option("--mask", g.mask,
                  "inpainting, with --init-image: a mask image of the same size (read as grey, white = repaint, "
                  "black = keep; binarized at 50%); an inpainting model sees it, any other has the kept part blended "
                  "back at every step (docs/inpainting.md)");
  gen->add_flag("-q,--quiet", g.quiet, "no progress and no summary on stderr");

  TokenizeArgs tk;
  CLI::App* tokenize = app.add_subcommand("tokenize", "CLIP token ids of a prompt and their count");
  tokenize->footer(
      "Prints the ids (with <|startoftext|> and <|endoftext|>), then the number of prompt tokens out of the 75\n"
      "that fit in one 77-token sequence. A prompt with A1111's emphasis syntax or BREAK, or longer than 75\n"
      "tokens, is split into 77-id chunks as the encoder sees them (docs/prompts.md); each chunk is printed\n"
      "(its ids, and its weights when not all 1), and the count line says how many tokens each chunk holds.\n"
      "--json: {\"ids\": [...], \"count\": N, \"max_length\": 77, \"truncated\": bool, \"token_count\": N,\n"
      "\"chunks\": [{\"ids\": [77], \"weights\": [77], \"tokens\": n}, ...]}.");
  tokenize->add_option("-m,--model", tk.model,
                       "pipeline folder (with tokenizer/), tokenizer folder (vocab.json, merges.txt) or OpenAI's "
                       "bpe_simple_vocab_16e6.txt")->required();
  tokenize->add_option("prompt", tk.prompt, "the prompt (quote it)")->required();
  tokenize->add_flag("--json", tk.json, "machine-readable output");
  tokenize->add_flag("--tokens", tk.tokens, "also print the token strings");
  tokenize->add_flag("--no-emphasis", tk.no_emphasis, "chunks: brackets, weights and BREAK are plain text");
  tokenize->add_flag("--no-chunking", tk.no_chunking, "chunks: one, truncated to 75 tokens (transformers)");

  CLI::App* list = app.add_subcommand("list", "list the samplers and schedules");
  std::string info_model;
  CLI::App* info = app.add_subcommand("info", "describe a model: architecture, parameters, classes, scheduler, defaults");
  info->add_option("model", info_model, "model folder")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help/version (code 0) or the error
    return code == 0 ? kOk : kUsage;
  }
  g.cfg_set = cfg->count() > 0;
  g.prompt_set = prompt->count() > 0;
  g.negative_set = negative->count() > 0;

  try {
    if (gen->parsed()) return run_generate(g);
    if (tokenize->parsed()) return run_tokenize(tk);
    if (list->parsed()) return run_list();
    if (info->parsed()) return run_info(info_model);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "diffuse: error: %s\nRun with --help for more information.\n", printable(e.what()).c_str());
    return kUsage;
  } catch (const diffuse::error& e) {
    std::fprintf(stderr, "diffuse: error: %s\n", printable(e.what()).c_str());
    return kRuntime;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "diffuse: error: out of memory (an allocation failed; try a smaller --batch, --width or --height, see --memory-limit)\n");
    return kRuntime;
  } catch (const std::length_error&) {  // a std::vector asked for more than it can hold
    std::fprintf(stderr, "diffuse: error: out of memory: a buffer larger than the address space was asked for\n");
    return kRuntime;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "diffuse: error: internal error (please report it): %s\n", printable(e.what()).c_str());
    return kRuntime;
  }
  return kUsage;
}
