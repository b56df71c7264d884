# joblib_add_plugin(<target> <sources>...)
#
# Builds a joblib-cpp backend plugin: a MODULE library linked against
# joblib::joblib, with hidden visibility and `-z nodelete` (a plugin that starts
# threads must never be unmapped while they run). Works in this repository and
# for users after find_package(joblib CONFIG).
function(joblib_add_plugin target)
  add_library(${target} MODULE ${ARGN})
  if(TARGET joblib::joblib)
    target_link_libraries(${target} PRIVATE joblib::joblib)
  else()
    target_link_libraries(${target} PRIVATE joblib)
  endif()
  target_link_options(${target} PRIVATE "LINKER:-z,nodelete" "LINKER:--no-undefined")
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    BUILD_RPATH "$ORIGIN;$ORIGIN/.."
    INSTALL_RPATH "$ORIGIN;$ORIGIN/..")
endfunction()
