# SPDX-License-Identifier: MIT
# Builds tests/cmake/consumer twice, the two ways applications consume diffuse:
#  1. find_package(diffuse CONFIG) against a fresh install of this build tree;
#  2. add_subdirectory() of the source tree.
# Each build runs the consumer program, which exits non-zero if anything is off.
foreach(var SOURCE_DIR BINARY_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "consume.cmake: ${var} is not set")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consume.cmake: command failed (${rc}): ${ARGV}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${prefix})

foreach(mode package subdirectory)
  set(build ${WORK_DIR}/build-${mode})
  if(mode STREQUAL "package")
    set(args -DCMAKE_PREFIX_PATH=${prefix})
  else()
    set(args -DDIFFUSE_SOURCE_DIR=${SOURCE_DIR})
  endif()
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/cmake/consumer -B ${build} -G ${GENERATOR}
      -DCMAKE_BUILD_TYPE=Release ${args})
  run(${CMAKE_COMMAND} --build ${build})
  run(${build}/consumer)
endforeach()

# The C ABI from a C program: examples/cmake_project against the same install, run on a shipped model.
set(build ${WORK_DIR}/build-cmake_project)
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/cmake_project -B ${build} -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix})
run(${CMAKE_COMMAND} --build ${build})
run(${build}/diffuse_app ${SOURCE_DIR}/models/digits-dit 5 ${WORK_DIR}/diffuse_app.png)
