"""Validation of predictions against trace bundles, efficiency calibration, and the HTML report.

Reports read simulator tables and trace bundles; they never run models (the optional eager level calls the
profiler's op counter on meta tensors, imported lazily). Import the submodules directly:
`reports.validation`, `reports.calibration`, `reports.figures`, `reports.html`.
"""
