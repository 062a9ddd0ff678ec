# SPDX-License-Identifier: MIT
# Build options. Tests, examples and installation default to on only when diffuse is the
# top-level project, so that add_subdirectory(diffuse) in an application builds just the library.
include(GNUInstallDirs)

option(DIFFUSE_BUILD_TESTS "Build the GoogleTest suite" ${PROJECT_IS_TOP_LEVEL})
option(DIFFUSE_BUILD_EXAMPLES "Build the example programs" ${PROJECT_IS_TOP_LEVEL})
option(DIFFUSE_BUILD_CLI "Build the diffuse command-line program (needs CLI11)" ${PROJECT_IS_TOP_LEVEL})
option(DIFFUSE_BUILD_BENCHMARKS "Build the Google Benchmark programs" OFF)
option(DIFFUSE_BUILD_FUZZERS "Build the libFuzzer targets (needs clang)" OFF)
option(DIFFUSE_INSTALL "Generate the install target and CMake package" ${PROJECT_IS_TOP_LEVEL})
option(DIFFUSE_NATIVE "Compile for the host CPU (-march=native), or for DIFFUSE_MARCH when set" ON)
set(DIFFUSE_MARCH "" CACHE STRING
  "With DIFFUSE_NATIVE=ON, the -march target instead of native (e.g. x86-64-v3, sapphirerapids, znver4); empty = native")
option(DIFFUSE_WERROR "Treat compiler warnings as errors" OFF)
option(DIFFUSE_SANITIZE_ADDRESS "Build with AddressSanitizer" OFF)
option(DIFFUSE_SANITIZE_UNDEFINED "Build with UndefinedBehaviorSanitizer" OFF)
option(DIFFUSE_SANITIZE_THREAD "Build with ThreadSanitizer" OFF)

# The target CPU of diffuse's own code: DIFFUSE_MARCH_FLAG is "-march=native", "-march=<DIFFUSE_MARCH>"
# or empty (DIFFUSE_NATIVE=OFF: the compiler's default, x86-64; the kernels still dispatch at run time).
set(DIFFUSE_MARCH_FLAG "")
if(DIFFUSE_NATIVE AND DIFFUSE_MARCH)
  if(NOT DIFFUSE_MARCH MATCHES "^[A-Za-z0-9_.+-]+$")
    message(FATAL_ERROR "DIFFUSE_MARCH='${DIFFUSE_MARCH}' is not a -march name (e.g. x86-64-v3, sapphirerapids, znver4)")
  endif()
  include(CheckCXXCompilerFlag)
  check_cxx_compiler_flag(-march=${DIFFUSE_MARCH} _diffuse_march_ok_${DIFFUSE_MARCH})
  if(NOT _diffuse_march_ok_${DIFFUSE_MARCH})
    message(FATAL_ERROR "DIFFUSE_MARCH=${DIFFUSE_MARCH}: ${CMAKE_CXX_COMPILER} does not accept -march=${DIFFUSE_MARCH}")
  endif()
  set(DIFFUSE_MARCH_FLAG -march=${DIFFUSE_MARCH})
elseif(DIFFUSE_NATIVE)
  set(DIFFUSE_MARCH_FLAG -march=native)
elseif(DIFFUSE_MARCH)
  message(WARNING "DIFFUSE_MARCH=${DIFFUSE_MARCH} is ignored: DIFFUSE_NATIVE is OFF")
endif()

# Sanitizers apply to everything built in this tree, dependencies' inline code included.
set(_diffuse_sanitizers "")
if(DIFFUSE_SANITIZE_ADDRESS)
  list(APPEND _diffuse_sanitizers address)
endif()
if(DIFFUSE_SANITIZE_UNDEFINED)
  list(APPEND _diffuse_sanitizers undefined)
endif()
if(DIFFUSE_SANITIZE_THREAD)
  list(APPEND _diffuse_sanitizers thread)
endif()
if(_diffuse_sanitizers)
  list(JOIN _diffuse_sanitizers "," _diffuse_san)
  add_compile_options(-fsanitize=${_diffuse_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_diffuse_san})
  # Debug information in a sanitizer build: line tables (-g1) by default, which is what a sanitizer report
  # needs for the file and line of every frame. Full -g (variables and types, for a debugger) makes the
  # template-heavy test programs compile 1.4x slower and their objects 2.4x larger; set it here when needed.
  set(DIFFUSE_SANITIZE_DEBUG_FLAGS "-g1" CACHE STRING
    "Debug-information flags appended in sanitizer builds (-g1: line tables; -g: full; empty: the build type's)")
  if(DIFFUSE_SANITIZE_DEBUG_FLAGS AND CMAKE_BUILD_TYPE MATCHES "^(RelWithDebInfo|Debug)$")
    separate_arguments(_diffuse_san_debug UNIX_COMMAND "${DIFFUSE_SANITIZE_DEBUG_FLAGS}")
    add_compile_options(${_diffuse_san_debug})
  endif()
endif()

# Flags for diffuse's own targets (library, tests, examples, benchmarks); never exported.
function(diffuse_apply_build_flags target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
      $<$<BOOL:${DIFFUSE_WERROR}>:-Werror>)
    if(DIFFUSE_MARCH_FLAG)
      target_compile_options(${target} PRIVATE ${DIFFUSE_MARCH_FLAG})
    endif()
    # GCC 12 reports false (maybe-)uninitialized uses inside Eigen's AVX-512 intrinsics once sanitizer
    # instrumentation changes inlining; keep them visible but not fatal in sanitizer builds.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND _diffuse_sanitizers)
      target_compile_options(${target} PRIVATE -Wno-error=uninitialized -Wno-error=maybe-uninitialized)
    endif()
  endif()
  target_compile_definitions(${target} PRIVATE $<$<CONFIG:Debug>:DIFFUSE_ENABLE_ASSERT>)
endfunction()

