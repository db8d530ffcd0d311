"""Time integration of a `Model`: the steppers, the compiled device loops, `Simulation` and
`Ensemble`. Takes models, never configs."""
