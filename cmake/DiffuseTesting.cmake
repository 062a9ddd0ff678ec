# SPDX-License-Identifier: MIT
# diffuse_add_run_test(<name> EXIT <code> [STDOUT <regex>] [STDERR <regex>] COMMAND <program> [<arg>...])
#
# A test that runs <program> (a target name or a path) and passes only when it exits with <code>
# and its stdout / stderr match the regexes given. Use it instead of PASS_REGULAR_EXPRESSION (which
# ignores the exit code, so a program that prints its pass line and then exits 66 for a sanitizer
# report still passes) and WILL_FAIL (which passes any failure, a missing model included).
# Arguments and regexes must not contain "|" (the separator on the way to cmake/expect_exit.cmake)
# or ";" (CMake's list separator).
set(DIFFUSE_EXPECT_EXIT_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/expect_exit.cmake")

function(diffuse_add_run_test name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "EXIT;STDOUT;STDERR" "COMMAND")
  if(NOT DEFINED arg_EXIT OR NOT arg_COMMAND OR arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "diffuse_add_run_test(${name}): needs EXIT <code> and COMMAND <program> [args], "
                        "got unexpected '${arg_UNPARSED_ARGUMENTS}'")
  endif()
  list(POP_FRONT arg_COMMAND program)
  if(TARGET ${program})
    set(program $<TARGET_FILE:${program}>)
  endif()
  foreach(a IN LISTS arg_COMMAND)
    if(a MATCHES "\\|")
      message(FATAL_ERROR "diffuse_add_run_test(${name}): argument '${a}' contains '|'")
    endif()
  endforeach()
  list(JOIN arg_COMMAND "|" args)
  set(defs "-DPROGRAM=${program}" "-DARGS=${args}" "-DEXPECT=${arg_EXIT}")
  foreach(stream STDOUT STDERR)
    if(DEFINED arg_${stream})
      list(APPEND defs "-D${stream}_HAS=${arg_${stream}}")
    endif()
  endforeach()
  add_test(NAME ${name} COMMAND ${CMAKE_COMMAND} ${defs} -P ${DIFFUSE_EXPECT_EXIT_SCRIPT})
endfunction()
