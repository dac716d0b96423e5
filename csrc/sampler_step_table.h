// The columns of sampler_step's coefficient table, one row per timestep: the contract between the schedulers that
// build the table (gencore/diffusion/tables.py) and every kernel that reads it. Plain C++ (no PyTorch header), so the
// CPU kernels, the CUDA binding and the CUDA kernels include the same definition. The Python twin is COEF_COLUMNS in
// gencore/_rules.py (same names, same order; tests/ops/test_sampler_step.py holds the two equal).
//
// Per element, with c the row of the sample's timestep and m the (guided) model output:
//   x0   = c[kX0FromSample] * x + c[kX0FromModel] * m                 (then clipped or thresholded)
//   eps  = c[kEpsFromSample] * x + c[kEpsFromModel] * m + c[kEpsFromX0] * x0
//   prev = c[kPrevFromX0] * x0 + c[kPrevFromSample] * x + c[kPrevFromEps] * eps + c[kNoiseStd] * z
//          + c[kPrevFromHistory1] * history1 + c[kPrevFromHistory2] * history2
#pragma once

namespace gencore {
namespace sampler_table {

enum Column : int {
  kX0FromSample = 0,
  kX0FromModel,
  kEpsFromSample,
  kEpsFromModel,
  kEpsFromX0,
  kPrevFromX0,
  kPrevFromSample,
  kPrevFromEps,
  kNoiseStd,
  kPrevFromHistory1,
  kPrevFromHistory2,
  kNumCoefs,  // the number of columns
};

}  // namespace sampler_table
}  // namespace gencore
