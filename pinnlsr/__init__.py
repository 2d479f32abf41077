"""pinnlsr: Linearized Subspace Refinement for physics-informed networks."""
