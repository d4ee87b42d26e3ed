"""Support for tests and ``drx bench`` only (the product never imports it): synthetic experiment
folders, the naive reference-maths forward used as a yardstick, parameter perturbation."""
