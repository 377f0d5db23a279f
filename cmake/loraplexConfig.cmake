# find_package(loraplex) support: defines the imported target loraplex::loraplex.
# Installed by `make install PREFIX=...` into ${PREFIX}/lib/cmake/loraplex/.
get_filename_component(_lpx_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET loraplex::loraplex)
  add_library(loraplex::loraplex SHARED IMPORTED)
  set_target_properties(loraplex::loraplex PROPERTIES
    IMPORTED_LOCATION "${_lpx_prefix}/lib/libloraplex.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_lpx_prefix}/include")
endif()
set(loraplex_FOUND TRUE)
unset(_lpx_prefix)
