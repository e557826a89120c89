"""Publishing to the Hugging Face Hub: the DermEval adapter with its model card, and the built datasets.

Import from the modules (``from dermtrl.hub.<module> import ...``): this package imports nothing, so
that loading one module never pulls in another's heavy dependencies."""
