# SPDX-License-Identifier: MIT
# install(EXPORT) so that find_package(diffuse CONFIG) gives diffuse::core and diffuse::diffuse.
include(CMakePackageConfigHelpers)

install(TARGETS diffuse_core diffuse EXPORT diffuseTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/diffuse DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(_cfgdir ${CMAKE_INSTALL_LIBDIR}/cmake/diffuse)
install(EXPORT diffuseTargets NAMESPACE diffuse:: DESTINATION ${_cfgdir})
configure_package_config_file(cmake/diffuseConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/diffuseConfig.cmake INSTALL_DESTINATION ${_cfgdir})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/diffuseConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/diffuseConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/diffuseConfigVersion.cmake DESTINATION ${_cfgdir})
