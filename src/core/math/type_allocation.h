// One type per tensor under a size budget, minimising the predicted damage: a multiple-choice knapsack.
//
// Each tensor offers options (a ggml type, its bytes, the damage predicted for it). The solver walks the lower
// convex hull of every tensor's options, taking upgrades in order of damage removed per byte (the Lagrangian
// path: each step is optimal for some price λ of a byte) while they fit; the point where the next step stops
// fitting gives the LP relaxation's value, a lower bound no allocation within the budget can beat. The leftover
// bytes are then filled greedily with any option (hull or not) that fits. A dynamic program over the budget in
// 4096 parts (bytes rounded up, so its answer always fits) catches what the greedy path misses when a few large
// steps do not fit; the better of the two is kept. The result states its own optimality gap: predicted damage
// minus the bound.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imx {

struct TypeOption {
    std::string type;
    uint64_t    bytes = 0;
    double      damage = 0;
};

struct TensorTypeOptions {
    std::string             name;
    std::vector<TypeOption> options;
};

struct TypeAllocation {
    std::vector<size_t> choice;  // per tensor: an index into its options
    uint64_t            bytes = 0;
    double              damage = 0;
    double              lower_bound = 0;  // no allocation within the budget predicts less damage
};

// The least and the most bytes any allocation can take.
uint64_t smallest_allocation(const std::vector<TensorTypeOptions> & tensors);
uint64_t largest_allocation(const std::vector<TensorTypeOptions> & tensors);

// The allocation within `budget` bytes; throws imx::Error if even the smallest does not fit.
TypeAllocation allocate_types(const std::vector<TensorTypeOptions> & tensors, uint64_t budget);

// The hull path from the smallest to the largest allocation: (bytes, damage) after each upgrade.
struct FrontierPoint {
    uint64_t bytes = 0;
    double   damage = 0;
};
std::vector<FrontierPoint> allocation_frontier(const std::vector<TensorTypeOptions> & tensors);

}  // namespace imx
