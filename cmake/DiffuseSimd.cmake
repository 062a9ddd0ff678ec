# SPDX-License-Identifier: MIT
# Per-file instruction-set flags. A source named *_avx512.cpp, *_avx2.cpp or *_f16c.cpp is compiled
# for that instruction set only, and the code inside it runs only after a CPUID check
# (see src/core/cpu_features.cpp). On other architectures those files are left out.
set(DIFFUSE_X86 OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64|i[3-6]86")
  set(DIFFUSE_X86 ON)
endif()

function(diffuse_filter_isa_sources var)
  set(out "")
  foreach(src IN LISTS ${var})
    if(src MATCHES "_(avx512|avx2|f16c)\\.cpp$")
      if(NOT DIFFUSE_X86)
        continue()
      endif()
      if(src MATCHES "_avx512\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS
          "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx2;-mfma;-mf16c")
      elseif(src MATCHES "_avx2\\.cpp$")
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
      else()
        set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx;-mf16c")
      endif()
    endif()
    list(APPEND out ${src})
  endforeach()
  set(${var} ${out} PARENT_SCOPE)
endfunction()

# Files whose results must match another implementation bit for bit (torch's noise generator)
# are compiled without floating-point contraction, so that a*b+c is never fused into an FMA.
set(DIFFUSE_STRICT_FP_SOURCES "${PROJECT_SOURCE_DIR}/src/core/random.cpp")
foreach(src IN LISTS DIFFUSE_STRICT_FP_SOURCES)
  set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-ffp-contract=off")
endforeach()
