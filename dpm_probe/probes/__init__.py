"""Probe functions, one module per assignment: ``function(ns, **inputs)`` exercises the
student's code found in the notebook's namespace ``ns`` on the inputs the judge sent, and
returns what it saw as plain data (tensors, numbers, shapes, distributions, error nodes from
:func:`dpm_probe.runtime.attempt`). They hold no expected values and decide nothing."""
