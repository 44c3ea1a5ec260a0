"""C++/CUDA sources of the resfu-med operators.

Not Python code: this file only makes the folder installable as ``resfu_med.csrc`` so the sources ship with every
install (editable or not) and ``resfu_med.ops`` can build them just in time.
"""
