// SPDX-License-Identifier: MIT
// pipeline::encode_text: a text-to-image pipeline's prompts through its text encoders (see
// pipeline/generate.hpp), as diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline
// encode_prompt do it, with A1111's prompt syntax on top (text/prompt.hpp).
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/pipeline/generate.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {

TextConditioning encode_text(const Model& model, std::span<const std::string> prompts, kernels::Context& ctx,
                             std::size_t clip_skip, const text::PromptOptions& options) {
  constexpr std::string_view where = "encode_text";
  const auto& ni = model.info();
  const auto& encoders = model.text_encoders();
  if (!model.text_conditional() || encoders.empty())
    raise<value_error>(where, model.name() + " is not conditioned on text: it has no text encoder");
  if (prompts.empty()) raise<value_error>(where, "no prompts to encode");
  // SDXL (a network taking a pooled embedding): the penultimate layer of each encoder, raw, and
  // the last encoder's projection; SD 1.x / 2.x: the layer at clip_skip through the final norm.
  const bool xl = ni.pooled_dim > 0;
  if (clip_skip < 1) raise<value_error>(where, "clip_skip must be >= 1, got 0");
  TextConditioning out;
  std::vector<Tensor> parts;
  for (std::size_t i = 0; i < encoders.size(); ++i) {
    const auto& t = encoders[i];
    models::ClipTextOptions eo;
    eo.clip_skip = xl ? clip_skip + 1 : clip_skip;
    eo.final_norm_on_skip = !xl;
    eo.pooled = xl && i + 1 == encoders.size();
    if (eo.clip_skip > t.encoder->config().num_hidden_layers)
      raise<value_error>(where, "clip_skip " + std::to_string(clip_skip) + " is beyond the text encoder's " +
                                    std::to_string(t.encoder->config().num_hidden_layers) + " layers");
    models::ClipTextOutput r = text::encode_prompts(*t.encoder, *t.tokenizer, prompts, ctx, options, eo);
    if (eo.pooled) out.pooled = std::move(r.text_embeds);
    parts.push_back(std::move(r.hidden));
  }
  if (parts.size() == 1) {
    out.hidden = std::move(parts.front());
  } else {  // concatenated along the width: [B, T, D1 + D2]
    const std::size_t B = parts[0].dim(0), T = parts[0].dim(1);
    std::size_t width = 0;
    for (const Tensor& p : parts) {
      if (p.dim(0) != B || p.dim(1) != T)
        raise<value_error>(where, "the text encoders split the prompts differently (" + shape_string(parts[0].shape()) +
                                      " and " + shape_string(p.shape()) + " states); shorten the prompt to 75 tokens");
      width += p.dim(2);
    }
    out.hidden = Tensor({B, T, width});
    std::size_t offset = 0;
    for (const Tensor& p : parts) {
      const std::size_t D = p.dim(2);
      for (std::size_t r = 0; r < B * T; ++r) std::copy_n(p.data() + r * D, D, out.hidden.data() + r * width + offset);
      offset += D;
    }
  }
  if (out.hidden.dim(2) != ni.text_dim)
    raise<value_error>(where, "the text states have width " + std::to_string(out.hidden.dim(2)) + ", the " +
                                  ni.architecture + " attends to " + std::to_string(ni.text_dim));
  if (xl && (out.pooled.ndim() != 2 || out.pooled.dim(1) != ni.pooled_dim))
    raise<value_error>(where, "the pooled text embedding has shape " + shape_string(out.pooled.shape()) + ", the " +
                                  ni.architecture + " takes [B, " + std::to_string(ni.pooled_dim) + "]");
  return out;
}

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
