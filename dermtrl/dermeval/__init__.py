"""DermEval at inference: the evaluator, the resumable evaluation job and the held-out report.

Import from the modules (``from dermtrl.dermeval.<module> import ...``): this package imports nothing, so
that loading one module never pulls in another's heavy dependencies."""
