# SPDX-License-Identifier: MIT
# Test driver (cmake -P): copies the pipeline folder PIPELINE into WORK, breaks it in one way at a
# time and checks that `diffuse generate` exits 1 with a message naming what is wrong and writes no
# image: a DiTPipeline whose model_index.json lists no vae, one whose vae/ folder is missing, one
# with a component diffuse cannot run.
foreach(_v PROGRAM PIPELINE WORK)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "bad_pipelines.cmake: ${_v} is not set")
  endif()
endforeach()
function(check name expect_regex)
  set(_png "${WORK}/${name}.png")
  file(REMOVE "${_png}")
  execute_process(COMMAND ${PROGRAM} generate --model ${WORK}/${name} --class 3 --steps 1 -q -o ${_png}
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  message(STATUS "${name}: exit ${_rc}, stderr: ${_err}")
  if(NOT _rc EQUAL 1)
    message(FATAL_ERROR "${name}: exit code ${_rc}, expected 1")
  endif()
  if(NOT _err MATCHES "${expect_regex}")
    message(FATAL_ERROR "${name}: stderr does not match '${expect_regex}'")
  endif()
  if(EXISTS "${_png}")
    message(FATAL_ERROR "${name}: ${_png} was written")
  endif()
endfunction()
function(make name)
  file(REMOVE_RECURSE "${WORK}/${name}")
  file(MAKE_DIRECTORY "${WORK}")
  file(COPY "${PIPELINE}/" DESTINATION "${WORK}/${name}")
endfunction()

make(no_vae_entry)
file(READ "${WORK}/no_vae_entry/model_index.json" _index)
string(REGEX REPLACE "\"vae\": *\\[[^]]*\\]," "" _index "${_index}")
file(WRITE "${WORK}/no_vae_entry/model_index.json" "${_index}")
check(no_vae_entry "DiTPipeline generates latents, but its model_index.json lists no vae")

make(no_vae_folder)
file(REMOVE_RECURSE "${WORK}/no_vae_folder/vae")
check(no_vae_folder "lists 'vae' \\(AutoencoderKL\\) but there is no vae/ folder")

make(text_encoder)
file(READ "${WORK}/text_encoder/model_index.json" _index)
string(REPLACE "\"_class_name\"" "\"text_encoder\": [\"transformers\", \"T5EncoderModel\"],\n  \"_class_name\"" _index "${_index}")
file(WRITE "${WORK}/text_encoder/model_index.json" "${_index}")
check(text_encoder "cannot run component 'text_encoder' \\(transformers T5EncoderModel\\)")
