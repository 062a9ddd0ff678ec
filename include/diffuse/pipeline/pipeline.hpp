// SPDX-License-Identifier: MIT
/** @file pipeline.hpp
 *  The pipeline layer in one include: `Model` (model.hpp), `Generation` / `generate`
 *  (generate.hpp), images and the parameters text (output.hpp). */
#pragma once

#include "diffuse/pipeline/generate.hpp"
#include "diffuse/pipeline/model.hpp"
#include "diffuse/pipeline/output.hpp"
