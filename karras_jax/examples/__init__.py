"""Worked examples built on the library (the digits model); only the command line imports them.

They sit outside the library's layers on purpose: nothing in ``karras_jax`` depends on an
example, so an example can use anything (scikit-learn, matplotlib) without the core needing it.
"""

__all__: list[str] = []
