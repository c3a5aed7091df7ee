"""memos.cubes: one module per MemCube kind (plaintext, activation, parametric)."""
