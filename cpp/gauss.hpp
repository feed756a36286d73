// Gauss rules from Jacobi matrices (Golub–Welsch, docs/model.md §8). No Python types here.
#pragma once
#include <cstdint>

namespace mimfast {

// Nodes and weights of the n-point Gauss rule of a symmetric tridiagonal (Jacobi) matrix with
// diagonal diag[n] and off-diagonal off[n - 1]: its eigenvalues, ascending, and the squared
// first components of its unit eigenvectors (normalised to sum 1). Implicit QL with Wilkinson
// shifts, rotating only the first row of the eigenvector matrix: O(n^2) work and O(n) memory.
// Throws std::runtime_error when an eigenvalue does not converge in 60 sweeps.
void gauss_rule(int64_t n, const double* diag, const double* off, double* nodes,
                double* weights);

}  // namespace mimfast
