"""What to run: the options, the spec built from them, the plan of Cases."""
