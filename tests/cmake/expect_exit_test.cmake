# SPDX-License-Identifier: MIT
# Checks the test driver cmake/expect_exit.cmake itself (cmake -P, with DRIVER set): a program
# that prints the pass line and then exits non-zero must fail, as must a wrong error code or a
# missing message; only the right exit code with the right output passes. The programs are sh -c
# (no ";" in them: CMake would split the argument there).
find_program(_sh sh REQUIRED)
function(expect_driver want_rc want_message)
  execute_process(COMMAND ${CMAKE_COMMAND} -DPROGRAM=${_sh} ${ARGN} -P ${DRIVER}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(want_rc EQUAL 0 AND NOT rc EQUAL 0)
    message(FATAL_ERROR "driver failed, should pass (${ARGN}):\n${out}${err}")
  elseif(NOT want_rc EQUAL 0 AND rc EQUAL 0)
    message(FATAL_ERROR "driver passed, should fail (${ARGN}):\n${out}${err}")
  endif()
  if(NOT "${out}${err}" MATCHES "${want_message}")
    message(FATAL_ERROR "driver output lacks '${want_message}' (${ARGN}):\n${out}${err}")
  endif()
endfunction()

# Pass text on stdout, exit 66 (what ThreadSanitizer returns after a report): fails.
expect_driver(1 "exit code 66, expected 0" "-DARGS=-c|echo all checks passed && exit 66" "-DSTDOUT_HAS=all checks passed")
# Exit 0 without the pass text: fails.
expect_driver(1 "stdout does not match 'all checks passed'" "-DARGS=-c|echo nothing" "-DSTDOUT_HAS=all checks passed")
# The pass text on the wrong stream: fails.
expect_driver(1 "stdout does not match" "-DARGS=-c|echo all checks passed >&2" "-DSTDOUT_HAS=all checks passed")
# An error path: the right message with another non-zero code fails, the right code without the message fails.
expect_driver(1 "exit code 1, expected 2" "-DARGS=-c|echo unknown sampler >&2 && exit 1" -DEXPECT=2 "-DSTDERR_HAS=unknown sampler")
expect_driver(1 "stderr does not match 'unknown sampler'" "-DARGS=-c|echo no such model >&2 && exit 2" -DEXPECT=2 "-DSTDERR_HAS=unknown sampler")
# Right code, right output: passes (exit 0 by default, and an expected error code).
expect_driver(0 "as expected" "-DARGS=-c|echo all checks passed" "-DSTDOUT_HAS=all checks passed")
expect_driver(0 "as expected" "-DARGS=-c|echo unknown sampler >&2 && exit 2" -DEXPECT=2 "-DSTDERR_HAS=unknown sampler")
message(STATUS "expect_exit.cmake: 7 cases as expected")
