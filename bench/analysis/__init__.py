"""Results frame -> tables: the analysis, repeats, costs, roofline shares, compare."""
