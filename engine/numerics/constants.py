"""Physical constants in engine units (length um, time s, concentration nM)."""

MOLECULES_PER_UM3_PER_NM = 0.602214076
"""1 nM = 0.6022 molecules / um^3 (Avogadro's number x 1e-9 mol/L x 1e-15 L/um^3)."""
