#pragma once
// Umbrella header of joblib-cpp. See docs/api.md for which header holds what.
#include <joblib/backend.hpp>
#include <joblib/config.hpp>
#include <joblib/delayed.hpp>
#include <joblib/errors.hpp>
#include <joblib/options.hpp>
#include <joblib/parallel.hpp>
#include <joblib/array.hpp>
#include <joblib/codec.hpp>
#include <joblib/persistence.hpp>
#include <joblib/memory.hpp>
#include <joblib/numpy.hpp>
#include <joblib/python.hpp>
