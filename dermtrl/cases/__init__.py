"""Cases (an image and a narrative, with expert scores): loading, the one image
reader, synthetic cases and image controls.

Import from the modules (``from dermtrl.cases.<module> import ...``): this package imports nothing, so
that loading one module never pulls in another's heavy dependencies."""
