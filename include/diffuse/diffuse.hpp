// SPDX-License-Identifier: MIT
/** @file diffuse.hpp
 *  Everything public in one include. Finer-grained headers keep compile times down:
 *  `diffuse/sample/registry.hpp` for the samplers, the headers in `diffuse/schedule/` for schedules,
 *  `diffuse/io/` for files, `diffuse/core/` for tensors, dtypes, errors and noise. */
#pragma once

#include "diffuse/config.hpp"
#include "diffuse/version.hpp"

#include "diffuse/core/convert.hpp"
#include "diffuse/core/cpu.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/core/tensor.hpp"

#include "diffuse/io/image.hpp"
#include "diffuse/io/mapped_file.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/io/safetensors.hpp"

#include "diffuse/schedule/betas.hpp"
#include "diffuse/schedule/config.hpp"
#include "diffuse/schedule/flow.hpp"
#include "diffuse/schedule/sigmas.hpp"
#include "diffuse/schedule/timesteps.hpp"

#include "diffuse/denoise/analytic.hpp"
#include "diffuse/denoise/denoiser.hpp"
#include "diffuse/denoise/guidance.hpp"
#include "diffuse/denoise/parameterization.hpp"

#include "diffuse/sample/diffusers_scheduler.hpp"
#include "diffuse/sample/registry.hpp"
#include "diffuse/sample/sampler.hpp"
#include "diffuse/sample/torch_noise.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/network.hpp"
#include "diffuse/pipeline/pipeline.hpp"
