"""Test helpers: not part of the installed package (the wheel holds ``edgequant`` only).

Imported as ``tests.support.*`` by ``tests/``, ``benchmarks/`` and ``scripts/`` in a clone of the
repository: pytest puts the repository root on ``sys.path`` (``tests/`` is a package), the scripts insert
it themselves.

* ``ggml_peer``, ``llama_peer``: llama.cpp through llama-cpp-python's shared libraries (codecs, whole files);
* ``compare``: two GGUF files compared (metadata, order, tensor bytes);
* ``cases``, ``vectors``: seeded codec inputs (row families, imatrix vectors, the SINE/LCG/IMAT vectors);
* ``gguf_bytes``: GGUF files as raw bytes, built without validation (hostile inputs, fuzz seeds);
* ``fuzz``: the fuzzers' seed files, mutations and in-process targets (one module each);
* ``tiny``: tiny llama GGUF files and Hugging Face folders built in code.
"""
