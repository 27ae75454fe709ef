"""The OpenAI-compatible endpoint (``python -m llmflow.serving.openai_server``): ``/v1/chat/completions`` over a
registered model, with API keys, a bounded queue, batching, metrics and traces.

It runs from the project (the container image on Kubernetes), not from inside a logged model: ``log_pyfunc`` logs
only ``llmflow.chat_model``, the model's own code, which this package imports. Besides that package it imports
nothing of ``llmflow`` (the import-linter contract in ``pyproject.toml``).

- ``openai_server``: the command line; ``app``: the FastAPI app; ``openai_request`` and ``openai_protocol``: OpenAI's
  request checked and turned into the model's; ``holder``, ``scheduler``: the served model and the batches it runs;
  ``auth``, ``errors``, ``metrics``, ``tracing``.
- ``transformers_chat``: the endpoint's backend for a transformers ``llm/v1/chat`` model, with the pyfunc's checks.
"""
