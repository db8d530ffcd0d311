"""What is simulated: species and populations, reaction terms, sources, regions, and the
right-hand side every stepper evaluates. Built on `engine.numerics` only."""
