"""Measuring inside a Case's process: the step meter, the training, data-parallel and job loops, devices."""
